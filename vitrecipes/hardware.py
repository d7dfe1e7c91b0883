"""The machine: the library versions the code needs, and the GPU-only speed settings (bf16, TF32, torch.compile,
attention kernel), switched off with a warning on a CPU so that a GPU recipe still runs there, no slower."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from .errors import RecipeError

# key -> why it is switched off without a CUDA GPU
GPU_ONLY_SETTINGS = {
    **dict.fromkeys(("bf16", "bf16_full_eval"), "this CPU has no native bf16 (AMX or AVX512-BF16), so bf16 would be "
                    "emulated and slower than fp32"),
    "tf32": "TF32 matmuls exist only on NVIDIA Ampere and newer GPUs",
    "torch_compile": "compiling takes minutes on a CPU and rarely pays off there",
}
ATTENTION_KERNELS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


def switch_off_gpu_only_settings(values: dict[str, Any]) -> list[str]:
    """Without a usable CUDA GPU, turn the GPU-only settings in `values` (TrainingArguments keywords) off, and tf32
    on a GPU older than Ampere; one sentence per setting switched off."""
    if torch.cuda.is_available() and not values.get("use_cpu", False):
        if not values.get("tf32") or torch.cuda.get_device_capability() >= (8, 0):
            return []
        values["tf32"] = None  # TrainingArguments refuses it there; like on a CPU, the recipe runs without
        return [f"tf32: switched off, this GPU is older than Ampere ({GPU_ONLY_SETTINGS['tf32']})."]
    if values.get("torch_compile_backend") or values.get("torch_compile_mode"):
        values["torch_compile"] = True  # either implies it, as in TrainingArguments
    notes = []
    for key, why in GPU_ONLY_SETTINGS.items():
        if not values.get(key):
            continue
        if key.startswith("bf16") and native_cpu_bf16():
            if values.get("use_cpu") and (values.get("do_train", True) or key == "bf16_full_eval"):
                evaluation = "bf16, and the model is saved in bf16, as pipeline() then runs it" if values.get(
                    "bf16_full_eval") else "fp32"  # fmt: skip
                what = "training runs in bf16, the final" if key == "bf16" else "the final"
                notes.append(f"{key}: kept, this CPU computes bf16 natively ({CPU_BF16}); {what} evaluation in "
                             f"{evaluation}.")  # fmt: skip
                continue
            # TrainingArguments refuses bf16 without a GPU unless use_cpu is set; evaluation alone stays fp32.
            why = "an evaluation-only run evaluates in fp32" if values.get("use_cpu") else (
                "use_cpu: true would keep it on this CPU, which computes bf16 natively")  # fmt: skip
        values[key] = None if key == "tf32" else False
        if key == "torch_compile":
            values["torch_compile_backend"] = values["torch_compile_mode"] = None
        notes.append(f"{key}: switched off, no CUDA GPU here ({why}).")
    return notes


CPU_BF16 = "AMX or AVX512-BF16: DINOv2-S trains about 1.4x and infers about 2.7x faster than in fp32"


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (Intel AMX or AVX512-BF16, as Linux reports them),
    where bf16 autocast is faster than fp32; elsewhere it is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap public way to ask, so fp32
        return False
    return torch.backends.mkldnn.is_available() and re.search(r"\b(amx_bf16|avx512_bf16)\b", flags) is not None


def check_attention_kernel(name: str) -> None:
    if name.startswith("flash_attention") and not torch.cuda.is_available():
        raise RecipeError(f"attn_implementation: {name} needs a CUDA GPU and the flash-attn package; this machine "
                          "has no CUDA GPU. Use attn_implementation: sdpa (the default), which picks the fastest "
                          "kernel PyTorch has for this machine, flash attention included on a GPU.")  # fmt: skip


# The oldest versions the code is known to work with (keep in step with requirements.txt).
REQUIREMENTS = ("transformers>=5.18", "datasets>=3.0", "accelerate>=1.0")


def check_requirements() -> None:
    from transformers.utils.versions import require_version

    for requirement in REQUIREMENTS:
        try:
            require_version(requirement)
        except ImportError as error:
            raise RecipeError(f"{error}. This code needs {requirement}: run `pip install -r "
                              "requirements.txt` (in a fresh virtual environment if other "
                              "projects pin the older version).") from None  # fmt: skip
