"""Several runs of one recipe (docs/experiments.md), each one call of run_snacks.main: `--seeds` with a mean ± std
summary, and `--sweep` (Optuna, one run per trial on validation accuracy only; the best recipe then runs test once)."""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Callable
from pathlib import Path

import yaml

from . import artifacts
from .config import load_search_space, parse_recipe
from .console import show
from .data import shareable_dataset
from .errors import RecipeError, cause
from .outputs import recipe_differences, resolved_recipe

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")

FIGURES = {"validation_accuracy": "validation accuracy", "test_accuracy": "test accuracy",
           "validation_macro_f1": "validation macro-F1", "test_macro_f1": "test macro-F1",
           "wall_seconds": "wall time (s)"}  # fmt: skip


def _read(path: Path, *keys: str):
    """A JSON file a run wrote, or the value at `keys` in it; a RecipeError that names the file where it is not."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        for key in keys:
            value = value[key]
        if not keys and not isinstance(value, dict):
            raise TypeError(f"a JSON {type(value).__name__}, not an object")
        return value
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        raise RecipeError(f"{path} cannot be read as a run's results "
                          f"({cause(error)}{'; looked for ' if keys else ''}{'.'.join(map(str, keys))}). "
                          "Rerun that run, or leave its folder out.") from None  # fmt: skip


def run_folders(folder: Path) -> list[Path]:
    """The runs of an output folder: the seeds its summary.json lists (`--seeds`), or the folder itself."""
    summary = folder / f"{artifacts.SUMMARY_NAME}.json"
    if not summary.is_file():
        return [folder]
    runs = _read(summary, "runs")
    if not runs or not all(isinstance(run, dict) and isinstance(run.get("run"), str) for run in runs):
        raise RecipeError(f"{summary} lists no runs (its 'runs' entries name them): rerun the --seeds command.")
    return [folder / run["run"] for run in runs]


def summarise_runs(folders: list[str | Path]) -> dict:
    """Per-run figures (from each run's metrics.json and reports), and their mean and sample std (n - 1)."""
    runs = []
    for folder in map(Path, folders):
        if not (folder / artifacts.METRICS_FILE).is_file():
            raise RecipeError(f"{folder} holds no {artifacts.METRICS_FILE}: give the output folder of a finished run.")
        metrics = _read(folder / artifacts.METRICS_FILE)
        runs.append({"run": folder.name, "wall_seconds": metrics.get("wall_seconds")})
        for split in (split for split in ("validation", "test") if split in metrics):
            runs[-1][f"{split}_accuracy"] = _read(folder / artifacts.METRICS_FILE, split, "accuracy")
            report = folder / artifacts.REPORT_DIR.format(split=split) / artifacts.METRICS_FILE
            runs[-1][f"{split}_macro_f1"] = _read(report, "macro", "f1") if report.is_file() else None
    summary = {}
    for key in FIGURES:
        if values := [run[key] for run in runs if run.get(key) is not None]:
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[key] = {"mean": statistics.mean(values), "std": std, "n": len(values), "values": values}
    return {"runs": runs, "summary": summary}


def run_data(folder: Path) -> dict:
    """What a run trained and evaluated on: metrics.json's `data`; for a run from before it, what the run records
    (resolved_recipe.yaml's dataset, metrics' sample counts, config.json's classes), each part where it is there."""
    metrics = _read(folder / artifacts.METRICS_FILE)
    if "data" in metrics:
        return metrics["data"]
    splits = {s: m["samples"] + m.get("unreadable_images", 0) for s in SPLITS if "samples" in (m := metrics.get(s, {}))}
    record = {"splits": splits}
    recipe_path, config_path = folder / artifacts.RESOLVED_RECIPE_NAME, folder / "config.json"
    try:
        recipe = yaml.safe_load(recipe_path.read_text(encoding="utf-8")) if recipe_path.is_file() else {}
    except yaml.YAMLError as error:
        raise RecipeError(f"{recipe_path} is not valid YAML ({cause(error)}); rerun the run.") from None
    if isinstance(recipe, dict) and recipe.get("dataset_name"):
        record["dataset"] = shareable_dataset(recipe["dataset_name"], recipe.get("dataset_name_for_card"))
    if config_path.is_file():
        id2label = _read(config_path, "id2label")
        record["classes"] = [id2label[key] for key in sorted(id2label, key=int)]
    return record


def check_same_data(records: dict[str, dict]) -> None:
    """Refuse runs on different data ({run: run_data}): the dataset, the size of every split and the classes."""
    (first, base), *others = records.items()
    for name, record in others:
        differ = []
        if None not in (base.get("dataset"), record.get("dataset")) and base["dataset"] != record["dataset"]:
            differ.append(f"dataset {base['dataset']} vs {record['dataset']}")
        for split in sorted(set(base["splits"]) | set(record["splits"])):
            sizes = [r["splits"].get(split, "none") for r in (base, record)]
            differ += [f"{split} images {sizes[0]} vs {sizes[1]}"] if sizes[0] != sizes[1] else []
        a, b = base.get("classes"), record.get("classes")
        if None not in (a, b) and a != b:
            i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            differ.append(f"{len(a)} vs {len(b)} classes, the first difference at #{i}: {a[i:i + 1]} vs {b[i:i + 1]}")
        if differ:
            raise RecipeError(f"{first} and {name} were run on different data ({'; '.join(differ)}), so "
                              "comparing their figures would measure the data, not the recipe. Compare "
                              "runs of one dataset with the same splits and classes (the same "
                              "dataset_name, max_train_samples and max_eval_samples).")  # fmt: skip


def _table(rows: list[dict], columns: dict[str, str]) -> list[str]:
    def cell(value) -> str:
        return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)

    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(cell(row.get(key)) for key in columns) + " |" for row in rows]


def finished_run(argv: list[str]) -> dict | None:
    """The metrics of the finished run of this same recipe in `argv`'s output_dir; else None (`main(argv)` decides)."""
    model_args, data_args, training_args, _ = parse_recipe(argv)
    folder = Path(training_args.output_dir)
    finished = (folder / artifacts.RESOLVED_RECIPE_NAME).is_file() and (folder / artifacts.METRICS_FILE).is_file()
    if not finished or training_args.overwrite_output_dir:
        return None
    if recipe_differences(folder, resolved_recipe(model_args, data_args, training_args)):
        return None
    logger.warning("%s finished: kept (its results are in %s).", folder.name, folder / artifacts.METRICS_FILE)
    return json.loads((folder / artifacts.METRICS_FILE).read_text())


def run_seeds(main: Callable, argv: list[str], training_args) -> dict:
    """One run per seed, one after the other (under the same launcher), then the summary. A rerun keeps
    the seeds that finished, resumes the interrupted one, and runs the rest."""
    output_dir = Path(training_args.output_dir)
    folders = []
    for seed in training_args.seeds:
        folder = output_dir / f"seed-{seed}"
        seed_argv = [*argv, "--seeds", "null", "--seed", str(seed), "--output_dir", str(folder)]
        if finished_run(seed_argv) is None:
            main(seed_argv)
        folders.append(folder)
    summary = summarise_runs(folders)
    if training_args.process_index == 0:  # summary.json and summary.md: a row per run, then mean ± std
        (output_dir / f"{artifacts.SUMMARY_NAME}.json").write_text(json.dumps(summary, indent=2) + "\n")
        columns = {"run": "run", **{k: v for k, v in FIGURES.items() if k in summary["summary"]}}
        mean_row = {key: f"{stats['mean']:.4f} ± {stats['std']:.4f}" for key, stats in summary["summary"].items()}
        mean_row["run"] = f"**mean ± std** (n={len(folders)})"
        title = f"# {output_dir.name}: seeds {', '.join(map(str, training_args.seeds))}"
        text = "\n".join([title, "", *_table([*summary["runs"], mean_row], columns), ""])
        (output_dir / f"{artifacts.SUMMARY_NAME}.md").write_text(text, encoding="utf-8")
        show(text)
    return summary


def run_recipe(main: Callable, argv: list[str]) -> dict:
    """What `python run_snacks.py RECIPE` does: `main` once, once per seed (--seeds), or once per sweep trial and then
    once more for the best trial's recipe, which also evaluates test (--sweep)."""
    training_args = parse_recipe(argv)[2]
    if training_args.seeds:
        return run_seeds(main, argv, training_args)
    if training_args.sweep:
        best = str(run_sweep(main, argv, training_args))
        if (kept := finished_run([best])) is not None:
            return kept
        logger.info("Sweep done; training its best recipe, %s, which also evaluates test once.", best)
        return main([best])
    return main(argv)


def run_sweep(main: Callable, argv: list[str], training_args) -> Path:
    """Run the trials of the search space that are not done yet, each `main` on argv plus the trial's values, into
    output_dir/trial-N, without test; write the trials table and the best trial's recipe, and return its path."""
    import optuna
    from optuna.trial import TrialState

    space_path = training_args.sweep
    n_trials, params = load_search_space(space_path)
    out = Path(training_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The study stays in its storage, so a rerun continues it (overwrite_output_dir removes it). Its sampler is
    # seeded from the recipe, offset by the trials done, so a continued sweep does not repeat its first values.
    storage = f"sqlite:///{out.resolve() / artifacts.SWEEP_STUDY_FILE}"
    with training_args.main_process_first(desc="opening the sweep's study"):
        study = optuna.create_study(study_name="sweep", storage=storage, direction="maximize", load_if_exists=True)
        if study.user_attrs.get("params", params) != params:
            raise RecipeError(f"output_dir {out} holds a sweep of another search space than "
                              f"{space_path}. Choose another output_dir, or add "
                              "--overwrite_output_dir true to start the sweep afresh.")  # fmt: skip
        if training_args.process_index == 0:
            study.set_user_attr("params", params)
            # Only one command runs a study, so a trial still RUNNING at its start was cut off by a crash.
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                study.tell(trial.number, state=TrialState.FAIL)
    study.sampler = optuna.samplers.TPESampler(seed=(training_args.seed + len(study.trials)) % 2**32)
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if done < n_trials:
        logger.info("Sweep %s: %d of %d trials done; running %d.", out, done, n_trials, n_trials - done)
    shared = [*argv, "--sweep", "null", "--test_split", "null"]  # validation only: test is not touched
    for _ in range(n_trials - done):
        chosen = out / "next_trial.json"
        with training_args.main_process_first(desc="choosing a sweep trial"):  # every process takes process 0's
            if training_args.process_index == 0:
                trial = study.ask(_distributions(params))
                chosen.write_text(json.dumps({"number": trial.number, "params": trial.params}))
            trial_number, values = json.loads(chosen.read_text()).values()
        overrides = [word for key, value in values.items() for word in [f"--{key}", *map(str, _as_list(value))]]
        metrics = main([*shared, *overrides, "--output_dir", str(out / f"trial-{trial_number}")])
        if training_args.process_index == 0:
            study.tell(trial_number, metrics["validation"]["accuracy"])
    study = optuna.load_study(study_name="sweep", storage=storage)
    best = study.best_trial
    path = out / artifacts.BEST_RECIPE_NAME
    if done >= n_trials and path.is_file():
        logger.warning("Sweep %s finished earlier (%d trials; the best: %d): kept %s.", out, done, best.number, path)
        return path
    rows = [{"trial": t.number, **t.params, "validation_accuracy": t.value, "best": t.number == best.number}
            for t in study.get_trials(states=(TrialState.COMPLETE,))]  # fmt: skip
    # The best trial's recipe, which reproduces its validation accuracy, with test back and its own folder.
    recipe = yaml.safe_load((out / f"trial-{best.number}" / artifacts.RESOLVED_RECIPE_NAME).read_text(encoding="utf-8"))
    recipe.update(test_split=parse_recipe(argv)[1].test_split, output_dir=str(out / "best"))
    if training_args.process_index == 0:
        (out / f"{artifacts.SWEEP_TRIALS_NAME}.json").write_text(json.dumps(rows, indent=2) + "\n")
        columns = {"trial": "trial", **{k: k for k in params}, "validation_accuracy": "validation accuracy"}
        table = _table([{**r, "trial": f"**{r['trial']}** (best)" if r["best"] else r["trial"]} for r in rows], columns)
        (out / f"{artifacts.SWEEP_TRIALS_NAME}.md").write_text(f"# Sweep of {space_path}\n\n" + "\n".join(table) + "\n")
        show(f"Sweep of {space_path}: {len(rows)} trials, the best {best.number}", *table)
        header = f"# The best trial ({best.number}, validation accuracy {best.value:.4f}) of {space_path}.\n"
        path.write_text(header + yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def _as_list(value) -> list:
    return value if isinstance(value, list) else ["null" if value is None else value]


def _distributions(params: dict[str, dict]) -> dict:
    """Optuna's distribution for each key of a search space."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    found = {}
    for key, spec in params.items():
        if "choices" in spec:
            found[key] = CategoricalDistribution(spec["choices"])
        elif all(isinstance(spec[b], int) for b in ("low", "high")) and not spec.get("log"):
            found[key] = IntDistribution(spec["low"], spec["high"])
        else:
            found[key] = FloatDistribution(float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
    return found
