#!/usr/bin/env python
"""PyTorch eager against ONNX Runtime fp32 and int8, in one run on one machine: latency, throughput, accuracy.

    python export.py /work/runs/cpu42-copy
    python benchmarks/bench_onnx.py /work/runs/cpu42-copy --threads 2 --out docs/bench_onnx_cpu.json

The images (the run's --split, default test) are decoded and preprocessed by the saved image processor once,
before any clock starts. Then, with --threads for torch.set_num_threads and ONNX Runtime's intra-op threads
(one inter-op thread):
- accuracy and batch-32 throughput: every variant classifies the whole split in batches of 32, taking turns
  batch by batch, so that a shared machine's drift falls on all three alike;
- batch-1 latency: --runs single-image calls per variant after --warmup, also in turns; median and p95.
Prints a Markdown table, then writes the JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vitrecipes.onnx_export import FP32_FILE, INT8_FILE, ONNX_DIR, open_session, parity_images, run_session  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="An output folder with its onnx/ export (python export.py).")
    parser.add_argument("--split", default="test")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads.")
    parser.add_argument("--runs", type=int, default=100, help="Timed batch-1 calls per variant.")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out", help="Write the results here as JSON.")
    opts = parser.parse_args(argv)
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    folder = Path(opts.output_dir)
    torch.set_num_threads(opts.threads)
    model = AutoModelForImageClassification.from_pretrained(folder, use_safetensors=True).eval()
    files = {"onnx fp32": folder / ONNX_DIR / FP32_FILE, "onnx int8": folder / ONNX_DIR / INT8_FILE}
    sessions = {name: open_session(path, opts.threads) for name, path in files.items()}

    def pytorch(pixels):
        with torch.inference_mode():
            return model(pixel_values=torch.from_numpy(pixels)).logits.numpy()

    variants = {"pytorch eager": pytorch} | {name: lambda x, s=s: run_session(s, x) for name, s in sessions.items()}
    pictures, labels, _ = parity_images(folder, opts.split)
    processor = AutoImageProcessor.from_pretrained(folder)
    batches = [
        processor(pictures[i : i + 32], return_tensors="np")["pixel_values"] for i in range(0, len(pictures), 32)
    ]
    seconds, predictions = dict.fromkeys(variants, 0.0), {name: [] for name in variants}
    for pixels in batches:
        for name, run in variants.items():
            start = time.perf_counter()
            logits = run(pixels)
            seconds[name] += time.perf_counter() - start
            predictions[name].append(logits.argmax(1))
    one, latencies = batches[0][:1], {name: [] for name in variants}
    for step in range(opts.warmup + opts.runs):
        for name, run in variants.items():
            start = time.perf_counter()
            run(one)
            if step >= opts.warmup:
                latencies[name].append(time.perf_counter() - start)
    eager_median = np.median(latencies["pytorch eager"])
    rows = {
        name: {
            "batch1_median_ms": round(float(np.median(latencies[name])) * 1000, 2),
            "batch1_p95_ms": round(float(np.percentile(latencies[name], 95)) * 1000, 2),
            "speedup_vs_eager_batch1": round(float(eager_median / np.median(latencies[name])), 2),
            "batch32_images_per_s": round(len(pictures) / seconds[name], 1),
            "accuracy": float((np.concatenate(predictions[name]) == np.asarray(labels)).mean()),
            "file_mb": round(os.path.getsize(files[name]) / 1e6, 1) if name in files else None,
        }
        for name in variants
    }
    result = {"output_dir": str(folder), "split": opts.split, "images": len(pictures), "threads": opts.threads,
              "runs": opts.runs, "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
              "onnxruntime": __import__("onnxruntime").__version__, "variants": rows}  # fmt: skip
    print(f"{len(pictures)} {opts.split} images, {opts.threads} threads, batch-1 over {opts.runs} calls each\n")
    print("| variant | size (MB) | accuracy | batch-1 median (ms) | batch-1 p95 (ms) | vs eager | batch-32 images/s |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        cells = [name, row["file_mb"] or "-", f"{row['accuracy']:.4f}", row["batch1_median_ms"], row["batch1_p95_ms"]]
        cells += [f"{row['speedup_vs_eager_batch1']}x", row["batch32_images_per_s"]]
        print("| " + " | ".join(map(str, cells)) + " |")
    if opts.out:
        Path(opts.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
