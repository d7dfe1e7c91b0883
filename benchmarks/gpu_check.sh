#!/usr/bin/env bash
# The first run on one CUDA GPU, offline (benchmarks/gpu_check.py --help); --cpu rehearses it. PYTHON: the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
