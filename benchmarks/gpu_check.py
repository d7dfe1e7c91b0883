#!/usr/bin/env python
"""The first run on a CUDA GPU, as one command (benchmarks/gpu_check.sh runs this offline):

    benchmarks/gpu_check.sh                 # one CUDA GPU: about 5 minutes on one H200, 10 at most
    benchmarks/gpu_check.sh --cpu           # rehearsal (or GPU_CHECK_CPU=1): every step, tiny sizes, on the CPU

Three steps, each a subprocess with its own time limit (so the whole stays under 10 minutes) and log:
- config_gpu:      `run_snacks.py recipes/dinov2-small/snacks/config_gpu.yaml` (DINOv2-S, 224 px, LP-FT,
                   bf16, 5 epochs, uncapped) on the local model and data: test accuracy, whole-command
                   time, training images/s;
- bench_pipeline:  benchmarks/bench_pipeline.py with config_tuned.yaml's GPU settings on a ViT-B/16-shaped
                   model with random weights (ViTConfig's defaults, no download): pipeline efficiency,
                   bf16 training images/s, peak GPU memory;
- torch_compile:   config_gpu.yaml with `torch_compile: true`, 20 steps of full fine-tuning: it compiles
                   and trains (steps done, final loss finite).

Prints one table and writes <out>/gpu_check.json with the hardware named. A step already finished with
the same command (<out>/<step>.json) is read back, so a rerun continues; an unfinished one starts afresh.
Exit status: 0 all passed, 1 a step failed (its log is named), 2 no CUDA GPU and no rehearsal asked.
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

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
CONFIG_GPU = RECIPES / "dinov2-small" / "snacks" / "config_gpu.yaml"
CONFIG_TUNED = RECIPES / "vit-base-patch16-224-in21k" / "snacks" / "config_tuned.yaml"

# Seconds each step may take on the GPU (the sum, with start-up, stays under 10 minutes). Estimates on
# one H200: config_gpu ~2-3 min (24k training images at several hundred images/s, 6 evaluations), the
# pipeline benchmark ~1.5 min, the compiled run ~1.5 min (most of it compiling).
LIMITS = {"config_gpu": 270, "bench_pipeline": 150, "torch_compile": 150}
# The rehearsal's tiny sizes: the same commands, a few images and steps (a from-scratch ViT that small for
# the benchmark). Two workers still exercise the worker path.
TINY_RUN = ["--max_train_samples", "32", "--max_eval_samples", "16", "--image_size", "56",
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
            "--dataloader_num_workers", "2"]  # fmt: skip
TINY_VIT = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 64}  # fmt: skip
NO_GPU = (
    "gpu_check: no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is False, torch {torch}, built "
    "for CUDA {cuda}), so there is nothing to check here. Run it on a machine with one CUDA GPU and a CUDA "
    "build of PyTorch (nvidia-smi should list the GPU; CUDA_VISIBLE_DEVICES must not hide it), or rehearse "
    "every step on the CPU with tiny sizes: benchmarks/gpu_check.sh --cpu (or GPU_CHECK_CPU=1)."
)


def shared(path: str) -> str:
    """../shared/<path> beside the checkout, or shared/<path> inside it (where a machine puts it there)."""
    beside, inside = ROOT.parent / "shared" / path, ROOT / "shared" / path
    return str(inside if inside.exists() and not beside.exists() else beside)


def hardware(cpu: bool) -> dict:
    import torch

    found = {
        "mode": "cpu rehearsal (tiny sizes; tf32, torch_compile and bf16 without native bf16 switched off)"
        if cpu
        else "gpu",
        "gpu": None if cpu else torch.cuda.get_device_name(0),
        "gpu_memory_gib": None if cpu else round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
        "gpu_count": torch.cuda.device_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    for package in ("transformers", "datasets", "accelerate"):
        found[package] = importlib.metadata.version(package)
    return found


def commands(opts) -> dict[str, list[str]]:
    """Each step's command line (without the interpreter)."""
    out, local = Path(opts.out), ["--model_name_or_path", opts.model, "--dataset_name", opts.data]
    run = ["run_snacks.py", str(CONFIG_GPU), *local, "--overwrite_output_dir", "true"]
    compiled = [*run, "--output_dir", str(out / "torch_compile"), "--torch_compile", "true",
                "--adaptation", "full", "--probe_regularization", "0.1",  # no probe: only the compiled loop
                "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
                "--logging_steps", "5", "--max_eval_samples", "256"]  # fmt: skip
    bench = ["benchmarks/bench_pipeline.py", str(CONFIG_TUNED), "--model_name_or_path", "null", "--model_type", "vit",
             "--dataset_name", opts.data, "--out", str(out / "bench_pipeline_result.json")]  # fmt: skip
    if opts.cpu:
        tiny_vit = [word for key, value in TINY_VIT.items() for word in (f"--config_overrides.{key}", str(value))]
        return {
            "config_gpu": [*run, "--output_dir", str(out / "config_gpu"), *TINY_RUN, "--max_steps", "2"],
            "bench_pipeline": [*bench, "--batch_size", "8", "--epochs", "2", "--repeats", "1", "--steps", "3",
                               "--warmup_steps", "1", "--eval_samples", "16", "--predict_samples", "8",
                               "--max_train_samples", "48", "--dataloader_num_workers", "2", *tiny_vit],
            "torch_compile": [*compiled, *TINY_RUN, "--max_steps", "2"],
        }  # fmt: skip
    return {
        "config_gpu": [*run, "--output_dir", str(out / "config_gpu")],
        # 2 epochs of 4,838 photos at batch 64 and a 50-step baseline, twice: ~45 s a repeat on an H200.
        "bench_pipeline": [*bench, "--batch_size", "64", "--epochs", "2", "--repeats", "2", "--steps", "50",
                           "--warmup_steps", "10"],
        "torch_compile": [*compiled, "--max_steps", "20"],
    }  # fmt: skip


def run_step(name: str, command: list[str], out: Path, limit: float | None) -> dict:
    """Run one step (or read back its finished result); its record with the seconds the command took."""
    record = out / f"{name}.json"
    if record.is_file():
        done = json.loads(record.read_text())
        if done.get("command") == command and done.get("status") == "passed":
            print(f"[{name}] finished earlier with the same command: read back from {record}", flush=True)
            return done
    log = out / f"{name}.log"
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
    if status == "passed":
        try:
            done["figures"] = FIGURES[name](out)
        except (OSError, KeyError, ValueError) as error:  # ran, but left no readable result
            done["status"] = f"failed (its result is unreadable: {error!r})"
    else:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        print(f"[{name}] {status}; the end of {log}:\n  " + "\n  ".join(tail), flush=True)
    record.write_text(json.dumps(done, indent=2) + "\n")
    return done


def run_figures(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    train = metrics["train"]
    recipe = (folder / "resolved_recipe.yaml").read_text()
    return {
        "test_accuracy": metrics["test"]["accuracy"],
        "validation_accuracy": metrics["validation"]["accuracy"],
        "wall_seconds_in_run": metrics["wall_seconds"],
        # Trainer's figure: training images over the loop's time, its evaluations and saves included
        "train_images_per_s": round(train["train_samples_per_second"], 1),
        "steps": train["global_step"],
        "final_train_loss": train["train_loss"],
        "loss_finite": math.isfinite(train["train_loss"]),
        "torch_compile": "\ntorch_compile: true" in recipe,  # what ran: the CPU switches it off
        "probe_feature_seconds": metrics.get("probe", {}).get("probe_feature_seconds"),
    }


def bench_figures(out: Path) -> dict:
    result = json.loads((out / "bench_pipeline_result.json").read_text())
    figures = {key: value["median"] for key, value in result["figures"].items()}
    keep = ("efficiency", "efficiency_first_epoch", "efficiency_later_epochs", "train_ips", "limit_ips",
            "baseline_ips", "speedup_vs_baseline", "eval_ips", "predict_ips", "peak_gpu_mib")  # fmt: skip
    found = {key: figures.get(key) for key in keep}
    return {**found, "device": result["device"], "batch_size": result["batch_size"], "repeats": len(result["repeats"])}


def compile_figures(out: Path) -> dict:
    figures = run_figures(out / "torch_compile")
    if not figures["loss_finite"]:
        raise ValueError(f"the compiled run's training loss is {figures['final_train_loss']}")
    return figures


FIGURES = {
    "config_gpu": lambda out: run_figures(out / "config_gpu"),
    "bench_pipeline": bench_figures,
    "torch_compile": compile_figures,
}


def table(steps: dict[str, dict]) -> str:
    def cell(step, key, digits=3, unit=""):
        value = steps[step].get("figures", {}).get(key)
        return "-" if value is None else (f"{value:.{digits}f}{unit}" if isinstance(value, float) else f"{value}{unit}")

    rows = [("config_gpu.yaml, DINOv2-S 224 px", "test / validation accuracy",
             f"{cell('config_gpu', 'test_accuracy', 4)} / {cell('config_gpu', 'validation_accuracy', 4)}"),
            ("", "whole command", f"{steps['config_gpu']['seconds']:.0f} s"),
            ("", "training images/s (Trainer)", cell("config_gpu", "train_images_per_s", 1)),
            ("bench_pipeline, ViT-B/16 random", "pipeline efficiency (first / later epochs)",
             f"{cell('bench_pipeline', 'efficiency')} ({cell('bench_pipeline', 'efficiency_first_epoch')} / "
             f"{cell('bench_pipeline', 'efficiency_later_epochs')})"),
            ("", "training images/s (limit)",
             f"{cell('bench_pipeline', 'train_ips', 1)} ({cell('bench_pipeline', 'limit_ips', 1)})"),
            ("", "peak GPU memory", cell("bench_pipeline", "peak_gpu_mib", unit=" MiB")),
            ("torch_compile: true", "compiled / steps / final loss",
             f"{cell('torch_compile', 'torch_compile')} / {cell('torch_compile', 'steps')} / "
             f"{cell('torch_compile', 'final_train_loss')}"),
            ("", "whole command", f"{steps['torch_compile']['seconds']:.0f} s")]  # fmt: skip
    status = [(name, "status", s["status"]) for name, s in steps.items() if s["status"] != "passed"]
    lines = [f"{'step':<34}{'figure':<46}value", "-" * 100]
    lines += [f"{a:<34}{b:<46}{c}" for a, b, c in [*rows, *status]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", default=os.environ.get("GPU_CHECK_CPU", "") not in ("", "0"),
                        help="rehearse every step on the CPU with tiny sizes (also GPU_CHECK_CPU=1)")  # fmt: skip
    parser.add_argument("--model", default=shared("models/dinov2-small"), help="the local DINOv2-S copy")
    parser.add_argument("--data", default=shared("data/snacks"), help="the local snacks imagefolder")
    parser.add_argument("--out", default=None, help="default outputs/gpu_check (outputs/gpu_check_cpu with --cpu)")
    opts = parser.parse_args(argv)
    import torch

    if not opts.cpu and not torch.cuda.is_available():
        print(NO_GPU.format(torch=torch.__version__, cuda=torch.version.cuda), file=sys.stderr)
        return 2
    for what, path in (("--model", opts.model), ("--data", opts.data)):
        if not Path(path).is_dir():
            print(f"gpu_check: {what} {path} is not a folder; give the local copy (see --help).", file=sys.stderr)
            return 2
    out = Path(opts.out or ROOT / "outputs" / ("gpu_check_cpu" if opts.cpu else "gpu_check")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # The rehearsal has no limits: a loaded CPU is slow, and it checks the commands, not the time.
    steps = {name: run_step(name, cmd, out, None if opts.cpu else LIMITS[name]) for name, cmd in commands(opts).items()}
    report = {"hardware": hardware(opts.cpu), "seconds": round(time.perf_counter() - started, 1), "steps": steps}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n" + table(steps))
    passed = all(s["status"] == "passed" for s in steps.values())
    gpu = report["hardware"]["gpu"] or "CPU rehearsal"
    print(f"\n{gpu}, torch {torch.__version__}, CUDA {torch.version.cuda}; {report['seconds']:.0f} s in all; "
          f"{'all steps passed' if passed else 'some steps FAILED'}; wrote {out / 'gpu_check.json'}")  # fmt: skip
    return 0 if passed else 1


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    sys.exit(main())
