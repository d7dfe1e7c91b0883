#!/usr/bin/env python
"""The first run on a CUDA GPU, as one command (docs/benchmarks.md#the-gpu-check):

    benchmarks/gpu_check.sh                 # one CUDA GPU, offline: about 5 minutes on one H200, 10 at most
    benchmarks/gpu_check.sh --cpu           # rehearsal (or GPU_CHECK_CPU=1): every step, tiny sizes, on the CPU

Three steps (config_gpu.yaml, the pipeline benchmark, 20 torch_compile steps), each a subprocess with its own time
limit and log; a step that passed with the same command is read back. Exit: 0 passed, 1 a step failed, 2 no GPU.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
# The local model and data: ../shared beside the checkout, or shared/ inside it where a machine puts it there.
BESIDE, INSIDE = ROOT.parent / "shared", ROOT / "shared"
SHARED = INSIDE if INSIDE.is_dir() and not BESIDE.is_dir() else BESIDE
CONFIG_GPU = "recipes/dinov2-small/snacks/config_gpu.yaml"
CONFIG_TUNED = "recipes/vit-base-patch16-224-in21k/snacks/config_tuned.yaml"
# Seconds per step on the GPU, 570 in all: under 10 minutes with start-up. Estimated on one H200: 2-3, 1.5, 1.5 min.
LIMITS = {"config_gpu": 270, "bench_pipeline": 150, "torch_compile": 150}
# The rehearsal: the same commands on a few images and steps (two workers still exercise the worker path).
TINY_RUN = ("--max_train_samples 32 --max_eval_samples 16 --image_size 56 --per_device_train_batch_size 8 "
            "--per_device_eval_batch_size 16 --dataloader_num_workers 2 --max_steps 2").split()  # fmt: skip
TINY_VIT = ["--config_overrides", "{image_size: 32, patch_size: 8, hidden_size: 32, num_hidden_layers: 2, "
            "num_attention_heads: 2, intermediate_size: 64}"]  # fmt: skip
NO_GPU = ("gpu_check: no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is False, torch {torch}, built "
          "for CUDA {cuda}), so there is nothing to check here. Run it on a machine with one CUDA GPU and a CUDA "
          "build of PyTorch (nvidia-smi should list the GPU; CUDA_VISIBLE_DEVICES must not hide it), or rehearse "
          "every step on the CPU with tiny sizes: benchmarks/gpu_check.sh --cpu (or GPU_CHECK_CPU=1).")


def commands(opts, out: Path) -> dict[str, list[str]]:
    """Each step's command line, after the interpreter."""
    run = ["run_snacks.py", CONFIG_GPU, "--model_name_or_path", opts.model, "--dataset_name", opts.data,
           "--overwrite_output_dir", "true"]  # fmt: skip
    # Only the compiled loop: no probe (switching adaptation leaves the recipe's probe keys out), no checkpoints.
    compiled = [*run, "--output_dir", str(out / "torch_compile"), "--torch_compile", "true", "--adaptation", "full",
                "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
                "--logging_steps", "5", "--max_eval_samples", "256"]  # fmt: skip
    bench = ["-m", "benchmarks.bench_pipeline", CONFIG_TUNED, "--model_name_or_path", "null", "--model_type", "vit",
             "--dataset_name", opts.data, "--epochs", "2", "--out", str(out / "bench_pipeline_result.json")]
    if opts.cpu:
        return {"config_gpu": [*run, "--output_dir", str(out / "config_gpu"), *TINY_RUN],
                "bench_pipeline": [*bench, *TINY_VIT, *"--repeats 1 --steps 3 --warmup_steps 1 --eval_samples 16 "
                                   "--max_train_samples 48 --dataloader_num_workers 2 --per_device_train_batch_size 8"
                                   .split()],
                "torch_compile": [*compiled, *TINY_RUN]}  # fmt: skip
    # 2 epochs of 4,838 photos at batch 64 and 50-step limits and baseline, twice: ~45 s a repeat on an H200.
    return {"config_gpu": [*run, "--output_dir", str(out / "config_gpu")],
            "bench_pipeline": [*bench, "--repeats", "2", "--steps", "50", "--warmup_steps", "10"],
            "torch_compile": [*compiled, "--max_steps", "20"]}  # fmt: skip


def run_step(name: str, command: list[str], out: Path, limit: float | None) -> dict:
    """Run one step, or read back its record when it passed with the same command."""
    record, log = out / f"{name}.json", out / f"{name}.log"
    done = json.loads(record.read_text()) if record.is_file() else {}
    if done.get("command") == command and done.get("status") == "passed":
        print(f"[{name}] finished earlier with the same command: read back from {record}", flush=True)
        return done
    print(f"[{name}] running ({f'at most {limit:.0f} s; ' if limit else ''}log {log}): {' '.join(command)}", flush=True)
    start = time.perf_counter()
    with log.open("w") as stream:
        try:
            result = subprocess.run([sys.executable, *command], cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT,
                                    timeout=limit)  # fmt: skip
            status = "passed" if result.returncode == 0 else f"failed (exit {result.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {limit:.0f} s"
    done = {"step": name, "command": command, "status": status, "seconds": round(time.perf_counter() - start, 1)}
    try:
        done["figures"] = figures(name, out) if status == "passed" else None
    except (OSError, KeyError, ValueError) as error:  # it ran, but left no readable or sound result
        done["status"] = f"failed (its result: {error!r})"
    if done["status"] != "passed":
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        print(f"[{name}] {done['status']}; the end of {log}:\n  " + "\n  ".join(tail), flush=True)
    record.write_text(json.dumps(done, indent=2) + "\n")
    return done


def figures(name: str, out: Path) -> dict:
    if name == "bench_pipeline":
        result = json.loads((out / "bench_pipeline_result.json").read_text())
        return {**{key: value["median"] for key, value in result["figures"].items()}, "device": result["device"],
                "batch_size": result["batch_size"], "repeats": len(result["repeats"])}  # fmt: skip
    metrics = json.loads((out / name / "metrics.json").read_text())
    train = metrics["train"]
    if not math.isfinite(train["train_loss"]):
        raise ValueError(f"the training loss is {train['train_loss']}")
    return {"test_accuracy": metrics["test"]["accuracy"], "validation_accuracy": metrics["validation"]["accuracy"],
            "wall_seconds_in_run": metrics["wall_seconds"], "steps": train["global_step"],
            "train_images_per_s": round(train["train_samples_per_second"], 1),  # its evaluations and saves included
            "final_train_loss": train["train_loss"],  # and whether it ran compiled: the CPU switches that off
            "torch_compile": "\ntorch_compile: true" in (out / name / "resolved_recipe.yaml").read_text(),
            "probe_feature_seconds": (metrics.get("probe") or {}).get("probe_feature_seconds")}  # fmt: skip


def table(steps: dict[str, dict]) -> str:
    lines = [f"{'step':<16}{'figure':<28}value", "-" * 70]
    for name, step in steps.items():
        shown = {"status": step["status"], "whole command (s)": step["seconds"], **(step.get("figures") or {})}
        lines += [f"{name * (i == 0):<16}{k:<28}{'-' if v is None else v}" for i, (k, v) in enumerate(shown.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", default=os.environ.get("GPU_CHECK_CPU", "") not in ("", "0"),
                        help="rehearse every step on the CPU with tiny sizes (also GPU_CHECK_CPU=1)")  # fmt: skip
    parser.add_argument("--model", default=str(SHARED / "models" / "dinov2-small"), help="the local DINOv2-S copy")
    parser.add_argument("--data", default=str(SHARED / "data" / "snacks"), help="the local snacks imagefolder")
    parser.add_argument("--out", default=None, help="default outputs/gpu_check (outputs/gpu_check_cpu with --cpu)")
    opts = parser.parse_args(argv)
    if not opts.cpu and not torch.cuda.is_available():
        print(NO_GPU.format(torch=torch.__version__, cuda=torch.version.cuda), file=sys.stderr)
        return 2
    for what, path in (("--model", opts.model), ("--data", opts.data)):
        if not Path(path).is_dir():
            parser.error(f"{what} {path} is not a folder; give the local copy")
    out = Path(opts.out or ROOT / "outputs" / ("gpu_check_cpu" if opts.cpu else "gpu_check")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # The rehearsal has no limits: a loaded CPU is slow, and it checks the commands, not the time.
    steps = {name: run_step(name, command, out, None if opts.cpu else LIMITS[name])
             for name, command in commands(opts, out).items()}  # fmt: skip
    gpu = None if opts.cpu else torch.cuda.get_device_properties(0)
    versions = {name: importlib.metadata.version(name) for name in ("transformers", "datasets", "accelerate")}
    mode = "cpu rehearsal (tiny sizes; tf32, torch_compile, bf16 without native bf16: off)" if opts.cpu else "gpu"
    hardware = {"mode": mode, "gpu": gpu and gpu.name, "gpu_memory_gib": gpu and round(gpu.total_memory / 2**30, 1),
                "gpu_count": torch.cuda.device_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
                "cpu_count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                **versions}  # fmt: skip
    report = {"hardware": hardware, "seconds": round(time.perf_counter() - started, 1), "steps": steps}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    passed = all(s["status"] == "passed" for s in steps.values())
    verdict = "all steps passed" if passed else "some steps FAILED"
    print(f"\n{table(steps)}\n\n{hardware['gpu'] or 'CPU rehearsal'}, torch {torch.__version__}, CUDA "
          f"{torch.version.cuda}; {report['seconds']:.0f} s in all; {verdict}; wrote {out / 'gpu_check.json'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
