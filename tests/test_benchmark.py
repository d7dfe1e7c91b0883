"""The pipeline benchmark runs end to end on a tiny input and reports every field (no timing asserts)."""

import json
import os
import subprocess
import sys

from conftest import ROOT

FIELDS = {
    "limit_ips",
    "train_ips",
    "efficiency",
    "baseline_ips",
    "speedup_vs_baseline",
    "eval_ips",
    "predict_ips",
    "peak_rss_mib",
    "batch_size",
    "input_size",
    "device",
    "train_ips_first_epoch",
    "efficiency_first_epoch",
    "train_ips_later_epochs",
    "efficiency_later_epochs",
}


def test_benchmark_prints_table_and_json_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_pipeline.py"), "recipes/smoke.yaml",
         "--steps", "3", "--warmup_steps", "1", "--epochs", "2", "--eval_samples", "16", "--predict_samples", "8"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert FIELDS <= set(report), FIELDS - set(report)
    for key in ("limit_ips", "train_ips", "train_ips_first_epoch", "train_ips_later_epochs", "baseline_ips",
                "eval_ips", "predict_ips", "peak_rss_mib"):  # fmt: skip
        assert report[key] > 0, key
    assert report["efficiency"] == round(report["train_ips"] / report["limit_ips"], 3)
    assert report["batch_size"] == 8 and report["input_size"] == [32, 32]
    assert len(report["limit_ips_runs"]) == 2 and len(report["train_ips_runs"]) == 1  # limit, project, limit
    assert report["epochs"] == 2
    table = "\n".join(lines[:-1])
    for row in ("limit (synthetic tensors)", "baseline (naive PIL)", "project"):
        assert row in table
