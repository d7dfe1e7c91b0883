"""The output folder: the name of every file a run writes there, and what to do with one that holds something:
resume a crashed run from its last complete checkpoint, refuse a finished or different run, or start afresh."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import zipfile
from pathlib import Path
from typing import Any

import yaml
from safetensors import SafetensorError, safe_open
from transformers.trainer_utils import sort_checkpoints

from .errors import RecipeError

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
RESOLVED_RECIPE_NAME = "resolved_recipe.yaml"
BAD_IMAGES_FILE = "bad_images.jsonl"
CARD_NAME = "README.md"
REPORT_DIR = "eval_{split}"
# Inside each report folder (see report.py); its metrics file is METRICS_FILE too.
CONFUSION_JSON, CONFUSION_PNG = "confusion_matrix.json", "confusion_matrix.png"
MISTAKES_PNG, CURVES_PNG, RELIABILITY_PNG = "mistakes.png", "curves.png", "reliability_diagram.png"
PREDICTIONS_FILE, REPORT_FILE = "predictions.npz", "report.md"
# Several runs of one recipe (see experiments.py): .json and .md of each name.
SUMMARY_NAME, SWEEP_TRIALS_NAME = "summary", "sweep_trials"
SWEEP_STUDY_FILE, BEST_RECIPE_NAME = "sweep.db", "best_recipe.yaml"
# An evaluation-only run writes these instead, so it never replaces what the training run wrote.
EVAL_ONLY_METRICS_FILE = "eval_only_metrics.json"
EVAL_ONLY_RECIPE_NAME = "eval_only_recipe.yaml"
EVAL_ONLY_BAD_IMAGES_FILE = "eval_only_bad_images.jsonl"
# A run's outputs besides the model; overwrite_output_dir removes them, so a crashed new run is not the old one.
_RUN_OUTPUTS = [METRICS_FILE, BAD_IMAGES_FILE, CARD_NAME, EVAL_ONLY_METRICS_FILE, EVAL_ONLY_BAD_IMAGES_FILE,
                "eval_*", "checkpoint-*", "runs", SWEEP_STUDY_FILE, "run-*", "onnx"]  # fmt: skip
# Keys never written to the resolved recipe: secrets, and values set by the launcher per process.
_UNSAVED_KEYS = {"hub_token", "local_rank"}
# Keys that may differ between a crashed run and its resumption without changing what is trained. By hand:
# test_every_training_arguments_field_is_classified_for_resuming fails on a new TrainingArguments field (5.24.0).
_RESUMABLE_DIFFERENCES = {
    "output_dir", "resume_from_checkpoint", "overwrite_output_dir", "logging_steps", "logging_first_step",
    "log_level", "log_level_replica", "disable_tqdm", "report_to", "run_name", "push_to_hub", "hub_model_id",
    "hub_strategy", "hub_private_repo", "hub_always_push", "hub_revision", "dataloader_num_workers",
    "dataloader_persistent_workers", "dataloader_prefetch_factor", "dataloader_pin_memory",
    "per_device_eval_batch_size", "save_total_limit", "max_bad_images", "dataset_name_for_card", "export_onnx",
}  # fmt: skip


def resolved_recipe(model_args, data_args, training_args, hub=None) -> dict[str, dict[str, Any]]:
    """Every key, grouped by dataclass, without secrets; `hub`: the Hub settings taken out of training_args."""
    training = training_args.to_dict()
    if hub is not None:
        training.update(push_to_hub=hub.push_to_hub, hub_model_id=hub.hub_model_id)
    groups = {"model": dataclasses.asdict(model_args), "data": dataclasses.asdict(data_args), "training": training}
    return {name: {k: v for k, v in group.items() if k not in _UNSAVED_KEYS} for name, group in groups.items()}


def save_resolved_recipe(output_dir: str | Path, model_args, data_args, training_args, hub=None) -> Path:
    """Write every key the run used, so `python run_snacks.py <this file>` repeats the run."""
    name = RESOLVED_RECIPE_NAME if training_args.do_train else EVAL_ONLY_RECIPE_NAME
    path = Path(output_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = ["# Every setting this run used. Repeat it with: python run_snacks.py " + str(path)]
    parts += [f"# {note}" for note in getattr(training_args, "gpu_settings_switched_off", [])]
    for group, values in resolved_recipe(model_args, data_args, training_args, hub).items():
        parts += [f"\n# --- {group} ---", yaml.safe_dump(values, sort_keys=False, default_flow_style=False).rstrip()]
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def write_metrics(output_dir: str | Path, metrics: dict, trained: bool = True) -> Path:
    path = Path(output_dir) / (METRICS_FILE if trained else EVAL_ONLY_METRICS_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def bad_images_path(output_dir: str | Path, trained: bool) -> Path:
    """The run's log of unreadable images; an evaluation-only run keeps its own."""
    return Path(output_dir) / (BAD_IMAGES_FILE if trained else EVAL_ONLY_BAD_IMAGES_FILE)


def is_complete_checkpoint(path: Path) -> bool:
    """True when a resume can load everything: Trainer writes `trainer_state.json` last, after the weights and the
    optimiser; a process killed while saving leaves it missing, or the weights or the optimiser cut short."""
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        # Every weights format Trainer writes: one safetensors file, shards with their index, LoRA adapters, or
        # FSDP's own (a full `pytorch_model_fsdp.bin`, or a sharded `pytorch_model_fsdp_0/` with its metadata).
        files = [path / name for name in ("model.safetensors", "adapter_model.safetensors") if (path / name).exists()]
        index = path / "model.safetensors.index.json"
        if not files and index.exists():
            files = [path / shard for shard in set(json.loads(index.read_text())["weight_map"].values())]
        for file in files:
            # safetensors refuses a file that does not cover every tensor its header lists (one cut short).
            with safe_open(file, framework="numpy"):
                pass
        fsdp = any(path.glob("pytorch_model_fsdp*.bin")) or any(path.glob("pytorch_model_fsdp_*/.metadata"))
        # torch.save writes a zip; one cut short (a full disk) is not one
        optimizers = [p for p in (path / "optimizer.pt", path / "optimizer.bin") if p.exists()]
        return "global_step" in state and (bool(files) or fsdp) and all(map(zipfile.is_zipfile, optimizers))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError):  # a missing shard is an OSError
        return False


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    for path in map(Path, reversed(sort_checkpoints(str(output_dir)))):
        if is_complete_checkpoint(path):
            return path
        logger.warning("Skipping %s: it is incomplete (the process probably died while saving it).", path)
    return None


def recipe_differences(output_dir: Path, current: dict[str, dict[str, Any]]) -> list[str]:
    """Keys whose values differ from the recipe saved in output_dir (ignoring harmless ones)."""
    saved_path = output_dir / RESOLVED_RECIPE_NAME
    if not saved_path.exists():
        return []
    saved = yaml.safe_load(saved_path.read_text()) or {}
    now = {k: v for group in current.values() for k, v in group.items()}
    keys = (set(saved) | set(now)) - _RESUMABLE_DIFFERENCES
    return sorted(k for k in keys if saved.get(k) != now.get(k))


def plan_output_dir(training_args, current_recipe: dict[str, dict[str, Any]]) -> str | None:
    """The checkpoint to resume from, or None; a RecipeError for a folder holding a finished or a different run,
    unless `overwrite_output_dir`, which removes the old run's outputs (main process only)."""
    output_dir = Path(training_args.output_dir)
    requested = training_args.resume_from_checkpoint
    if requested not in (None, "", "true", "auto", "false"):
        path = Path(requested)
        if not is_complete_checkpoint(path):
            raise RecipeError(
                f"resume_from_checkpoint: {path} is not a complete checkpoint (it needs trainer_state.json and "
                "the model weights). Point it at a checkpoint-N folder, or set it to true to pick the last "
                "complete one in output_dir."
            )
        return str(path)
    if not output_dir.exists():
        return None
    if training_args.overwrite_output_dir:
        if training_args.process_index == 0:
            for pattern in _RUN_OUTPUTS:
                for path in output_dir.glob(pattern):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            logger.warning("overwrite_output_dir: starting afresh in %s (the old run's outputs removed).", output_dir)
        return None
    if (output_dir / METRICS_FILE).exists():
        raise RecipeError(
            f"output_dir {output_dir} already holds a finished run ({METRICS_FILE} is there). To keep it, "
            "choose another output_dir (e.g. --output_dir outputs/my-run-2); to replace it, add "
            "--overwrite_output_dir true."
        )
    existing = sort_checkpoints(str(output_dir))
    sweep = (output_dir / SWEEP_STUDY_FILE).exists()  # a sweep's trials, which a rerun continues
    if not existing and not sweep:
        return None
    if different := recipe_differences(output_dir, current_recipe):
        raise RecipeError(
            f"output_dir {output_dir} holds {'a sweep' if sweep else 'checkpoints of a run'} with a different "
            f"recipe (keys that differ: {', '.join(different[:12])}). Resuming would mix two runs. Choose another "
            "output_dir, or add --overwrite_output_dir true to discard the old checkpoints."
        )
    if sweep and not existing:
        return None
    if requested == "false":
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


def require_model_folder(folder: str | Path, what: str, advice: str, weights: bool = True) -> Path:
    """`folder` if save_pretrained wrote a model there (config.json, and safetensors weights when `weights`)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise RecipeError(f"{what}: the folder {folder} does not exist. {advice}")
    if not (folder / "config.json").is_file():
        raise RecipeError(f"{what}: {folder} holds no saved model (config.json). {advice}")
    if weights and not any(folder.glob("*.safetensors")):
        if not any(folder.glob("pytorch_model*.bin")):
            raise RecipeError(f"{what}: {folder} holds no model weights (model.safetensors). {advice}")
        raise RecipeError(
            f"{what}: {folder} holds no model.safetensors. Only safetensors weights are loaded, because pickled "
            "weights (pytorch_model.bin) can run code when loaded. Convert it once, in a trusted environment: load "
            "it with from_pretrained and call save_pretrained (which writes safetensors)."
        )
    return folder


def refuse_shipped_code(folder: str | Path, what: str, allow: str = "add --trust_remote_code") -> None:
    """A RecipeError for a model folder that ships its own code (auto_map in config.json or preprocessor_config.json),
    raised before transformers is asked: on a terminal it would offer to run that code, and run it on a `y`."""
    for name in ("config.json", "preprocessor_config.json"):
        try:
            shipped = json.loads((Path(folder) / name).read_text(encoding="utf-8")).get("auto_map")
        except (OSError, ValueError, AttributeError):  # no such file, or not a JSON object: loading explains that
            shipped = None
        if shipped:
            raise RecipeError(
                f"{what}: {folder} ships its own code (the Python files that auto_map in its {name} names), which "
                f"is not run unless you allow it. Read that code; if you trust it, {allow}."
            )


# The ONNX export (onnx_export.py), in transformers.js's layout, and the files besides the weights it is made from.
ONNX_DIR, FP32_FILE, INT8_FILE, PARITY_FILE = "onnx", "model.onnx", "model_quantized.onnx", "parity.json"
_EXPORTED_FROM = ("config.json", "preprocessor_config.json")


def export_inputs(folder: Path) -> dict[str, str]:
    """sha256 of each file an export is made from and `predict.py --backend onnx` reads: the weights, config.json
    (id2label) and preprocessor_config.json."""
    digests = {}
    for path in sorted(folder.glob("*.safetensors")) + [folder / name for name in _EXPORTED_FROM]:
        if path.is_file():
            with path.open("rb") as file:
                digests[path.name] = hashlib.file_digest(file, "sha256").hexdigest()
    return digests


def read_parity(folder: str | Path) -> dict | None:
    """onnx/parity.json, or None when there is none (or it is not JSON)."""
    try:
        return json.loads((Path(folder) / ONNX_DIR / PARITY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def has_export(folder: str | Path) -> bool:
    return any((Path(folder) / ONNX_DIR / name).is_file() for name in (FP32_FILE, INT8_FILE, PARITY_FILE))


def stale_export(folder: Path) -> str | None:
    """Why onnx/ is not a whole export of the folder's current files (what is missing or changed), or None."""
    for name in (FP32_FILE, INT8_FILE, PARITY_FILE):
        if not (folder / ONNX_DIR / name).is_file():
            return f"{ONNX_DIR}/{name} is missing (an export that did not finish)"
    recorded = (read_parity(folder) or {}).get("inputs_sha256")
    if not isinstance(recorded, dict):
        return f"{ONNX_DIR}/{PARITY_FILE} does not record the files it was exported from (an older export.py wrote it)"
    now = export_inputs(folder)
    changed = sorted(name for name in recorded.keys() | now.keys() if recorded.get(name) != now.get(name))
    return f"{', '.join(changed)} changed since it was exported" if changed else None


def current_export(folder: Path) -> tuple[dict | None, str | None]:
    """(parity.json if onnx/ is a whole export of the folder's current files, else None; why not, if it holds one)."""
    stale = stale_export(folder)
    return None if stale else read_parity(folder), stale if has_export(folder) else None


def require_fresh_export(folder: Path, then: str = "") -> None:
    """A RecipeError when onnx/ holds an export that is not of the folder's current files: it would be served (or
    pushed) as if it were the model."""
    if reason := current_export(folder)[1]:
        raise RecipeError(
            f"The ONNX export in {folder / ONNX_DIR} is stale: {reason}, so it may not answer as the model does. "
            f"Export it again: python export.py {folder} --overwrite{then}."
        )
