"""benchmarks/gpu_check.sh: its CPU rehearsal runs every step end to end, and without a GPU it stops clearly."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _gpu_check(*args, **env):  # the timeout catches a hang only: a loaded 2-core CPU is slow
    return subprocess.run(
        [str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=1800,
        env={**os.environ, "PYTHON": sys.executable, **env},
    )  # fmt: skip


def test_cpu_rehearsal_runs_every_step_and_writes_every_row(tmp_path, tiny_dinov2, jpeg_folder):
    out = tmp_path / "check"
    result = _gpu_check("--model", tiny_dinov2, "--data", jpeg_folder, "--out", out, GPU_CHECK_CPU="1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["hardware"]["mode"].startswith("cpu rehearsal")
    assert {"torch", "cuda", "gpu", "transformers"} <= set(report["hardware"])
    steps = report["steps"]
    assert list(steps) == ["config_gpu", "bench_pipeline", "torch_compile"]
    assert all(step["status"] == "passed" and step["seconds"] > 0 for step in steps.values()), steps
    run = steps["config_gpu"]["figures"]
    assert 0 <= run["test_accuracy"] <= 1 and run["steps"] == 2 and run["train_images_per_s"] > 0
    bench = steps["bench_pipeline"]["figures"]
    assert bench["efficiency"] > 0 and bench["train_ips"] > 0 and bench["device"] == "cpu"
    compiled = steps["torch_compile"]["figures"]
    assert compiled["steps"] == 2 and compiled["loss_finite"]
    assert compiled["torch_compile"] is False  # switched off without CUDA; on a GPU it must read True
    # One table, every row of it.
    for row in ("test / validation accuracy", "whole command", "pipeline efficiency", "peak GPU memory",
                "compiled / steps / final loss"):  # fmt: skip
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
