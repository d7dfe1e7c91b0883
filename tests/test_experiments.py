"""Watching and comparing runs: tracker event files, training curves, several seeds, sweeps, comparisons."""

import json
import statistics
import sys

import pytest
import yaml
from conftest import ROOT

import run_snacks

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
    summary = run_snacks.main(["recipes/smoke.yaml", "--output_dir", str(out), "--seeds", "1", "2", "3", *SMALL])
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


def test_a_sweep_writes_its_trials_and_a_best_recipe_that_reruns_to_the_same_accuracy(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("n_trials: 3\nparams:\n  learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}\n")
    out = tmp_path / "sweep"
    final = run_snacks.main(["recipes/smoke.yaml", "--output_dir", str(out), "--sweep", str(space), *SMALL])
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


def test_a_sweep_key_must_be_a_training_key(tmp_path):
    from vitrecipes.config import parse_recipe
    from vitrecipes.errors import RecipeError
    from vitrecipes.experiments import load_search_space

    training = parse_recipe(["recipes/dinov2-small/snacks/config_cpu.yaml"])[2]
    n_trials, params = load_search_space(ROOT / "recipes/dinov2-small/snacks/sweep_lr.yaml", training)
    assert n_trials == 8 and set(params) == {"learning_rate", "weight_decay", "lr_scheduler_type"}

    space = tmp_path / "space.yaml"
    space.write_text("n_trials: 2\nparams:\n  mixup_alpha: {low: 0.1, high: 0.4}\n")
    with pytest.raises(RecipeError, match="'mixup_alpha' is not a training key"):
        run_snacks.main(["recipes/smoke.yaml", "--output_dir", str(tmp_path / "o"), "--sweep", str(space), *SMALL])


def test_compare_gives_a_verdict_by_welchs_t_test(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from compare_runs import compare, main

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
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from compare_runs import compare, main

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
