"""Recipes: a flat YAML file onto three argument dataclasses. Its values, typed by each key's annotation, become the
defaults of one `HfArgumentParser`, which then parses the command line, so that wins. docs/recipes.md: every key."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import logging
import math
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml
from transformers import AutoConfig, HfArgumentParser, PreTrainedConfig, TrainingArguments
from transformers.hf_argparser import string_to_bool

from .adaptation import MODES, AdaptationArguments, mode_keys
from .adaptation import recipe_key as _key
from .artifacts import EXPORTS, check_output_dir, refuse_shipped_code, require_model_folder
from .errors import RecipeError, cause
from .hardware import ATTENTION_KERNELS, check_attention_kernel, switch_off_gpu_only_settings
from .images import MAX_IMAGE_PIXELS

_NUMPY_SEED = (lambda v: 0 <= v < 2**32, "be a whole number from 0 to 2**32 - 1 (numpy's range)")
_MANY = 10**9  # steps, samples, seconds: far beyond any run, far below where Trainer's arithmetic overflows
_BATCH = (lambda v: 1 <= v <= 2**16, "be a whole number from 1 to 65536")
_STEPS = (lambda v: 0 < v <= _MANY, "be positive: a number of steps up to 10**9, or a fraction of all steps below 1")
_AT_LEAST_1 = (lambda v: 1 <= v <= _MANY, "be a whole number from 1 to 10**9")
_FRACTION = (lambda v: 0 <= v < 1, "lie in [0, 1)")
_POSITIVE = (lambda v: v > 0, "be positive")
# The values a number key takes, as a test and in words; null passes (where a key may be null), a list item by item.
# Every number key must also be finite; one not listed here must fit in 64 bits (_check_limits).
_LIMITS = {
    "drop_path_rate": (lambda v: 0 <= v < 1, "lie in [0, 1) (the chance that a block is skipped)"),
    "patch_dropout": (lambda v: 0 <= v < 1, "lie in [0, 1) (the fraction of patch tokens dropped)"),
    **dict.fromkeys(("image_size", "eval_image_size"), (lambda v: 8 <= v <= 2**14, "be a side in pixels (8 to 16384)")),
    **dict.fromkeys(("mixup_alpha", "cutmix_alpha"), (lambda v: v >= 0, "be 0 (off) or positive")),
    "random_erasing": (lambda v: 0 <= v <= 1, "lie in [0, 1] (a probability)"),
    "validation_split_size": (lambda v: 0 < v < 1, "lie strictly between 0 and 1"),
    "eval_crop_pct": (lambda v: 0 < v <= 1, "lie in (0, 1]"),
    "random_resized_crop_scale": (lambda v: 0 < v <= 1, "lie in (0, 1] (fractions of the image's area)"),
    "image_std": (lambda v: v > 0, "be positive (pixels are divided by it)"),
    "ema_decay": (lambda v: 0 <= v < 1, "lie in [0, 1) (0 is off)"),
    "layer_decay": (lambda v: 0 < v <= 1, "lie in (0, 1] (1 is off)"),
    "learning_rate": (lambda v: v >= 0, "be 0 or more (0 trains nothing: a check that the head stays fitted)"),
    **dict.fromkeys(("adam_epsilon", "head_learning_rate_multiplier", "probe_regularization"), _POSITIVE),
    **dict.fromkeys(("max_train_samples", "max_eval_samples", "max_image_pixels"), _AT_LEAST_1),
    "max_bad_images": (lambda v: v >= 0, "be 0 or more: a fraction below 1, else a count"),
    **dict.fromkeys(("seed", "data_seed", "seeds"), _NUMPY_SEED),
    # TrainingArguments keys: out of range they fail late (after the data has loaded) or with a raw error.
    **dict.fromkeys(("weight_decay", "max_grad_norm", "neftune_noise_alpha"), (lambda v: v >= 0, "be 0 (off) or more")),
    "num_train_epochs": (lambda v: 0 <= v <= 10**6, "lie from 0 to 10**6"),
    "max_steps": (lambda v: -1 <= v <= _MANY, "be -1 or 0 (num_train_epochs counts) or a number of steps to 10**9"),
    **dict.fromkeys(("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"),
                    _BATCH),
    **dict.fromkeys(("warmup_steps", "eval_delay"), (lambda v: 0 <= v <= _MANY, "lie from 0 to 10**9")),
    **dict.fromkeys(("logging_steps", "save_steps", "eval_steps"), _STEPS),
    **dict.fromkeys(("label_smoothing_factor", "adam_beta1", "adam_beta2"), _FRACTION),
    **dict.fromkeys(("save_total_limit", "eval_accumulation_steps", "torch_empty_cache_steps",
                     "dataloader_prefetch_factor", "ddp_bucket_cap_mb", "ddp_timeout"), _AT_LEAST_1),
    "dataloader_num_workers": (lambda v: 0 <= v <= 1024, "be a whole number from 0 to 1024"),
    "shuffle_buffer": (lambda v: 1 <= v <= 10**7, "be a whole number from 1 (no shuffling) to 10**7"),
}  # fmt: skip
_ANY = (lambda v: -(2**63) < v < 2**63, "fit in 64 bits")


def _limit_error(key: str, value) -> str | None:
    """What is wrong with a number given to `key`, in words; None where nothing is (or it is no number)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{key} must be a finite number (not nan or inf), got {value}"
    ok, words = _LIMITS.get(key, _ANY)
    return None if ok(value) else f"{key} must {words}, got {value}"


def _check_limits(args) -> None:
    for key in (f.name for f in dataclasses.fields(args)):
        values = getattr(args, key, None)
        for value in values if isinstance(values, list) else [values]:
            if problem := _limit_error(key, value):
                raise RecipeError(problem + ".")


@dataclass
class _ModelKeys:
    model_name_or_path: str | None = _key(
        "google/vit-base-patch16-224-in21k", "Hub id or save_pretrained folder; null (with model_type): from scratch."
    )
    model_type: str | None = _key(None, "Architecture to train from scratch (e.g. 'vit') instead of a checkpoint.")
    config_overrides: dict | str | None = _key(None, "Config values of a from-scratch model, e.g. {hidden_size: 192}.")
    image_processor_name: str | None = _key(None, "Image processor, if it is not stored beside the checkpoint.")
    image_mean: list[float] | None = _key(None, "Normalisation mean per channel, instead of the processor's.")
    image_std: list[float] | None = _key(None, "Normalisation std per channel, instead of the processor's.")
    model_revision: str = _key("main", "Branch, tag or commit of the checkpoint.")
    cache_dir: str | None = _key(None, "Where downloaded checkpoints are stored.")
    trust_remote_code: bool = _key(False, "Run modelling code shipped with a Hub checkpoint (only code you have read).")
    attn_implementation: Literal[ATTENTION_KERNELS] | None = _key(None, "Attention kernel; null: the library's choice.")
    ignore_mismatched_sizes: bool = _key(True, "Replace a head whose size differs from the number of classes.")
    image_size: int | None = _key(None, "Model input side in pixels (e.g. 112 on CPUs); null: the processor's.")
    eval_image_size: int | None = _key(None, "Evaluate and serve at this side (FixRes); null: the training side.")
    drop_path_rate: float | None = _key(None, "Stochastic depth, for configs that have drop_path_rate.")
    patch_dropout: float = _key(0.0, "Fraction of patch tokens each training image drops (PatchDropout); 0: off.")


@dataclass
class ModelArguments(AdaptationArguments, _ModelKeys):  # the model's keys, then the adaptation modes' (adaptation.py)
    def __post_init__(self):
        _check_limits(self)
        if self.attn_implementation is not None:
            check_attention_kernel(self.attn_implementation)
        if MODES[self.adaptation].needs_checkpoint and self.model_name_or_path is None:
            raise RecipeError(f"adaptation '{self.adaptation}' adapts a checkpoint; from scratch, use 'full'.")
        folder = self.model_name_or_path
        if not self.trust_remote_code and folder and Path(folder).is_dir():
            # transformers would refuse it with a raw error, or silently build its own class instead.
            refuse_shipped_code(folder, "model_name_or_path", "set trust_remote_code: true")
        super().__post_init__()  # the mode's own keys


@dataclass
class DataArguments:
    dataset_name: str = _key("Matthijs/snacks", "Hub id, imagefolder, save_to_disk folder or 'builtin:digits'.")
    dataset_name_for_card: str | None = _key(None, "The dataset's name in the model card (never a local path).")
    dataset_config_name: str | None = _key(None, "Hub dataset configuration name.")
    dataset_revision: str | None = _key(None, "Hub dataset revision.")
    image_column_name: str = _key("image", "Column that holds the images.")
    label_column_name: str = _key("label", "Column that holds the labels (ClassLabel, strings or integers).")
    train_split: str = _key("train", "Name of the training split.")
    validation_split: str = _key("validation", "Name of the validation split; carved out of train when absent.")
    test_split: str | None = _key("test", "Name of the test split; the test step is skipped when it is absent.")
    validation_split_size: float = _key(0.1, "Fraction of train held out when there is no validation split.")
    max_train_samples: int | None = _key(None, "Use at most this many train images.")
    max_eval_samples: int | None = _key(None, "Use at most this many validation and test images each.")
    train_augmentation: Literal["random_resized_crop", "none"] = _key(
        "random_resized_crop", "RandomResizedCrop (+ flip), or none: the eval transform."
    )
    random_resized_crop_scale: list[float] = _key([0.08, 1.0], "Area range of RandomResizedCrop (fraction of image).")
    horizontal_flip: bool = _key(True, "Random horizontal flips while training.")
    auto_augment: Literal["none", "trivial", "rand"] = _key("none", "trivial (TrivialAugmentWide), rand (RandAugment).")
    random_erasing: float = _key(0.0, "Probability of RandomErasing per training image (0: off).")
    mixup_alpha: float = _key(0.0, "MixUp on training batches with Beta(alpha, alpha); 0: off.")
    cutmix_alpha: float = _key(0.0, "CutMix on training batches with this alpha; 0: off.")
    max_bad_images: float = _key(0.01, "Unreadable images tolerated per split: a fraction below 1, else a count.")
    verify_images: bool = _key(False, "Decode every image once before training and leave the bad ones out.")
    max_image_pixels: int = _key(MAX_IMAGE_PIXELS,
                                 "Images with more pixels are bad (Pillow's decompression-bomb limit).")  # fmt: skip
    eval_crop_pct: float = _key(1.0, "Eval: resize the shorter side to size / eval_crop_pct, centre-crop to size.")
    jpeg_draft: bool = _key(False, "Decode training JPEGs at 1/2-1/8 scale where that still covers the input side.")
    train_files: list[str] | None = _key(None, "Train on these shards (.tar / .parquet globs, or a Hub id).")
    validation_files: list[str] | None = _key(None, "Shards of the validation split (globs, or a Hub id).")
    test_files: list[str] | None = _key(None, "Shards of the test split (globs, or a Hub id).")
    streaming: bool = _key(False, "Stream train_files shard by shard, never all at once (docs/data.md#streaming).")
    shuffle_buffer: int = _key(1000, "streaming: undecoded training images each DataLoader worker shuffles among.")

    def __post_init__(self):
        _check_limits(self)


def _recipe_default(name: str, value):
    return field(default=value, metadata=TrainingArguments.__dataclass_fields__[name].metadata)


@dataclass(repr=False)  # TrainingArguments' own repr, which hides the Hub token
class RecipeTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the defaults a classification recipe wants."""

    output_dir: str | None = _key(None, "Where checkpoints, the model and metrics go (default: outputs/<recipe>).")
    overwrite_output_dir: bool = _key(False, "Start afresh in a folder that holds a finished or another run.")
    do_train: bool = _key(True, "false: only evaluate the model in output_dir (or --model_name_or_path).")
    # Keys that only change a TrainingArguments default keep transformers' own help text.
    eval_strategy: str = _recipe_default("eval_strategy", "epoch")
    save_strategy: str = _recipe_default("save_strategy", "epoch")
    save_total_limit: int | None = _recipe_default("save_total_limit", 2)
    load_best_model_at_end: bool = _recipe_default("load_best_model_at_end", True)
    metric_for_best_model: str | None = _recipe_default("metric_for_best_model", "accuracy")
    logging_steps: float = _recipe_default("logging_steps", 10)
    log_level: str = _recipe_default("log_level", "warning")  # the console; info: the libraries' messages too
    log_level_replica: str = _recipe_default("log_level_replica", "warning")  # other processes: warnings only
    # DDP's fast path (no graph walk per step): unused weights are frozen instead (adaptation.freeze_unused).
    ddp_find_unused_parameters: bool | None = _recipe_default("ddp_find_unused_parameters", False)
    hub_license: str = _key("apache-2.0", "License written into the model card's metadata.")
    head_learning_rate_multiplier: float = _key(1.0, "The new classification head trains at learning_rate times this.")
    layer_decay: float = _key(1.0, "Layer-wise learning-rate decay per encoder block (1.0: off).")
    ema_decay: float = _key(0.0, "Moving average of the weights (this decay per step) as the final model; 0: off.")
    calibrate_temperature: bool = _key(False, "Fold a temperature fitted on validation into the head (calibration).")
    seeds: list[int] | None = _key(None, "Run once per seed into output_dir/seed-<N>, then summarise mean ± std.")
    sweep: str | None = _key(None, "A search-space YAML file: an Optuna sweep, then the best recipe trained once.")
    export: list[str] = _key([], "Export formats written at the end of training, as export.py does: [onnx].")
    remove_unused_columns: bool = _key(False, "Always false: the lazy transform consumes the image column.")

    def __post_init__(self):
        _check_limits(self)
        if unknown := [name for name in self.export if name not in EXPORTS]:
            raise RecipeError(f"export: {unknown[0]!r} is not an export format; the formats are {', '.join(EXPORTS)}.")
        super().__post_init__()


ARGUMENT_CLASSES = (ModelArguments, DataArguments, RecipeTrainingArguments)
# Every key's default (the model card lists the keys a recipe changed).
_FIELDS = [f for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls)]
DEFAULTS = {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory() for f in _FIELDS}


class _DuplicateKey(yaml.YAMLError):
    """args: the key, and the lines of its first and second values."""


class _RecipeLoader(yaml.SafeLoader):
    """YAML 1.2 booleans (only true / false), so that `eval_strategy: no` or `output_dir: on` stay text;
    a key given twice in one mapping is an error (PyYAML would keep the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise _DuplicateKey(key, seen[key], key_node.start_mark.line + 1)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)

    def construct_yaml_bool(self, node):
        word = self.construct_scalar(node)
        return word.lower() == "true" if word.lower() in ("true", "false") else word


_RecipeLoader.add_constructor("tag:yaml.org,2002:bool", _RecipeLoader.construct_yaml_bool)


def load_yaml(text: str):
    return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"Recipe file {path} does not exist. Give a YAML recipe's path, e.g. recipes/smoke.yaml.")
    try:
        content = load_yaml(path.read_text(encoding="utf-8"))
    except _DuplicateKey as error:
        key, first, second = error.args
        raise RecipeError(f"{path} sets '{key}' twice (lines {first} and {second}); YAML would silently "
                          "keep the last value. Delete the one you do not mean.") from None  # fmt: skip
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"Recipe {path} is not valid YAML{where}: {getattr(error, 'problem', None) or error}. "
                          "Check the indentation and that every key is followed by ': '.") from None  # fmt: skip
    if not isinstance(content or {}, dict):
        raise RecipeError(f"Recipe {path} must be a mapping of keys to values, not a {type(content).__name__}.")
    return content or {}


# The types each key takes: `int | None` -> (int, NoneType).
_OPTIONS = {key: typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
            for cls in ARGUMENT_CLASSES for key, hint in typing.get_type_hints(cls).items()}  # fmt: skip


def _is_enum(option) -> bool:
    return isinstance(option, type) and issubclass(option, Enum)


def _choices(option) -> tuple | None:
    if typing.get_origin(option) is Literal:
        return typing.get_args(option)
    return tuple(member.value for member in option) if _is_enum(option) else None


def _as_type(value, option):
    """`value` as one type of a key's annotation; ValueError or TypeError where it is not one."""
    origin = typing.get_origin(option) or option
    if _choices(option) is not None:
        if value not in _choices(option):
            raise ValueError(value)
        return value
    if origin is list:  # a single value is a list of one, as on the command line
        return [_as_type(item, typing.get_args(option)[0]) for item in (value if isinstance(value, list) else [value])]
    if origin is dict:
        value = load_yaml(value) if isinstance(value, str) else value  # a mapping written on the command line
        if not isinstance(value, dict):
            raise TypeError(value)
        return value
    if option is bool:
        return string_to_bool(str(value))  # `yes` and `1` too, as on the command line
    if option in (int, float) and not isinstance(value, bool):
        number = value if isinstance(value, option) else float(value)  # text too: YAML 1.1 reads `1e-4` as text
        if option is int and isinstance(number, float) and not number.is_integer():
            raise ValueError(value)
        return option(number)
    if option is str and isinstance(value, int | float):
        return str(value).lower() if isinstance(value, bool) else str(value)  # `true` stays the word written
    if isinstance(value, origin):  # None for NoneType, and types such as ParallelismConfig
        return value
    raise TypeError(value)


_EXPECTED = {int: "a whole number", float: "a number", bool: "true or false", str: "text", dict: "a mapping ({a: 1})"}


def _coerce(key: str, value, source: str):
    """A recipe value, or the command line's text, as its key's type; else a RecipeError that names the key."""
    options = _OPTIONS[key]
    if any(_is_enum(o) or (typing.get_origin(o) or o) is dict for o in options):
        options = [o for o in options if o is not str]  # `str` only lets HfArgumentParser take such keys as text
    if isinstance(value, str) and str in options:
        return value
    for option in sorted(options, key=lambda o: o is str):  # for `str | bool` keys, true stays a boolean
        try:
            return _as_type(value, option)
        except (TypeError, ValueError, OverflowError, argparse.ArgumentTypeError, yaml.YAMLError):
            continue
    optional = type(None) in options
    first = next(o for o in options if o is not type(None))
    got = "null" if value is None else repr(value)
    if _choices(first):
        choices = ", ".join(map(repr, _choices(first))) + (", null" if optional else "")
        wrong = f"invalid choice: {got} (choose from {choices})"
    else:
        is_list = typing.get_origin(first) is list
        kind = typing.get_args(first)[0] if is_list else typing.get_origin(first) or first
        expected = ("a list, each " if is_list else "") + _EXPECTED.get(kind, f"a {getattr(kind, '__name__', kind)}")
        wrong = f"expected {expected}{' (or null)' if optional else ''}, got {got}"
    raise RecipeError(f"{key}: {wrong} ({source}). `python run_snacks.py --help` lists every key with its type.")


class RecipeParser(HfArgumentParser):
    def error(self, message: str):
        raise RecipeError(f"The command line: {message.rstrip('.')}. Overrides look like '--learning_rate 3.0e-4'.")


_IN_5 = "It was renamed or removed in transformers 5; use"
_GONE = "It was removed (its speed-up was below the benchmark's noise); delete the key."
_REMOVED = ("reuse_freed_memory", "dataloader_worker_niceness", "decoded_image_cache_mib", "decode_ahead")
# Keys of transformers 4 recipes, and keys that older resolved recipes of this project hold.
_RENAMED_KEYS = {
    "warmup_ratio": f"{_IN_5} warmup_steps (a value below 1 is read as a fraction of all steps).",
    "evaluation_strategy": f"{_IN_5} eval_strategy.",
    "no_cuda": f"{_IN_5} use_cpu.",
    "save_safetensors": f"{_IN_5} nothing: weights are always saved as safetensors; remove the key.",
    "export_onnx": "It became `export: [onnx]` (export formats, a list).",
    **dict.fromkeys(_REMOVED, _GONE),
}


def check_keys(keys, source: str) -> None:
    for key in keys:
        if key not in _OPTIONS:
            close = difflib.get_close_matches(key, sorted(_OPTIONS), n=1, cutoff=0.6)
            hint = _RENAMED_KEYS.get(key) or (f"Did you mean '{close[0]}'?" if close else "")
            raise RecipeError(f"Unknown key '{key}' in {source}.{' ' + hint if hint else ''} Run "
                              "`python run_snacks.py --help` to list every key.")  # fmt: skip


def parse_recipe(argv: list[str] | None = None):
    """`RECIPE.yaml [--key value ...]` as (model_args, data_args, training_args, recipe_path)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = RecipeParser(ARGUMENT_CLASSES, usage="python run_snacks.py RECIPE.yaml [--key value ...]",
                          description="Train an image classifier from a YAML recipe. Set any key below in the recipe "
                          "or on the command line (--key value, --key=value, --flag, --mapping.key value, null), "
                          "which wins; docs/recipes.md says more.")  # fmt: skip
    if any(a in ("-h", "--help") for a in argv):
        parser.print_help()
        raise SystemExit(0)
    recipe_path, recipe = None, {}
    if argv and not argv[0].startswith("-"):
        recipe_path = Path(argv.pop(0))
        recipe = read_yaml(recipe_path)
    source = f"recipe {recipe_path}" if recipe_path else "the command line"
    if isinstance(recipe.get("export_onnx"), bool):  # the resolved recipes of runs before `export` replaced it
        recipe["export"] = ["onnx"] if recipe.pop("export_onnx") else []
    check_keys(recipe, source)
    # The words before the first --key, and {key: [--key, its words...]}; a later --key wins, as in argparse.
    starts = [i for i, word in enumerate(argv) if word.startswith("--")]
    rest, given = argv[: starts[0] if starts else len(argv)], {}
    for start, end in zip(starts, [*starts[1:], len(argv)]):
        option, equals, value = argv[start].partition("=")
        given[option[2:].replace("-", "_")] = [option, *([value] if equals else []), *argv[start + 1 : end]]
    check_keys([key.split(".")[0] for key in given if key.removeprefix("no_") not in _OPTIONS], "the command line")
    # Recipe values and command-line words, typed alike, become the parser's defaults; argparse gets the strays.
    defaults = {key: _coerce(key, value, source) for key, value in recipe.items()}
    for key, (option, *words) in given.items():
        if key.startswith("no_") and bool in _OPTIONS.get(key[3:], ()) and not words:  # HfArgumentParser's --no_flag
            key, words = key[3:], ["false"]
        parent, dot, child = key.partition(".")
        if parent not in _OPTIONS or not (words or dot or bool in _OPTIONS.get(key, ())):
            rest += [option, *words]  # for argparse's own message
            continue
        if dot:  # --mapping.key value: one entry of a mapping, typed as YAML
            value = load_yaml(" ".join(words)) if words else True
            mapping = defaults.get(parent)
            value = {**mapping, child: value} if isinstance(mapping, dict) else {child: value}
        elif len(words) == 1:
            value = None if words[0].lower() in ("null", "~") else words[0]  # not "none": a report_to value
        else:
            value = words or True  # a bare --flag is true
        defaults[parent] = _coerce(parent, value, "the command line")
    parser.set_defaults(**defaults)
    values = vars(parser.parse_args(rest))
    if values["output_dir"] is not None and not values["output_dir"].strip():
        raise RecipeError("output_dir is empty (''). Give a folder (e.g. --output_dir outputs/my-run), "
                          "or leave the key out for the default, outputs/<recipe name>.")  # fmt: skip
    if not values["output_dir"]:
        if recipe_path is None:
            raise RecipeError("No output_dir: give a recipe file or pass --output_dir PATH.")
        values["output_dir"] = str(Path("outputs") / recipe_path.stem)
    notes = check_shard_source(values, recipe, given)
    check_output_dir(values["output_dir"], values["dataset_name"])
    if not values["do_train"]:
        # This recipe's model, unless the command line names another; its config replaces the from-scratch keys.
        if "model_name_or_path" not in given:
            what = "--do_train false evaluates the model saved in output_dir"
            advice = "Train it first, point --output_dir at a finished run, or name one with --model_name_or_path."
            values["model_name_or_path"] = str(require_model_folder(values["output_dir"], what, advice))
        values["model_type"] = values["config_overrides"] = None
        if "calibrate_temperature" in given and values["calibrate_temperature"]:  # the recipe's value: a record
            raise RecipeError("calibrate_temperature: an evaluation-only run (--do_train false) fits no "
                              "temperature. It is fitted on validation during training and folded into the saved "
                              "head, so a model trained with calibrate_temperature: true already holds it (its "
                              "reports give T). Remove --calibrate_temperature here, or train with it.")  # fmt: skip
    notes += switch_off_gpu_only_settings(values)
    inactive = inactive_keys(values)
    if values["do_train"]:
        notes += drop_keys_that_cannot_act(values, inactive, from_recipe=set(recipe) - set(given), switched=given)
    try:
        model_args, data_args, training_args = parser.parse_dict(values)
    except (ValueError, TypeError) as error:
        raise RecipeError(f"Invalid value in {source}: {error}") from None
    training_args.gpu_settings_switched_off = notes  # the run logs them, the resolved recipe records them
    training_args.inactive_keys = sorted(inactive)  # left out of the resolved recipe and the card
    check_consistency(model_args, training_args)
    if training_args.remove_unused_columns:
        logging.getLogger(__name__).warning("remove_unused_columns: forced to false; the lazy "
                                            "transform needs the image and label columns.")  # fmt: skip
        training_args.remove_unused_columns = False
    return model_args, data_args, training_args, recipe_path


def check_consistency(model_args: ModelArguments, training_args: TrainingArguments) -> None:
    if model_args.model_name_or_path and model_args.model_type:
        raise RecipeError("Both model_name_or_path and model_type are set. Give model_name_or_path to "
                          "fine-tune a checkpoint, or set model_name_or_path: null and give "
                          "model_type (with config_overrides) to train from scratch.")  # fmt: skip
    if not model_args.model_name_or_path and not model_args.model_type:
        raise RecipeError("Neither model_name_or_path nor model_type is set: the recipe must name a model.")
    if training_args.ema_decay and training_args.load_best_model_at_end and training_args.do_train:
        raise RecipeError("ema_decay: the averaged weights become the final model, so the best checkpoint cannot be "
                          "reloaded over them. Set load_best_model_at_end: false (or ema_decay: 0).")  # fmt: skip
    # accelerate launch sets ACCELERATE_USE_FSDP for an FSDP config; TrainingArguments.fsdp is the other way in.
    fsdp = training_args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    mode = MODES[model_args.adaptation]
    if mode.no_fsdp and training_args.do_train and fsdp:
        raise RecipeError(f"adaptation: {model_args.adaptation} does not run under FSDP: {mode.no_fsdp}.")
    if training_args.seeds and training_args.sweep:
        raise RecipeError("seeds and sweep cannot be combined: run the sweep, then --seeds on its best_recipe.yaml.")
    if training_args.sweep:
        if not Path(training_args.sweep).is_file():
            raise RecipeError(f"sweep: the search-space file {training_args.sweep} does not exist.")
        load_search_space(training_args.sweep)  # its mistakes, before any data is loaded
    seeds = training_args.seeds or []
    if twice := sorted({seed for seed in seeds if seeds.count(seed) > 1}):
        raise RecipeError(f"seeds: {twice[0]} is given twice; each seed runs once, into output_dir/seed-{twice[0]}.")
    # Trainer imports a tracker only when it builds its callbacks, after the data has loaded.
    for name in [tracker for tracker in training_args.report_to if tracker in _TRACKERS]:  # "all" is a list by now
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - installed but broken (a missing shared library, a bad version)
            missing = isinstance(error, ModuleNotFoundError) and error.name == name
            problem = "is not installed" if missing else f"fails to import ({cause(error)})"
            raise RecipeError(f"report_to: {name} {problem}, and Trainer needs it to log there. "
                              f"Run `pip install {name}` (or `pip install --upgrade {name}`), "
                              f"or remove {name} from report_to.") from None  # fmt: skip
    if model_args.config_overrides and model_args.model_name_or_path:
        raise RecipeError("config_overrides only applies to from-scratch models (model_type). "
                          "To change a checkpoint's architecture, train from scratch or save "
                          "a modified config next to the checkpoint.")  # fmt: skip
    check_eval_image_size(model_args)


# Architectures whose forward resizes the position embeddings to any input: they evaluate at a new size unasked.
INTERPOLATING = ("dinov2", "dinov2_with_registers")


def eval_size_error(model: str, side, eval_image_size: int) -> RecipeError:
    return RecipeError(f"eval_image_size: {model} runs at one input size ({side} px), and pipeline() cannot ask it "
                       f"to interpolate its position embeddings to {eval_image_size} px. Remove eval_image_size, "
                       f"or use a model that interpolates at every size ({', '.join(INTERPOLATING)}).")  # fmt: skip


def check_eval_image_size(model_args) -> None:
    """An eval_image_size the model cannot run at, refused before any data loads: from the recipe for a model
    from scratch, from config.json for a local checkpoint (a Hub id's is checked when it loads, in build_model)."""
    folder, size = model_args.model_name_or_path, model_args.eval_image_size
    if size is None or (folder and not Path(folder).is_dir()):
        return
    try:
        config = PreTrainedConfig.get_config_dict(folder)[0] if folder else AutoConfig.for_model(model_args.model_type)
    except (OSError, ValueError):
        return  # loading the model explains what is wrong with it
    config = {**(config if folder else config.to_dict()), **(model_args.config_overrides or {})}
    side = (folder and model_args.image_size) or config.get("image_size")
    if config.get("model_type") not in INTERPOLATING and side is not None and size != side:
        model = (config.get("architectures") or [f"a from-scratch {config.get('model_type')} model"])[0]
        raise eval_size_error(model, side, size)


# Keys that only the Trainer loop reads (its steps, batches, optimiser, schedule, checkpoints and augmentation).
TRAINER_LOOP_KEYS = (
    "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "optim", "optim_args",
    "num_train_epochs", "max_steps", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "gradient_checkpointing", "label_smoothing_factor",
    "eval_strategy", "eval_steps", "save_strategy", "save_steps", "save_total_limit", "load_best_model_at_end",
    "metric_for_best_model", "greater_is_better", "logging_strategy", "logging_steps", "logging_first_step",
    "mixup_alpha", "cutmix_alpha", "ema_decay", "layer_decay", "head_learning_rate_multiplier", "drop_path_rate",
    "patch_dropout",
    "train_augmentation", "random_resized_crop_scale", "horizontal_flip", "auto_augment", "random_erasing",
)  # fmt: skip
# Keys that act only when loading a checkpoint; a from-scratch model takes its sizes from config_overrides.
CHECKPOINT_KEYS = ("image_processor_name", "model_revision", "image_size", "ignore_mismatched_sizes")


def check_shard_source(values: dict, recipe: dict, given: dict) -> list[str]:
    """train_files replace dataset_name (with a note where the command line points a recipe at shards); streaming
    needs them, and refuses the keys that need random access to the training set."""
    files = values["train_files"]
    if not files:
        if values["streaming"]:
            raise RecipeError("streaming: true needs train_files (globs of .tar / .parquet shards, or a Hub dataset "
                              "id): make_shards.py writes shards from any dataset_name (docs/data.md#streaming).")
        return []
    notes = []
    if "dataset_name" in recipe and "dataset_name" not in given:
        if "train_files" not in given:
            raise RecipeError("The recipe sets both dataset_name and train_files: keep the one to train on.")
        notes.append(f"train_files (command line) take over from the recipe's dataset_name {recipe['dataset_name']}.")
    first = files[0]
    values["dataset_name"] = first if "*" not in first and not first.endswith((".tar", ".parquet")) else (
        str(Path(first).parent))  # the shards' folder, or the Hub id: what the card and metrics name  # fmt: skip
    if values["streaming"]:
        for key in [k for k in ("max_train_samples", "verify_images") if values[k] not in (None, False)]:
            raise RecipeError(f"{key}: it needs random access to the training images, which a stream (streaming: "
                              f"true) does not give. Remove {key}, or set streaming: false.")  # fmt: skip
        if not values["validation_files"]:
            raise RecipeError("streaming: without validation_files, validation would be carved out of train, which "
                              "needs random access to the training images. Give validation_files (make_shards.py "
                              "writes them).")  # fmt: skip
    return notes


def inactive_keys(values: dict) -> dict[str, str]:
    """{key: why it cannot act} for the keys this run's adaptation mode and model leave unused."""
    mode = values["adaptation"]
    found = {key: f"it acts only with adaptation {' or '.join(modes)} (this run: {mode})"
             for key, modes in mode_keys().items() if mode not in modes}  # fmt: skip
    if not MODES[mode].trainer_loop:
        why = f"adaptation {mode} fits the head by logistic regression on un-augmented images: no Trainer loop"
        found.update(dict.fromkeys(TRAINER_LOOP_KEYS, why))
    if values["model_name_or_path"] is None:
        found.update(dict.fromkeys(CHECKPOINT_KEYS, "it applies to a loaded checkpoint; a from-scratch model takes "
                                                    "its sizes from config_overrides"))  # fmt: skip
    return found


def drop_keys_that_cannot_act(values: dict, inactive: dict, from_recipe: set, switched: dict) -> list[str]:
    """A key set away from its default that this training run cannot use is an error, so that the resolved recipe and
    the card never record a setting that did not apply; unless the recipe file set it and the command line switched
    the adaptation or the model: then it is reset to its default, with one note naming it."""
    dropped = []
    for key, reason in inactive.items():
        if values[key] == (default := DEFAULTS[key]):
            continue
        if key in from_recipe and {"adaptation", "model_name_or_path", "model_type"} & set(switched):
            values[key] = default
            dropped.append(key)
            continue
        raise RecipeError(f"{key}: {values[key]} cannot act in this run, because {reason}. Remove the key "
                          f"or set it back to its default ({'null' if default is None else default}), or "
                          "choose the adaptation or model it belongs to.")  # fmt: skip
    if MODES[values["adaptation"]].trainer_loop and values["max_steps"] <= 0 and values["num_train_epochs"] <= 0:
        raise RecipeError(f"num_train_epochs: {values['num_train_epochs']:g} (with max_steps "
                          f"{values['max_steps']}) trains 0 steps, so adaptation {values['adaptation']} would "
                          "save an untrained model. Set num_train_epochs or max_steps above 0.")  # fmt: skip
    model = "a from-scratch model" if values["model_name_or_path"] is None else "a checkpoint"
    return [f"{', '.join(dropped)}: the recipe's values are left out, as they cannot act with adaptation "
            f"{values['adaptation']} and {model}, chosen on the command line."] if dropped else []  # fmt: skip


# Trackers whose Python package (and `pip install` name) is the report_to name.
_TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow", "comet_ml", "neptune", "clearml", "dvclive", "swanlab")


def load_search_space(path: str | Path) -> tuple[int, dict[str, dict]]:
    """(n_trials, {key: spec}) from a search-space file, checked against the recipe keys."""
    space = read_yaml(path)
    unknown = sorted(set(space) - {"n_trials", "params"})
    params = space.get("params") or {}
    if unknown or not isinstance(params, dict) or not params:
        end = f"; it has unknown entries {unknown}." if unknown else "."
        raise RecipeError(f"Search space {path} must hold `n_trials: N` and `params:` with one entry per key, "
                          "e.g. `learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}` or "
                          f"`lr_scheduler_type: {{choices: [cosine, linear]}}`{end}")  # fmt: skip
    n_trials = space.get("n_trials", 10)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise RecipeError(f"Search space {path}: 'n_trials' must be a whole number, 1 or more; got {n_trials!r}.")
    for key, spec in params.items():
        where = f"Search space {path}: '{key}'"
        if key not in _OPTIONS or key in ("output_dir", "seeds", "sweep", "do_train", "test_split"):
            raise RecipeError(f"{where} is not a recipe key that a trial can set. Each trial is a run of the "
                              "recipe with the trial's values, so any key that `python run_snacks.py --help` lists "
                              "works, except output_dir, seeds, sweep, do_train and test_split.")  # fmt: skip
        if not isinstance(spec, dict) or not ({"choices"} <= set(spec) or {"low", "high"} <= set(spec)):
            raise RecipeError(f"{where} needs either `choices: [...]` or `low` and `high`.")
        if "choices" in spec:
            if not isinstance(spec["choices"], list) or not spec["choices"]:
                raise RecipeError(f"{where} needs a non-empty list of `choices`.")
            if problem := next(filter(None, (_limit_error(key, choice) for choice in spec["choices"])), None):
                raise RecipeError(f"{where}: {problem}.")
            continue
        try:  # float(), as the sweep reads them: PyYAML reads `1e-4` as text
            ordered = float(spec["low"]) <= float(spec["high"])
        except (TypeError, ValueError):
            ordered = False
        if not ordered:
            raise RecipeError(f"{where} needs numbers, low <= high; got low {spec['low']!r}, high {spec['high']!r}.")
        if spec.get("log") and float(spec["low"]) <= 0:
            raise RecipeError(f"{where} has `log: true`, which needs low > 0; got {spec['low']}.")
        if problem := _limit_error(key, float(spec["low"])) or _limit_error(key, float(spec["high"])):
            raise RecipeError(f"{where}: {problem}.")  # the trials' values: checked as the recipe's are
    return n_trials, params
