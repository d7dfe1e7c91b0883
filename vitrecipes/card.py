"""The model card of a run's output folder, rendered by huggingface_hub from model_card_template.md.

The card is built from the files a run leaves (config.json, metrics.json, resolved_recipe.yaml), so
it can be written at the end of training or long afterwards. This module only computes the values;
the template holds the prose and the layout. A card never holds a token, nor a path on the training
machine: local datasets and checkpoints are named by their folder's name.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .config import ARGUMENT_CLASSES
from .hub import is_hub_id, resolve_token, scrub
from .outputs import CARD_NAME, METRICS_FILE, RESOLVED_RECIPE_NAME, require_model_folder

TEMPLATE = Path(__file__).with_name("model_card_template.md")
DEFAULT_LICENSE = "apache-2.0"
BASE_TAGS = ["image-classification", "vision", "vit", "generated-from-recipe"]
MAX_LISTED_LABELS = 100
_SPLITS = ("validation", "test")
_VERSIONS_OF = ("transformers", "torch", "datasets", "huggingface_hub")


# The recipe keys in the card's training table: the first ones always, the others only where they differ
# from their default, so that a technique the run did not use takes no row.
_ALWAYS_SHOWN = ["adaptation", "learning_rate", "lr_scheduler_type", "warmup_steps", "num_train_epochs",
                 "per_device_train_batch_size", "weight_decay", "optim", "train_augmentation", "seed"]  # fmt: skip
_SHOWN_WHEN_SET = ["freeze_blocks", "lora_rank", "lora_alpha", "head_learning_rate_multiplier", "layer_decay",
                   "max_steps", "gradient_accumulation_steps", "label_smoothing_factor", "max_grad_norm", "bf16",
                   "fp16", "random_resized_crop_scale", "horizontal_flip", "auto_augment", "random_erasing",
                   "mixup_alpha", "cutmix_alpha", "drop_path_rate", "ema_decay", "eval_crop_pct"]  # fmt: skip


def folder_name(path: str | Path) -> str:
    """How a card names a local folder: its name, not its path (/data/snacks/: snacks, builtin:digits: digits)."""
    return Path(os.path.abspath(os.path.expanduser(str(path).rpartition(":")[2]))).name


@dataclass
class RunFiles:
    """What an output folder says about its run."""

    output_dir: Path
    config: dict
    metrics: dict
    recipe: dict

    @classmethod
    def read(cls, output_dir: str | Path, metrics: dict | None = None) -> RunFiles:
        advice = "Give the output folder of a run, e.g. outputs/smoke after `python run_snacks.py recipes/smoke.yaml`."
        # The card is made from the files that describe the run; its weights are not read.
        output_dir = require_model_folder(output_dir, "output_dir", advice, weights=False)
        config_path = output_dir / "config.json"
        metrics_path, recipe_path = output_dir / METRICS_FILE, output_dir / RESOLVED_RECIPE_NAME
        if metrics is None:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
        recipe = yaml.safe_load(recipe_path.read_text(encoding="utf-8")) if recipe_path.is_file() else None
        return cls(output_dir, json.loads(config_path.read_text(encoding="utf-8")), metrics, recipe or {})

    @property
    def labels(self) -> list[str]:
        id2label = self.config.get("id2label") or {}
        return [str(id2label[key]) for key in sorted(id2label, key=int)]

    @property
    def base_model(self) -> str | None:
        """The Hub checkpoint that was fine-tuned; None for from-scratch models and local folders."""
        name = self.recipe.get("model_name_or_path")
        return name if is_hub_id(name) else None

    @property
    def dataset(self) -> str:
        """The dataset as a user would name it: `dataset_name_for_card`, else the Hub id, else the folder's name."""
        name = self.recipe.get("dataset_name") or "unknown"
        return str(self.recipe.get("dataset_name_for_card") or self.hub_dataset or folder_name(name))

    @property
    def hub_dataset(self) -> str | None:
        """The Hub dataset to link to and list in the metadata: the card's name for it, else the one trained on."""
        names = (self.recipe.get("dataset_name_for_card"), self.recipe.get("dataset_name"))
        return next((name for name in names if is_hub_id(name)), None)

    def local_paths(self, *more: str | Path | None) -> dict[str, str]:
        """The run's absolute paths on this machine (dataset, checkpoint, output folder...), each with its
        name, longest first; they may be quoted in the command or the recipe."""
        names = {}
        for path in (self.recipe.get("dataset_name"), self.recipe.get("model_name_or_path"), self.output_dir, *more):
            expanded = os.path.expanduser(str(path or ""))
            if os.path.isabs(expanded) and folder_name(expanded):
                names.update(dict.fromkeys({str(path), expanded, os.path.abspath(expanded)}, folder_name(expanded)))
        return dict(sorted(names.items(), key=lambda item: -len(item[0])))


def card_data(run: RunFiles, model_name: str, license: str | None = None) -> ModelCardData:
    model_type = run.config.get("model_type")
    results = [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=run.hub_dataset or "imagefolder",
            dataset_name=run.dataset,
            dataset_split=str(run.recipe.get(f"{split}_split") or split),
            metric_type="accuracy",
            metric_name="Accuracy",
            metric_value=float(run.metrics[split]["accuracy"]),
        )
        for split in _SPLITS  # a dataset without a test split reports validation only
        if (run.metrics.get(split) or {}).get("accuracy") is not None
    ]
    # ModelCardData checks the model-index as it is built: a malformed result fails here, not on the Hub.
    return ModelCardData(
        model_name=model_name,
        base_model=run.base_model,
        datasets=[run.hub_dataset] if run.hub_dataset else None,
        license=license or run.recipe.get("hub_license") or DEFAULT_LICENSE,
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=list(dict.fromkeys(BASE_TAGS + ([model_type] if model_type else []))),
        metrics=["accuracy"],
        eval_results=results or None,
    )


def _training_rows(run: RunFiles) -> list[tuple[str, object]]:
    recipe, train = run.recipe, run.metrics.get("train") or {}
    defaults = {
        f.name: f.default if f.default_factory is MISSING else f.default_factory()
        for cls in ARGUMENT_CLASSES
        for f in fields(cls)
    }
    rows = [
        (key, recipe[key])
        for key in _ALWAYS_SHOWN + _SHOWN_WHEN_SET
        if key in recipe and (key in _ALWAYS_SHOWN or recipe[key] != defaults.get(key))
    ]
    extra = [
        ("input size (pixels)", run.config.get("image_size")),
        ("effective batch size", run.metrics.get("effective_batch_size")),
        ("train images", train.get("samples")),
        ("epochs run", train.get("epoch")),
        ("final train loss", train.get("train_loss")),
        ("training time (s)", train.get("train_runtime")),
    ]
    return rows + [(label, value) for label, value in extra if value is not None]


def _recipe_text(recipe_path: str | Path | None) -> str | None:
    if not recipe_path or not Path(recipe_path).is_file():
        return None
    lines = Path(recipe_path).read_text(encoding="utf-8").rstrip().splitlines()
    # A recipe may carry a token by mistake; such a line never reaches a public card.
    return "\n".join(line for line in lines if "token" not in line.split(":", 1)[0])


def _version(package: str) -> str:
    try:
        return importlib.import_module(package).__version__
    except ImportError:
        return "not installed"


def build_model_card(
    output_dir: str | Path,
    *,
    repo_id: str | None = None,
    command: str | None = None,
    recipe_path: str | Path | None = None,
    license: str | None = None,
    metrics: dict | None = None,
    token: str | None = None,
) -> ModelCard:
    """A `huggingface_hub.ModelCard` for an output folder; `repo_id` names it in the usage snippet.

    `token` is only used to make sure it appears nowhere in the card (nor does the cached login's).
    """
    run = RunFiles.read(output_dir, metrics)
    model_name = (repo_id or "").split("/")[-1] or run.output_dir.resolve().name
    checkpoint = run.recipe.get("model_name_or_path")
    card = ModelCard.from_template(
        card_data(run, model_name, license),
        template_path=str(TEMPLATE),
        model_name=model_name,
        model_type=run.config.get("model_type", "transformers"),
        checkpoint=folder_name(checkpoint) if checkpoint and not run.base_model else None,
        config_overrides=run.recipe.get("config_overrides") or {},
        dataset=run.dataset,
        hub_dataset=run.hub_dataset,
        results={split: run.metrics[split] for split in _SPLITS if run.metrics.get(split)},
        model_ref=repo_id or str(run.output_dir),
        eval_crop_pct=float(run.recipe.get("eval_crop_pct", 1.0)),
        labels=run.labels,
        max_labels=MAX_LISTED_LABELS,
        training_rows=_training_rows(run),
        command=command,
        recipe_path=recipe_path,
        recipe_text=_recipe_text(recipe_path),
        resolved_recipe=RESOLVED_RECIPE_NAME,
        versions={package: _version(package) for package in _VERSIONS_OF},
    )
    text = scrub(str(card), token, resolve_token())
    for path, name in run.local_paths(recipe_path).items():
        text = text.replace(path, name)
    return ModelCard(text)  # parses the header back: invalid YAML or metadata fails now, not on upload


def write_model_card(output_dir: str | Path, **kwargs) -> Path:
    """Write `<output_dir>/README.md` (see `build_model_card` for the arguments); return its path."""
    path = Path(output_dir) / CARD_NAME
    path.write_text(str(build_model_card(output_dir, **kwargs)), encoding="utf-8")
    return path
