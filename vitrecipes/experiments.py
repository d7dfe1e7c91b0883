"""Several runs of one recipe: seeds in one command with a mean ± std summary, and Optuna sweeps.

    python run_snacks.py RECIPE.yaml --seeds 42 43 44        # output_dir/seed-42, ..., summary.md
    python run_snacks.py RECIPE.yaml --sweep SPACE.yaml      # trials, sweep_trials.md, best_recipe.yaml, best/

A sweep is `Trainer.hyperparameter_search` with the Optuna backend. Trials are chosen on validation
accuracy only; the test split is evaluated once, by the run of the best trial's recipe.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path

import yaml

from .config import read_yaml
from .errors import RecipeError
from .outputs import (
    BEST_RECIPE_NAME,
    METRICS_FILE,
    REPORT_DIR,
    SUMMARY_NAME,
    SWEEP_STUDY_FILE,
    SWEEP_TRIALS_NAME,
    resolved_recipe,
)

FIGURES = {
    "validation_accuracy": "validation accuracy",
    "test_accuracy": "test accuracy",
    "validation_macro_f1": "validation macro-F1",
    "test_macro_f1": "test macro-F1",
    "wall_seconds": "wall time (s)",
}


def run_figures(output_dir: str | Path) -> dict:
    """The figures a summary compares, read from a finished run's metrics.json and reports."""
    folder = Path(output_dir)
    if not (folder / METRICS_FILE).is_file():
        raise RecipeError(f"{folder} holds no {METRICS_FILE}: give the output folder of a finished run.")
    metrics = json.loads((folder / METRICS_FILE).read_text())
    row = {"run": folder.name, "wall_seconds": metrics.get("wall_seconds")}
    for split in ("validation", "test"):
        if split in metrics:
            row[f"{split}_accuracy"] = metrics[split]["accuracy"]
            report = folder / REPORT_DIR.format(split=split) / METRICS_FILE
            row[f"{split}_macro_f1"] = json.loads(report.read_text())["macro"]["f1"] if report.is_file() else None
    return row


def summarise_runs(folders: list[str | Path]) -> dict:
    """Per-run figures, and their mean and sample standard deviation (n - 1) over the runs."""
    runs = [run_figures(folder) for folder in folders]
    summary = {}
    for key in FIGURES:
        values = [run[key] for run in runs if run.get(key) is not None]
        if values:
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[key] = {"mean": statistics.mean(values), "std": std, "n": len(values), "values": values}
    return {"runs": runs, "summary": summary}


def _table(rows: list[dict], columns: dict[str, str]) -> list[str]:
    def cell(value) -> str:
        return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)

    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(cell(row.get(key)) for key in columns) + " |" for row in rows]


def write_summary(summary: dict, output_dir: str | Path, title: str) -> Path:
    """summary.json and summary.md (a row per run, then mean ± std) in output_dir; returns the .md path."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{SUMMARY_NAME}.json").write_text(json.dumps(summary, indent=2) + "\n")
    columns = {"run": "run", **{k: v for k, v in FIGURES.items() if k in summary["summary"]}}
    mean_row = {"run": f"**mean ± std** (n={len(summary['runs'])})"}
    for key, stats in summary["summary"].items():
        mean_row[key] = f"{stats['mean']:.4f} ± {stats['std']:.4f}"
    lines = [f"# {title}", "", *_table([*summary["runs"], mean_row], columns), ""]
    path = out / f"{SUMMARY_NAME}.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def run_seeds(main: Callable, argv: list[str], training_args) -> dict:
    """One run per seed, one after the other (under the same launcher), then the summary."""
    output_dir = Path(training_args.output_dir)
    folders = []
    for seed in training_args.seeds:
        folder = output_dir / f"seed-{seed}"
        main([*argv, "--seeds", "null", "--seed", str(seed), "--output_dir", str(folder)])
        folders.append(folder)
    summary = summarise_runs(folders)
    if training_args.process_index == 0:
        seeds = ", ".join(map(str, training_args.seeds))
        path = write_summary(summary, output_dir, f"{output_dir.name}: seeds {seeds}")
        print(path.read_text(), flush=True)
    return summary


# --- sweeps ---------------------------------------------------------------------------------------


def load_search_space(path: str | Path, training_args) -> tuple[int, dict[str, dict]]:
    """(n_trials, {key: spec}) from a search-space file, checked against the training keys."""
    space = read_yaml(path)
    unknown = sorted(set(space) - {"n_trials", "params"})
    params = space.get("params") or {}
    if unknown or not isinstance(params, dict) or not params:
        raise RecipeError(
            f"Search space {path} must hold `n_trials: N` and `params:` with one entry per key, e.g. "
            "`learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}` or `lr_scheduler_type: {choices: [cosine, "
            "linear]}`" + (f"; it has unknown entries {unknown}." if unknown else ".")
        )
    for key, spec in params.items():
        if not hasattr(training_args, key):
            raise RecipeError(
                f"Search space {path}: '{key}' is not a training key. Trainer.hyperparameter_search sets "
                "TrainingArguments keys (learning_rate, weight_decay, num_train_epochs, warmup_steps, ...) only."
            )
        if not isinstance(spec, dict) or not ({"choices"} <= set(spec) or {"low", "high"} <= set(spec)):
            raise RecipeError(f"Search space {path}: '{key}' needs either `choices: [...]` or `low` and `high`.")
    return int(space.get("n_trials", 10)), params


def optuna_space(params: dict[str, dict]) -> Callable:
    def space(trial) -> dict:
        chosen = {}
        for key, spec in params.items():
            if "choices" in spec:
                chosen[key] = trial.suggest_categorical(key, spec["choices"])
            elif all(isinstance(spec[b], int) for b in ("low", "high")) and not spec.get("log"):
                chosen[key] = trial.suggest_int(key, spec["low"], spec["high"])
            else:
                low, high = float(spec["low"]), float(spec["high"])
                chosen[key] = trial.suggest_float(key, low, high, log=bool(spec.get("log")))
        return chosen

    return space


def run_sweep(trainer, model_args, data_args, training_args, hub, space_path: str | Path) -> Path:
    """Search with `trainer` (built with `model_init`); write the trials table and the best trial's recipe.

    Returns the path of the best recipe, which `run_snacks.py` runs as an ordinary recipe.
    """
    import optuna

    n_trials, params = load_search_space(space_path, training_args)
    out = Path(training_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{out.resolve() / SWEEP_STUDY_FILE}"
    if training_args.process_index == 0:
        (out / SWEEP_STUDY_FILE).unlink(missing_ok=True)
    trainer.hyperparameter_search(
        hp_space=optuna_space(params),
        compute_objective=lambda metrics: metrics["eval_accuracy"],  # validation only; test is not touched
        n_trials=n_trials,
        direction="maximize",
        backend="optuna",
        study_name="sweep",
        storage=storage,
    )
    study = optuna.load_study(study_name="sweep", storage=storage)
    best = study.best_trial
    rows = [{"trial": t.number, **t.params, "validation_accuracy": t.value, "best": t.number == best.number}
            for t in study.trials]  # fmt: skip
    groups = resolved_recipe(model_args, data_args, training_args, hub)
    recipe = {k: v for group in groups.values() for k, v in group.items()}
    # The best trial's values; its validation accuracy is the one after the last epoch, so no best-epoch reload.
    recipe.update(best.params, sweep=None, output_dir=str(out / "best"), load_best_model_at_end=False)
    path = out / BEST_RECIPE_NAME
    if training_args.process_index == 0:
        (out / f"{SWEEP_TRIALS_NAME}.json").write_text(json.dumps(rows, indent=2) + "\n")
        columns = {"trial": "trial", **{k: k for k in params}, "validation_accuracy": "validation accuracy"}
        table = _table([{**r, "trial": f"**{r['trial']}** (best)" if r["best"] else r["trial"]} for r in rows], columns)
        (out / f"{SWEEP_TRIALS_NAME}.md").write_text(f"# Sweep of {space_path}\n\n" + "\n".join(table) + "\n")
        header = f"# The best trial ({best.number}, validation accuracy {best.value:.4f}) of {space_path}.\n"
        path.write_text(header + yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path
