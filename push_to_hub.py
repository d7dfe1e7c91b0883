#!/usr/bin/env python
"""Push a finished run's output folder to the Hugging Face Hub, with its model card.

    python push_to_hub.py outputs/smoke --hub_model_id your-name/vit-digits-smoke [--private]

Uploads the model, image processor, metrics.json, resolved_recipe.yaml, the ONNX export (refused when
it is stale) and README.md (the model card, written first if the folder has none; --new_card rewrites it;
its ONNX section is brought up to date). Checkpoints and training state stay local. The token comes from
--token, else huggingface_hub finds it (HF_TOKEN or `hf auth login`); prefer the last two, since a
command-line argument is visible to other users.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vitrecipes.errors import RecipeError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="Output folder of a training run (config.json, model.safetensors...).")
    parser.add_argument("--hub_model_id", required=True, help="Repository to push to, as user/name or org/name.")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    parser.add_argument("--token", default=None, help="Hub token with write access (default: HF_TOKEN or login).")
    parser.add_argument("--new_card", action="store_true", help="Rewrite README.md even if the folder has one.")
    parser.add_argument("--license", default=None, help="License for a newly written card (default apache-2.0).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    from vitrecipes.artifacts import CARD_NAME
    from vitrecipes.card import RunFiles, refresh_onnx_section, write_model_card
    from vitrecipes.hub import push_output_dir

    try:
        RunFiles.read(args.output_dir)  # refuse a folder without a model before touching the network
        if args.new_card or not (Path(args.output_dir) / CARD_NAME).is_file():
            write_model_card(args.output_dir, repo_id=args.hub_model_id, license=args.license)
        elif note := refresh_onnx_section(args.output_dir):  # an export made after the card was written
            print(note, file=sys.stderr)
        url = push_output_dir(args.output_dir, args.hub_model_id, private=args.private, token=args.token)
    except RecipeError as error:
        print(f"\nError: {error}\n", file=sys.stderr)
        return 2
    print(f"Pushed {args.output_dir} to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
