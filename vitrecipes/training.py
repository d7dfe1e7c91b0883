"""Trainer set-up, final evaluation of every split, and the files and summary a run leaves."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from .config import DataArguments
from .data import Splits
from .errors import RecipeError
from .metrics import compute_metrics
from .transforms import IGNORE_INDEX, BadImageLog, Preprocessing, bad_image_limit

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
EVAL_ONLY_METRICS_FILE = "eval_only_metrics.json"


def effective_batch_size(args: TrainingArguments) -> int:
    """Images per optimiser step across all processes."""
    return args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps


def attach_transforms(splits: Splits, prep: Preprocessing, data_args: DataArguments, bad_images: BadImageLog) -> Splits:
    """Lazy preprocessing: images are decoded and transformed only when a batch is drawn."""
    transformed = {}
    for name, dataset in splits.items():
        bad_images.limits[name] = bad_image_limit(data_args.max_bad_images, len(dataset))
        transform = prep.batch_transform(
            train=name == "train",
            image_column=data_args.image_column_name,
            label_column=data_args.label_column_name,
            split=name,
            bad_images=bad_images,
            max_pixels=data_args.max_image_pixels,
            decode_ahead_from=dataset if name == "train" and data_args.decode_ahead else None,
        )
        transformed[name] = dataset.with_transform(transform)
    return Splits(
        train=transformed["train"],
        validation=transformed["validation"],
        test=transformed.get("test"),
        class_names=splits.class_names,
    )


def load_weights(model, checkpoint_dir: str) -> None:
    """Load a checkpoint's weights into `model` in place, through `from_pretrained`.

    transformers 5 saves some architectures (ViT among them) under legacy parameter names and
    renames them only inside `from_pretrained`. Trainer's own reload (best model at the end, resume)
    calls `load_state_dict(strict=False)` on the raw file, which silently skips every renamed
    tensor and leaves the encoder as it was. Going through `from_pretrained` applies the renaming,
    and `strict=True` makes any remaining mismatch an error instead of a quiet loss.
    """
    reference = type(model).from_pretrained(checkpoint_dir, config=model.config)
    model.load_state_dict(reference.state_dict(), strict=True)


class NonFiniteLossError(RecipeError):
    """The training loss became NaN or infinite."""


class RecipeTrainer(Trainer):
    """Trainer whose checkpoint reloads keep every weight (see `load_weights`) and that stops on a NaN loss."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # Trainer already synchronises on this value every step (logging_nan_inf_filter); checking it is free.
        if not torch.isfinite(loss.detach()).all():
            step = self.state.global_step + 1
            kept = self.state.best_model_checkpoint or _last_checkpoint_name(self.args.output_dir)
            raise NonFiniteLossError(
                f"The training loss became {loss.item()} at step {step} (epoch {self.state.epoch or 0:.2f}). "
                f"Likely causes: a learning rate too high for this model and batch ({self.args.learning_rate:g}; "
                "try 3-10x lower or a longer warm-up), fp16 overflow (use bf16 on GPUs that support it), or a "
                "corrupt batch. The run stopped before saving anything from this step; "
                + (f"the last good checkpoint is {kept}." if kept else "no checkpoint had been saved yet.")
            )
        return loss

    def _plain_reload(self) -> bool:
        return not (self.is_fsdp_enabled or self.is_deepspeed_enabled)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self._plain_reload():
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        logger.info("Loading model weights from %s", resume_from_checkpoint)
        load_weights(model if model is not None else self.model, resume_from_checkpoint)

    def _load_best_model(self):
        if not self._plain_reload():
            return super()._load_best_model()
        logger.info(
            "Loading the best model (%s) from %s", self.args.metric_for_best_model, self.state.best_model_checkpoint
        )
        load_weights(self.model, self.state.best_model_checkpoint)


def _last_checkpoint_name(output_dir: str) -> str | None:
    steps = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(steps[-1]) if steps else None


def build_trainer(model, processor, args: TrainingArguments, splits: Splits, prep: Preprocessing) -> Trainer:
    return RecipeTrainer(
        model=model,
        args=args,
        train_dataset=splits.train if args.do_train else None,
        eval_dataset=splits.validation,
        data_collator=prep.collate,
        processing_class=processor,
        compute_metrics=compute_metrics,
    )


@dataclass
class SplitPredictions:
    """One split's logits and labels from the final evaluation, kept so reports need no second pass."""

    split: str
    logits: np.ndarray
    labels: np.ndarray
    dataset: Dataset  # the split as evaluated (transform attached), in prediction order


def evaluate_splits(
    trainer: Trainer, splits: Splits
) -> tuple[dict[str, dict[str, float]], dict[str, SplitPredictions]]:
    """Validation and test metrics keyed by split (prefixes removed), and the raw predictions."""
    results, predictions = {}, {}
    for name, dataset in splits.items():
        if name == "train":
            continue
        output = trainer.predict(dataset, metric_key_prefix=name)
        results[name] = {k.removeprefix(f"{name}_"): v for k, v in output.metrics.items()}
        logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        labels = np.asarray(output.label_ids)
        readable = labels != IGNORE_INDEX  # unreadable images are left out of every number
        results[name]["samples"] = int(readable.sum())
        if not readable.all():
            results[name]["unreadable_images"] = int((~readable).sum())
            dataset = dataset.select(np.flatnonzero(readable))
        predictions[name] = SplitPredictions(name, np.asarray(logits)[readable], labels[readable], dataset)
    if splits.test is None:
        logger.warning("No test split: skipping the test evaluation.")
    return results, predictions


def write_metrics(output_dir: str | Path, metrics: dict, trained: bool = True) -> Path:
    path = Path(output_dir) / (METRICS_FILE if trained else EVAL_ONLY_METRICS_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def format_summary(metrics: dict, output_dir: str | Path, metrics_path: Path) -> str:
    lines = ["", "=" * 64, "Run summary"]
    train = metrics.get("train")
    if train:
        lines.append(
            f"  train       loss {train.get('train_loss', float('nan')):.4f}   "
            f"{train.get('train_samples_per_second', 0):8.1f} samples/s   "
            f"wall {train.get('train_runtime', 0):.1f} s   effective batch {metrics.get('effective_batch_size')}"
        )
    for split in ("validation", "test"):
        if split in metrics:
            m = metrics[split]
            lines.append(
                f"  {split:<11} accuracy {m.get('accuracy', float('nan')):.4f}   "
                f"cross-entropy {m.get('cross_entropy', float('nan')):.4f}"
                f"   {m.get('samples_per_second', 0):8.1f} samples/s   n={m.get('samples')}"
            )
            if m.get("report"):
                lines.append(f"              report: {Path(output_dir) / m['report']}")
        elif split == "test":
            lines.append("  test        skipped (the dataset has no test split)")
    lines.append(f"  metrics: {metrics_path}")
    if "train" in metrics:
        lines.append(f"  model, image processor, model card and resolved recipe: {output_dir}")
    bad = {split: len(files) for split, files in metrics.get("bad_images", {}).items() if files}
    if bad:
        lines.append(f"  unreadable images left out: {bad} (listed in metrics.json and bad_images.jsonl)")
    lines.append("=" * 64)
    return "\n".join(lines)
