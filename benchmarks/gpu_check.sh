#!/usr/bin/env bash
# The first run on one CUDA GPU, offline, in at most 10 minutes: config_gpu.yaml on the local DINOv2-S and
# snacks, the pipeline benchmark on a random ViT-B/16, a short torch_compile run; one table and
# outputs/gpu_check/gpu_check.json. `benchmarks/gpu_check.sh --cpu` (or GPU_CHECK_CPU=1) rehearses every
# step on the CPU with tiny sizes. Options: benchmarks/gpu_check.py --help. PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
