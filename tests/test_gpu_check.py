"""benchmarks/gpu_check.sh: its CPU rehearsal runs every step end to end, and without a GPU it stops clearly."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _gpu_check(*args, **env):  # the timeout catches a hang only: a loaded 2-core CPU is slow
    return subprocess.run(
        [str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=1800,
        env={**os.environ, "PYTHON": sys.executable, **env},
    )  # fmt: skip


def test_cpu_rehearsal_runs_every_step_and_reports_what_each_left(tmp_path, tiny_dinov2, jpeg_folder):
    out = tmp_path / "check"
    result = _gpu_check("--model", tiny_dinov2, "--data", jpeg_folder, "--out", out, GPU_CHECK_CPU="1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["hardware"]["mode"].startswith("cpu rehearsal")
    assert {"torch", "cuda", "cudnn", "gpu", "transformers", "cpu_count"} <= set(report["hardware"])
    steps = report["steps"]
    assert list(steps) == ["config_gpu", "bench_pipeline", "torch_compile"]
    assert all(step["status"] == "passed" and step["seconds"] > 0 for step in steps.values()), steps
    # Each step's figures are those of the run it made: its metrics.json, its 2 steps (the rehearsal's max_steps).
    for name in ("config_gpu", "torch_compile"):
        metrics = json.loads((out / name / "metrics.json").read_text())
        figures = steps[name]["figures"]
        assert figures["test_accuracy"] == metrics["test"]["accuracy"]
        assert figures["validation_accuracy"] == metrics["validation"]["accuracy"]
        assert figures["steps"] == metrics["train"]["global_step"] == 2
        assert figures["final_train_loss"] == metrics["train"]["train_loss"]
    assert steps["config_gpu"]["figures"]["probe_feature_seconds"] is not None  # config_gpu.yaml is LP-FT
    assert steps["torch_compile"]["figures"]["probe_feature_seconds"] is None  # --adaptation full: no probe
    assert steps["torch_compile"]["figures"]["torch_compile"] is False  # switched off without CUDA; True on a GPU
    bench = json.loads((out / "bench_pipeline_result.json").read_text())
    assert bench["input_size"] == [32, 32] and bench["batch_size"] == 8 and bench["device"] == "cpu"
    assert steps["bench_pipeline"]["figures"] == {**{k: v["median"] for k, v in bench["figures"].items()},
                                                  "device": "cpu", "batch_size": 8, "repeats": 1}  # fmt: skip
    # One table, a row per figure.
    for row in ("test_accuracy", "whole command (s)", "efficiency", "torch_compile", "final_train_loss"):
        assert row in result.stdout, result.stdout
    assert "all steps passed" in result.stdout

    # A rerun continues: finished steps are read back, not rerun.
    again = _gpu_check("--model", tiny_dinov2, "--data", jpeg_folder, "--out", out, "--cpu")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("read back from") == 3, again.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a CUDA GPU")
def test_without_a_gpu_it_exits_2_with_one_paragraph(tmp_path):
    result = _gpu_check("--out", tmp_path / "check", GPU_CHECK_CPU="")
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stderr.strip()
    assert "no CUDA GPU is visible" in message and "--cpu" in message and "\n" not in message
    assert not (tmp_path / "check").exists()  # nothing ran, nothing written
