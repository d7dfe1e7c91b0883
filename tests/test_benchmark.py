"""The benchmarks run for real on tiny inputs and report what they measured (no timing is asserted)."""

import json
import os
import shutil
import statistics
import subprocess
import sys

import pytest
from helpers import ROOT

from benchmarks.bench_pipeline import main as bench_pipeline
from benchmarks.bench_time_to_accuracy import main as bench_time_to_accuracy


def _within_rounding(ratio, numerator, denominator, half_units=(0.05, 0.05, 0.0005)):
    """Is `ratio` numerator / denominator, given that each of the three was rounded (half a unit each)?

    The rounding error of a recomputed ratio grows with the ratio and as the denominator shrinks (a
    loaded machine gives small images/s), so the bound comes from the rounding, not a fixed tolerance.
    """
    h_num, h_den, h_ratio = half_units
    low = (numerator - h_num) / (denominator + h_den) - h_ratio
    high = (numerator + h_num) / (denominator - h_den) + h_ratio
    return low - 1e-9 <= ratio <= high + 1e-9


def test_pipeline_benchmark_measures_the_recipe_as_it_trains(tmp_path, tiny_dinov2, jpeg_folder, capsys):
    """The run is built as run_snacks builds it: the recipe's training and evaluation sides, its adaptation."""
    from transformers import Dinov2ForImageClassification

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model_name_or_path: {tiny_dinov2}\ndataset_name: {jpeg_folder}\nadaptation: freeze\n"
                      "freeze_blocks: 2\nimage_size: 48\neval_image_size: 64\nper_device_train_batch_size: 8\n"
                      "use_cpu: true\n")  # fmt: skip
    out = tmp_path / "bench.json"
    report = bench_pipeline([str(recipe), "--warmup_steps", "1", "--steps", "3", "--epochs", "2", "--repeats", "2",
                             "--eval_samples", "8", "--out", str(out)])  # fmt: skip
    assert json.loads(out.read_text()) == report
    assert report["input_size"] == [48, 48] and report["eval_input_size"] == [64, 64]
    assert "training side 48x48, evaluation side 64x64" in capsys.readouterr().out
    # adapt() ran: the embeddings and the first 2 of 3 blocks are frozen.
    model = Dinov2ForImageClassification.from_pretrained(tiny_dinov2, num_labels=3)
    frozen = ("dinov2.embeddings", "dinov2.encoder.layer.0.", "dinov2.encoder.layer.1.")
    assert report["trainable_parameters"] == sum(p.numel() for n, p in model.named_parameters()
                                                 if not n.startswith(frozen))  # fmt: skip
    assert len(report["repeats"]) == 2 and report["batch_size"] == 8
    for repeat in report["repeats"]:
        assert min(repeat[k] for k in ("limit_ips", "train_ips", "baseline_ips", "eval_ips")) > 0
        # The JSON's images/s are rounded to 0.1 and its ratios to 0.001.
        assert _within_rounding(repeat["efficiency"], repeat["train_ips"], repeat["limit_ips"]), repeat
        assert _within_rounding(repeat["baseline_efficiency"], repeat["baseline_ips"], repeat["limit_ips"]), repeat
        assert _within_rounding(repeat["speedup_vs_baseline"], repeat["train_ips"], repeat["baseline_ips"]), repeat
    for key in ("efficiency", "speedup_vs_baseline", "eval_ips"):  # the median of the repeats, with their range
        values = [r[key] for r in report["repeats"]]
        assert report["figures"][key] == {"median": round(statistics.median(values), 3), "min": min(values),
                                          "max": max(values)}  # fmt: skip
    assert "peak_gpu_mib" not in report["figures"] and report["peak_rss_mib"] > 0


@pytest.mark.parametrize("args, message", [(["--epochs", "0"], "must be 1 or more"),
                                           (["--warmup_steps", "500"], "not more than --warmup_steps")])  # fmt: skip
def test_pipeline_benchmark_rejects_bad_options_before_any_run(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_pipeline(["recipes/smoke.yaml", "--max_train_samples", "64", *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_pipeline_benchmark_names_a_bad_recipe_key_in_one_paragraph():
    command = [sys.executable, "-m", "benchmarks.bench_pipeline", "recipes/smoke.yaml", "--learning_rat", "1e-3"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Unknown key 'learning_rat'" in result.stderr and "Traceback" not in result.stderr


def test_time_to_accuracy_runs_rounds_through_run_seeds_and_resumes(tmp_path, tiny_dinov2, jpeg_folder, capsys):
    """Real runs of 4 pipelines on a tiny DINOv2, seed by seed in rounds: the same commands a user types."""
    recipe, fast = tmp_path / "recipe.yaml", tmp_path / "fast.yaml"
    common = f"model_name_or_path: {tiny_dinov2}\ndataset_name: {jpeg_folder}\nuse_cpu: true\n"
    # Like config_cpu.yaml: LP-FT with a probe key, which the example's `--adaptation full` leaves out by itself.
    recipe.write_text(common + "adaptation: lp_ft\nprobe_regularization: 0.01\nmax_steps: 3\n"
                      "per_device_train_batch_size: 8\neval_strategy: 'no'\nsave_strategy: 'no'\n"
                      "load_best_model_at_end: false\n")  # fmt: skip
    fast.write_text(common + "adaptation: linear_probe\n")
    out = tmp_path / "tta"
    argv = ["--recipe", str(recipe), "--fast_recipe", str(fast), "--out", str(out), "--pipelines", "example",
            "recipe", "linear_probe:1", "fast_warm:1", "--seeds", "1", "2"]  # fmt: skip
    assert bench_time_to_accuracy(argv) == 0
    report = json.loads((out / "time_to_accuracy.json").read_text())
    runs = report["runs"]
    # Round by round, pipelines alternating; each run the command a user types, with the seeds so far.
    assert [(r["pipeline"], r["seed"]) for r in runs] == [("example", 1), ("recipe", 1), ("linear_probe", 1),
                                                          ("fast_warm", 1), ("example", 2), ("recipe", 2)]  # fmt: skip
    assert runs[5]["command"].endswith("--seeds 1 2 --output_dir " + os.path.relpath(out / "recipe", ROOT))
    assert "--probe_regularization" not in runs[0]["command"] and "--adaptation full" in runs[0]["command"]
    # Cold runs compute their own probe features; only fast_warm reads the cache its untimed first run filled.
    assert [r["features_cached"] for r in runs] == [False, False, False, True, False, False]
    assert (out / "fast_warm-first" / "seed-1" / "metrics.json").is_file()
    for r in runs:
        metrics = json.loads((out / r["pipeline"] / f"seed-{r['seed']}" / "metrics.json").read_text())
        assert r["test_accuracy"] == metrics["test"]["accuracy"] and r["wall_s"] > 0
        assert len(r["load_average_start"]) == len(r["load_average_end"]) == 3
    for row in report["summary"]:  # mean ± std from run_seeds' summary.json; the time from the benchmark's records
        own = [r for r in runs if r["pipeline"] == row["pipeline"]]
        tests = [r["test_accuracy"] for r in own]
        assert row["test_accuracy_mean"] == pytest.approx(statistics.mean(tests))
        assert row["test_accuracy_std"] == pytest.approx(statistics.stdev(tests) if len(tests) > 1 else 0.0)
        assert row["wall_s_mean"] == pytest.approx(statistics.mean(r["wall_s"] for r in own))
    # compare_runs' verdicts against the first pipeline.
    assert report["verdicts"]["baseline"] == "example"
    test_row = next(row for row in report["verdicts"]["rows"] if row["key"] == "test_accuracy")["recipes"]
    assert test_row["recipe"]["n"] == 2 and "verdict" in test_row["recipe"]
    assert test_row["linear_probe"]["verdict"].startswith("no test")
    table = (out / "time_to_accuracy.md").read_text()
    assert "| example | 2 | " in table and "| fast_warm | 1 | " in table and "read from cache" in table
    assert "Baseline: `example`" in table and (out / "time_to_accuracy.png").stat().st_size > 10_000

    # A rerun runs nothing; a seed cut off (its folder kept, no time recorded) starts afresh, not resumed.
    records_file = out / "recipe" / "benchmark_runs.json"
    records = json.loads(records_file.read_text())
    records_file.write_text(json.dumps({"1": records["1"]}))
    before = (out / "recipe" / "seed-2" / "metrics.json").stat().st_mtime_ns
    kept = (out / "example" / "seed-2" / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    assert bench_time_to_accuracy(argv) == 0
    printed = capsys.readouterr().out
    assert "recipe seed 2 has no recorded time (cut off): starting it afresh" in printed
    assert [line.split(":")[0].strip() for line in printed.splitlines() if " s, test " in line] == ["recipe seed 2"]
    assert (out / "recipe" / "seed-2" / "metrics.json").stat().st_mtime_ns != before
    assert (out / "example" / "seed-2" / "metrics.json").stat().st_mtime_ns == kept
    # A seed timed before but no longer finished would run inside the next seed's timed command: refused.
    shutil.rmtree(out / "example" / "seed-1")
    with pytest.raises(SystemExit, match=r"seeds \[1\] were timed but are not finished"):
        bench_time_to_accuracy([*argv[:-3], "--seeds", "1", "2", "3"])
    # A table of other seeds than a pipeline's summary.json holds would mix them: refused.
    with pytest.raises(SystemExit, match=r"summary.json is not of seeds \[1\]"):
        bench_time_to_accuracy([*argv[:6], "--pipelines", "recipe:1"])


def test_streaming_benchmark_times_both_pipelines_on_the_recipes_side_and_counts_evaluation_alike(tmp_path):
    from benchmarks.bench_streaming import main

    out = tmp_path / "bench.json"
    result = main(["recipes/smoke.yaml", "--shards", str(tmp_path / "shards"), "--shard_size", "300", "--workers", "0",
                   "--batches", "3", "--out", str(out)])  # fmt: skip
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert (result["image_size"], result["batch_size"], result["shards"]) == (32, 32, 4)  # the recipe's side and batch
    assert [(row["pipeline"], row["workers"]) for row in result["rows"]] == [("map-style", 0), ("streaming", 0)]
    for row in result["rows"]:
        assert row["images_per_s"] > 0 and row["first_batch_s"] > 0 and row["resume_at_90pct_s"] > 0
    counts = {"validation": 300, "test": 300}
    assert result["evaluation_images"] == {"map-style": counts, "streaming": counts}  # every image once, each way
