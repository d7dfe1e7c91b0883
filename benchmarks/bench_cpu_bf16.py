#!/usr/bin/env python
"""bf16 autocast against fp32 on this CPU: training and inference images/s of one model, in one process.

    python benchmarks/bench_cpu_bf16.py                                   # the shared DINOv2-S at 112 px
    python benchmarks/bench_cpu_bf16.py --model DIR --size 140 --repeats 5 --out docs/bench_cpu_bf16.json

Each repeat times a few training steps (forward, backward, AdamW) at --train_batch and a few inference
batches at --eval_batch, fp32 and bf16 in turn, so a machine that slows down mid-run slows both alike.
Reports the median images/s of each and the bf16 / fp32 ratio. Where the CPU has no native bf16 (AMX or
AVX512-BF16) the ratio is below 1, which is why run_snacks.py keeps bf16 off there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vitrecipes.hardware import native_cpu_bf16  # noqa: E402


def images_per_second(model, optimizer, bf16: bool, train: bool, batch: int, size: int, steps: int) -> float:
    pixels = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, model.config.num_labels, (batch,))
    model.train(train)
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), torch.set_grad_enabled(train):
            output = model(pixel_values=pixels, labels=labels)
        if train:
            output.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return steps * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT.parent / "shared" / "models" / "dinov2-small"))
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--train_batch", type=int, default=16)
    parser.add_argument("--eval_batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="timed steps (batches) per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.steps < 1:
        parser.error("--repeats and --steps must be 1 or more.")
    from transformers import AutoModelForImageClassification

    torch.manual_seed(0)
    model = AutoModelForImageClassification.from_pretrained(args.model, num_labels=20, ignore_mismatched_sizes=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    figures = {(mode, bf16): [] for mode in ("train", "inference") for bf16 in (False, True)}
    for bf16 in (False, True):  # warm-up: oneDNN picks its kernels on the first calls
        images_per_second(model, optimizer, bf16, True, args.train_batch, args.size, 1)
        images_per_second(model, optimizer, bf16, False, args.eval_batch, args.size, 1)
    for _ in range(args.repeats):
        for (mode, bf16), values in figures.items():
            train = mode == "train"
            batch = args.train_batch if train else args.eval_batch
            values.append(images_per_second(model, optimizer, bf16, train, batch, args.size, args.steps))
    report = {
        "model": args.model,
        "size": args.size,
        "threads": torch.get_num_threads(),
        "native_cpu_bf16": native_cpu_bf16(),
        "torch": torch.__version__,
    }
    print(f"{args.model} at {args.size} px, {torch.get_num_threads()} threads, native bf16: {native_cpu_bf16()}")
    for mode in ("train", "inference"):
        fp32, bf16 = (statistics.median(figures[mode, b]) for b in (False, True))
        report[mode] = {"fp32_images_per_s": round(fp32, 1), "bf16_images_per_s": round(bf16, 1),
                        "bf16_over_fp32": round(bf16 / fp32, 2)}  # fmt: skip
        print(f"{mode:>10}: fp32 {fp32:6.1f} images/s, bf16 {bf16:6.1f} images/s, {bf16 / fp32:.2f}x")
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
