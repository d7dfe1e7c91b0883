#!/usr/bin/env python
"""Test accuracy against wall-clock time, for each way of adapting a pretrained model (docs/benchmarks.md).

    python benchmarks/bench_time_to_accuracy.py --pipelines example recipe fast:42 fast_warm:42 --seeds 42 43 44

Each pipeline is the command `python run_snacks.py RECIPE <PIPELINES[name]> --seeds S1 .. Sk --output_dir
OUT/<pipeline>`, timed from start to exit. Round k runs every pipeline's k-th seed (run_seeds keeps the finished
seeds and writes summary.json), pipelines alternating so that a drifting machine slows them alike. Every run but
fast_warm's computes its probe features (an empty VITRECIPES_CACHE). A rerun continues; a seed cut off restarts
afresh (a resumed run's time is not a whole command's). Writes OUT/time_to_accuracy.json, .md and .png, with
compare_runs.py's verdicts against the first pipeline.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "dinov2-small" / "snacks" / "config_cpu.yaml"
# The transformers image-classification example's set-up, spelt out whatever the recipe sets (Trainer's defaults and
# the example's 1 epoch, batch 16, fp32, augmentation, evaluation each epoch, the best reloaded) at 112 px. Its
# best settings, example_bf16, are the TrainingArguments speed flags the recipe uses: bf16 training and evaluation.
EXAMPLE = ("--adaptation full --num_train_epochs 1 --max_steps -1 --per_device_train_batch_size 16 --learning_rate "
           "5e-5 --lr_scheduler_type linear --warmup_steps 0 --weight_decay 0 --label_smoothing_factor 0 --layer_decay "
           "1 --random_resized_crop_scale 0.08 1 --horizontal_flip true --image_size 112 --eval_image_size null "
           "--eval_crop_pct 1 --eval_strategy epoch --save_strategy epoch --load_best_model_at_end true "
           "--jpeg_draft false --patch_dropout 0 --bf16 false --bf16_full_eval false")
BEST = EXAMPLE.replace("--bf16 false --bf16_full_eval false", "--bf16 true --bf16_full_eval true")
# Only the keys each pipeline changes: switching `adaptation` leaves out the recipe's keys of the other mode.
PIPELINES = {"example": EXAMPLE, "example_bf16": BEST, "recipe": "",
             "linear_probe": "--adaptation linear_probe", "lora": "--adaptation lora --learning_rate 5e-4",
             "full": "--adaptation full --head_learning_rate_multiplier 10",
             "freeze": "--adaptation freeze --freeze_blocks 6 --head_learning_rate_multiplier 10",
             "fast": "", "fast_warm": "",
             # the recipe less one of its levers, or with one more: each lever's time and accuracy alone
             "fp32_eval": "--bf16_full_eval false", "jpeg_draft": "--jpeg_draft true",
             "patch_dropout": "--patch_dropout 0.5"}  # fmt: skip
shown = functools.partial(os.path.relpath, start=ROOT)  # the commands run in ROOT; the JSON names no machine folder


def time_seed(name: str, seeds: list[int], out: Path, recipe: Path, extra: list[str]) -> None:
    """Run the pipeline's command with `seeds` (the last one new) and record how long it took."""
    folder, seed = out / name, seeds[-1]
    record_file = folder / "benchmark_runs.json"
    records = json.loads(record_file.read_text()) if record_file.is_file() else {}
    if str(seed) in records:
        return
    if unfinished := [s for s in seeds[:-1] if not (folder / f"seed-{s}" / "metrics.json").is_file()]:
        # run_seeds would run them inside this seed's timed command
        raise SystemExit(f"{folder}: seeds {unfinished} were timed but are not finished; remove {folder} to retime it.")
    if (folder / f"seed-{seed}").exists():
        print(f"{name} seed {seed} has no recorded time (cut off): starting it afresh", flush=True)
        shutil.rmtree(folder / f"seed-{seed}")
    command = ["run_snacks.py", shown(recipe), *PIPELINES[name].split(), *extra, "--seeds", *map(str, seeds)]
    with tempfile.TemporaryDirectory() as cold:
        env = dict(os.environ, VITRECIPES_CACHE=shown(out / "fast_warm-cache") if name == "fast_warm" else cold)
        if name == "fast_warm":  # an untimed first run, into its own folder, fills the cache
            first = [*command[: -len(seeds)], str(seeds[0]), "--output_dir", shown(out / "fast_warm-first")]
            _run([sys.executable, *first], env, f"{name}'s first run")
        command += ["--output_dir", shown(folder)]
        load_start, start = os.getloadavg(), time.perf_counter()
        _run([sys.executable, *command], env, f"{name} seed {seed}")
        wall = time.perf_counter() - start
    metrics, load_end = json.loads((folder / f"seed-{seed}" / "metrics.json").read_text()), os.getloadavg()
    probe = metrics.get("probe") or {}  # with the time, the accuracy and where the time went
    records[str(seed)] = {
        "pipeline": name, "seed": seed, "wall_s": round(wall, 1), "command": " ".join(["python", *command]),
        "load_average_start": [round(x, 2) for x in load_start], "load_average_end": [round(x, 2) for x in load_end],
        "probe_s": round(probe.get("probe_feature_seconds", 0.0) + probe.get("probe_fit_seconds", 0.0), 1),
        "trainer_s": round(metrics["train"]["train_runtime"], 1) if "global_step" in metrics["train"] else 0.0,
        "validation_accuracy": metrics["validation"]["accuracy"], "test_accuracy": metrics["test"]["accuracy"],
        "features_cached": bool(probe.get("probe_features_cached", False))}  # fmt: skip
    record_file.write_text(json.dumps(records, indent=2) + "\n")
    print(f"{name:>13} seed {seed}: {wall:7.1f} s, test {records[str(seed)]['test_accuracy']:.4f}", flush=True)


def _run(command: list[str], env: dict, what: str) -> None:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{what} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")


def summary_row(name: str, runs: list[dict], out: Path) -> dict:
    """Accuracy mean ± std from the pipeline's summary.json; the whole-command times from the benchmark's records."""
    figures = json.loads((out / name / "summary.json").read_text())["summary"]
    row = {"pipeline": name, "seeds": [r["seed"] for r in runs]}
    if figures["test_accuracy"]["n"] != len(runs):  # written by a command with other seeds: refused, not mixed
        raise SystemExit(f"{out / name}/summary.json is not of seeds {row['seeds']}: time these seeds in a new --out.")
    for key in ("test_accuracy", "validation_accuracy"):
        row.update({f"{key}_mean": figures[key]["mean"], f"{key}_std": figures[key]["std"]})
    for key, values in ((key, [r[key] for r in runs]) for key in ("wall_s", "probe_s", "trainer_s")):
        row.update({f"{key}_mean": statistics.mean(values), f"{key}_std": statistics.stdev(values) if runs[1:] else 0})
    return row


def table(header: list[str], rows: list[list]) -> list[str]:
    return [f"| {' | '.join(header)} |", "|" + "---|" * len(header), *(f"| {' | '.join(map(str, r))} |" for r in rows)]


def markdown(rows: list[dict], runs: list[dict]) -> str:
    spread = (("test_accuracy", 3), ("validation_accuracy", 3), ("wall_s", 0))
    lines = table(["pipeline", "seeds", "test accuracy", "validation accuracy", "whole command (s)",
                   "probe features + fit (s)", "Trainer loop (s)"],
                  [[r["pipeline"], len(r["seeds"]), *(f"{r[k + '_mean']:.{d}f} ± {r[k + '_std']:.{d}f}" for k, d in
                    spread), f"{r['probe_s_mean']:.0f}", f"{r['trainer_s_mean']:.0f}"] for r in rows])  # fmt: skip
    return "\n".join([*lines, "", *table(
        ["pipeline", "seed", "test", "validation", "whole command (s)", "load average at start, end", "probe features"],
        [[e["pipeline"], e["seed"], f"{e['test_accuracy']:.4f}", f"{e['validation_accuracy']:.4f}",
          f"{e['wall_s']:.0f}", f"{e['load_average_start'][0]:.1f}, {e['load_average_end'][0]:.1f}",
          "read from cache" if e["features_cached"] else "computed" if e["probe_s"] else "-"]
         for e in runs])]) + "\n"  # fmt: skip


def plot(runs: list[dict], rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no display backend needed

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    for r in rows:
        own = [e for e in runs if e["pipeline"] == r["pipeline"]]
        points = axes.scatter([e["wall_s"] for e in own], [e["test_accuracy"] for e in own], alpha=0.4)
        axes.errorbar(r["wall_s_mean"], r["test_accuracy_mean"], xerr=r["wall_s_std"], yerr=r["test_accuracy_std"],
                      fmt="o", color=points.get_facecolor()[0][:3], capsize=3, label=r["pipeline"])  # fmt: skip
    axes.set(xlabel="whole command, wall-clock seconds (training and evaluation)", ylabel="test accuracy",
             title="Time to accuracy (mean ± std over seeds; dots are single runs)")  # fmt: skip
    axes.grid(alpha=0.3)
    axes.legend()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES), metavar="NAME[:SEEDS]",
                        help=f"some of {', '.join(PIPELINES)}; 'fast:42' gives it its own seeds")  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--fast_recipe", type=Path, default=RECIPE.with_name("config_probe.yaml"))
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_time_to_accuracy")
    args, extra = parser.parse_known_args(argv)  # anything else is passed on to every command as recipe overrides
    plan = {name: [int(s) for s in seeds.split(",")] if seeds else args.seeds
            for name, _, seeds in (item.partition(":") for item in args.pipelines)}  # fmt: skip
    if unknown := sorted(set(plan) - set(PIPELINES)):
        parser.error(f"--pipelines: {', '.join(unknown)} not among {', '.join(PIPELINES)}.")
    args.out.mkdir(parents=True, exist_ok=True)
    order = [(name, seeds[: k + 1]) for k in range(max(map(len, plan.values())))  # round k: the k-th seeds
             for name, seeds in plan.items() if k < len(seeds)]  # fmt: skip
    for name, seeds in order:
        time_seed(name, seeds, args.out, args.fast_recipe if name.startswith("fast") else args.recipe, extra)
    runs = [json.loads((args.out / name / "benchmark_runs.json").read_text())[str(s[-1])] for name, s in order]
    rows = [summary_row(name, [r for r in runs if r["pipeline"] == name], args.out) for name in plan]
    report, text = {"runs": runs, "summary": rows}, markdown(rows, runs)
    if len(plan) > 1:  # the verdicts, by the command a user runs to compare recipes
        folders = [shown(args.out / name) for name in plan]
        _run([sys.executable, "-m", "benchmarks.compare_runs", *folders, "--out", shown(args.out / "comparison")],
             dict(os.environ), "compare_runs")  # fmt: skip
        report["verdicts"] = json.loads((args.out / "comparison.json").read_text())
        text += "\n" + (args.out / "comparison.md").read_text()
    (args.out / "time_to_accuracy.md").write_text(text)
    (args.out / "time_to_accuracy.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(runs, rows, args.out / "time_to_accuracy.png")
    print(text + f"\nWrote {shown(args.out / 'time_to_accuracy.md')}, .json and .png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
