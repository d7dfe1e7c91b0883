#!/usr/bin/env python
"""How close does training on real JPEGs come to the model's own speed limit?

    python benchmarks/bench_pipeline.py                                   # tiny ViT, snacks, batch 8, CPU
    python benchmarks/bench_pipeline.py recipes/vit-base-patch16-224-in21k/snacks/config_tuned.yaml \
        --dataset_name ../shared/data/snacks --batch_size 64                 # unchanged on a GPU

Every measurement is a real Trainer run of the same model, batch size and optimiser step, in this one
process, timed from the end of a warm-up step:

- limit:    synthetic tensors already in memory (no decoding, no augmentation), --steps steps;
- project:  the recipe's own data path (vitrecipes.transforms, its workers, decoding and cache
            options) for --epochs full epochs of the training split, timed per epoch: the first epoch
            decodes every JPEG, later ones find them in the decoded-image cache;
- limit runs before and after each project run (--rounds), and the median limit is used, so that
            drift of a noisy machine hits both sides of the ratio alike;
- baseline: a naive pipeline like the transformers example script: datasets decodes each image to
            PIL, per-sample torchvision PIL transforms, no workers; --steps steps.

pipeline efficiency = project images/s over all its timed epochs / limit images/s, printed also for
the first epoch alone and the later epochs. Evaluation and prediction images/s and peak memory are
measured on the project path. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
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
    """Wall-clock time at the end of chosen optimiser steps."""

    def __init__(self, marks):
        self.marks = set(marks)
        self.times: dict[int, float] = {}

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.marks:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times[state.global_step] = time.perf_counter()


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


def timed_training(name, model_args, training_args, class_names, dataset, prep, processor, marks, **trainer_kwargs):
    """Train for `training_args`' length, noting the time at each step in `marks`.

    Returns `ips(first, last)`, the images/s between two marks, and the Trainer.
    """
    set_seed(training_args.seed)
    model = build_model(model_args, class_names)
    timer = StepTimer(marks)
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
    per_step = training_args.per_device_train_batch_size * training_args.world_size

    def ips(first: int, last: int) -> float:
        """Images/s from the end of step `first` to the end of step `last`."""
        return (last - first) * per_step / (timer.times[last] - timer.times[first])

    whole = ips(marks[0], marks[-1])
    detail = ""
    if len(marks) > 2:
        detail = "  (per epoch: " + ", ".join(f"{ips(a, b):.1f}" for a, b in zip(marks, marks[1:])) + ")"
    print(f"  {name:<9} {whole:8.1f} images/s over steps {marks[0]}-{marks[-1]}{detail}", flush=True)
    return ips, trainer


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, help="Also accepted as the first argument.")
    parser.add_argument("--dataset_name", default=None, help="Override the recipe's dataset.")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200, help="Timed optimiser steps of the limit and baseline.")
    parser.add_argument("--warmup_steps", type=int, default=15, help="Untimed steps first (workers, caches).")
    parser.add_argument("--eval_samples", type=int, default=400)
    parser.add_argument("--predict_samples", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3, help="Epochs of the project run (0: --steps steps).")
    parser.add_argument("--rounds", type=int, default=1, help="Project runs, each between two limit runs.")
    parser.add_argument("--skip_baseline", action="store_true")
    # Anything else is a recipe override: --dataloader_num_workers 2, --jpeg_draft false, ...
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--recipe", *argv]
    opts, overrides = parser.parse_known_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    if opts.dataset_name:
        overrides += ["--dataset_name", opts.dataset_name]
    fixed_steps = opts.warmup_steps + opts.steps
    model_args, data_args, training_args, _ = parse_recipe(
        [opts.recipe, "--output_dir", str(work / "run"), "--per_device_train_batch_size", str(opts.batch_size),
         "--max_steps", str(fixed_steps), "--eval_strategy", "no", "--save_strategy", "no",
         "--load_best_model_at_end", "false", "--logging_steps", "100000", "--disable_tqdm", "true",
         "--report_to", "none", "--log_level", "warning", *overrides]
    )  # fmt: skip
    datasets.disable_progress_bars()
    splits = load_splits(data_args, seed=training_args.seed)
    processor = build_image_processor(model_args)
    per_step = opts.batch_size * training_args.world_size
    device = "cuda" if torch.cuda.is_available() and not training_args.use_cpu else "cpu"

    fixed_marks = [opts.warmup_steps, fixed_steps]
    project_args, project_marks = training_args, fixed_marks
    if opts.epochs:
        steps_per_epoch = math.ceil(len(splits.train) / per_step)
        if steps_per_epoch <= opts.warmup_steps:
            parser.error(f"an epoch has {steps_per_epoch} steps, not more than --warmup_steps {opts.warmup_steps}")
        project_args = dataclasses.replace(training_args, max_steps=-1, num_train_epochs=opts.epochs)
        project_marks = [opts.warmup_steps] + [steps_per_epoch * (e + 1) for e in range(opts.epochs)]
    print(
        f"Benchmark: {opts.recipe} on {data_args.dataset_name}, batch {opts.batch_size}, device {device} "
        f"({torch.get_num_threads()} CPU threads), dataloader_num_workers {training_args.dataloader_num_workers}; "
        f"limit and baseline: {opts.steps} steps after {opts.warmup_steps}; project: "
        + (f"{opts.epochs} epochs of {len(splits.train)} images" if opts.epochs else f"{opts.steps} steps"),
        flush=True,
    )

    # A fresh Preprocessing (and so an empty decoded-image cache) for every project run.
    def fresh_prep():
        return Preprocessing.build(
            processor,
            data_args,
            mean=model_args.image_mean,
            std=model_args.image_std,
            workers=training_args.dataloader_num_workers,
        )

    prep = fresh_prep()
    synthetic = SyntheticImages(prep.size, len(splits.class_names), fixed_steps * per_step)
    limits = []

    def limit_run():
        limits.append(timed_training("limit", model_args, training_args, splits.class_names, synthetic, prep,
                                     processor, fixed_marks)[0](*fixed_marks))  # fmt: skip

    limit_run()
    whole_runs, first_epoch_runs, later_epochs_runs = [], [], []
    for _ in range(opts.rounds):
        prep = fresh_prep()
        project_splits = attach_transforms(splits, prep, data_args, BadImageLog(None))
        ips, trainer = timed_training(
            "project", model_args, project_args, splits.class_names, project_splits.train, prep, processor,
            project_marks,
        )  # fmt: skip
        whole_runs.append(ips(project_marks[0], project_marks[-1]))
        first_epoch_runs.append(ips(project_marks[0], project_marks[1]))
        if opts.epochs > 1:
            later_epochs_runs.append(ips(project_marks[1], project_marks[-1]))
        limit_run()
    limit_ips = statistics.median(limits)
    train_ips = statistics.median(whole_runs)
    first_epoch_ips = statistics.median(first_epoch_runs)
    later_epochs_ips = statistics.median(later_epochs_runs) if later_epochs_runs else None

    baseline_ips = None
    if not opts.skip_baseline:
        image_column = data_args.image_column_name
        decoded = splits.train.cast_column(image_column, datasets.Image(decode=True))
        decoded = decoded.with_transform(naive_transform(prep, image_column, data_args.label_column_name))
        no_workers = {"dataloader_num_workers": 0, "dataloader_persistent_workers": False}
        naive_args = dataclasses.replace(training_args, dataloader_prefetch_factor=None, **no_workers)
        naive = (model_args, naive_args, splits.class_names, decoded, prep, processor, fixed_marks)
        baseline_ips = timed_training("baseline", *naive, trainer_class=Trainer)[0](*fixed_marks)

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
        "epochs": opts.epochs,
        "train_ips_runs": [round(x, 1) for x in whole_runs],
        "train_ips": round(train_ips, 1),
        "efficiency": round(train_ips / limit_ips, 3),
        "train_ips_first_epoch": round(first_epoch_ips, 1),
        "efficiency_first_epoch": round(first_epoch_ips / limit_ips, 3),
        "train_ips_later_epochs": round(later_epochs_ips, 1) if later_epochs_ips else None,
        "efficiency_later_epochs": round(later_epochs_ips / limit_ips, 3) if later_epochs_ips else None,
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
    if later_epochs_ips:
        print(f"{'  first epoch (decoding)':<26}{first_epoch_ips:>10.1f}{first_epoch_ips / limit_ips:>12.3f}")
        print(f"{'  later epochs (cached)':<26}{later_epochs_ips:>10.1f}{later_epochs_ips / limit_ips:>12.3f}")
    if baseline_ips:
        print(f"project / baseline: {train_ips / baseline_ips:.2f}x")
    print(f"evaluation {eval_ips:.1f} images/s, prediction {predict_ips:.1f} images/s, "
          f"peak memory {rss:.0f} MiB (+ workers {workers_rss:.0f} MiB)")  # fmt: skip
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
