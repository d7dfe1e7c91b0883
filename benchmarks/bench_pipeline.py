#!/usr/bin/env python
"""How close does training on real JPEGs come to the model's own speed limit?

    python benchmarks/bench_pipeline.py                                   # tiny ViT, snacks, batch 8, CPU
    python benchmarks/bench_pipeline.py recipes/vit-base-patch16-224-in21k/snacks/config_tuned.yaml \
        --dataset_name ../shared/data/snacks --batch_size 64                 # unchanged on a GPU

Every measurement is a real Trainer run of the same model, batch size and optimiser step, in this one
process, timed from the end of its --warmup_steps:

- limit:    synthetic tensors already in memory (no decoding, no augmentation);
- project:  the recipe's own data path (vitrecipes.transforms and its DataLoader workers) for --epochs
            full epochs of the training split, timed per epoch (first epoch, later epochs);
- baseline: a naive pipeline like the transformers example script: datasets decodes each image to
            PIL, per-sample torchvision PIL transforms, no workers; --steps steps.

The runs take turns of --interleave_steps optimiser steps each (one runs while the others wait), and
the limit keeps running for as long as the project does, so that the drift of a shared machine
(its speed moves by 10-20 % within minutes) falls on both sides of every ratio alike; each run's
clock stops while it waits. With DataLoader workers, which would go on preparing batches while their
run waits, the runs go one after the other instead (limit --steps, project, limit --steps, baseline),
as they do with --interleave_steps 0.

pipeline efficiency = project images/s over all its timed epochs / limit images/s over the limit's
steps of the same minutes (with turns; otherwise of all its steps), printed also for the first epoch
alone and for the later epochs, each against the limit of its own minutes. The baseline is compared
in the same way, and project / baseline is the ratio of the two efficiencies. Evaluation and
prediction images/s and peak memory are measured on the project path; the peak GPU memory is that of
each repeat (all its runs, which share the GPU). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import datasets  # noqa: E402
import torch  # noqa: E402
from torchvision import transforms as v1  # noqa: E402
from transformers import PrinterCallback, Trainer, TrainerCallback, set_seed  # noqa: E402

from vitrecipes.bad_images import BadImageLog  # noqa: E402
from vitrecipes.config import parse_recipe  # noqa: E402
from vitrecipes.data import (  # noqa: E402
    attach_transforms,  # noqa: E402
    class_names,
    load_splits,
)
from vitrecipes.modeling import build_image_processor, build_model  # noqa: E402
from vitrecipes.training import RecipeTrainer  # noqa: E402
from vitrecipes.transforms import Preprocessing  # noqa: E402

DEFAULT_RECIPE = "recipes/vit-tiny-scratch/snacks/config_cpu.yaml"


class Turns:
    """Lets training runs in separate threads use the machine one at a time, in a fixed rotation."""

    def __init__(self):
        self.order: list[str] = []
        self.turn: str | None = None
        self.changed = threading.Condition()

    def begin(self, names: list[str]) -> None:
        with self.changed:
            self.order, self.turn = list(names), names[0]
            self.changed.notify_all()

    def wait(self, name: str) -> None:
        with self.changed:
            self.changed.wait_for(lambda: self.turn == name)

    def pass_on(self, name: str, retire: bool = False) -> None:
        with self.changed:
            following = self.order[(self.order.index(name) + 1) % len(self.order)]
            if retire:
                self.order.remove(name)
            self.turn = None if retire and following == name else following
            self.changed.notify_all()


class TimedRun(TrainerCallback):
    """One training run: its step-end times on a clock that stops while it waits for its turn."""

    def __init__(self, name, trainer_factory, turns: Turns, turn_steps: int, warmup_steps: int):
        self.name, self.turns, self.turn_steps, self.warmup_steps = name, turns, turn_steps, warmup_steps
        self.trainer_factory = trainer_factory
        self.times: dict[int, float] = {}  # step -> end, on the run's own clock
        self.wall: dict[int, float] = {}  # step -> end, on the shared clock
        self.waited = 0.0
        self.stop = threading.Event()  # set from outside: stop at the next step end
        self.trainer = None
        self.error: BaseException | None = None

    def clock(self) -> float:
        return time.perf_counter() - self.waited

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times[state.global_step] = self.clock()
        self.wall[state.global_step] = time.perf_counter()
        if self.stop.is_set():
            control.should_training_stop = True
        elif self.turn_steps and state.global_step % self.turn_steps == 0:
            started = time.perf_counter()
            self.turns.pass_on(self.name)
            self.turns.wait(self.name)
            self.waited += time.perf_counter() - started

    def run(self) -> None:
        self.turns.wait(self.name)
        try:
            self.trainer = self.trainer_factory(self)
            self.trainer.train()
        except BaseException as error:  # reported by the main thread
            self.error = error
        finally:
            self.turns.pass_on(self.name, retire=True)

    def ips(self, first: int | None = None, last: int | None = None) -> float:
        """Images/s from the end of step `first` (default: the warm-up) to the end of step `last` (the last)."""
        first = self.warmup_steps if first is None else first
        last = max(self.times) if last is None else last
        per_step = self.trainer.args.per_device_train_batch_size * self.trainer.args.world_size
        return (last - first) * per_step / (self.times[last] - self.times[first])

    def step_seconds_between(self, start: float, end: float) -> list[float]:
        """Own-clock durations of the timed steps that ended between shared-clock times `start` and `end`."""
        return [
            self.times[step] - self.times[step - 1]
            for step in self.times
            if step > self.warmup_steps and step - 1 in self.times and start < self.wall[step] <= end
        ]

    def timed(self) -> tuple[int, float]:
        """(steps, seconds) after the warm-up."""
        last = max(self.times)
        return last - self.warmup_steps, self.times[last] - self.times[self.warmup_steps]


def limit_ips_during(limits: list[TimedRun], run: TimedRun, first: int, last: int, per_step: int):
    """(images/s, steps) of the limit over its steps that ended while `run` went from step `first` to `last`.

    Taking turns, the limit ran alongside every stretch of the other runs, so each of their numbers
    is compared with the limit of its own minutes. (None, 0) when no limit step ended then.
    """
    seconds = [s for limit in limits for s in limit.step_seconds_between(run.wall[first], run.wall[last])]
    return (len(seconds) * per_step / sum(seconds), len(seconds)) if seconds else (None, 0)


def run_in_turns(runs: list[TimedRun], until_done: list[TimedRun] = ()) -> None:
    """Run every run in its own thread, taking turns; `until_done` runs are stopped once the others end."""
    threads = {run.name: threading.Thread(target=run.run, name=run.name) for run in runs}
    for thread in threads.values():
        thread.start()
    for run in runs:
        if run not in until_done:
            threads[run.name].join()
    for run in until_done:
        run.stop.set()
        threads[run.name].join()
    for run in runs:
        if run.error is not None:
            raise RuntimeError(f"the {run.name} run failed") from run.error


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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, help="Also accepted as the first argument.")
    parser.add_argument("--dataset_name", default=None, help="Override the recipe's dataset.")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200, help="Timed optimiser steps of the baseline.")
    parser.add_argument("--warmup_steps", type=int, default=15, help="Untimed steps at the start of each run.")
    parser.add_argument("--eval_samples", type=int, default=400)
    parser.add_argument("--predict_samples", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2, help="Epochs of the project run.")
    parser.add_argument("--repeats", type=int, default=3, help="Whole measurements; medians and ranges are reported.")
    parser.add_argument(
        "--interleave_steps",
        type=int,
        default=None,
        help="Optimiser steps per turn; 0: one run after the other. Default: 25, or 0 with DataLoader workers.",
    )
    parser.add_argument("--skip_baseline", action="store_true")
    parser.add_argument("--out", default=None, help="Also write the JSON summary to this file.")
    # Anything else is a recipe override: --dataloader_num_workers 2, --max_train_samples 2400, ...
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--recipe", *argv]
    opts, overrides = parser.parse_known_args(argv)
    if opts.epochs < 1:
        parser.error(f"--epochs must be 1 or more (the project run trains whole epochs), got {opts.epochs}")
    if opts.repeats < 1:
        parser.error(f"--repeats must be 1 or more, got {opts.repeats}")
    if opts.interleave_steps is not None and opts.interleave_steps < 0:
        parser.error(f"--interleave_steps must be 0 (one run after the other) or more, got {opts.interleave_steps}")

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    if opts.dataset_name:
        overrides += ["--dataset_name", opts.dataset_name]
    model_args, data_args, training_args, _ = parse_recipe(
        [opts.recipe, "--output_dir", str(work / "run"), "--per_device_train_batch_size", str(opts.batch_size),
         "--num_train_epochs", str(opts.epochs), "--eval_strategy", "no", "--save_strategy", "no",
         "--load_best_model_at_end", "false", "--logging_steps", "100000", "--disable_tqdm", "true",
         "--report_to", "none", "--log_level", "warning", *overrides]
    )  # fmt: skip
    datasets.disable_progress_bars()
    setup = Setup(opts, model_args, data_args, training_args, work, load_splits(data_args, seed=training_args.seed))
    print(
        f"Benchmark: {opts.recipe} on {data_args.dataset_name}, batch {opts.batch_size}, device {setup.device} "
        f"({torch.get_num_threads()} CPU threads), dataloader_num_workers {setup.workers}; project: {opts.epochs} "
        f"epochs of {len(setup.splits['train'])} images; "
        + ("" if opts.skip_baseline else f"baseline: {opts.steps} steps; ")
        + (f"runs take turns of {setup.interleave} steps" if setup.interleave else "runs one after the other")
        + f"; {opts.repeats} repeat(s)",
        flush=True,
    )
    repeats = []
    for repeat in range(opts.repeats):
        print(f"Repeat {repeat + 1} of {opts.repeats}", flush=True)
        repeats.append(measure(setup))
    result = summarise(repeats, setup)
    print_table(result)
    if opts.out:
        Path(opts.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)
    return result


@dataclasses.dataclass
class Setup:
    """What every repeat shares: options, arguments, splits and the image processor."""

    opts: argparse.Namespace
    model_args: object
    data_args: object
    training_args: object
    work: Path
    splits: object

    def __post_init__(self):
        self.processor = build_image_processor(self.model_args)
        self.per_step = self.opts.batch_size * self.training_args.world_size
        self.device = "cuda" if torch.cuda.is_available() and not self.training_args.use_cpu else "cpu"
        self.workers = self.training_args.dataloader_num_workers
        interleave = self.opts.interleave_steps
        self.interleave = interleave if interleave is not None else (0 if self.workers else 25)
        self.steps_per_epoch = math.ceil(len(self.splits["train"]) / self.per_step)
        if self.steps_per_epoch <= self.opts.warmup_steps:
            raise SystemExit(
                f"an epoch has {self.steps_per_epoch} steps, not more than --warmup_steps {self.opts.warmup_steps}"
            )


def measure(setup: Setup) -> dict:
    """One whole measurement: limit, project and baseline, taking turns."""
    if setup.device == "cuda":  # this repeat's own peak, not the process's since its first run
        gc.collect()  # the previous repeat's trainers hold their models in reference cycles
        torch.cuda.reset_peak_memory_stats()
    opts, splits, processor, per_step = setup.opts, setup.splits, setup.processor, setup.per_step
    model_args, training_args = setup.model_args, setup.training_args
    interleave = setup.interleave
    project_steps = setup.steps_per_epoch * opts.epochs
    epoch_marks = [opts.warmup_steps] + [setup.steps_per_epoch * (e + 1) for e in range(opts.epochs)]

    def trainer_factory(args, dataset, collate, trainer_class=RecipeTrainer):
        def build(run: TimedRun):
            set_seed(args.seed)
            model = build_model(model_args, class_names(splits, setup.data_args))
            trainer = trainer_class(model=model, args=args, train_dataset=dataset, data_collator=collate,
                                    processing_class=processor, callbacks=[run])  # fmt: skip
            trainer.remove_callback(PrinterCallback)  # each run's closing log line would interleave
            return trainer

        return build

    turns = Turns()

    def new_run(name, args, dataset, collate, **kwargs):
        build = trainer_factory(args, dataset, collate, **kwargs)
        return TimedRun(name, build, turns, interleave, opts.warmup_steps)

    def project_run(name, data_args):
        prep = Preprocessing.build(processor, data_args, mean=model_args.image_mean, std=model_args.image_std)
        transformed = attach_transforms(splits, prep, data_args, BadImageLog(None))
        return new_run(name, training_args, transformed["train"], prep.collate), (prep, transformed)

    project, (prep, project_splits) = project_run("project", setup.data_args)

    # The limit: same model, batch and optimiser, inputs already in memory. Interleaved, it runs for as
    # long as the project does (stopped when it ends); otherwise --steps before and after it.
    limit_steps = 2 * project_steps + opts.warmup_steps if interleave else opts.warmup_steps + opts.steps
    limit_args = dataclasses.replace(training_args, max_steps=limit_steps)
    synthetic = SyntheticImages(prep.size, len(class_names(splits, setup.data_args)), limit_steps * per_step)
    limits = [new_run("limit", limit_args, synthetic, prep.collate)]
    if not interleave:
        limits.append(new_run("limit after", limit_args, synthetic, prep.collate))

    baseline = None
    if not opts.skip_baseline:
        image_column = setup.data_args.image_column_name
        decoded = splits["train"].cast_column(image_column, datasets.Image(decode=True))
        decoded = decoded.with_transform(naive_transform(prep, image_column, setup.data_args.label_column_name))
        naive_args = dataclasses.replace(
            training_args, max_steps=opts.warmup_steps + opts.steps, dataloader_num_workers=0,
            dataloader_persistent_workers=False, dataloader_prefetch_factor=None,
        )  # fmt: skip
        baseline = new_run("baseline", naive_args, decoded, prep.collate, trainer_class=Trainer)

    runs = [limits[0], project, *limits[1:], *([baseline] if baseline else [])]
    turns.begin([run.name for run in runs])
    run_in_turns(runs, until_done=limits if interleave else ())

    steps, seconds = map(sum, zip(*(run.timed() for run in limits)))
    whole_limit_ips = steps * per_step / seconds

    def limit_for(run: TimedRun, first: int, last: int) -> float:
        """The limit to compare `run`'s steps `first`..`last` with: of the same minutes when taking turns."""
        ips, _ = limit_ips_during(limits, run, first, last, per_step) if interleave else (None, 0)
        return ips or whole_limit_ips

    def efficiencies(run: TimedRun) -> dict:
        """Whole run, first epoch (decoding) and later epochs (cached), each against its own minutes' limit."""
        marks = epoch_marks
        found = {
            "train_ips": run.ips(marks[0], marks[-1]),
            "efficiency": run.ips(marks[0], marks[-1]) / limit_for(run, marks[0], marks[-1]),
            "efficiency_first_epoch": run.ips(marks[0], marks[1]) / limit_for(run, marks[0], marks[1]),
        }
        if opts.epochs > 1:
            found["efficiency_later_epochs"] = run.ips(marks[1], marks[-1]) / limit_for(run, marks[1], marks[-1])
        return {k: round(v, 3 if k.startswith("efficiency") else 1) for k, v in found.items()}

    result = {"limit_ips": round(limit_for(project, epoch_marks[0], epoch_marks[-1]), 1), **efficiencies(project)}
    result["train_ips_per_epoch"] = [round(project.ips(a, b), 1) for a, b in zip(epoch_marks, epoch_marks[1:])]
    if baseline:
        baseline_limit = limit_for(baseline, baseline.warmup_steps, max(baseline.times))
        result["baseline_ips"] = round(baseline.ips(), 1)
        result["baseline_efficiency"] = round(baseline.ips() / baseline_limit, 3)
        # efficiency over efficiency: each run against the limit of its own minutes
        result["speedup_vs_baseline"] = round(result["efficiency"] / result["baseline_efficiency"], 3)
    for run in runs:
        print(f"  {run.name:<26} {run.ips():8.1f} images/s over steps {run.warmup_steps}-{max(run.times)}", flush=True)

    trainer = project.trainer
    validation = project_splits["validation"].select(range(min(opts.eval_samples, len(project_splits["validation"]))))
    start = time.perf_counter()
    trainer.evaluate(eval_dataset=validation)
    result["eval_ips"] = round(len(validation) / (time.perf_counter() - start), 1)

    from vitrecipes.predict import predict

    trainer.save_model(str(setup.work / "model"))
    # predict() reads files, as a user's images are: in-memory ones (the built-in digits) are written out first.
    files = []
    for i, value in enumerate(splits["validation"][setup.data_args.image_column_name][: opts.predict_samples]):
        files.append(setup.work / f"predict-{i}")
        files[-1].write_bytes(value["bytes"] or Path(value["path"]).read_bytes())
    start = time.perf_counter()
    predict(str(setup.work / "model"), files, batch_size=training_args.per_device_eval_batch_size)
    result["predict_ips"] = round(len(files) / (time.perf_counter() - start), 1)
    result["input_size"] = list(prep.size)
    result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20) if setup.device == "cuda" else None
    print("  " + json.dumps(result), flush=True)
    return result


def _spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values)}


def summarise(repeats: list[dict], setup: Setup) -> dict:
    """Median and range over the repeats of every figure, with the repeats themselves."""
    figures = {key: _spread([r[key] for r in repeats]) for key, v in repeats[0].items() if isinstance(v, (int, float))}
    return {
        "recipe": setup.opts.recipe,
        "dataset": setup.data_args.dataset_name,
        "device": setup.device if setup.device == "cpu" else torch.cuda.get_device_name(),
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "batch_size": setup.opts.batch_size,
        "input_size": repeats[0]["input_size"],
        "epochs": setup.opts.epochs,
        "interleave_steps": setup.interleave,
        "dataloader_num_workers": setup.workers,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "figures": figures,
        "repeats": repeats,
    }


def print_table(result: dict) -> None:
    figures = result["figures"]

    def cell(key: str) -> str:
        f = figures.get(key)
        return f"{f['median']:.3f} [{f['min']:.3f}-{f['max']:.3f}]" if f else "-"

    print(f"\nmedian [range] over {len(result['repeats'])} repeat(s); efficiency = images/s / limit's images/s")
    print(f"{'run':<28}{'efficiency':>24}{'first epoch':>24}{'later epochs':>24}")
    later = cell("efficiency_later_epochs")
    print(f"{'project':<28}{cell('efficiency'):>24}{cell('efficiency_first_epoch'):>24}{later:>24}")
    if "baseline_efficiency" in figures:
        print(f"{'baseline (naive PIL)':<28}{cell('baseline_efficiency'):>24}")
        print(f"project / baseline: {cell('speedup_vs_baseline')}")
    print(f"limit {cell('limit_ips')} images/s; evaluation {cell('eval_ips')}, prediction {cell('predict_ips')} "
          f"images/s; peak memory {result['peak_rss_mib']} MiB")  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
