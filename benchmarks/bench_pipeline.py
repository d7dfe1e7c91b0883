#!/usr/bin/env python
"""How close does training on real JPEGs come to the model's own speed limit?

    python benchmarks/bench_pipeline.py                                   # tiny ViT, snacks, batch 8, CPU
    python benchmarks/bench_pipeline.py recipes/vit-base-patch16-224-in21k/snacks/config_tuned.yaml \
        --dataset_name ../shared/data/snacks --batch_size 64                 # unchanged on a GPU

Every measurement is a real Trainer run of the same model, batch size and optimiser step, timed
between two optimiser steps after a warm-up, in this one process:

- limit:    synthetic tensors already in memory (no decoding, no augmentation);
- project:  the recipe's own data path (vitrecipes.transforms, its workers and decoding options);
- limit and project alternate for --rounds rounds, ending with a limit run, and their medians are
            compared, so that drift of a noisy machine hits both sides of the ratio alike;
- baseline: a naive pipeline like the transformers example script: datasets decodes each image to
            PIL, per-sample torchvision PIL transforms, no workers.

pipeline efficiency = project images/s / limit images/s. Evaluation and prediction images/s and peak
memory are measured on the project path. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import datasets  # noqa: E402
import torch  # noqa: E402
from torchvision import transforms as v1  # noqa: E402
from transformers import Trainer, TrainerCallback, set_seed  # noqa: E402

from vitrecipes.config import parse_recipe  # noqa: E402
from vitrecipes.data import load_splits  # noqa: E402
from vitrecipes.modeling import build_image_processor, build_model  # noqa: E402
from vitrecipes.training import RecipeTrainer, attach_transforms  # noqa: E402
from vitrecipes.transforms import BadImageLog, Preprocessing  # noqa: E402

DEFAULT_RECIPE = "recipes/vit-tiny-scratch/snacks/config_cpu.yaml"


class StepTimer(TrainerCallback):
    """Wall time between the end of optimiser step `start` and the end of step `stop`."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop
        self.t0 = self.t1 = None

    def _sync(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.start:
            self._sync()
            self.t0 = time.perf_counter()
        elif state.global_step == self.stop:
            self._sync()
            self.t1 = time.perf_counter()


class SyntheticImages(torch.utils.data.Dataset):
    """Model inputs already in memory: what training would see if the data path cost nothing."""

    def __init__(self, size: tuple[int, int], num_classes: int, length: int):
        generator = torch.Generator().manual_seed(0)
        self.pixels = torch.randn(64, 3, *size, generator=generator)
        self.labels = torch.randint(0, num_classes, (64,), generator=generator).tolist()
        self.length = length

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return {"pixel_values": self.pixels[index % 64], "labels": self.labels[index % 64]}


def naive_transform(prep: Preprocessing, image_column: str, label_column: str):
    """The transformers example script's way: PIL in, per-sample torchvision PIL transforms."""
    pipeline = v1.Compose(
        [
            v1.RandomResizedCrop(prep.size),
            v1.RandomHorizontalFlip(),
            v1.ToTensor(),
            v1.Normalize(prep.mean, prep.std),
        ]
    )

    def transform(batch):
        return {
            "pixel_values": [pipeline(image.convert("RGB")) for image in batch[image_column]],
            "labels": batch[label_column],
        }

    return transform


def timed_training(name, model_args, training_args, class_names, dataset, prep, processor, opts, **trainer_kwargs):
    set_seed(training_args.seed)
    model = build_model(model_args, class_names)
    timer = StepTimer(opts.warmup_steps, opts.warmup_steps + opts.steps)
    trainer_class = trainer_kwargs.pop("trainer_class", RecipeTrainer)
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=prep.collate,
        processing_class=processor,
        callbacks=[timer],
        **trainer_kwargs,
    )
    trainer.train()
    seconds = timer.t1 - timer.t0
    images = opts.steps * training_args.per_device_train_batch_size * training_args.world_size
    ips = images / seconds
    print(f"  {name:<9} {ips:8.1f} images/s  ({opts.steps} steps in {seconds:.2f} s)", flush=True)
    return ips, trainer


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, help="Also accepted as the first argument.")
    parser.add_argument("--dataset_name", default=None, help="Override the recipe's dataset.")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=150, help="Timed optimiser steps per pipeline.")
    parser.add_argument("--warmup_steps", type=int, default=15, help="Untimed steps first (workers, caches).")
    parser.add_argument("--eval_samples", type=int, default=400)
    parser.add_argument("--predict_samples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="Interleaved limit/project rounds (medians).")
    parser.add_argument("--skip_baseline", action="store_true")
    # Anything else is a recipe override: --dataloader_num_workers 2, --jpeg_draft false, ...
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--recipe", *argv]
    opts, overrides = parser.parse_known_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    if opts.dataset_name:
        overrides += ["--dataset_name", opts.dataset_name]
    total_steps = opts.warmup_steps + opts.steps
    model_args, data_args, training_args, _ = parse_recipe(
        [opts.recipe, "--output_dir", str(work / "run"), "--per_device_train_batch_size", str(opts.batch_size),
         "--max_steps", str(total_steps), "--eval_strategy", "no", "--save_strategy", "no",
         "--load_best_model_at_end", "false", "--logging_steps", "100000", "--disable_tqdm", "true",
         "--report_to", "none", "--log_level", "warning", *overrides]
    )  # fmt: skip
    datasets.disable_progress_bars()
    splits = load_splits(data_args, seed=training_args.seed)
    processor = build_image_processor(model_args)
    prep = Preprocessing.build(processor, data_args, mean=model_args.image_mean, std=model_args.image_std)
    length = total_steps * opts.batch_size * training_args.world_size
    device = "cuda" if torch.cuda.is_available() and not training_args.use_cpu else "cpu"
    print(
        f"Benchmark: {opts.recipe} on {data_args.dataset_name}, input {prep.size}, batch {opts.batch_size}, "
        f"device {device} ({torch.get_num_threads()} CPU threads), dataloader_num_workers "
        f"{training_args.dataloader_num_workers}, {opts.steps} timed steps after {opts.warmup_steps}",
        flush=True,
    )
    common = (model_args, training_args, splits.class_names)
    synthetic = SyntheticImages(prep.size, len(splits.class_names), length)
    project_splits = attach_transforms(splits, prep, data_args, BadImageLog(None))
    # Interleaved rounds (limit, project, ..., limit) and medians: a noisy machine's drift and warm-up
    # effects hit both sides of the ratio alike.
    limits, projects = [], []
    for _ in range(opts.rounds):
        limits.append(timed_training("limit", *common, synthetic, prep, processor, opts)[0])
        train_ips, trainer = timed_training("project", *common, project_splits.train, prep, processor, opts)
        projects.append(train_ips)
    limits.append(timed_training("limit", *common, synthetic, prep, processor, opts)[0])
    limit_ips, train_ips = statistics.median(limits), statistics.median(projects)

    baseline_ips = None
    if not opts.skip_baseline:
        image_column = data_args.image_column_name
        decoded = splits.train.cast_column(image_column, datasets.Image(decode=True))
        decoded = decoded.with_transform(naive_transform(prep, image_column, data_args.label_column_name))
        no_workers = {"dataloader_num_workers": 0, "dataloader_persistent_workers": False}
        naive_args = dataclasses.replace(training_args, dataloader_prefetch_factor=None, **no_workers)
        naive = (model_args, naive_args, splits.class_names, decoded, prep, processor, opts)
        baseline_ips, _ = timed_training("baseline", *naive, trainer_class=Trainer)

    validation = project_splits.validation.select(range(min(opts.eval_samples, len(project_splits.validation))))
    start = time.perf_counter()
    trainer.evaluate(eval_dataset=validation)
    eval_ips = len(validation) / (time.perf_counter() - start)

    from vitrecipes.predict import predict

    trainer.save_model(str(work / "model"))
    files = [row["path"] for row in splits.validation[data_args.image_column_name][: opts.predict_samples]]
    start = time.perf_counter()
    predict(str(work / "model"), files, batch_size=training_args.per_device_eval_batch_size)
    predict_ips = len(files) / (time.perf_counter() - start)

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = {
        "recipe": opts.recipe,
        "dataset": data_args.dataset_name,
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "batch_size": opts.batch_size,
        "input_size": list(prep.size),
        "steps": opts.steps,
        "limit_ips": round(limit_ips, 1),
        "limit_ips_runs": [round(x, 1) for x in limits],
        "train_ips_runs": [round(x, 1) for x in projects],
        "train_ips": round(train_ips, 1),
        "efficiency": round(train_ips / limit_ips, 3),
        "baseline_ips": round(baseline_ips, 1) if baseline_ips else None,
        "baseline_efficiency": round(baseline_ips / limit_ips, 3) if baseline_ips else None,
        "speedup_vs_baseline": round(train_ips / baseline_ips, 3) if baseline_ips else None,
        "eval_ips": round(eval_ips, 1),
        "predict_ips": round(predict_ips, 1),
        "peak_rss_mib": round(rss),
        "peak_worker_rss_mib": round(workers_rss),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if device != "cpu" else None,
        "dataloader_num_workers": training_args.dataloader_num_workers,
    }
    print()
    print(f"{'pipeline':<26}{'images/s':>10}{'efficiency':>12}")
    print(f"{'limit (synthetic tensors)':<26}{limit_ips:>10.1f}{1.0:>12.3f}")
    if baseline_ips:
        print(f"{'baseline (naive PIL)':<26}{baseline_ips:>10.1f}{baseline_ips / limit_ips:>12.3f}")
    print(f"{'project':<26}{train_ips:>10.1f}{train_ips / limit_ips:>12.3f}")
    if baseline_ips:
        print(f"project / baseline: {train_ips / baseline_ips:.2f}x")
    print(f"evaluation {eval_ips:.1f} images/s, prediction {predict_ips:.1f} images/s, "
          f"peak memory {rss:.0f} MiB (+ workers {workers_rss:.0f} MiB)")  # fmt: skip
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
