"""Watching and comparing runs: tracker event files, training curves, several seeds, sweeps, comparisons."""

import json
import logging
import shutil
import statistics

import pytest
import yaml
from helpers import ROOT, run_cli

import run_snacks
from vitrecipes.config import parse_recipe
from vitrecipes.data import DIGIT_NAMES
from vitrecipes.errors import RecipeError
from vitrecipes.experiments import summarise_runs

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
    assert parse_recipe(["recipes/smoke.yaml", "--seeds", "0", str(2**32 - 1)])[2].seeds == [0, 2**32 - 1]  # the edges


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
        ("n_trials: 2\nparams:\n  learning_rate: {low: -1.0e-3, high: 1.0e-3}\n", "learning_rate': learning_rate must"),
        ("n_trials: 2\nparams:\n  adam_beta2: {low: 0.9, high: 1.5}\n", "adam_beta2': adam_beta2 must lie in"),
        ("n_trials: 2\nparams:\n  weight_decay: {choices: [0.0, .nan]}\n", "weight_decay': weight_decay must be a fin"),
        ("n_trials: 2\nparams:\n  per_device_train_batch_size: {choices: [8, 100000]}\n", "per_device_train_batch"),
    ],
)
def test_a_bad_search_space_is_refused_at_parse_time(tmp_path, text, key):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    with pytest.raises(RecipeError, match=rf"Search space {space}: '{key}"):
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


DIGITS = {"dataset": "builtin:digits", "splits": {"train": 1197, "validation": 300, "test": 300},
          "classes": sorted(DIGIT_NAMES)}  # fmt: skip


def _run(folder, accuracy, data=DIGITS):
    """A finished run's folder as compare_runs reads it: metrics.json with its test accuracy and data record."""
    folder.mkdir(parents=True)
    metrics = {"test": {"accuracy": accuracy, "samples": 300}, "data": data}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def _seeds(folder, accuracies, data=DIGITS):
    """A --seeds folder: a run per seed, and the summary.json that run_seeds writes from them."""
    runs = [_run(folder / f"seed-{i}", accuracy, data) for i, accuracy in enumerate(accuracies)]
    (folder / "summary.json").write_text(json.dumps(summarise_runs(runs)))
    return folder


def _compare_runs():
    from benchmarks import compare_runs

    return compare_runs


def test_compare_gives_a_verdict_by_welchs_t_test(tmp_path):
    compare, main = _compare_runs().compare, _compare_runs().main
    base = _seeds(tmp_path / "base", [0.70, 0.69, 0.71])
    noisy = _seeds(tmp_path / "noisy", [0.71, 0.68, 0.72])
    better = _seeds(tmp_path / "better", [0.80, 0.81, 0.79])
    single = _seeds(tmp_path / "single", [0.90])
    result = compare([base, noisy, better, single])
    row = result["rows"][0]["recipes"]
    assert row["noisy"]["verdict"] == "within seed noise" and row["noisy"]["p_value"] > 0.05
    assert row["better"]["verdict"] == "better" and row["better"]["difference"] == pytest.approx(0.1)
    assert row["better"]["p_value"] < 0.001
    assert row["single"]["verdict"].startswith("no test")
    # --out in a folder that does not exist yet: it is made, as a run's output_dir is.
    main([str(base), str(better), "--out", str(tmp_path / "new" / "folder" / "comparison")])
    assert "**better**" in (tmp_path / "new" / "folder" / "comparison.md").read_text()
    # The figures are read afresh from the seeds' own metrics.json, never from a summary.json left stale.
    (better / "seed-0" / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.5}, "data": DIGITS}))
    assert compare([base, better])["rows"][0]["recipes"]["better"]["mean"] == pytest.approx((0.5 + 0.81 + 0.79) / 3)


def test_compare_keeps_one_column_per_folder_when_last_names_repeat(tmp_path):
    """`A/seed-1 B/seed-1` (or `*/best`): each folder its own column, labelled by the shortest suffix that differs."""
    compare, main = _compare_runs().compare, _compare_runs().main
    folders = {path: _seeds(tmp_path / path, [accuracy])
               for path, accuracy in [("x/a/seed-1", 0.5), ("x/b/seed-1", 0.6), ("y/b/seed-1", 0.7), ("x/c", 0.8)]}
    result = compare(list(folders.values()))
    means = {label: r["mean"] for label, r in result["rows"][0]["recipes"].items()}
    assert means == {"a/seed-1": 0.5, "x/b/seed-1": 0.6, "y/b/seed-1": 0.7, "c": 0.8}
    assert result["baseline"] == "a/seed-1"
    with pytest.raises(SystemExit) as exit_info:  # the same folder twice has no suffix that tells it apart
        main([str(folders["x/c"]), str(tmp_path / "x" / ".." / "x" / "c"), "--out", str(tmp_path / "comparison")])
    assert exit_info.value.code == 2


def _refused(capsys, *folders, out):
    with pytest.raises(SystemExit) as exit_info:
        _compare_runs().main([*map(str, folders), "--out", str(out)])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in error and error.count("\n") == 1
    assert not out.with_suffix(".md").exists()
    return error


def test_compare_refuses_runs_on_different_data_naming_the_runs_and_the_difference(tmp_path, capsys):
    out = tmp_path / "comparison"
    base = _seeds(tmp_path / "digits", [0.70, 0.69, 0.71])
    snacks = {"dataset": "snacks", "splits": {"train": 4838, "validation": 955, "test": 952},
              "classes": ["apple", "banana", "cake"]}  # fmt: skip
    error = _refused(capsys, base, _seeds(tmp_path / "snacks", [0.5, 0.6], snacks), out=out)
    assert f"{base / 'seed-0'} and {tmp_path / 'snacks' / 'seed-0'} were run on different data" in error
    assert "dataset builtin:digits vs snacks" in error and "test images 300 vs 952" in error
    assert "10 vs 3 classes" in error
    # Tested on 60 images instead of 300, in one seed only: every seed inside a multi-seed folder is checked.
    fewer = _seeds(tmp_path / "fewer", [0.7, 0.7, 0.7])
    (fewer / "seed-2" / "metrics.json").write_text(json.dumps(
        {"test": {"accuracy": 0.7}, "data": {**DIGITS, "splits": {**DIGITS["splits"], "test": 60}}}))  # fmt: skip
    error = _refused(capsys, base, fewer, out=out)
    assert f"{fewer / 'seed-2'} were run on different data (test images 300 vs 60)" in error
    renamed = {**DIGITS, "classes": [*DIGITS["classes"][:4], "fünf", *DIGITS["classes"][5:]]}
    error = _refused(capsys, base, _seeds(tmp_path / "renamed", [0.7, 0.7], renamed), out=out)
    assert "10 vs 10 classes, the first difference at #4: ['one'] vs ['fünf']" in error
    no_test = {**DIGITS, "splits": {"train": 1197, "validation": 300}}
    error = _refused(capsys, base, _seeds(tmp_path / "no_test", [0.7, 0.7], no_test), out=out)
    assert "(test images 300 vs none)" in error


def test_compare_judges_runs_without_a_data_record_from_what_they_record(tmp_path, capsys):
    """Runs from before metrics.json's `data`: resolved_recipe.yaml's dataset, metrics' sample counts (unreadable
    images included) and config.json's classes stand in for it, and agree with a record of the same data."""
    out = tmp_path / "comparison"

    def old_run(name, dataset="builtin:digits", test=(299, 1), classes=DIGITS["classes"]):
        folder = tmp_path / name
        folder.mkdir()
        metrics = {"train": {"samples": 1197}, "validation": {"accuracy": 0.7, "samples": 300},
                   "test": {"accuracy": 0.7, "samples": test[0], "unreadable_images": test[1]}}  # fmt: skip
        (folder / "metrics.json").write_text(json.dumps(metrics))
        (folder / "resolved_recipe.yaml").write_text(yaml.safe_dump({"dataset_name": dataset, "seed": 1}))
        (folder / "config.json").write_text(json.dumps({"id2label": {str(i): c for i, c in enumerate(classes)}}))
        return folder

    new = _run(tmp_path / "new", 0.7)
    _compare_runs().compare([new, old_run("old")])  # the same data, recorded either way
    error = _refused(capsys, new, old_run("subset", test=(60, 0)), out=out)
    assert "test images 300 vs 60" in error
    error = _refused(capsys, new, old_run("machine", dataset="/home/someone/data/snacks/"), out=out)
    assert "dataset builtin:digits vs snacks" in error and "/home/someone" not in error
    error = _refused(capsys, new, old_run("classes", classes=DIGITS["classes"][::-1]), out=out)
    assert "the first difference at #0: ['eight'] vs ['zero']" in error


@pytest.mark.parametrize(
    "name, content, words",
    [("seed-1/metrics.json", '{"test": {"accura', "JSONDecodeError"),
     ("seed-1/metrics.json", '{"test": {"samples": 300}}', "KeyError: 'accuracy'; looked for test.accuracy"),
     ("seed-1/metrics.json", "[1, 2]", "not an object"),
     ("seed-1/eval_test/metrics.json", '{"macro": {"precision": 0.5}}', "KeyError: 'f1'; looked for macro.f1"),
     ("summary.json", '{"runs": [{"run": "seed-0"}', "JSONDecodeError")],
)  # fmt: skip
def test_compare_names_a_corrupt_or_incomplete_file_of_a_run(tmp_path, capsys, name, content, words):
    base = _seeds(tmp_path / "base", [0.70, 0.69])
    broken = _seeds(tmp_path / "broken", [0.70, 0.69])
    (broken / name).parent.mkdir(exist_ok=True)
    (broken / name).write_text(content)
    error = _refused(capsys, base, broken, out=tmp_path / "comparison")
    assert f"{broken / name} cannot be read as a run's results" in error and words in error
