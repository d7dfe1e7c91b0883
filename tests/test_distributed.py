"""Two processes under `accelerate launch` (gloo on CPU): the numbers mean what they mean in one process."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, evaluate_only

EVAL_SAMPLES = 299  # odd: the distributed sampler must pad one split, and the padding must not be counted


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "out"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "run_snacks.py", "recipes/smoke.yaml", "--output_dir", str(out),
        "--num_train_epochs", "3", "--max_eval_samples", str(EVAL_SAMPLES),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-4000:]
    return out, result


def test_training_completes_with_full_sample_counts(two_process_run):
    out, _ = two_process_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation"]["samples"] == EVAL_SAMPLES
    assert metrics["test"]["samples"] == EVAL_SAMPLES
    assert metrics["effective_batch_size"] == 64  # 32 per device x 2 processes x 1 accumulation step
    assert metrics["train"]["epoch"] == pytest.approx(3.0)


def test_accuracy_equals_a_single_process_evaluation(two_process_run):
    out, _ = two_process_run
    distributed = json.loads((out / "metrics.json").read_text())
    result = evaluate_only(out)
    assert result.returncode == 0, result.stderr[-3000:]
    single = json.loads((out / "eval_only_metrics.json").read_text())
    for split in ("validation", "test"):
        assert single[split]["samples"] == distributed[split]["samples"] == EVAL_SAMPLES
        # Same images, same weights: a padded duplicate counted twice would shift accuracy by 1/299.
        assert single[split]["accuracy"] == pytest.approx(distributed[split]["accuracy"], abs=1e-9)
        assert single[split]["cross_entropy"] == pytest.approx(distributed[split]["cross_entropy"], rel=1e-6)


def test_files_and_logs_come_from_the_main_process_only(two_process_run):
    out, result = two_process_run
    combined = result.stdout + result.stderr
    assert result.stdout.count("Run summary") == 1
    assert combined.count("Effective batch size 64") == 1
    assert combined.count("Wrote ") == 2  # resolved recipe + metrics, once each
    written = sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith("eval_only"))
    assert written == [
        "README.md", "config.json", "metrics.json", "model.safetensors", "preprocessor_config.json",
        "resolved_recipe.yaml", "training_args.bin",
    ]  # fmt: skip
