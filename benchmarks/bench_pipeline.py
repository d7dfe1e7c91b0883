#!/usr/bin/env python
"""How close does training on real JPEGs come to the model's own speed limit? (docs/benchmarks.md#data-path-efficiency)

    python benchmarks/bench_pipeline.py --per_device_train_batch_size 8     # tiny ViT from scratch, snacks, CPU
    python benchmarks/bench_pipeline.py recipes/dinov2-small/snacks/config_cpu.yaml    # 112 px, evaluated at 168

Built as run_snacks.main() builds a run (build_preprocessing, load_data, build_model, adapt, build_trainer), so a
recipe is measured at the sides, batch, precision and adaptation it trains with; other arguments are recipe overrides.
Each repeat is a round of Trainer runs timed from the end of their --warmup_steps: the limit (--steps steps on inputs
already in memory), the project (--epochs epochs of the recipe's data path), the limit again, the baseline (--steps
steps the transformers example's way: PIL from datasets, per-sample torchvision PIL transforms, no workers).
Efficiency = images/s / the mean of the round's two limits. Then evaluation images/s (run_snacks' final evaluation).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import datasets
import torch
from torchvision import transforms as v1
from transformers import PrinterCallback, TrainerCallback, set_seed

from vitrecipes.adaptation import adapt
from vitrecipes.bad_images import BadImageLog
from vitrecipes.config import parse_recipe
from vitrecipes.data import load_data
from vitrecipes.errors import RecipeError, user_message
from vitrecipes.modeling import build_model
from vitrecipes.training import build_trainer, effective_batch_size, evaluate_splits
from vitrecipes.transforms import build_preprocessing

DEFAULT_RECIPE = "recipes/vit-tiny-scratch/snacks/config_cpu.yaml"


class Clock(TrainerCallback):
    """The time each optimiser step ends."""

    def __init__(self):
        self.steps = {}

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the step's kernels are done, not only queued
        self.steps[state.global_step] = time.perf_counter()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(usage="%(prog)s [RECIPE.yaml] [options] [--recipe_key value ...]",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="Timed optimiser steps of each limit and the baseline.")
    parser.add_argument("--warmup_steps", type=int, default=15, help="Untimed steps at the start of each run.")
    parser.add_argument("--epochs", type=int, default=2, help="Epochs of the project run.")
    parser.add_argument("--eval_samples", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3, help="Rounds; medians and ranges are reported.")
    parser.add_argument("--out", help="Also write the JSON summary to this file.")
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe = argv.pop(0) if argv and not argv[0].startswith("-") else DEFAULT_RECIPE
    opts, overrides = parser.parse_known_args(argv)  # the rest: recipe overrides (--dataset_name, batch size, ...)
    if min(opts.epochs, opts.repeats, opts.steps) < 1:
        parser.error("--epochs, --repeats and --steps must be 1 or more")
    quiet = ["--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false", "--logging_steps",
             "100000", "--disable_tqdm", "true", "--report_to", "none", "--log_level", "warning", "--max_steps", "-1"]
    quiet += ["--num_train_epochs", str(opts.epochs), "--output_dir", tempfile.mkdtemp(prefix="bench-pipeline-")]
    model_args, data_args, args, _ = parse_recipe([recipe, *quiet, *overrides])
    datasets.disable_progress_bars()
    prep, eval_prep = build_preprocessing(model_args, data_args)
    data = load_data(data_args, args, prep, eval_prep, BadImageLog(None))
    per_step, device = effective_batch_size(args), "cpu" if args.use_cpu or not torch.cuda.is_available() else "cuda"
    if len(data.splits["train"]) // per_step <= opts.warmup_steps:
        parser.error(f"an epoch of {len(data.splits['train'])} images is not more than --warmup_steps steps")

    def run(dataset, run_args) -> tuple[Clock, object]:
        """One Trainer run of the recipe's model (adapted as its mode says) on `dataset`."""
        set_seed(run_args.seed)
        model, _ = adapt(build_model(model_args, data.names), model_args, run_args, prep, data)
        trainer = build_trainer(model, eval_prep.serving_processor(), run_args, data.splits, prep, data_args)
        trainer.train_dataset, clock = dataset, Clock()  # the collate passes float inputs through unchanged
        trainer.add_callback(clock)
        trainer.remove_callback(PrinterCallback)  # its closing line of figures would interrupt the table
        trainer.train()
        return clock, trainer

    def ips(clock: Clock, first: int, last: int) -> float:
        return (last - first) * per_step / (clock.steps[last] - clock.steps[first])

    short = dataclasses.replace(args, max_steps=opts.warmup_steps + opts.steps)
    generator = torch.Generator().manual_seed(0)  # the limit's inputs: 64 in memory, drawn again and again
    pixels = torch.randn(64, 3, *prep.size, generator=generator)
    labels = torch.randint(len(data.names), (64,), generator=generator).tolist()
    synthetic = [{"pixel_values": pixels[i % 64], "labels": labels[i % 64]} for i in range(short.max_steps * per_step)]
    image, label = data_args.image_column_name, data_args.label_column_name  # the baseline: PIL images from datasets
    naive = v1.Compose([v1.RandomResizedCrop(prep.size), v1.RandomHorizontalFlip(), v1.ToTensor(),
                        v1.Normalize(prep.mean, prep.std)])  # fmt: skip
    decoded = data.splits["train"].cast_column(image, datasets.Image()).with_transform(
        lambda rows: {"pixel_values": [naive(x.convert("RGB")) for x in rows[image]], "labels": rows[label]})
    naive_args = dataclasses.replace(short, dataloader_num_workers=0, dataloader_persistent_workers=False)
    print(f"Benchmark: {recipe} on {data_args.dataset_name} ({len(data.splits['train'])} images), {device}, batch "
          f"{per_step}; measured: training side {prep.size[0]}x{prep.size[1]}, evaluation side "
          f"{eval_prep.size[0]}x{eval_prep.size[1]}")
    repeats = []
    for repeat in range(opts.repeats):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()  # this repeat's own peak
        limits = [run(synthetic, short)[0]]
        project, trainer = run(data.splits["train"], args)
        limits.append(run(synthetic, short)[0])
        limit = statistics.mean(ips(clock, opts.warmup_steps, short.max_steps) for clock in limits)
        found = {"limit_ips": limit, "train_ips": ips(project, opts.warmup_steps, max(project.steps))}
        found["efficiency"] = found["train_ips"] / limit
        found["baseline_ips"] = ips(run(decoded, naive_args)[0], opts.warmup_steps, short.max_steps)
        found["baseline_efficiency"] = found["baseline_ips"] / limit
        found["speedup_vs_baseline"] = found["train_ips"] / found["baseline_ips"]  # the same limit cancels out
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        validation = data.splits["validation"].select(range(min(opts.eval_samples, len(data.splits["validation"]))))
        start = time.perf_counter()
        evaluate_splits(trainer, datasets.DatasetDict(validation=validation))  # run_snacks' (fp32 on a CPU)
        found["eval_ips"] = len(validation) / (time.perf_counter() - start)
        found = {key: round(value, 3 if "efficiency" in key or "speedup" in key else 1) for key, value in found.items()}
        found["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None
        print(f"Repeat {repeat + 1} of {opts.repeats}: {json.dumps(found)}", flush=True)
        repeats.append(found)
    figures = {key: {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values)}
               for key in repeats[0] if None not in (values := [r[key] for r in repeats])}  # fmt: skip
    result = {"recipe": recipe, "dataset": data_args.dataset_name, "device": torch.cuda.get_device_name()
              if device == "cuda" else device, "cpu_threads": torch.get_num_threads(), "machine": platform.machine(),
              "batch_size": per_step, "input_size": list(prep.size), "eval_input_size": list(eval_prep.size),
              "trainable_parameters": trainable, "epochs": opts.epochs, "dataloader_num_workers":
              args.dataloader_num_workers, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
              "figures": figures, "repeats": repeats}  # fmt: skip
    print(f"\nmedian [range] over {opts.repeats} repeat(s); peak memory {result['peak_rss_mib']} MiB")
    for key, figure in figures.items():
        print(f"{key:<26}{figure['median']:>10} [{figure['min']}-{figure['max']}]")
    if opts.out:
        Path(opts.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    try:
        main()
    except RecipeError as error:
        print(f"Error: {user_message(error)}", file=sys.stderr)
        sys.exit(2)
