"""Recipes: a flat YAML file mapped onto three argument dataclasses, with command-line overrides.

A recipe key belongs to exactly one of `ModelArguments`, `DataArguments` or
`RecipeTrainingArguments` (a `transformers.TrainingArguments` with recipe-friendly defaults).
Values are coerced to the field's type, so `learning_rate: 1e-4` (a string to PyYAML) works.
Unknown keys are errors with a suggestion, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import logging
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainingArguments

from .adaptation import ADAPTATIONS
from .errors import RecipeError
from .hardware import ATTENTION_KERNELS, check_attention_kernel, switch_off_gpu_only_settings

RESOLVED_RECIPE_NAME = "resolved_recipe.yaml"
# An evaluation-only run writes here, so it never replaces the recipe of the run that trained the model.
EVAL_ONLY_RECIPE_NAME = "eval_only_recipe.yaml"
# Keys never written to the resolved recipe: secrets, and values set by the launcher per process.
_UNSAVED_KEYS = {"hub_token", "local_rank"}


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default="google/vit-base-patch16-224-in21k",
        metadata={
            "help": "Checkpoint to fine-tune: a Hub id or a local folder written by save_pretrained. "
            "Set to null and give model_type to train from scratch."
        },
    )
    model_type: str | None = field(
        default=None,
        metadata={"help": "Train from scratch with this architecture (e.g. 'vit') instead of a checkpoint."},
    )
    config_overrides: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "Config values for a from-scratch model, e.g. {hidden_size: 192, num_hidden_layers: 6, "
            "image_size: 112}. Ignored keys are an error."
        },
    )
    image_processor_name: str | None = field(
        default=None,
        metadata={"help": "Image processor to use if it is not stored beside the checkpoint."},
    )
    image_mean: list[float] | None = field(
        default=None, metadata={"help": "Override the processor's normalisation mean (per channel)."}
    )
    image_std: list[float] | None = field(
        default=None, metadata={"help": "Override the processor's normalisation std (per channel)."}
    )
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the checkpoint."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded checkpoints are stored."})
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run modelling code that ships with a Hub checkpoint. Off by default: only enable it for "
            "repositories whose code you have read."
        },
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": f"Attention kernel: one of {', '.join(ATTENTION_KERNELS)}, or null for the library's choice "
            "(sdpa where the architecture supports it, else eager; convolutional models have none). 'sdpa' "
            "(PyTorch's scaled_dot_product_attention) picks flash or memory-efficient attention on a GPU "
            "and is fast on CPUs too; 'eager' is the plain reference implementation."
        },
    )
    ignore_mismatched_sizes: bool = field(
        default=True,
        metadata={"help": "Replace a classification head whose size differs from the number of classes."},
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Model input side in pixels (e.g. 112 for fast CPU runs); null keeps the image processor's. "
            "DINOv2 interpolates its position embeddings to any size; for ViT-style checkpoints they are "
            "resampled once, and the saved model and processor use the new size."
        },
    )
    drop_path_rate: float | None = field(
        default=None,
        metadata={"help": "Stochastic depth for checkpoints whose config has drop_path_rate (DINOv2, BEiT...)."},
    )
    adaptation: str = field(
        default="full",
        metadata={
            "help": "How the pretrained backbone is adapted: 'full' (every weight trains), 'linear_probe' (frozen "
            "backbone; the head is a logistic regression fitted on features computed once), 'lp_ft' (that probe, "
            "then full fine-tuning from it), 'freeze' (the first freeze_blocks blocks stay frozen) or 'lora' "
            "(peft adapters, merged into the saved model)."
        },
    )
    freeze_blocks: int = field(
        default=0, metadata={"help": "adaptation 'freeze': freeze the embeddings and this many encoder blocks."}
    )
    probe_regularization: float = field(
        default=0.1,
        metadata={
            "help": "linear_probe / lp_ft: inverse L2 strength C of the logistic regression on standardised features."
        },
    )
    probe_feature_cache: bool = field(
        default=True,
        metadata={
            "help": "linear_probe / lp_ft: keep the training features on disk (VITRECIPES_CACHE, default "
            "~/.cache/vitrecipes) and reuse them in later runs with the same backbone, images and transform "
            "(other seeds, other hyper-parameters)."
        },
    )
    lora_rank: int = field(default=16, metadata={"help": "adaptation 'lora': rank of the adapters."})
    lora_alpha: float = field(
        default=16.0, metadata={"help": "adaptation 'lora': scale of the adapters (alpha / rank)."}
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "adaptation 'lora': dropout on the adapter input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"],
        metadata={"help": "adaptation 'lora': names of the linear layers that get adapters."},
    )

    def __post_init__(self):
        if self.attn_implementation is not None:
            check_attention_kernel(self.attn_implementation)
        if self.adaptation not in ADAPTATIONS:
            raise RecipeError(f"adaptation: {self.adaptation!r} is not known; use one of {', '.join(ADAPTATIONS)}.")
        if self.adaptation == "freeze" and self.freeze_blocks < 1:
            raise RecipeError(
                "adaptation 'freeze' needs freeze_blocks: the number of encoder blocks to freeze (1 or more)."
            )
        if self.image_size is not None and self.image_size < 8:
            raise RecipeError(f"image_size must be a side in pixels (8 or more), got {self.image_size}.")
        if self.adaptation != "full" and self.model_name_or_path is None:
            raise RecipeError(
                f"adaptation '{self.adaptation}' adapts a pretrained checkpoint; from scratch, use 'full'."
            )


@dataclass
class DataArguments:
    dataset_name: str = field(
        default="Matthijs/snacks",
        metadata={
            "help": "A Hub dataset id, a local imagefolder (<split>/<class>/<image>), a folder written by "
            "save_to_disk, or 'builtin:digits' (scikit-learn's digits rendered as PNGs; no download)."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub dataset revision."})
    image_column_name: str = field(default="image", metadata={"help": "Column that holds the images."})
    label_column_name: str = field(
        default="label", metadata={"help": "Column that holds the labels (ClassLabel, strings or integers)."}
    )
    train_split: str = field(default="train", metadata={"help": "Name of the training split."})
    validation_split: str = field(
        default="validation",
        metadata={"help": "Name of the validation split; carved out of train when the dataset lacks it."},
    )
    test_split: str | None = field(
        default="test", metadata={"help": "Name of the test split; the test step is skipped when it is absent."}
    )
    validation_split_size: float = field(
        default=0.1,
        metadata={"help": "Fraction of train held out (stratified, seeded) when there is no validation split."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many train images."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many validation and test images each."}
    )
    train_augmentation: str = field(
        default="random_resized_crop",
        metadata={"help": "'random_resized_crop' (RandomResizedCrop + optional flip) or 'none' (the eval transform)."},
    )
    random_resized_crop_scale: list[float] = field(
        default_factory=lambda: [0.08, 1.0],
        metadata={"help": "Area range of RandomResizedCrop, as a fraction of the image."},
    )
    horizontal_flip: bool = field(default=True, metadata={"help": "Random horizontal flips while training."})
    jpeg_draft: bool = field(
        default=False,
        metadata={
            "help": "Training only: decode JPEGs at 1/2, 1/4 or 1/8 scale when the result still covers the model "
            "input. Several times less decoding work for large photos, but small random crops of a drafted image "
            "are blurrier; worth it only when decoding, not the model, limits the speed (tiny models on a CPU). "
            "Evaluation always decodes in full, as pipeline() does."
        },
    )
    auto_augment: str = field(
        default="none",
        metadata={"help": "After crop and flip: 'trivial' (TrivialAugmentWide), 'rand' (RandAugment) or 'none'."},
    )
    random_erasing: float = field(
        default=0.0, metadata={"help": "Probability of torchvision's RandomErasing per training image (0: off)."}
    )
    mixup_alpha: float = field(
        default=0.0,
        metadata={"help": "MixUp (torchvision v2) with this Beta(alpha, alpha) on training batches; 0 is off."},
    )
    cutmix_alpha: float = field(
        default=0.0,
        metadata={
            "help": "CutMix (torchvision v2) with this alpha; 0 is off. With both on, each batch uses one of them "
            "at random. Either switches the loss to cross-entropy on the mixed (soft) targets."
        },
    )
    decoded_image_cache_mib: int = field(
        default=1024,
        metadata={
            "help": "Keep decoded (already size-reduced) images in memory, up to this many MiB per training "
            "process (shared out among its DataLoader workers), so that the epochs after the first skip JPEG "
            "decoding: 3x less CPU per image on snacks. The pixels are the same either way. 0 turns it off."
        },
    )
    decode_ahead: bool = field(
        default=True,
        metadata={
            "help": "Without DataLoader workers, a background thread at the lowest scheduling priority decodes "
            "the training images into the decoded-image cache ahead of the loader, from core time the training "
            "step leaves idle: the first epoch then runs nearly as fast as the cached ones. Needs "
            "decoded_image_cache_mib above 0. The pixels are the same either way."
        },
    )
    dataloader_worker_niceness: int = field(
        default=10,
        metadata={
            "help": "Lower the scheduling priority of DataLoader workers by this much (Unix nice), so that "
            "decoding fills idle core time instead of pre-empting the training threads. 0 keeps it equal."
        },
    )
    max_bad_images: float = field(
        default=0.01,
        metadata={
            "help": "Unreadable images tolerated per split before the run stops: a fraction of the split below 1, "
            "a count from 1 up. Each bad image is replaced by a good one from the same batch, logged and counted."
        },
    )
    verify_images: bool = field(
        default=False,
        metadata={"help": "Decode every image once before training, list the bad ones, and leave them out."},
    )
    max_image_pixels: int = field(
        default=89_478_485,
        metadata={"help": "Images with more pixels are treated as bad (decompression-bomb guard; Pillow's limit)."},
    )
    eval_crop_pct: float = field(
        default=1.0,
        metadata={"help": "Eval transform: resize the shorter side to size / eval_crop_pct, then centre-crop to size."},
    )

    def __post_init__(self):
        if self.auto_augment not in ("none", "trivial", "rand"):
            raise RecipeError(f"auto_augment: {self.auto_augment!r} is not known; use 'none', 'trivial' or 'rand'.")
        for key in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, key) < 0:
                raise RecipeError(f"{key} must be 0 (off) or positive, got {getattr(self, key)}.")
        if not 0.0 <= self.random_erasing <= 1.0:
            raise RecipeError(f"random_erasing is a probability in [0, 1], got {self.random_erasing}.")
        if self.train_augmentation not in ("random_resized_crop", "none"):
            raise RecipeError(
                f"train_augmentation: {self.train_augmentation!r} is not known; use 'random_resized_crop' or 'none'."
            )
        if not 0.0 < self.validation_split_size < 1.0:
            raise RecipeError(
                f"validation_split_size must lie strictly between 0 and 1, got {self.validation_split_size}."
            )
        if not 0.0 < self.eval_crop_pct <= 1.0:
            raise RecipeError(f"eval_crop_pct must lie in (0, 1], got {self.eval_crop_pct}.")
        if self.decoded_image_cache_mib < 0:
            raise RecipeError(f"decoded_image_cache_mib must be 0 (off) or more, got {self.decoded_image_cache_mib}.")


@dataclass
class RecipeTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the defaults a classification recipe wants."""

    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where checkpoints, the final model and metrics go (default: outputs/<recipe name>)."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start afresh in an output_dir that holds a finished run or another recipe's checkpoints "
            "(its checkpoints are deleted). Without it such a folder is an error, and an unfinished run resumes."
        },
    )
    do_train: bool = field(
        default=True,
        metadata={
            "help": "Train; set false to only evaluate the model in output_dir (or the one given with "
            "--model_name_or_path on the command line) on validation and test."
        },
    )
    eval_strategy: str = field(default="epoch", metadata={"help": "When to validate: 'no', 'steps' or 'epoch'."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to checkpoint: 'no', 'steps' or 'epoch'."})
    save_total_limit: int | None = field(
        default=2, metadata={"help": "Checkpoints kept on disk (the best one is always kept)."}
    )
    load_best_model_at_end: bool = field(
        default=True, metadata={"help": "Reload the best checkpoint by metric_for_best_model before the final save."}
    )
    metric_for_best_model: str | None = field(
        default="accuracy", metadata={"help": "Validation metric that picks the best checkpoint."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log the training loss every this many steps."})
    report_to: str | list[str] | None = field(
        default="none", metadata={"help": "Experiment trackers to report to ('none', 'tensorboard', 'wandb'...)."}
    )
    log_level: str = field(default="info", metadata={"help": "Log level of the main process."})
    log_level_replica: str = field(
        default="error", metadata={"help": "Log level of the other processes, so that N processes do not log N times."}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={"help": "DDP's search for unused parameters; classifiers use them all, so it is off (faster)."},
    )
    hub_license: str = field(default="apache-2.0", metadata={"help": "License written into the model card's metadata."})
    reuse_freed_memory: bool = field(
        default=True,
        metadata={
            "help": "Linux (glibc): keep memory the process frees for reuse instead of returning it to the "
            "system (mallopt M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 1 GiB). Otherwise every training step "
            "page-faults its activations and batches back in (about 3,000 faults a step for the tiny CPU "
            "recipe, 5% of its time). Peak memory can be somewhat higher."
        },
    )
    head_learning_rate_multiplier: float = field(
        default=1.0,
        metadata={"help": "The new classification head trains at learning_rate times this."},
    )
    layer_decay: float = field(
        default=1.0,
        metadata={
            "help": "Layer-wise learning-rate decay: encoder block i of L trains at learning_rate * layer_decay ** "
            "(L - i), the embeddings at layer_decay ** (L + 1). 1.0 is off."
        },
    )
    ema_decay: float = field(
        default=0.0,
        metadata={
            "help": "Keep an exponential moving average of the weights with this decay per step (e.g. 0.999); 0 is "
            "off. When on, the final evaluation and the saved model use the averaged weights, so it needs "
            "load_best_model_at_end: false."
        },
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Always false: the image column is consumed by the lazy transform, not the model."},
    )


ARGUMENT_CLASSES = (ModelArguments, DataArguments, RecipeTrainingArguments)


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def all_recipe_keys() -> dict[str, type]:
    """Every valid recipe key, mapped to the dataclass it belongs to."""
    owners = {}
    for cls in ARGUMENT_CLASSES:
        for name in _field_types(cls):
            owners.setdefault(name, cls)
    return owners


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the type a field declares, or raise RecipeError."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        # Try the most specific types first so "3" becomes 3, not "3", for `int | str`.
        ordered = sorted((o for o in options if o is not type(None)), key=lambda o: o is str)
        for option in ordered:
            try:
                return _coerce(value, option, key)
            except RecipeError as error:
                errors.append(str(error))
        raise RecipeError(errors[0] if errors else f"{key}: cannot be null.")
    if origin in (list, tuple):
        (inner,) = typing.get_args(annotation)[:1] or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")] if value else []
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, inner, key) for v in value]
    if origin is dict or annotation is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise RecipeError(f"{key}: expected a mapping such as {{a: 1}}, got {value!r}.")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "1", "on"):
            return True
        if text in ("false", "no", "0", "off"):
            return False
        raise RecipeError(f"{key}: expected true or false, got {value!r}.")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise RecipeError(f"{key}: expected a number, got {value!r}.")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise RecipeError(f"{key}: expected a number, got {value!r}.") from None
        if annotation is int:
            if number != int(number):
                raise RecipeError(f"{key}: expected a whole number, got {value!r}.")
            return int(number)
        return number
    if annotation is str:
        if isinstance(value, bool):  # YAML 1.1 reads a bare `no` / `yes` as a boolean: `eval_strategy: no`
            return "no" if value is False else "yes"
        if isinstance(value, (dict, list)):
            raise RecipeError(f"{key}: expected text, got {value!r}.")
        return str(value)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        try:
            return annotation(value).value
        except ValueError:
            choices = ", ".join(repr(m.value) for m in annotation)
            raise RecipeError(f"{key}: {value!r} is not one of {choices}.") from None
    return value


# Keys that transformers 4 recipes use and transformers 5 renamed or dropped.
_RENAMED_KEYS = {
    "warmup_ratio": "warmup_steps (a value below 1 is read as a fraction of all steps)",
    "evaluation_strategy": "eval_strategy",
    "no_cuda": "use_cpu",
    "save_safetensors": "nothing: weights are always saved as safetensors; remove the key",
}


def _suggest(key: str, known) -> str:
    if key in _RENAMED_KEYS:
        return f" It was renamed or removed in transformers 5; use {_RENAMED_KEYS[key]}."
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(
            f"Recipe file {path} does not exist. Give the path of a YAML recipe, e.g. recipes/smoke.yaml."
        )
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "an unknown place"
        raise RecipeError(
            f"Recipe {path} is not valid YAML at {where}: {error.problem}. "
            "Check the indentation and that every key is followed by ': '."
        ) from None
    except yaml.YAMLError as error:
        raise RecipeError(f"Recipe {path} is not valid YAML: {error}.") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise RecipeError(f"Recipe {path} must be a mapping of keys to values, not a {type(content).__name__}.")
    return content


def parse_overrides(tokens: list[str]) -> dict[str, Any]:
    """`--key value`, `--key=value` and bare `--flag` (true). `--a.b 1` sets key b of dict field a."""
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or token == "--":
            raise RecipeError(
                f"Unexpected command-line argument {token!r}: overrides look like '--learning_rate 3.0e-4'."
            )
        key, sep, raw = token[2:].partition("=")
        if not sep:
            if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                raw = tokens[i + 1]
                i += 1
            else:
                raw = "true"
        i += 1
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        key = key.replace("-", "_")
        if "." in key:
            parent, child = key.split(".", 1)
            overrides.setdefault(parent, {})[child] = value
        else:
            overrides[key] = value
    return overrides


def _merge(recipe: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(recipe)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def build_arguments(values: dict[str, Any], source: str = "the recipe"):
    """Turn a flat dict of recipe keys into (ModelArguments, DataArguments, RecipeTrainingArguments)."""
    owners = all_recipe_keys()
    for key in values:
        if key not in owners:
            raise RecipeError(
                f"Unknown key '{key}' in {source}.{_suggest(key, owners)} "
                "Run `python run_snacks.py --help` to list every key."
            )
    built = []
    for cls in ARGUMENT_CLASSES:
        types_ = _field_types(cls)
        kwargs = {k: _coerce(v, types_[k], k) for k, v in values.items() if owners[k] is cls}
        if cls is RecipeTrainingArguments:
            switched_off = switch_off_gpu_only_settings(kwargs)
        try:
            built.append(cls(**kwargs))
        except RecipeError:
            raise
        except (ValueError, TypeError) as error:
            raise RecipeError(f"Invalid value in {source} ({cls.__name__}): {error}") from None
    # Kept on the arguments so that the run logs it and the resolved recipe records it.
    built[-1].gpu_settings_switched_off = switched_off
    return tuple(built)


def _type_name(annotation) -> str:
    text = getattr(annotation, "__name__", None) if not typing.get_args(annotation) else None
    text = text or str(annotation).replace("typing.", "")
    return text.replace("NoneType", "None").replace("transformers.trainer_utils.", "")


def print_help(file=None) -> None:
    """Every recipe key, grouped by dataclass, with its type, default and help text."""
    import textwrap

    file = file or sys.stdout
    print(
        "usage: python run_snacks.py RECIPE.yaml [--key value ...]\n\n"
        "Train an image classifier from a YAML recipe. Every key below can be set in the recipe or\n"
        "overridden on the command line (--key value, --key=value, --flag for true, --dict.key value).",
        file=file,
    )
    titles = {
        ModelArguments: "Model",
        DataArguments: "Data",
        RecipeTrainingArguments: "Training (transformers.TrainingArguments; recipe defaults shown)",
    }
    for cls in ARGUMENT_CLASSES:
        print(f"\n{titles[cls]}:", file=file)
        hints = _field_types(cls)
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            default = getattr(default, "value", default)
            print(f"  --{f.name} ({_type_name(hints[f.name])}, default: {default!r})", file=file)
            help_text = " ".join(str(f.metadata.get("help", "")).split())
            for line in textwrap.wrap(help_text, width=96):
                print(f"      {line}", file=file)


def parse_recipe(argv: list[str] | None = None):
    """Parse `RECIPE.yaml [--key value ...]` into the three argument dataclasses.

    Returns (model_args, data_args, training_args, recipe_path). The output folder defaults to
    outputs/<recipe file stem>.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print_help()
        raise SystemExit(0)
    recipe_path = None
    recipe: dict[str, Any] = {}
    if argv and not argv[0].startswith("--"):
        recipe_path = Path(argv.pop(0))
        recipe = read_yaml(recipe_path)
    overrides = parse_overrides(argv)
    values = _merge(recipe, overrides)
    if values.get("output_dir") in (None, "") and recipe_path is not None:
        values["output_dir"] = str(Path("outputs") / recipe_path.stem)
    if values.get("output_dir") in (None, ""):
        raise RecipeError("No output_dir: give a recipe file or pass --output_dir PATH.")
    if not _coerce(values.get("do_train", True), bool, "do_train"):
        _evaluate_the_trained_model(values, model_given="model_name_or_path" in overrides)
    source = f"recipe {recipe_path}" if recipe_path else "the command line"
    model_args, data_args, training_args = build_arguments(values, source)
    check_consistency(model_args, training_args)
    if training_args.remove_unused_columns:
        logging.getLogger(__name__).warning(
            "remove_unused_columns: forced to false; the lazy transform needs the image and label columns."
        )
        training_args.remove_unused_columns = False
    return model_args, data_args, training_args, recipe_path


def _evaluate_the_trained_model(values: dict[str, Any], model_given: bool) -> None:
    """`--do_train false` evaluates the model the recipe trained (in its output_dir), unless the command
    line names another with --model_name_or_path. The recipe's from-scratch architecture keys no longer
    apply: the checkpoint carries its own config."""
    if not model_given:
        output_dir = Path(str(values["output_dir"]))
        if not (output_dir / "config.json").is_file():
            raise RecipeError(
                f"--do_train false evaluates the model saved in output_dir ({output_dir}), but that folder holds "
                "no saved model (config.json). Train it first, point --output_dir at a finished run, or name "
                "the checkpoint with --model_name_or_path."
            )
        values["model_name_or_path"] = str(output_dir)
    values["model_type"] = values["config_overrides"] = None


def check_consistency(model_args: ModelArguments, training_args: TrainingArguments) -> None:
    if model_args.model_name_or_path and model_args.model_type:
        raise RecipeError(
            "Both model_name_or_path and model_type are set. Give model_name_or_path to fine-tune a checkpoint, "
            "or set model_name_or_path: null and give model_type (with config_overrides) to train from scratch."
        )
    if not model_args.model_name_or_path and not model_args.model_type:
        raise RecipeError("Neither model_name_or_path nor model_type is set: the recipe must name a model.")
    if not 0.0 <= training_args.ema_decay < 1.0:
        raise RecipeError(f"ema_decay must lie in [0, 1) (0 is off), got {training_args.ema_decay}.")
    if training_args.ema_decay and training_args.load_best_model_at_end and training_args.do_train:
        raise RecipeError(
            "ema_decay: the averaged weights become the final model, so the best checkpoint cannot be reloaded "
            "over them. Set load_best_model_at_end: false (or ema_decay: 0)."
        )
    if not 0.0 < training_args.layer_decay <= 1.0:
        raise RecipeError(f"layer_decay must lie in (0, 1] (1 is off), got {training_args.layer_decay}.")
    if training_args.head_learning_rate_multiplier <= 0:
        raise RecipeError(
            f"head_learning_rate_multiplier must be positive, got {training_args.head_learning_rate_multiplier}."
        )
    if model_args.config_overrides and model_args.model_name_or_path:
        raise RecipeError(
            "config_overrides only applies to from-scratch models (model_type). To change a checkpoint's "
            "architecture, train from scratch or save a modified config next to the checkpoint."
        )


def resolved_recipe(model_args, data_args, training_args) -> dict[str, dict[str, Any]]:
    """The complete configuration, grouped by dataclass, without secrets."""
    training = {k: v for k, v in training_args.to_dict().items() if k in _field_types(RecipeTrainingArguments)}
    groups = {
        "model": dataclasses.asdict(model_args),
        "data": dataclasses.asdict(data_args),
        "training": training,
    }
    for group in groups.values():
        for key in _UNSAVED_KEYS:
            group.pop(key, None)
    return groups


def save_resolved_recipe(output_dir: str | Path, model_args, data_args, training_args) -> Path:
    """Write every key the run used, so `python run_snacks.py <this file>` repeats the run."""
    name = RESOLVED_RECIPE_NAME if training_args.do_train else EVAL_ONLY_RECIPE_NAME
    path = Path(output_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = ["# Every setting this run used. Repeat it with: python run_snacks.py " + str(path)]
    parts += [f"# {note}" for note in getattr(training_args, "gpu_settings_switched_off", [])]
    for name, group in resolved_recipe(model_args, data_args, training_args).items():
        parts.append(f"\n# --- {name} ---")
        parts.append(yaml.safe_dump(group, sort_keys=False, default_flow_style=False).rstrip())
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path
