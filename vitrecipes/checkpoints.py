"""Deciding what to do with an output folder that already holds something: resume, refuse, or overwrite.

Re-running the command of a run that crashed resumes from its last *complete* checkpoint. A folder
holding a finished run, or a run of a different recipe, is never silently reused.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import yaml

from .config import RESOLVED_RECIPE_NAME
from .errors import RecipeError

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Keys that may differ between a crashed run and its resumption without changing what is trained.
_RESUMABLE_DIFFERENCES = {
    "output_dir",
    "resume_from_checkpoint",
    "overwrite_output_dir",
    "logging_steps",
    "logging_first_step",
    "log_level",
    "log_level_replica",
    "disable_tqdm",
    "report_to",
    "run_name",
    "push_to_hub",
    "hub_model_id",
    "hub_strategy",
    "hub_private_repo",
    "hub_always_push",
    "hub_revision",
    "dataloader_num_workers",
    "dataloader_persistent_workers",
    "dataloader_prefetch_factor",
    "dataloader_pin_memory",
    "per_device_eval_batch_size",
    "save_total_limit",
    "max_bad_images",
}


def checkpoint_step(path: Path) -> int | None:
    match = _CHECKPOINT.match(path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def is_complete_checkpoint(path: Path) -> bool:
    """True when every file a resume needs is present and readable.

    A process killed while saving leaves a folder with some files missing or cut short; the
    Trainer would pick it as the latest checkpoint and fail (or, worse, half-load it).
    """
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        if "global_step" not in state:
            return False
        # LoRA runs checkpoint their adapters (and trained head) only.
        weights = next(
            (path / n for n in ("model.safetensors", "adapter_model.safetensors") if (path / n).exists()),
            path / "model.safetensors",
        )
        with weights.open("rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(header_size))
        # The header lists the byte ranges of all tensors; a file cut short is smaller than their end.
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if weights.stat().st_size < 8 + header_size + end:
            return False
        for name in ("optimizer.pt", "scheduler.pt"):
            if not zipfile.is_zipfile(path / name):  # torch.save writes a zip; cut short, it is not one
                return False
        return any(path.glob("rng_state*.pth"))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoint folders, oldest first."""
    found = [(checkpoint_step(p), p) for p in output_dir.glob("checkpoint-*")]
    return [p for step, p in sorted((s, p) for s, p in found if s is not None)]


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    for path in reversed(checkpoints(output_dir)):
        if is_complete_checkpoint(path):
            return path
        logger.warning("Skipping %s: it is incomplete (the process probably died while saving it).", path)
    return None


def _flatten(groups: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {k: v for group in groups.values() for k, v in group.items()}


def recipe_differences(output_dir: Path, current: dict[str, dict[str, Any]]) -> list[str]:
    """Keys whose values differ from the recipe saved in output_dir (ignoring harmless ones)."""
    saved_path = output_dir / RESOLVED_RECIPE_NAME
    if not saved_path.exists():
        return []
    saved = yaml.safe_load(saved_path.read_text()) or {}
    now = _flatten(current)
    keys = (set(saved) | set(now)) - _RESUMABLE_DIFFERENCES
    return sorted(k for k in keys if saved.get(k) != now.get(k))


def plan_output_dir(training_args, current_recipe: dict[str, dict[str, Any]], finished_marker: str) -> str | None:
    """Return the checkpoint to resume from (or None), after checking the output folder is safe to use.

    Raises RecipeError when the folder holds a finished run or a run of a different recipe and
    `overwrite_output_dir` is not set. With it set, old checkpoints are removed (main process only).
    """
    output_dir = Path(training_args.output_dir)
    requested = training_args.resume_from_checkpoint
    if requested not in (None, "", "true", "True", "auto", "false", "False"):
        path = Path(requested)
        if not is_complete_checkpoint(path):
            raise RecipeError(
                f"resume_from_checkpoint: {path} is not a complete checkpoint (it needs trainer_state.json, "
                "model.safetensors, optimizer.pt, scheduler.pt and rng_state.pth). Point it at a checkpoint-N "
                "folder, or set it to true to pick the last complete one in output_dir."
            )
        return str(path)
    if not output_dir.exists():
        return None
    if training_args.overwrite_output_dir:
        if training_args.process_index == 0:
            for path in checkpoints(output_dir):
                shutil.rmtree(path)
            (output_dir / "bad_images.jsonl").unlink(missing_ok=True)
            logger.warning("overwrite_output_dir: starting afresh in %s (old checkpoints removed).", output_dir)
        return None
    finished = (output_dir / finished_marker).exists()
    existing = checkpoints(output_dir)
    if not finished and not existing:
        return None
    if finished:
        raise RecipeError(
            f"output_dir {output_dir} already holds a finished run ({finished_marker} is there). To keep it, "
            "choose another output_dir (e.g. --output_dir outputs/my-run-2); to replace it, add "
            "--overwrite_output_dir true."
        )
    different = recipe_differences(output_dir, current_recipe)
    if different:
        raise RecipeError(
            f"output_dir {output_dir} holds checkpoints of a run with a different recipe (keys that differ: "
            f"{', '.join(different[:12])}). Resuming would mix two runs. Choose another output_dir, or add "
            "--overwrite_output_dir true to discard the old checkpoints."
        )
    if requested in ("false", "False"):
        raise RecipeError(
            f"output_dir {output_dir} holds checkpoints of an unfinished run and resume_from_checkpoint is false. "
            "Remove false to resume it, or add --overwrite_output_dir true to start afresh."
        )
    checkpoint = last_complete_checkpoint(output_dir)
    if checkpoint is None:
        logger.warning("No complete checkpoint in %s: starting from the beginning.", output_dir)
        return None
    logger.warning("Resuming the unfinished run in %s from %s.", output_dir, checkpoint.name)
    return str(checkpoint)
