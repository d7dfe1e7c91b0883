#!/usr/bin/env python
"""Export a trained model to ONNX (fp32 and int8) and check both against PyTorch.

    python export.py outputs/smoke                    # parity on the run's test split
    python export.py outputs/smoke --images photos/   # or on these images
    python export.py outputs/smoke --overwrite        # export again even if the weights have not changed

Writes OUTPUT_DIR/onnx/model.onnx, onnx/model_quantized.onnx and onnx/parity.json (transformers.js's layout).
Exit status: 0 exported (or kept), 2 a usage error, a failed export or fp32 disagreeing with PyTorch.
"""

from __future__ import annotations

import argparse
import sys

from vitrecipes.errors import RecipeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="Output folder of a training run.")
    parser.add_argument("--split", help="Split of the run's dataset to check parity on (default: test).")
    parser.add_argument("--images", nargs="+", help="Image files or folders to check parity on instead.")
    parser.add_argument(
        "--overwrite", action="store_true", help="Export again even if an export of these weights exists."
    )
    args = parser.parse_args(argv)
    from vitrecipes.onnx_export import export_folder  # after parsing: --help answers without loading torch

    try:
        export_folder(args.output_dir, split=args.split, images=args.images, overwrite=args.overwrite)
    except RecipeError as error:
        print(f"\nError: {error}\n", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
