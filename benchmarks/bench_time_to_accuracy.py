#!/usr/bin/env python
"""Test accuracy against wall-clock time, for each way of adapting a pretrained model.

    python benchmarks/bench_time_to_accuracy.py                          # every pipeline, 3 seeds (hours on 2 cores)
    python benchmarks/bench_time_to_accuracy.py --pipelines example recipe --seeds 42 43 44
    python benchmarks/bench_time_to_accuracy.py --pipelines example:42 recipe:42,43,44 --reuse_features

Each run is the command a user types, `python run_snacks.py RECIPE --seed S --output_dir ...`, timed
from start to exit: loading, training and the validation and test evaluation all count. Accuracy is
read from the run's metrics.json. The pipelines share the model, the data and the machine:

- example:      the transformers image-classification example's set-up run through run_snacks.py
                (full fine-tuning, RandomResizedCrop(0.08-1) + flip, Trainer defaults: lr 5e-5, linear
                decay, no warm-up, no weight decay or label smoothing, fp32), 1 epoch, batch 16, 112 px: the
                baseline;
- recipe:       the CPU recipe as it is;
- linear_probe, full, freeze, lora: the recipe with another `adaptation` mode;
- fast:         the fast variant, config_probe.yaml, with nothing cached (a user's first run);
- fast_warm:    the same command a second time, its features cached by an untimed first run.

Every run pays for its own probe features, as a user's first run does, unless --reuse_features: then
the first run of each pipeline computes them into <out>/feature-cache and later seeds read them (the
per-run table shows which).
Finished runs found in --out are read back instead of rerun, so an interrupted benchmark resumes.
Writes <out>/time_to_accuracy.json, a markdown table (time_to_accuracy.md) and a plot (.png).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "dinov2-small" / "snacks" / "config_cpu.yaml"
FAST_RECIPE = RECIPE.with_name("config_probe.yaml")

EXAMPLE = {
    "adaptation": "full",
    "num_train_epochs": 1,
    "max_steps": -1,
    "per_device_train_batch_size": 16,
    "learning_rate": 5.0e-5,
    "lr_scheduler_type": "linear",
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "label_smoothing_factor": 0.0,
    "layer_decay": 1.0,
    "random_resized_crop_scale": [0.08, 1.0],
    "eval_crop_pct": 1.0,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "load_best_model_at_end": True,
    "eval_image_size": "null",  # evaluated at its training side, 112 px
    "bf16": False,  # Trainer's default
}
NO_PROBE = {"probe_regularization": 0.1}  # the recipe's probe key back at its default: it cannot act without a probe
PIPELINES = {
    "example": {**EXAMPLE, **NO_PROBE},
    "recipe": {},
    # The recipe's fine-tuning keys back at their defaults: a probe runs no Trainer loop for them to act in.
    "linear_probe": {"adaptation": "linear_probe", "layer_decay": 1.0, "random_resized_crop_scale": [0.08, 1.0]},
    "full": {"adaptation": "full", "head_learning_rate_multiplier": 10, **NO_PROBE},
    "freeze": {"adaptation": "freeze", "freeze_blocks": 6, "head_learning_rate_multiplier": 10, **NO_PROBE},
    "lora": {"adaptation": "lora", "learning_rate": 5.0e-4, **NO_PROBE},
    "fast": {},
    "fast_warm": {},
}


def run_once(name, seed, out: Path, recipe: Path, fast_recipe: Path, extra: list[str], reuse_features: bool) -> dict:
    folder = out / f"{name}-seed{seed}"
    record = folder / "benchmark_run.json"
    if record.is_file():
        return _entry(json.loads(record.read_text()), folder)
    overrides = [
        arg for k, v in PIPELINES[name].items() for arg in [f"--{k}", *map(str, v if isinstance(v, list) else [v])]
    ]
    if name.startswith("fast"):  # its own recipe; cold never reads a cache, warm always does
        recipe, reuse_features = fast_recipe, name == "fast_warm"

    def command(target: Path) -> list[str]:
        return [
            sys.executable, str(ROOT / "run_snacks.py"), str(recipe), *overrides, f"--seed={seed}",
            f"--output_dir={target}", "--overwrite_output_dir", f"--probe_feature_cache={reuse_features}", *extra,
        ]  # fmt: skip

    env = dict(os.environ, VITRECIPES_CACHE=str(out / "feature-cache"))
    if name == "fast_warm":  # an untimed first run fills the cache
        subprocess.run(command(out / f"{name}-seed{seed}-first"), cwd=ROOT, capture_output=True, env=env, check=True)
    start = time.perf_counter()
    result = subprocess.run(command(folder), cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{name} seed {seed} failed:\n{result.stderr[-3000:]}")
    timing = {"pipeline": name, "seed": seed, "wall_s": round(wall, 1), "command": " ".join(command(folder)[1:])}
    record.write_text(json.dumps(timing, indent=2) + "\n")
    entry = _entry(timing, folder)
    print(f"{name:>13} seed {seed}: test {entry['test_accuracy']:.4f}  wall {wall:7.1f} s", flush=True)
    return entry


def _entry(timing: dict, folder: Path) -> dict:
    """The run's wall time with its accuracy and the split of its time, from its metrics.json."""
    metrics = json.loads((folder / "metrics.json").read_text())
    probe = metrics.get("probe", {})
    trained = "global_step" in metrics["train"]  # a linear probe runs no Trainer loop
    return {
        **{key: timing[key] for key in ("pipeline", "seed", "wall_s", "command")},
        "probe_s": round(probe.get("probe_feature_seconds", 0.0) + probe.get("probe_fit_seconds", 0.0), 1),
        "trainer_s": round(metrics["train"].get("train_runtime", 0.0), 1) if trained else 0.0,
        "validation_accuracy": metrics["validation"]["accuracy"],
        "test_accuracy": metrics["test"]["accuracy"],
        "features_cached": bool(probe.get("probe_features_cached", False)),
    }


def summarise(entries: list[dict]) -> list[dict]:
    rows = []
    for name in dict.fromkeys(e["pipeline"] for e in entries):
        runs = [e for e in entries if e["pipeline"] == name]

        def stats(key, runs=runs):
            values = [r[key] for r in runs]
            return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

        rows.append({"pipeline": name, "seeds": [r["seed"] for r in runs], **{
            f"{key}_{part}": value
            for key in ("test_accuracy", "validation_accuracy", "wall_s", "probe_s", "trainer_s")
            for part, value in zip(("mean", "std"), stats(key))
        }})  # fmt: skip
    return rows


def markdown(rows: list[dict], entries: list[dict]) -> str:
    lines = [
        "| pipeline | seeds | test accuracy | validation accuracy | whole command (s) | probe features + fit (s) "
        "| Trainer loop (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pipeline']} | {len(r['seeds'])} | {r['test_accuracy_mean']:.3f} ± {r['test_accuracy_std']:.3f} | "
            f"{r['validation_accuracy_mean']:.3f} ± {r['validation_accuracy_std']:.3f} | "
            f"{r['wall_s_mean']:.0f} ± {r['wall_s_std']:.0f} | {r['probe_s_mean']:.0f} | {r['trainer_s_mean']:.0f} |"
        )
    lines += [
        "",
        "| pipeline | seed | test | validation | whole command (s) | probe features |",
        "|---|---|---|---|---|---|",
    ]
    for e in entries:
        features = "read from cache" if e["features_cached"] else ("computed" if e["probe_s"] else "-")
        lines.append(
            f"| {e['pipeline']} | {e['seed']} | {e['test_accuracy']:.4f} | {e['validation_accuracy']:.4f} | "
            f"{e['wall_s']:.0f} | {features} |"
        )
    return "\n".join(lines) + "\n"


def plot(entries: list[dict], rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for r in rows:
        runs = [e for e in entries if e["pipeline"] == r["pipeline"]]
        points = axes.scatter([e["wall_s"] for e in runs], [e["test_accuracy"] for e in runs], alpha=0.4)
        axes.errorbar(r["wall_s_mean"], r["test_accuracy_mean"], xerr=r["wall_s_std"], yerr=r["test_accuracy_std"],
                      fmt="o", color=points.get_facecolor()[0][:3], capsize=3, label=r["pipeline"])  # fmt: skip
    axes.set_xlabel("whole command, wall-clock seconds (training and evaluation)")
    axes.set_ylabel("test accuracy")
    axes.set_title("Time to accuracy (mean ± std over seeds; dots are single runs)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pipelines", nargs="+", default=list(PIPELINES), metavar="NAME[:SEEDS]",
        help=f"some of {', '.join(PIPELINES)}; 'recipe:42,43' gives that pipeline its own seeds",
    )  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--fast_recipe", type=Path, default=FAST_RECIPE, help="the fast pipelines' recipe")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_time_to_accuracy")
    parser.add_argument("--reuse_features", action="store_true", help="later seeds read the probe features")
    args, extra = parser.parse_known_args(argv)  # anything else is passed on as recipe overrides
    for flag, path in (("--recipe", args.recipe), ("--fast_recipe", args.fast_recipe)):
        if not path.is_file():
            parser.error(f"{flag} {path} does not exist.")
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    plan = []
    for item in args.pipelines:
        name, _, seeds = item.partition(":")
        if name not in PIPELINES:
            parser.error(f"--pipelines: {name!r} is not one of {', '.join(PIPELINES)}.")
        plan += [(name, seed) for seed in ([int(s) for s in seeds.split(",")] if seeds else args.seeds)]
    entries = [
        run_once(name, seed, args.out, args.recipe, args.fast_recipe, extra, args.reuse_features) for name, seed in plan
    ]
    rows = summarise(entries)
    table = markdown(rows, entries)
    (args.out / "time_to_accuracy.md").write_text(table)
    (args.out / "time_to_accuracy.json").write_text(json.dumps({"runs": entries, "summary": rows}, indent=2) + "\n")
    plot(entries, rows, args.out / "time_to_accuracy.png")
    print(table + f"\nWrote {args.out / 'time_to_accuracy.md'}, .json and .png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
