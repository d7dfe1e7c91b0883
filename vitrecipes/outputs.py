"""The output folder of a run: at the start, what to do with one that holds something (resume a crashed run from its
last complete checkpoint, refuse a finished or different run, or start afresh) and the resolved recipe; at the end,
everything process 0 writes there: reports, metrics.json, the exports, the card and the push (names: artifacts.py)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image
from safetensors import SafetensorError, safe_open
from transformers.integrations import TensorBoardCallback
from transformers.trainer_utils import sort_checkpoints

from . import artifacts
from .bad_images import BadImageLog
from .card import finish_for_hub
from .config import DEFAULTS
from .console import show, table
from .errors import RecipeError
from .report import write_report

logger = logging.getLogger(__name__)

# Keys never written to the resolved recipe: secrets, and values set by the launcher per process.
_UNSAVED_KEYS = {"hub_token", "local_rank"}
# Keys that may differ between a crashed run and its resumption without changing what is trained. By hand:
# test_every_training_arguments_field_is_classified_for_resuming fails on a new TrainingArguments field (5.24.0).
_RESUMABLE_DIFFERENCES = {
    "output_dir", "resume_from_checkpoint", "overwrite_output_dir", "logging_steps", "logging_first_step",
    "log_level", "log_level_replica", "disable_tqdm", "report_to", "run_name", "push_to_hub", "hub_model_id",
    "hub_strategy", "hub_private_repo", "hub_always_push", "hub_revision", "dataloader_num_workers",
    "dataloader_persistent_workers", "dataloader_prefetch_factor", "dataloader_pin_memory",
    "per_device_eval_batch_size", "save_total_limit", "max_bad_images", "dataset_name_for_card", "export",
}  # fmt: skip


def resolved_recipe(model_args, data_args, training_args, hub=None) -> dict[str, dict[str, Any]]:
    """Every key that acts in this run, grouped by dataclass, without secrets; `hub`: the Hub settings taken out of
    training_args. Keys its adaptation mode or model cannot use (config.inactive_keys) are left out."""
    training = training_args.to_dict()
    if hub is not None:
        training.update(push_to_hub=hub.push_to_hub, hub_model_id=hub.hub_model_id)
    groups = {"model": dataclasses.asdict(model_args), "data": dataclasses.asdict(data_args), "training": training}
    left_out = _UNSAVED_KEYS | set(getattr(training_args, "inactive_keys", ()))
    return {name: {k: v for k, v in group.items() if k not in left_out} for name, group in groups.items()}


def save_resolved_recipe(output_dir: str | Path, model_args, data_args, training_args, hub=None) -> Path:
    """Write every key the run used, so `python run_snacks.py <this file>` repeats the run."""
    name = artifacts.RESOLVED_RECIPE_NAME if training_args.do_train else artifacts.EVAL_ONLY_RECIPE_NAME
    path = Path(output_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = ["# Every setting this run used. Repeat it with: python run_snacks.py " + str(path)]
    parts += [f"# {note}" for note in getattr(training_args, "gpu_settings_switched_off", [])]
    for group, values in resolved_recipe(model_args, data_args, training_args, hub).items():
        parts += [f"\n# --- {group} ---", yaml.safe_dump(values, sort_keys=False, default_flow_style=False).rstrip()]
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


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
    saved_path = output_dir / artifacts.RESOLVED_RECIPE_NAME
    if not saved_path.exists():
        return []
    saved = yaml.safe_load(saved_path.read_text()) or {}
    now = {k: v for group in current.values() for k, v in group.items()}
    keys = (set(saved) | set(now)) - _RESUMABLE_DIFFERENCES
    # A key left out (it cannot act in that run) holds its default.
    return sorted(k for k in keys if saved.get(k, DEFAULTS.get(k)) != now.get(k, DEFAULTS.get(k)))


def prepare_output_dir(model_args, data_args, training_args) -> tuple[str | None, BadImageLog]:
    """Check the output folder (main process first, so the others see it checked) and write the resolved recipe;
    returns the checkpoint to resume from, or None, and the run's log of unreadable images."""
    resume_from = None
    with training_args.main_process_first(desc="checking the output folder"):
        if training_args.do_train:
            resume_from = plan_output_dir(training_args, resolved_recipe(model_args, data_args, training_args))
        # The run's log of unreadable images; an evaluation-only run keeps its own.
        name = artifacts.BAD_IMAGES_FILE if training_args.do_train else artifacts.EVAL_ONLY_BAD_IMAGES_FILE
        bad_images = BadImageLog(Path(training_args.output_dir) / name)
        if training_args.process_index == 0:
            if not training_args.do_train:
                bad_images.path.unlink(missing_ok=True)  # an evaluation-only run lists its own, from empty
            # Before the Hub settings are taken out of training_args, so that it records them.
            path = save_resolved_recipe(training_args.output_dir, model_args, data_args, training_args)
            logger.info("Wrote %s", path)
    return resume_from, bad_images


def plan_output_dir(training_args, current_recipe: dict[str, dict[str, Any]]) -> str | None:
    """The checkpoint to resume from, or None; a RecipeError for a folder holding a finished or a different run,
    unless `overwrite_output_dir`, which removes the old run's outputs (main process only)."""
    output_dir = Path(training_args.output_dir)
    requested = training_args.resume_from_checkpoint
    if requested not in (None, "", "true", "auto", "false"):
        path = Path(requested)
        if not is_complete_checkpoint(path):
            raise RecipeError(f"resume_from_checkpoint: {path} is not a complete checkpoint (it needs "
                              "trainer_state.json and the model weights). Point it at a checkpoint-N folder, "
                              "or set it to true to pick the last complete one in output_dir.")  # fmt: skip
        return str(path)
    if not output_dir.exists():
        return None
    if training_args.overwrite_output_dir:
        if training_args.process_index == 0:
            for path in (path for pattern in artifacts.RESULTS for path in output_dir.glob(pattern)):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            logger.warning("overwrite_output_dir: starting afresh in %s (the old run's outputs removed).", output_dir)
        return None
    if (output_dir / artifacts.METRICS_FILE).exists():
        raise RecipeError(f"output_dir {output_dir} already holds a finished run ({artifacts.METRICS_FILE} is "
                          "there). To keep it, choose another output_dir (e.g. --output_dir "
                          "outputs/my-run-2); to replace it, add --overwrite_output_dir true.")  # fmt: skip
    existing = sort_checkpoints(str(output_dir))
    sweep = (output_dir / artifacts.SWEEP_STUDY_FILE).exists()  # a sweep's trials, which a rerun continues
    if not existing and not sweep:
        return None
    if different := recipe_differences(output_dir, current_recipe):
        raise RecipeError(f"output_dir {output_dir} holds {'a sweep' if sweep else 'checkpoints of a run'} "
                          f"with a different recipe (keys that differ: {', '.join(different[:12])}). "
                          "Resuming would mix two runs. Choose another output_dir, or add "
                          "--overwrite_output_dir true to discard the old checkpoints.")  # fmt: skip
    if sweep and not existing:
        return None
    if requested == "false":
        raise RecipeError(f"output_dir {output_dir} holds checkpoints of an unfinished run "
                          "and resume_from_checkpoint is false. Remove false to resume it, "
                          "or add --overwrite_output_dir true to start afresh.")  # fmt: skip
    checkpoint = last_complete_checkpoint(output_dir)
    if checkpoint is None:
        logger.warning("No complete checkpoint in %s: starting from the beginning.", output_dir)
        return None
    logger.warning("Resuming the unfinished run in %s from %s.", output_dir, checkpoint.name)
    return str(checkpoint)


def finish_run(trainer, metrics: dict, predictions: dict, names, model_args, data_args, hub, recipe_path, argv) -> Path:
    """Process 0's end of a run: each split's report, metrics.json, the tracker pictures, the exports (they read the
    saved folder: after any change to it), then the card and the push (last: a failed push raises, with everything
    else written). Returns the metrics file."""
    args = trainer.args
    output_dir, trained = Path(args.output_dir), args.do_train
    checkpoint = str(output_dir if trained else model_args.model_name_or_path)
    reports, folder = {}, artifacts.REPORT_DIR if trained else artifacts.EVAL_ONLY_REPORT_DIR  # never the run's
    for name, split in predictions.items():
        reports[name] = write_report(
            output_dir / folder.format(split=name), split, names, data_args.image_column_name, checkpoint,
            log_history=trainer.state.log_history if trained else None, final_validation=metrics.get("validation"),
            calibration=metrics.get("calibration", {}).get(name),
        )  # fmt: skip
        metrics[name]["report"] = str(reports[name].relative_to(output_dir))
    if trained:
        log_report_images(trainer, reports)
    metrics_path = output_dir / (artifacts.METRICS_FILE if trained else artifacts.EVAL_ONLY_METRICS_FILE)
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("Wrote %s: %s", metrics_path, metrics)
    show(*closing_table(output_dir, metrics, reports, metrics_path))
    for name in args.export if trained else []:
        export = artifacts.export_module(name)
        export.export_folder(output_dir, log=show, trust_remote_code=model_args.trust_remote_code)
    if trained and (url := finish_for_hub(output_dir, hub, recipe_path, argv)):
        show(f"Pushed to {url}")
    return metrics_path


def closing_table(output_dir: Path, metrics: dict, reports: dict[str, Path], metrics_path: Path) -> list[str]:
    """Each split's accuracy, top-5, ECE and images; the wall time, the unreadable images left out, and where the
    model, reports, metrics and log are."""
    numbers = {split: json.loads((report.parent / artifacts.METRICS_FILE).read_text(encoding="utf-8"))
               for split, report in reports.items()}  # fmt: skip
    rows = [[split, n["accuracy"], n["top_k_accuracy"], n["ece"], n["samples"]] for split, n in numbers.items()]
    top_k = next(iter(numbers.values()))["top_k"] if numbers else 5
    bad = {split: len(files) for split, files in metrics["bad_images"].items() if files}
    left_out = ", ".join(f"{n} in {split}" for split, n in bad.items()) + f" (see {metrics_path})" if bad else "none"
    return [
        *table(rows, ["", "accuracy", f"top-{top_k}", "ECE", "images"]),
        f"Wall time {metrics['wall_seconds']:.0f} s; unreadable images left out: {left_out}",
        f"Model, image processor and card: {output_dir}; metrics: {metrics_path}",
        f"Reports: {', '.join(str(report) for report in reports.values())}; log: {output_dir / artifacts.LOG_FILE}",
    ]


def log_report_images(trainer, reports: dict[str, Path]) -> None:
    """Each split's report pictures into the run's TensorBoard log folder and Trackio run, beside its scalars."""
    pictures = {f"{split}/{png.stem}": png for split, report in reports.items()
                for png in sorted(report.parent.glob("*.png"))}  # fmt: skip
    board = next((c for c in trainer.callback_handler.callbacks if isinstance(c, TensorBoardCallback)), None)
    if board is not None and board.logging_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=board.logging_dir) as writer:
            for tag, png in pictures.items():
                pixels = np.asarray(Image.open(png).convert("RGB"))
                writer.add_image(tag, pixels, trainer.state.global_step, dataformats="HWC")
    if "trackio" in (trainer.args.report_to or []):
        import trackio

        trackio.init(project=trainer.args.project, name=trainer.args.run_name, resume="allow")
        trackio.log({tag: trackio.Image(str(png)) for tag, png in pictures.items()})
        trackio.finish()
