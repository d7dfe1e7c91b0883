"""The pipeline benchmark runs end to end on a tiny input and reports every field (no timing asserts)."""

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT

FIELDS = {
    "limit_ips",
    "train_ips",
    "efficiency",
    "efficiency_first_epoch",
    "efficiency_later_epochs",
    "train_ips_per_epoch",
    "baseline_ips",
    "baseline_efficiency",
    "speedup_vs_baseline",
    "eval_ips",
    "predict_ips",
    "input_size",
}


def _within_rounding(ratio, numerator, denominator, half_units=(0.05, 0.05, 0.0005)):
    """Is `ratio` numerator / denominator, given that each of the three was rounded (half a unit each)?

    The rounding error of a recomputed ratio grows with the ratio and as the denominator shrinks (a
    loaded machine gives small images/s), so the bound comes from the rounding, not a fixed tolerance.
    """
    h_num, h_den, h_ratio = half_units
    low = (numerator - h_num) / (denominator + h_den) - h_ratio
    high = (numerator + h_num) / (denominator - h_den) + h_ratio
    return low - 1e-9 <= ratio <= high + 1e-9


def test_rounding_bound_covers_a_large_ratio_from_a_loaded_machine():
    """The newcomer's failure: 11.658 recomputed as 85.2 / 7.3 = 11.671 is within the rounding of both."""
    assert _within_rounding(11.658, 85.2, 7.3)
    assert not _within_rounding(11.5, 85.2, 7.3)


def _run_benchmark(*args):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_pipeline.py"), "recipes/smoke.yaml",
         "--warmup_steps", "1", "--eval_samples", "16", "--predict_samples", "8", "--max_train_samples", "400",
         *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.strip().splitlines()
    return json.loads(lines[-1]), "\n".join(lines[:-1])


def test_benchmark_repeats_and_reports_median_and_range(tmp_path):
    import statistics

    report, table = _run_benchmark("--steps", "3", "--epochs", "2", "--repeats", "3", "--out", str(tmp_path / "b.json"))
    assert json.loads((tmp_path / "b.json").read_text()) == report
    assert report["batch_size"] == 8 and report["input_size"] == [32, 32] and report["epochs"] == 2
    assert len(report["repeats"]) == 3
    for repeat in report["repeats"]:
        assert FIELDS <= set(repeat), FIELDS - set(repeat)
        assert all(repeat[k] > 0 for k in ("limit_ips", "train_ips", "baseline_ips", "eval_ips", "predict_ips"))
        # The JSON's images/s are rounded to 0.1 and its ratios to 0.001; the speed-up is computed from the
        # rounded efficiencies, so only its own rounding remains.
        assert _within_rounding(repeat["efficiency"], repeat["train_ips"], repeat["limit_ips"]), repeat
        speedup = repeat["speedup_vs_baseline"]
        assert _within_rounding(speedup, repeat["efficiency"], repeat["baseline_efficiency"], (0, 0, 5e-4)), repeat
    # Every figure is the median of the repeats, with their range.
    for key in ("efficiency", "efficiency_first_epoch", "efficiency_later_epochs", "speedup_vs_baseline"):
        values = [r[key] for r in report["repeats"]]
        figure = report["figures"][key]
        assert figure["median"] == pytest.approx(statistics.median(values), abs=1e-3)
        assert (figure["min"], figure["max"]) == (min(values), max(values))
    for row in ("project ", "baseline (naive PIL)", "median [range] over 3 repeat(s)"):
        assert row in table


def test_benchmark_can_run_one_after_the_other():
    """--interleave_steps 0 (the default with DataLoader workers): limit, project, limit, each timed alone."""
    report, table = _run_benchmark("--steps", "4", "--epochs", "1", "--repeats", "1", "--interleave_steps", "0",
                                   "--skip_baseline")  # fmt: skip
    assert report["interleave_steps"] == 0 and len(report["repeats"]) == 1
    assert "baseline_ips" not in report["repeats"][0] and "baseline" not in table.lower()
    repeat = report["repeats"][0]
    assert _within_rounding(repeat["efficiency"], repeat["train_ips"], repeat["limit_ips"]), repeat


def test_each_repeat_reports_its_own_peak_gpu_memory(monkeypatch, capsys):
    """No GPU here: torch.cuda's memory counters are stood in for, the runs themselves stay on the CPU."""
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_pipeline

    real_setup = bench_pipeline.Setup.__post_init__

    def on_a_gpu(setup):
        real_setup(setup)
        setup.device = "cuda"

    counter = {"resets": 0}  # the fake peak is 100 MiB x the resets so far: each repeat must read its own
    monkeypatch.setattr(bench_pipeline.Setup, "__post_init__", on_a_gpu)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: counter.update(resets=counter["resets"] + 1))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: counter["resets"] * 100 * 2**20)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "a stand-in GPU")
    report = bench_pipeline.main(
        ["recipes/smoke.yaml", "--warmup_steps", "1", "--eval_samples", "8", "--predict_samples", "4",
         "--max_train_samples", "120", "--steps", "2", "--epochs", "1", "--repeats", "2", "--interleave_steps", "0",
         "--skip_baseline"]
    )  # fmt: skip
    assert counter["resets"] == 2
    assert [r["peak_gpu_mib"] for r in report["repeats"]] == [100, 200]


def test_runs_take_turns_one_at_a_time():
    """Turns (the benchmark's scheduler) runs one thread at a time, in rotation, until each retires."""
    import threading

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_pipeline import Turns

    turns, log, running, most_running = Turns(), [], set(), []

    def work(name, chunks):
        turns.wait(name)
        for chunk in range(chunks):
            running.add(name)
            time.sleep(0.01)  # room for another thread to run now, if the scheduler let it
            most_running.append(len(running))
            log.append((name, chunk))
            running.discard(name)
            if chunk < chunks - 1:
                turns.pass_on(name)
                turns.wait(name)
        turns.pass_on(name, retire=True)

    threads = [threading.Thread(target=work, args=args) for args in (("a", 3), ("b", 1), ("c", 2))]
    for thread in threads:
        thread.start()
    turns.begin(["a", "b", "c"])
    for thread in threads:
        thread.join(timeout=30)
    assert log == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("c", 1), ("a", 2)]
    assert max(most_running) == 1
    assert turns.turn is None and turns.order == []


@pytest.mark.parametrize("args, message", [(["--epochs", "0"], "--epochs must be 1 or more"),
                                           (["--repeats", "0"], "--repeats must be 1 or more"),
                                           (["--interleave_steps", "-5"], "--interleave_steps must be 0")])  # fmt: skip
def test_benchmark_rejects_bad_options_before_any_work(args, message, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from bench_pipeline import main

    with pytest.raises(SystemExit) as exit_info:
        main(["recipes/smoke.yaml", *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_time_to_accuracy_benchmark_summarises_seeds_and_resumes(tmp_path, tiny_dinov2, jpeg_folder):
    """Real runs of two pipelines on a tiny DINOv2: per-run records, mean and std over seeds, table, plot."""
    import statistics

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {tiny_dinov2}\ndataset_name: {jpeg_folder}\nadaptation: lp_ft\nmax_steps: 3\n"
        "per_device_train_batch_size: 8\neval_strategy: 'no'\nsave_strategy: 'no'\n"
        "load_best_model_at_end: false\nuse_cpu: true\n"
    )
    fast = tmp_path / "fast.yaml"
    fast.write_text(f"model_name_or_path: {tiny_dinov2}\ndataset_name: {jpeg_folder}\nadaptation: linear_probe\n")
    out = tmp_path / "bench"
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_time_to_accuracy.py"), "--recipe", str(recipe),
               "--fast_recipe", str(fast), "--out", str(out), "--pipelines", "recipe", "linear_probe", "fast_warm:1",
               "--seeds", "1", "2", "--reuse_features", "--max_steps", "3"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "time_to_accuracy.json").read_text())
    assert [(r["pipeline"], r["seed"]) for r in report["runs"]] == [
        ("recipe", 1), ("recipe", 2), ("linear_probe", 1), ("linear_probe", 2), ("fast_warm", 1)
    ]  # fmt: skip
    # The fast variant's warm run reads what its own untimed first run computed.
    assert [r["features_cached"] for r in report["runs"]] == [False, True, True, True, True]
    assert "fast_warm-seed1 " in report["runs"][-1]["command"] and (out / "fast_warm-seed1-first").is_dir()
    for row in report["summary"]:
        runs = [r for r in report["runs"] if r["pipeline"] == row["pipeline"]]
        metrics = [json.loads((out / f"{row['pipeline']}-seed{r['seed']}" / "metrics.json").read_text()) for r in runs]
        tests = [m["test"]["accuracy"] for m in metrics]
        assert row["test_accuracy_mean"] == pytest.approx(statistics.mean(tests))
        assert row["test_accuracy_std"] == pytest.approx(statistics.stdev(tests) if len(tests) > 1 else 0.0)
        assert row["wall_s_mean"] == pytest.approx(statistics.mean(r["wall_s"] for r in runs))
    table = (out / "time_to_accuracy.md").read_text()
    assert table.count("\n") == 5 + 3 + 5 and "| linear_probe | 2 |" in table and "| recipe | 2 | " in table
    assert (out / "time_to_accuracy.png").stat().st_size > 10_000
    # Finished runs are read back, not rerun.
    before = (out / "recipe-seed1" / "benchmark_run.json").read_text()
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert again.returncode == 0 and "seed 1: test" not in again.stdout
    assert (out / "recipe-seed1" / "benchmark_run.json").read_text() == before


def test_cpu_bf16_benchmark_times_both_precisions_and_writes_json(tmp_path, tiny_dinov2, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from bench_cpu_bf16 import main

    out = tmp_path / "bf16.json"
    assert main(["--model", str(tiny_dinov2), "--size", "32", "--steps", "1", "--repeats", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    for mode in ("train", "inference"):
        figures = report[mode]
        assert figures["fp32_images_per_s"] > 0 and figures["bf16_images_per_s"] > 0
        assert figures["bf16_over_fp32"] == pytest.approx(
            figures["bf16_images_per_s"] / figures["fp32_images_per_s"], abs=0.01
        )
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tiny_dinov2), "--repeats", "0"])
    assert exit_info.value.code == 2
