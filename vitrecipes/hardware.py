"""GPU speed settings (bf16, TF32, torch.compile, attention kernel) and what they become on a CPU.

The GPU recipes turn these on. The same recipe must still run on a laptop or a CPU CI machine, so
each GPU-only setting is switched off there with one warning line, and the resolved recipe records
what actually ran. None of them is left on to slow a CPU run down silently: bf16 autocast is
emulated on most CPUs (slower than fp32), TF32 does not exist there, and torch.compile spends
minutes compiling for a short CPU run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any

import torch

from .errors import RecipeError

# key -> why it is switched off without a CUDA GPU
GPU_ONLY_SETTINGS = {
    "bf16": "bf16 autocast is emulated on most CPUs and runs slower than fp32",
    "tf32": "TF32 matmuls exist only on NVIDIA Ampere and newer GPUs",
    "torch_compile": "compiling takes minutes on a CPU and rarely pays off there",
}
ATTENTION_KERNELS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


def has_cuda(values: dict[str, Any]) -> bool:
    return torch.cuda.is_available() and not values.get("use_cpu", False)


def switch_off_gpu_only_settings(values: dict[str, Any]) -> list[str]:
    """On a machine without a usable CUDA GPU, turn GPU-only settings off in `values` (coerced
    TrainingArguments keywords). Returns one sentence per setting switched off."""
    if has_cuda(values):
        return []
    notes = []
    for key, why in GPU_ONLY_SETTINGS.items():
        compile_implied = key == "torch_compile" and (
            values.get("torch_compile_backend") or values.get("torch_compile_mode")
        )
        if values.get(key) or compile_implied:
            values[key] = None if key == "tf32" else False
            if key == "torch_compile":
                values["torch_compile_backend"] = values["torch_compile_mode"] = None
            notes.append(f"{key}: switched off, no CUDA GPU here ({why}).")
    return notes


def check_attention_kernel(name: str) -> None:
    """Fail early, with the fix, for a kernel this machine cannot run."""
    if name not in ATTENTION_KERNELS:
        raise RecipeError(f"attn_implementation: {name!r} is not known; use one of {', '.join(ATTENTION_KERNELS)}.")
    if name.startswith("flash_attention") and not torch.cuda.is_available():
        raise RecipeError(
            f"attn_implementation: {name} needs a CUDA GPU and the flash-attn package; this machine has no "
            "CUDA GPU. Use attn_implementation: sdpa (the default), which picks the fastest kernel PyTorch "
            "has for this machine, flash attention included on a GPU."
        )


# glibc's mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse; True if it took effect (Linux with glibc only).

    By default glibc serves blocks above a moving threshold with fresh mmap calls and hands freed
    memory at the top of its heap back to the kernel. A training loop frees and re-allocates the same
    activation and batch buffers every step, so each step faults them back in page by page: about
    3,000 minor faults a step for the tiny CPU recipe, more once decoded images are in the mix.
    Fixed thresholds (32 MiB, glibc's largest mmap threshold, and 1 GiB of free heap kept) turn them
    into reuse: the fault count drops about tenfold. The process-wide setting is why this is done
    once, by the entry point.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**30))
