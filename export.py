#!/usr/bin/env python
"""Export a trained model to ONNX (fp32 and int8) and check both against PyTorch.

    python export.py outputs/smoke                    # parity on the run's test split
    python export.py outputs/smoke --images photos/   # or on these images
    python export.py outputs/smoke --overwrite        # export again although nothing has changed

Writes OUTPUT_DIR/onnx/model.onnx, onnx/model_quantized.onnx and onnx/parity.json (transformers.js's layout), and
brings the ONNX section of the folder's model card (README.md) up to date. An export is kept while the weights,
config.json and preprocessor_config.json it was made from are unchanged, and made again when one has changed.
Exit status: 0 exported (or kept), 2 a usage error, a failed export or fp32 disagreeing with PyTorch.
"""

from __future__ import annotations

import argparse
import sys

from vitrecipes.artifacts import EXPORTS, export_module
from vitrecipes.errors import RecipeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="Output folder of a training run.")
    parser.add_argument("--format", choices=list(EXPORTS), default="onnx", help="Export format (default onnx).")
    parser.add_argument("--split", help="Split of the run's dataset to check parity on (default: test).")
    parser.add_argument("--images", nargs="+", help="Image files or folders to check parity on instead.")
    parser.add_argument(
        "--overwrite", action="store_true", help="Export again even if an export of these files exists."
    )
    parser.add_argument(
        "--trust_remote_code", action="store_true", help="Run code the model folder ships (only code you have read)."
    )
    args = parser.parse_args(argv)
    try:
        trust = args.trust_remote_code
        module = export_module(args.format)  # after parsing: --help answers without loading torch
        module.export_folder(args.output_dir, args.split, args.images, args.overwrite, trust_remote_code=trust)
        from vitrecipes.card import refresh_onnx_section

        if note := refresh_onnx_section(args.output_dir):
            print(note)
    except RecipeError as error:
        print(f"\nError: {error}\n", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
