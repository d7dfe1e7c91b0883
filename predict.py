#!/usr/bin/env python
"""Classify images with a trained model, through the same eval transform as its evaluation.

    python predict.py --model outputs/smoke img.png more/*.png some_folder/ https://example.com/x.jpg --top_k 3
    python predict.py --model outputs/smoke photos/ --json > predictions.jsonl
    python predict.py --model outputs/smoke photos/ --backend onnx --quantized   # after python export.py

Exit status: 0 when every image was classified, 1 when some could not be read or were too big (each gets an
error line), 2 for a usage error such as a missing model folder, a model that ships its own code (without
--trust_remote_code) or an ONNX export older than the model's files.
"""

from __future__ import annotations

import argparse
import sys

from vitrecipes.artifacts import EXPORTS, export_module
from vitrecipes.errors import RecipeError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", help="Image files, folders (searched recursively) or http(s) URLs.")
    parser.add_argument("--model", required=True, help="Output folder of a training run, or a Hub model id.")
    parser.add_argument("--top_k", type=int, default=1, help="How many classes to show per image (default 1).")
    parser.add_argument("--json", action="store_true", help="Print one JSON object per image instead of a table.")
    parser.add_argument("--batch_size", type=int, default=32, help="Images per forward pass (default 32).")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1... (default: the GPU if there is one).")
    parser.add_argument("--backend", choices=["torch", *EXPORTS], default="torch", help="onnx: the onnx/ export.")
    parser.add_argument("--quantized", action="store_true", help="With an export backend: its int8 model.")
    parser.add_argument(
        "--trust_remote_code", action="store_true", help="Run code the model folder ships (only code you have read)."
    )
    args = parser.parse_args(argv)
    if args.quantized and args.backend == "torch":
        parser.error("--quantized needs an export backend (--backend onnx)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Imported after parsing so that --help and usage errors answer at once, without loading torch.
    from vitrecipes.predict import run_cli

    try:
        if args.backend in EXPORTS:
            classifier = export_module(args.backend).Classifier
            return run_cli(args, classifier(args.model, args.quantized, args.trust_remote_code))
        return run_cli(args)
    except RecipeError as error:
        print(f"\nError: {error}\n", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
