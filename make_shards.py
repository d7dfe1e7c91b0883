#!/usr/bin/env python
"""Write a dataset as webdataset shards, for training from a stream.

    python make_shards.py ../shared/data/snacks shards/snacks --shard_size 500
    python make_shards.py builtin:digits shards/digits --shard_size 200 --splits train validation

SOURCE is anything a recipe's dataset_name takes (Hub id, imagefolder, save_to_disk folder, builtin:digits), loaded
as training loads it (a missing validation split is held out of train). Writes OUT/<split>-000000.tar, ... (each
sample the original image file and its label index) and OUT/_info.json (classes, samples per shard). After a crash,
rerun the same command: finished shards are kept. Exit status: 0 written (or already there), 2 a usage error.
"""

from __future__ import annotations

import argparse
import sys

from vitrecipes.errors import RecipeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="Hub id, imagefolder, save_to_disk folder or builtin:digits.")
    parser.add_argument("out", help="Folder for the shards and _info.json (new or empty, or this command's own).")
    parser.add_argument("--shard_size", type=int, default=500, help="Samples per shard (default: 500).")
    parser.add_argument("--splits", nargs="+", help="Splits to write (default: all).")
    args = parser.parse_args(argv)
    from vitrecipes.config import DataArguments  # after parsing: --help answers without loading torch
    from vitrecipes.data import load_splits
    from vitrecipes.shards import write_shards

    try:
        data_args = DataArguments(dataset_name=args.source)
        splits = load_splits(data_args)
        info = write_shards(splits, args.out, args.shard_size, args.source, only=args.splits)
    except RecipeError as error:
        print(f"\nError: {error}\n", file=sys.stderr)
        return 2
    for name, split in info["splits"].items():
        print(f"{name}: {split['num_samples']} samples in {len(split['shards'])} shards")
    return 0


if __name__ == "__main__":
    sys.exit(main())
