"""Watching and comparing runs: tracker event files, training curves, several seeds, sweeps, comparisons."""

import json
import logging
import shutil
import statistics

import pytest
import yaml
from conftest import ROOT, run_cli

import run_snacks
from vitrecipes.config import parse_recipe
from vitrecipes.errors import RecipeError

SMALL = ["--max_train_samples", "128", "--max_eval_samples", "60", "--num_train_epochs", "2", "--logging_steps", "1"]


def test_tensorboard_gets_the_scalars_while_training_and_the_pictures_at_the_end(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    run_snacks.main(["recipes/smoke.yaml", "--output_dir", str(out), "--report_to", "tensorboard", *SMALL])
    scalars, images = {}, set()
    for events in sorted(out.glob("runs/*/events.out.tfevents.*")):  # read back by TensorBoard's own reader
        reader = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
        reader.Reload()
        scalars.update({tag: reader.Scalars(tag) for tag in reader.Tags()["scalars"]})
        images |= set(reader.Tags()["images"])
    for tag in ("train/loss", "train/learning_rate", "train/grad_norm", "train/images_per_second"):
        assert len(scalars[tag]) == 8, tag  # 128 images / 32 a step x 2 epochs, logged every step
        assert all(point.value > 0 for point in scalars[tag]) or tag == "train/learning_rate"
    assert len(scalars["eval/accuracy"]) == 2 and len(scalars["eval/loss"]) == 2  # once per epoch
    metrics = json.loads((out / "metrics.json").read_text())
    # The best epoch's weights are reloaded (load_best_model_at_end), so the final validation is the best logged.
    assert max(p.value for p in scalars["eval/accuracy"]) == pytest.approx(metrics["validation"]["accuracy"])
    assert {"validation/confusion_matrix", "validation/mistakes", "test/confusion_matrix", "test/mistakes"} <= images
    # The curves are in each report, next to the confusion matrix.
    for split in ("validation", "test"):
        report = out / metrics[split]["report"]
        assert (report.parent / "curves.png").stat().st_size > 10_000
        assert "![Loss and validation accuracy by step](curves.png)" in report.read_text()


def test_several_seeds_in_one_command_write_a_summary_that_matches_each_run(tmp_path):
    out = tmp_path / "seeds"
    summary = run_snacks.run(["recipes/smoke.yaml", "--output_dir", str(out), "--seeds", "1", "2", "3", *SMALL])
    per_seed = [json.loads((out / f"seed-{s}" / "metrics.json").read_text()) for s in (1, 2, 3)]
    assert [yaml.safe_load((out / f"seed-{s}" / "resolved_recipe.yaml").read_text())["seed"] for s in (1, 2, 3)] == [
        1, 2, 3,
    ]  # fmt: skip
    written = json.loads((out / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    for split in ("validation", "test"):
        values = [m[split]["accuracy"] for m in per_seed]
        figure = written["summary"][f"{split}_accuracy"]
        assert figure["mean"] == pytest.approx(statistics.mean(values))
        assert figure["std"] == pytest.approx(statistics.stdev(values))
        f1 = [json.loads((out / f"seed-{s}" / f"eval_{split}" / "metrics.json").read_text())["macro"]["f1"]
              for s in (1, 2, 3)]  # fmt: skip
        assert written["summary"][f"{split}_macro_f1"]["mean"] == pytest.approx(statistics.mean(f1))
    assert written["summary"]["wall_seconds"]["values"] == [m["wall_seconds"] for m in per_seed]
    table = (out / "summary.md").read_text()
    assert table.count("| seed-") == 3 and "**mean ± std** (n=3)" in table


def test_rerunning_seeds_keeps_finished_seeds_and_resumes_the_interrupted_one(tmp_path, caplog):
    out = tmp_path / "seeds"
    command = ["recipes/smoke.yaml", "--output_dir", str(out), "--seeds", "1", "2", *SMALL, "--save_total_limit", "2"]
    run_snacks.run(command)
    seed_1 = {p: p.stat().st_mtime_ns for p in (out / "seed-1").rglob("*") if p.is_file()}
    # seed-2 as a kill -9 during its second epoch leaves it: the first epoch's checkpoint, no metrics, no summary.
    for path in [
        out / "seed-2" / "checkpoint-8",
        out / "seed-2" / "metrics.json",
        out / "summary.json",
        out / "summary.md",
    ]:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    with caplog.at_level(logging.WARNING):
        summary = run_snacks.run(command)
    assert "seed-1 finished: kept" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in seed_1} == seed_1  # not retrained, nothing rewritten
    train = json.loads((out / "seed-2" / "metrics.json").read_text())["train"]
    assert train["start_step"] == 4 and train["global_step"] == 8  # resumed from checkpoint-4
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert [run["run"] for run in summary["runs"]] == ["seed-1", "seed-2"]
    # A finished seed of another recipe is refused, as a single run's folder is.
    with pytest.raises(RecipeError, match=r"seed-1 already holds a finished run"):
        run_snacks.run([*command, "--learning_rate", "1e-3"])
    assert {p: p.stat().st_mtime_ns for p in seed_1} == seed_1


def test_a_seed_given_twice_is_refused_before_anything_runs(tmp_path):
    result = run_cli("recipes/smoke.yaml", "--output_dir", tmp_path / "out", "--seeds", "42", "42", *SMALL)
    assert result.returncode == 2 and "seeds: 42 is given twice" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [["--seed", "-1"], ["--seeds", "1", "-1"], ["--seed", str(2**32)]])
def test_a_seed_outside_numpys_range_is_a_recipe_error(args):
    with pytest.raises(RecipeError, match=r"seeds? must .* 0 to 2\*\*32 - 1"):
        parse_recipe(["recipes/smoke.yaml", *args])


@pytest.mark.parametrize(
    "text, key",
    [
        ("n_trials: 0\nparams:\n  learning_rate: {low: 1.0e-4, high: 1.0e-3}\n", "n_trials"),
        ("n_trials: -2\nparams:\n  learning_rate: {low: 1.0e-4, high: 1.0e-3}\n", "n_trials"),
        ("n_trials: 2.5\nparams:\n  learning_rate: {low: 1.0e-4, high: 1.0e-3}\n", "n_trials"),
        ("n_trials: 2\nparams:\n  learning_rate: {low: 1.0e-3, high: 1.0e-4}\n", "learning_rate"),
        ("n_trials: 2\nparams:\n  learning_rate: {low: 0.0, high: 1.0e-3, log: true}\n", "learning_rate"),
        ("n_trials: 2\nparams:\n  learning_rate: {low: small, high: 1.0e-3}\n", "learning_rate"),
        ("n_trials: 2\nparams:\n  lr_scheduler_type: {choices: []}\n", "lr_scheduler_type"),
    ],
)
def test_a_bad_search_space_is_refused_at_parse_time(tmp_path, text, key):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    with pytest.raises(RecipeError, match=rf"Search space {space}: '{key}'"):
        parse_recipe(["recipes/smoke.yaml", "--sweep", str(space)])  # parsing only: no data is loaded


def test_a_sweep_writes_its_trials_and_a_best_recipe_that_reruns_to_the_same_accuracy(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("n_trials: 3\nparams:\n  learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}\n")
    out = tmp_path / "sweep"
    final = run_snacks.run(["recipes/smoke.yaml", "--output_dir", str(out), "--sweep", str(space), *SMALL])
    trials = json.loads((out / "sweep_trials.json").read_text())
    assert len(trials) == 3 and sum(t["best"] for t in trials) == 1
    best = next(t for t in trials if t["best"])
    assert best["validation_accuracy"] == max(t["validation_accuracy"] for t in trials)
    assert (out / "sweep_trials.md").read_text().count("\n|") == 2 + 3
    recipe = yaml.safe_load((out / "best_recipe.yaml").read_text())
    assert recipe["learning_rate"] == pytest.approx(best["learning_rate"]) and recipe["sweep"] is None
    # The best recipe was run once, as an ordinary recipe: the same validation accuracy, and test once.
    assert final["validation"]["accuracy"] == pytest.approx(best["validation_accuracy"], abs=1e-9)
    assert json.loads((out / "best" / "metrics.json").read_text())["test"]["samples"] == 60
    assert not any("test" in key for t in trials for key in t)
    # The sampler is seeded from the recipe's seed (42): its values are those of TPESampler(seed=42).
    import optuna

    seeded = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=42))
    lr = optuna.distributions.FloatDistribution(1.0e-4, 3.0e-3, log=True)
    expected = [seeded.ask({"learning_rate": lr}).params["learning_rate"] for _ in range(3)]
    assert [t["learning_rate"] for t in trials] == pytest.approx(expected)

    # The same command again reports what the sweep found and changes nothing: no trial, no retraining.
    written = [out / "sweep_trials.json", out / "sweep_trials.md", out / "best_recipe.yaml", *(out / "best").rglob("*")]
    before = {p: p.stat().st_mtime_ns for p in written if p.is_file()}
    again = run_snacks.run(["recipes/smoke.yaml", "--output_dir", str(out), "--sweep", str(space), *SMALL])
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert not (out / "trial-3").exists()
    assert len(optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'sweep.db'}").trials) == 3
    assert again["validation"]["accuracy"] == pytest.approx(final["validation"]["accuracy"], abs=1e-12)


def test_an_interrupted_sweep_goes_on_from_where_it_stopped(tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution

    space = tmp_path / "space.yaml"
    space.write_text("n_trials: 2\nparams:\n  learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}\n")
    out = tmp_path / "sweep"
    out.mkdir()
    # The study a kill -9 leaves during the second trial: trial 0 complete, trial 1 still RUNNING.
    study = optuna.create_study(study_name="sweep", storage=f"sqlite:///{out / 'sweep.db'}", direction="maximize")
    lr = FloatDistribution(1.0e-4, 3.0e-3, log=True)
    study.add_trial(optuna.trial.create_trial(params={"learning_rate": 1e-4}, distributions={"learning_rate": lr},
                                              value=-1.0))  # fmt: skip
    study.ask({"learning_rate": lr})
    run_snacks.run(["recipes/smoke.yaml", "--output_dir", str(out), "--sweep", str(space), *SMALL])
    states = [
        t.state.name for t in optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'sweep.db'}").trials
    ]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]  # the interrupted trial is not counted; one more ran
    assert not (out / "trial-0").exists()  # the finished trial was kept, not retrained
    trials = json.loads((out / "sweep_trials.json").read_text())
    assert [t["trial"] for t in trials] == [0, 2] and trials[1]["best"]
    recipe = yaml.safe_load((out / "best_recipe.yaml").read_text())
    assert recipe["learning_rate"] == pytest.approx(trials[1]["learning_rate"])
    assert (out / "best" / "metrics.json").is_file()


def test_a_sweep_key_must_be_a_recipe_key_that_a_trial_can_set(tmp_path):
    from vitrecipes.config import load_search_space

    n_trials, params = load_search_space(ROOT / "recipes/dinov2-small/snacks/sweep_lr.yaml")
    assert n_trials == 8 and set(params) == {"learning_rate", "weight_decay", "lr_scheduler_type"}
    space = tmp_path / "space.yaml"
    space.write_text("n_trials: 2\nparams:\n  mixup_alpha: {low: 0.1, high: 0.4}\n")
    assert load_search_space(space)[1] == {"mixup_alpha": {"low": 0.1, "high": 0.4}}  # each trial is a whole run
    space.write_text("n_trials: 2\nparams:\n  output_dir: {choices: [a, b]}\n")
    with pytest.raises(RecipeError, match="'output_dir' is not a recipe key that a trial can set"):
        run_snacks.run(["recipes/smoke.yaml", "--output_dir", str(tmp_path / "o"), "--sweep", str(space), *SMALL])


def test_compare_gives_a_verdict_by_welchs_t_test(tmp_path):
    from benchmarks.compare_runs import compare, main

    def seeds_folder(name, accuracies):
        folder = tmp_path / name
        folder.mkdir()
        runs = [{"run": f"seed-{i}", "test_accuracy": a} for i, a in enumerate(accuracies)]
        summary = {"test_accuracy": {"mean": statistics.mean(accuracies), "values": accuracies}}
        (folder / "summary.json").write_text(json.dumps({"runs": runs, "summary": summary}))
        return folder

    base = seeds_folder("base", [0.70, 0.69, 0.71])
    noisy = seeds_folder("noisy", [0.71, 0.68, 0.72])
    better = seeds_folder("better", [0.80, 0.81, 0.79])
    single = seeds_folder("single", [0.90])
    result = compare([base, noisy, better, single])
    row = result["rows"][0]["recipes"]
    assert row["noisy"]["verdict"] == "within seed noise" and row["noisy"]["p_value"] > 0.05
    assert row["better"]["verdict"] == "better" and row["better"]["difference"] == pytest.approx(0.1)
    assert row["better"]["p_value"] < 0.001
    assert row["single"]["verdict"].startswith("no test")
    main([str(base), str(better), "--out", str(tmp_path / "comparison")])
    assert "**better**" in (tmp_path / "comparison.md").read_text()


def test_compare_keeps_one_column_per_folder_when_last_names_repeat(tmp_path):
    """`A/seed-1 B/seed-1` (or `*/best`): each folder its own column, labelled by the shortest suffix that differs."""
    from benchmarks.compare_runs import compare, main

    folders = {}
    for path, accuracy in [("x/a/seed-1", 0.5), ("x/b/seed-1", 0.6), ("y/b/seed-1", 0.7), ("x/c", 0.8)]:
        folder = folders[path] = tmp_path / path
        folder.mkdir(parents=True)
        summary = {"test_accuracy": {"mean": accuracy, "values": [accuracy]}}
        (folder / "summary.json").write_text(json.dumps({"runs": [], "summary": summary}))
    result = compare(list(folders.values()))
    means = {label: r["mean"] for label, r in result["rows"][0]["recipes"].items()}
    assert means == {"a/seed-1": 0.5, "x/b/seed-1": 0.6, "y/b/seed-1": 0.7, "c": 0.8}
    assert result["baseline"] == "a/seed-1"
    with pytest.raises(SystemExit) as exit_info:  # the same folder twice has no suffix that tells it apart
        main([str(folders["x/c"]), str(tmp_path / "x" / ".." / "x" / "c"), "--out", str(tmp_path / "comparison")])
    assert exit_info.value.code == 2
