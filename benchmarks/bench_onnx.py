#!/usr/bin/env python
"""PyTorch eager against ONNX Runtime fp32 and int8, in one run on one machine: latency, throughput, accuracy.

    python export.py outputs/cpu42
    python benchmarks/bench_onnx.py outputs/cpu42 --threads 2 --out docs/bench_onnx_cpu.json

Images are preprocessed before any clock starts; the variants take turns batch by batch (the whole split at batch 32,
then --runs single images), so that a shared machine's drift falls on all alike. A Markdown table; --out: the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

from vitrecipes.onnx_export import FP32_FILE, INT8_FILE, ONNX_DIR, open_session, parity_images, run_session


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="An output folder with its onnx/ export (python export.py).")
    parser.add_argument("--split", default="test")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads.")
    parser.add_argument("--runs", type=int, default=100, help="Timed batch-1 calls per variant.")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out", help="Write the results here as JSON.")
    opts = parser.parse_args(argv)
    folder = Path(opts.output_dir)
    torch.set_num_threads(opts.threads)
    model = AutoModelForImageClassification.from_pretrained(folder, use_safetensors=True).eval()
    files = {"onnx fp32": folder / ONNX_DIR / FP32_FILE, "onnx int8": folder / ONNX_DIR / INT8_FILE}
    sessions = {name: open_session(path, opts.threads) for name, path in files.items()}
    eager = torch.inference_mode()(lambda pixels: model(pixel_values=torch.from_numpy(pixels)).logits.numpy())
    variants = {"pytorch eager": eager} | {name: lambda x, s=s: run_session(s, x) for name, s in sessions.items()}
    pictures, labels, _ = parity_images(folder, opts.split)
    processor = AutoImageProcessor.from_pretrained(folder)
    batches = [processor(pictures[i : i + 32], return_tensors="np").pixel_values for i in range(0, len(pictures), 32)]
    seconds, predictions, latencies = dict.fromkeys(variants, 0.0), {n: [] for n in variants}, {n: [] for n in variants}
    for pixels in batches:
        for name, run in variants.items():
            start = time.perf_counter()
            predictions[name].append(run(pixels).argmax(1))
            seconds[name] += time.perf_counter() - start
    for step in range(opts.warmup + opts.runs):
        for name, run in variants.items():
            start = time.perf_counter()
            run(batches[0][:1])
            if step >= opts.warmup:
                latencies[name].append(time.perf_counter() - start)
    eager_ms = np.median(latencies["pytorch eager"])
    rows = {name: {"batch1_median_ms": round(float(np.median(latencies[name])) * 1000, 2),
                   "batch1_p95_ms": round(float(np.percentile(latencies[name], 95)) * 1000, 2),
                   "speedup_vs_eager_batch1": round(float(eager_ms / np.median(latencies[name])), 2),
                   "batch32_images_per_s": round(len(pictures) / seconds[name], 1),
                   "accuracy": float((np.concatenate(predictions[name]) == np.asarray(labels)).mean()),
                   "file_mb": round(os.path.getsize(files[name]) / 1e6, 1) if name in files else None}
            for name in variants}  # fmt: skip
    shown = os.path.relpath(folder, Path(__file__).resolve().parent.parent)  # as docs name it: no machine folder
    result = {"output_dir": shown, "split": opts.split, "images": len(pictures), "threads": opts.threads,
              "runs": opts.runs, "cpu": platform.machine(), "torch": torch.__version__,
              "onnxruntime": onnxruntime.__version__, "variants": rows}  # fmt: skip
    print(f"{len(pictures)} {opts.split} images, {opts.threads} threads, batch-1 over {opts.runs} calls each\n")
    print("| variant | size (MB) | accuracy | batch-1 median (ms) | batch-1 p95 (ms) | vs eager | batch-32 images/s |\n"
          "|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['file_mb'] or '-'} | {r['accuracy']:.4f} | {r['batch1_median_ms']} | "
              f"{r['batch1_p95_ms']} | {r['speedup_vs_eager_batch1']}x | {r['batch32_images_per_s']} |")
    if opts.out:
        Path(opts.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
