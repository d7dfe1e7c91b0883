#!/usr/bin/env python
"""Map-style against streaming, on the same images and the recipe's own training transform (docs/scale.md).

    python benchmarks/bench_streaming.py recipes/dinov2-small/snacks/config_cpu.yaml --shards outputs/snacks-shards

Writes the recipe's dataset as shards first if --shards holds none (make_shards.py's writer). For each DataLoader
worker count it times, one after the other, the map-style split (datasets + with_transform, shuffled) and the
ShardStream over the shards: images/s over --batches batches, time to the first batch, the time to the first batch
after a resume at 10 % and 90 % of an epoch (map-style: accelerate's skip_first_batches, as Trainer resumes;
streaming: the saved position, skipped records not decoded), decoded images/s per worker and the largest worker's
memory; then the evaluation images each way counts. Prints a table and one JSON line (--out: a file too).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from accelerate import skip_first_batches
from torch.utils.data import DataLoader

from vitrecipes.bad_images import BadImageLog
from vitrecipes.config import parse_recipe
from vitrecipes.data import load_splits, with_preprocessing
from vitrecipes.shards import write_shards
from vitrecipes.streaming import RowTransform, ShardStream, StreamLoader, local_dataset, open_shards
from vitrecipes.transforms import build_preprocessing


def workers_mib() -> int | None:
    """The resident memory of this process's largest child (a DataLoader worker), from /proc."""
    sizes = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:  # the process ended meanwhile
            continue
        if int(fields.get("PPid", "0")) == os.getpid() and "VmRSS" in fields:
            sizes.append(int(fields["VmRSS"].split()[0]) // 1024)
    return max(sizes, default=None)


def first_batch_and_rate(loader, batches: int) -> tuple[float, float, int | None]:
    """Seconds to the first batch, images/s over the `batches` after it, and the largest worker's MiB then."""
    start, images, first = time.perf_counter(), 0, None
    for i, batch in enumerate(loader):
        if first is None:
            first, start_rate = time.perf_counter() - start, time.perf_counter()
        elif i <= batches:
            images += len(batch["labels"])
        if i == batches:
            return first, images / (time.perf_counter() - start_rate), workers_mib()
    raise SystemExit(f"--batches {batches} is more than an epoch holds.")


def first_batch(loader) -> float:
    start = time.perf_counter()
    next(iter(loader))
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--shards", type=Path, required=True, help="Shard folder (written here if it holds none).")
    parser.add_argument("--shard_size", type=int, default=250)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=30, help="Batches timed for images/s.")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    model_args, data_args, training_args, _ = parse_recipe([args.recipe, "--output_dir", str(args.shards.parent)])
    splits = load_splits(data_args, seed=training_args.seed)
    if not (args.shards / "_info.json").is_file():
        write_shards(splits, args.shards, args.shard_size, data_args.dataset_name)
    prep, _ = build_preprocessing(model_args, data_args)
    batch, bad = training_args.per_device_train_batch_size, BadImageLog(None)
    shards = open_shards(str(args.shards / "train-*.tar"))
    transform = RowTransform(prep.batch_transform(True, "image", "label", "train", bad, data_args.max_image_pixels))
    mapped = with_preprocessing(splits["train"], "train", True, prep, data_args, bad)
    rows = []
    for workers in args.workers:
        stream = ShardStream(shards, transform, batch, num_workers=workers, seed=training_args.seed,
                             shuffle_buffer=data_args.shuffle_buffer)  # fmt: skip
        for name in ("map-style", "streaming"):

            def loader(start=0, name=name, workers=workers, stream=stream):  # a fresh one, as a new run builds
                if name == "streaming":
                    return StreamLoader(stream.resumed(stream.position(0, start)), collate_fn=prep.collate)
                plain = DataLoader(mapped, batch, shuffle=True, num_workers=workers, collate_fn=prep.collate)
                return skip_first_batches(plain, start) if start else plain

            first, rate, memory = first_batch_and_rate(loader(), args.batches)
            row = {"pipeline": name, "workers": workers, "images_per_s": round(rate, 1),
                   "images_per_s_per_worker": round(rate / max(workers, 1), 1), "first_batch_s": round(first, 2),
                   "largest_worker_mib": memory}  # fmt: skip
            for fraction in (0.1, 0.9):
                resumed = loader(int(fraction * stream.batches))
                row[f"resume_at_{int(fraction * 100)}pct_s"] = round(first_batch(resumed), 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    counts = {split: len(splits[split]) for split in ("validation", "test") if split in splits}
    streamed = {split: len(local_dataset(open_shards(str(args.shards / f"{split}-*.tar")))) for split in counts}
    result = {"recipe": args.recipe, "image_size": prep.size[0], "batch_size": batch, "shards": len(shards.files),
              "load_average": os.getloadavg(), "rows": rows, "evaluation_images": {"map-style": counts,
              "streaming": streamed}}  # fmt: skip
    columns = ["pipeline", "workers", "images_per_s", "images_per_s_per_worker", "first_batch_s",
               "resume_at_10pct_s", "resume_at_90pct_s", "largest_worker_mib"]  # fmt: skip
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
    print(f"evaluation images: {result['evaluation_images']}")
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
