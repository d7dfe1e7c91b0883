#!/usr/bin/env python
"""A web demo of a trained model: upload an image, see its top-5 classes (Gradio, on this machine only).

    python demo.py outputs/smoke                     # then open http://127.0.0.1:7860
    python demo.py outputs/smoke --examples 6        # with 6 images of the run's validation split to click
    python demo.py outputs/smoke --share             # also a public gradio.live link (never without --share)

Exit status 2 for a folder that holds no model, a model that ships its own code (without --trust_remote_code),
or when gradio is not installed.
"""

from __future__ import annotations

import argparse
import os
import sys

from vitrecipes.errors import RecipeError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="Output folder of a training run (model, config, image processor).")
    parser.add_argument("--port", type=int, default=7860, metavar="N", help="Port on 127.0.0.1 (default 7860).")
    parser.add_argument(
        "--examples", type=int, default=0, metavar="K", help="How many example images to offer (default 0)."
    )
    parser.add_argument(
        "--examples-split",
        "--examples_split",
        default="validation",
        metavar="SPLIT",
        help="Split they come from (default validation).",
    )
    parser.add_argument("--share", action="store_true", help="Also serve a public link through gradio.live.")
    parser.add_argument(
        "--trust_remote_code", action="store_true", help="Run code the model folder ships (only code you have read)."
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when gradio is imported: no telemetry, no update check
    try:
        from vitrecipes.artifacts import require_model_folder

        advice = "Give the output folder of a training run, e.g. outputs/smoke (from recipes/smoke.yaml)."
        folder = require_model_folder(args.output_dir, "OUTPUT_DIR", advice, refuse_code=not args.trust_remote_code)
        try:
            import gradio  # noqa: F401
        except ImportError as error:
            raise RecipeError(
                f"The demo needs gradio, which is not installed here ({error}). Install the serving libraries with "
                "pip install -r requirements-serve.txt (training does not need them), then run demo.py again."
            ) from None
        from vitrecipes.demo import build_demo, example_images

        examples = example_images(folder, args.examples_split, args.examples)
        demo = build_demo(folder, examples, trust_remote_code=args.trust_remote_code)
    except RecipeError as error:
        print(f"\nError: {error}\n", file=sys.stderr)
        return 2
    print(f"Demo of {folder} ({len(examples)} example images): http://127.0.0.1:{args.port}"
          + (" and a public gradio.live link" if args.share else ", this machine only") + "; Ctrl+C stops it.")
    try:
        demo.launch(server_name="127.0.0.1", server_port=args.port, share=args.share)
    except OSError as error:  # gradio's message for a port in use names launch()'s parameters, not ours
        print(f"\nError: --port {args.port}: gradio could not serve on 127.0.0.1:{args.port} ({error}) Choose "
              "another port with --port N.\n", file=sys.stderr)  # fmt: skip
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
