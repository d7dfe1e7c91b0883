"""Recipes: a flat YAML file onto three argument dataclasses. Its values, typed by each key's annotation, become the
defaults of one `HfArgumentParser`, which then parses the command line, so that wins. docs/recipes.md: every key."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import logging
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml
from transformers import HfArgumentParser, PreTrainedConfig, TrainingArguments
from transformers.hf_argparser import string_to_bool

from .adaptation import ADAPTATIONS
from .errors import RecipeError, cause
from .hardware import ATTENTION_KERNELS, check_attention_kernel, switch_off_gpu_only_settings
from .images import MAX_IMAGE_PIXELS
from .outputs import require_model_folder


def _key(default, help: str):
    """A recipe key with one line of help (docs/recipes.md says more); a list default is copied per instance."""
    default = {"default_factory": default.copy} if isinstance(default, list) else {"default": default}
    return field(**default, metadata={"help": help})


_NUMPY_SEED = (lambda v: 0 <= v < 2**32, "be a whole number from 0 to 2**32 - 1 (numpy's range)")
# The values a number key takes, as a test and in words; null passes (where a key may be null), a list item by item.
_LIMITS = {
    "lora_rank": (lambda v: v >= 1, "be 1 or more"),
    "lora_alpha": (lambda v: v > 0, "be positive (the adapters' scale is alpha / rank)"),
    "lora_dropout": (lambda v: 0 <= v < 1, "lie in [0, 1) (a probability)"),
    "drop_path_rate": (lambda v: 0 <= v < 1, "lie in [0, 1) (the chance that a block is skipped)"),
    **dict.fromkeys(("image_size", "eval_image_size"), (lambda v: v >= 8, "be a side in pixels (8 or more)")),
    **dict.fromkeys(("mixup_alpha", "cutmix_alpha"), (lambda v: v >= 0, "be 0 (off) or positive")),
    "random_erasing": (lambda v: 0 <= v <= 1, "lie in [0, 1] (a probability)"),
    "validation_split_size": (lambda v: 0 < v < 1, "lie strictly between 0 and 1"),
    "eval_crop_pct": (lambda v: 0 < v <= 1, "lie in (0, 1]"),
    "ema_decay": (lambda v: 0 <= v < 1, "lie in [0, 1) (0 is off)"),
    "layer_decay": (lambda v: 0 < v <= 1, "lie in (0, 1] (1 is off)"),
    "head_learning_rate_multiplier": (lambda v: v > 0, "be positive"),
    **dict.fromkeys(("seed", "data_seed", "seeds"), _NUMPY_SEED),
}


def _check_limits(args) -> None:
    for key, (ok, words) in _LIMITS.items():
        values = getattr(args, key, None)
        for value in values if isinstance(values, list) else [values]:
            if value is not None and not ok(value):
                raise RecipeError(f"{key} must {words}, got {value}.")


@dataclass
class ModelArguments:
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
    adaptation: Literal[ADAPTATIONS] = _key("full", "Which weights train: full, linear_probe, lp_ft, freeze or lora.")
    freeze_blocks: int = _key(0, "adaptation freeze: the embeddings and this many encoder blocks stay frozen.")
    probe_regularization: float = _key(0.1, "linear_probe / lp_ft: inverse L2 strength C of the logistic regression.")
    probe_feature_cache: bool = _key(True, "linear_probe / lp_ft: keep the training features on disk for reuse.")
    lora_rank: int = _key(16, "adaptation lora: rank of the adapters.")
    lora_alpha: float = _key(16.0, "adaptation lora: scale of the adapters (alpha / rank).")
    lora_dropout: float = _key(0.0, "adaptation lora: dropout on the adapter input.")
    lora_target_modules: list[str] = _key(["q_proj", "v_proj"], "adaptation lora: layers that get adapters.")

    def __post_init__(self):
        _check_limits(self)
        if self.attn_implementation is not None:
            check_attention_kernel(self.attn_implementation)
        if self.adaptation == "freeze" and self.freeze_blocks < 1:
            raise RecipeError(
                f"freeze_blocks: {self.freeze_blocks} blocks cannot be frozen; adaptation 'freeze' needs freeze_blocks "
                "set to 1 or more, up to the model's number of encoder blocks (checked when the model loads)."
            )
        if self.adaptation != "full" and self.model_name_or_path is None:
            raise RecipeError(f"adaptation '{self.adaptation}' adapts a checkpoint; from scratch, use 'full'.")
        folder = self.model_name_or_path
        if not self.trust_remote_code and folder and Path(folder).is_dir():
            # auto_map names shipped code: transformers refuses it with a raw error, or silently builds its own class.
            try:
                shipped = PreTrainedConfig.get_config_dict(folder)[0].get("auto_map")
            except OSError:
                shipped = None  # no readable config.json: loading the model explains that
            if shipped:
                raise RecipeError(
                    f"model_name_or_path: the checkpoint {folder} ships its own code (the Python files that auto_map "
                    "in its config.json names), which is not run unless you allow it. Read that code; if you trust "
                    "it, set trust_remote_code: true."
                )


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
    max_image_pixels: int = _key(
        MAX_IMAGE_PIXELS, "Images with more pixels are bad (Pillow's decompression-bomb limit)."
    )
    eval_crop_pct: float = _key(1.0, "Eval: resize the shorter side to size / eval_crop_pct, centre-crop to size.")

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
    log_level: str = _recipe_default("log_level", "info")
    log_level_replica: str = _recipe_default("log_level_replica", "error")  # N processes must not log N times
    # DDP's fast path (no graph walk per step): unused weights are frozen instead (adaptation.freeze_unused).
    ddp_find_unused_parameters: bool | None = _recipe_default("ddp_find_unused_parameters", False)
    hub_license: str = _key("apache-2.0", "License written into the model card's metadata.")
    head_learning_rate_multiplier: float = _key(1.0, "The new classification head trains at learning_rate times this.")
    layer_decay: float = _key(1.0, "Layer-wise learning-rate decay per encoder block (1.0: off).")
    ema_decay: float = _key(0.0, "Moving average of the weights (this decay per step) as the final model; 0: off.")
    calibrate_temperature: bool = _key(False, "Fold a temperature fitted on validation into the head (calibration).")
    seeds: list[int] | None = _key(None, "Run once per seed into output_dir/seed-<N>, then summarise mean ± std.")
    sweep: str | None = _key(None, "A search-space YAML file: an Optuna sweep, then the best recipe trained once.")
    export_onnx: bool = _key(False, "At the end of training, export onnx/ (fp32 and int8) as export.py does.")
    remove_unused_columns: bool = _key(False, "Always false: the lazy transform consumes the image column.")

    def __post_init__(self):
        _check_limits(self)
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
        raise RecipeError(
            f"{path} sets '{key}' twice (lines {first} and {second}); YAML would silently keep the last value. "
            "Delete the one you do not mean."
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(
            f"Recipe {path} is not valid YAML{where}: {getattr(error, 'problem', None) or error}. "
            "Check the indentation and that every key is followed by ': '."
        ) from None
    if not isinstance(content or {}, dict):
        raise RecipeError(f"Recipe {path} must be a mapping of keys to values, not a {type(content).__name__}.")
    return content or {}


# The types each key takes: `int | None` -> (int, NoneType).
_OPTIONS = {
    key: typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for cls in ARGUMENT_CLASSES
    for key, hint in typing.get_type_hints(cls).items()
}


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
        except (TypeError, ValueError, argparse.ArgumentTypeError, yaml.YAMLError):
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
_REMOVED = ("reuse_freed_memory", "dataloader_worker_niceness", "jpeg_draft", "decoded_image_cache_mib", "decode_ahead")
# Keys of transformers 4 recipes, and keys that older resolved recipes of this project hold.
_RENAMED_KEYS = {
    "warmup_ratio": f"{_IN_5} warmup_steps (a value below 1 is read as a fraction of all steps).",
    "evaluation_strategy": f"{_IN_5} eval_strategy.",
    "no_cuda": f"{_IN_5} use_cpu.",
    "save_safetensors": f"{_IN_5} nothing: weights are always saved as safetensors; remove the key.",
    **dict.fromkeys(_REMOVED, _GONE),
}


def check_keys(keys, source: str) -> None:
    for key in keys:
        if key not in _OPTIONS:
            close = difflib.get_close_matches(key, sorted(_OPTIONS), n=1, cutoff=0.6)
            hint = _RENAMED_KEYS.get(key) or (f"Did you mean '{close[0]}'?" if close else "")
            raise RecipeError(
                f"Unknown key '{key}' in {source}.{' ' + hint if hint else ''} "
                "Run `python run_snacks.py --help` to list every key."
            )


def parse_recipe(argv: list[str] | None = None):
    """`RECIPE.yaml [--key value ...]` as (model_args, data_args, training_args, recipe_path)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = RecipeParser(
        ARGUMENT_CLASSES,
        usage="python run_snacks.py RECIPE.yaml [--key value ...]",
        description="Train an image classifier from a YAML recipe. Set any key below in the recipe or on the command "
        "line (--key value, --key=value, --flag, --mapping.key value, null), which wins; docs/recipes.md says more.",
    )
    if any(a in ("-h", "--help") for a in argv):
        parser.print_help()
        raise SystemExit(0)
    recipe_path, recipe = None, {}
    if argv and not argv[0].startswith("-"):
        recipe_path = Path(argv.pop(0))
        recipe = read_yaml(recipe_path)
    source = f"recipe {recipe_path}" if recipe_path else "the command line"
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
        raise RecipeError(
            "output_dir is empty (''). Give a folder (e.g. --output_dir outputs/my-run), or leave the key out "
            "for the default, outputs/<recipe name>."
        )
    if not values["output_dir"]:
        if recipe_path is None:
            raise RecipeError("No output_dir: give a recipe file or pass --output_dir PATH.")
        values["output_dir"] = str(Path("outputs") / recipe_path.stem)
    if not values["do_train"]:
        # This recipe's model, unless the command line names another; its config replaces the from-scratch keys.
        if "model_name_or_path" not in given:
            what = "--do_train false evaluates the model saved in output_dir"
            advice = "Train it first, point --output_dir at a finished run, or name one with --model_name_or_path."
            values["model_name_or_path"] = str(require_model_folder(values["output_dir"], what, advice))
        values["model_type"] = values["config_overrides"] = None
    switched_off = switch_off_gpu_only_settings(values)
    try:
        model_args, data_args, training_args = parser.parse_dict(values)
    except (ValueError, TypeError) as error:
        raise RecipeError(f"Invalid value in {source}: {error}") from None
    training_args.gpu_settings_switched_off = switched_off  # the run logs them, the resolved recipe records them
    check_consistency(model_args, training_args)
    refuse_keys_that_cannot_act(model_args, data_args, training_args)
    if training_args.remove_unused_columns:
        logging.getLogger(__name__).warning(
            "remove_unused_columns: forced to false; the lazy transform needs the image and label columns."
        )
        training_args.remove_unused_columns = False
    return model_args, data_args, training_args, recipe_path


def check_consistency(model_args: ModelArguments, training_args: TrainingArguments) -> None:
    if model_args.model_name_or_path and model_args.model_type:
        raise RecipeError(
            "Both model_name_or_path and model_type are set. Give model_name_or_path to fine-tune a checkpoint, "
            "or set model_name_or_path: null and give model_type (with config_overrides) to train from scratch."
        )
    if not model_args.model_name_or_path and not model_args.model_type:
        raise RecipeError("Neither model_name_or_path nor model_type is set: the recipe must name a model.")
    if training_args.ema_decay and training_args.load_best_model_at_end and training_args.do_train:
        raise RecipeError(
            "ema_decay: the averaged weights become the final model, so the best checkpoint cannot be reloaded "
            "over them. Set load_best_model_at_end: false (or ema_decay: 0)."
        )
    # accelerate launch sets ACCELERATE_USE_FSDP for an FSDP config; TrainingArguments.fsdp is the other way in.
    fsdp = training_args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if model_args.adaptation == "lora" and training_args.do_train and fsdp:
        raise RecipeError(
            "adaptation: lora does not run under FSDP: folding the adapters into sharded weights (merge_and_unload) "
            "leaves a model that FSDP can no longer run for the final evaluation. LoRA trains a small fraction of "
            "the weights, so plain data parallel fits the models FSDP would: launch with "
            "recipes/accelerate_configs/ddp.yaml, or use adaptation: full under FSDP."
        )
    if training_args.seeds and training_args.sweep:
        raise RecipeError("seeds and sweep cannot be combined: run the sweep, then --seeds on its best_recipe.yaml.")
    if training_args.sweep:
        if not Path(training_args.sweep).is_file():
            raise RecipeError(f"sweep: the search-space file {training_args.sweep} does not exist.")
        load_search_space(training_args.sweep, training_args)  # its mistakes, before any data is loaded
    seeds = training_args.seeds or []
    twice = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if twice:
        raise RecipeError(f"seeds: {twice[0]} is given twice; each seed runs once, into output_dir/seed-{twice[0]}.")
    # Trainer imports a tracker only when it builds its callbacks, after the data has loaded.
    for name in [tracker for tracker in training_args.report_to if tracker in _TRACKERS]:  # "all" is a list by now
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - installed but broken (a missing shared library, a bad version)
            missing = isinstance(error, ModuleNotFoundError) and error.name == name
            problem = "is not installed" if missing else f"fails to import ({cause(error)})"
            raise RecipeError(
                f"report_to: {name} {problem}, and Trainer needs it to log there. Run `pip install {name}` (or "
                f"`pip install --upgrade {name}`), or remove {name} from report_to."
            ) from None
    if model_args.config_overrides and model_args.model_name_or_path:
        raise RecipeError(
            "config_overrides only applies to from-scratch models (model_type). To change a checkpoint's "
            "architecture, train from scratch or save a modified config next to the checkpoint."
        )


# Keys that only the Trainer loop reads (its batches, loss, optimiser and train mode); linear_probe has none.
TRAINER_LOOP_KEYS = ("mixup_alpha", "cutmix_alpha", "ema_decay", "layer_decay", "head_learning_rate_multiplier",
                     "label_smoothing_factor", "drop_path_rate", "train_augmentation", "random_resized_crop_scale",
                     "horizontal_flip", "auto_augment", "random_erasing", "sweep")  # fmt: skip
# Keys that act only with these adaptations. probe_feature_cache is not one: it only says where features come from.
ADAPTATION_KEYS = {
    ("freeze",): ("freeze_blocks",),
    ("lora",): ("lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules"),
    ("linear_probe", "lp_ft"): ("probe_regularization",),
}
# Keys that act only when loading a checkpoint; a from-scratch model takes its sizes from config_overrides.
CHECKPOINT_KEYS = ("image_processor_name", "model_revision", "image_size", "ignore_mismatched_sizes")


def refuse_keys_that_cannot_act(model_args, data_args, training_args) -> None:
    """A key set away from its default that this training run cannot use is an error, so that the model card
    and the resolved recipe never record a setting that did not apply."""
    if not training_args.do_train:
        return  # an evaluation reads the trained recipe's keys as the record of that training
    mode = model_args.adaptation
    unusable = [
        (key, f"it acts only with adaptation {' or '.join(modes)} (this run: {mode})")
        for modes, keys in ADAPTATION_KEYS.items()
        if mode not in modes
        for key in keys
    ]
    if mode == "linear_probe":
        reason = "adaptation linear_probe fits the head by logistic regression on un-augmented images: no Trainer loop"
        unusable += [(key, reason) for key in TRAINER_LOOP_KEYS]
    if model_args.model_name_or_path is None:
        reason = "it applies to a loaded checkpoint; a from-scratch model takes its sizes from config_overrides"
        unusable += [(key, reason) for key in CHECKPOINT_KEYS]
    values = {**vars(model_args), **vars(data_args), **vars(training_args)}
    for key, reason in unusable:
        value, default = values[key], DEFAULTS[key]
        if value != default:
            raise RecipeError(
                f"{key}: {value} cannot act in this run, because {reason}. Remove the key or set it back "
                f"to its default ({'null' if default is None else default}), or choose the adaptation or model it "
                "belongs to."
            )
    if mode != "linear_probe" and training_args.max_steps <= 0 and training_args.num_train_epochs <= 0:
        raise RecipeError(
            f"num_train_epochs: {training_args.num_train_epochs:g} (with max_steps {training_args.max_steps}) trains "
            f"0 steps, so adaptation {mode} would save an untrained model. Set num_train_epochs or max_steps above 0."
        )


# Trackers whose Python package (and `pip install` name) is the report_to name.
_TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow", "comet_ml", "neptune", "clearml", "dvclive", "swanlab")


def load_search_space(path: str | Path, training_args) -> tuple[int, dict[str, dict]]:
    """(n_trials, {key: spec}) from a search-space file, checked against the training keys."""
    space = read_yaml(path)
    unknown = sorted(set(space) - {"n_trials", "params"})
    params = space.get("params") or {}
    if unknown or not isinstance(params, dict) or not params:
        raise RecipeError(
            f"Search space {path} must hold `n_trials: N` and `params:` with one entry per key, e.g. "
            "`learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}` or `lr_scheduler_type: {choices: [cosine, "
            "linear]}`" + (f"; it has unknown entries {unknown}." if unknown else ".")
        )
    n_trials = space.get("n_trials", 10)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise RecipeError(f"Search space {path}: 'n_trials' must be a whole number, 1 or more; got {n_trials!r}.")
    for key, spec in params.items():
        where = f"Search space {path}: '{key}'"
        if not hasattr(training_args, key):
            raise RecipeError(
                f"{where} is not a training key. Trainer.hyperparameter_search sets TrainingArguments keys "
                "(learning_rate, weight_decay, num_train_epochs, warmup_steps, ...) only."
            )
        if not isinstance(spec, dict) or not ({"choices"} <= set(spec) or {"low", "high"} <= set(spec)):
            raise RecipeError(f"{where} needs either `choices: [...]` or `low` and `high`.")
        if "choices" in spec:
            if not isinstance(spec["choices"], list) or not spec["choices"]:
                raise RecipeError(f"{where} needs a non-empty list of `choices`.")
            continue
        try:  # float(), as optuna_space reads them: PyYAML reads `1e-4` as text
            ordered = float(spec["low"]) <= float(spec["high"])
        except (TypeError, ValueError):
            ordered = False
        if not ordered:
            raise RecipeError(f"{where} needs numbers, low <= high; got low {spec['low']!r}, high {spec['high']!r}.")
        if spec.get("log") and float(spec["low"]) <= 0:
            raise RecipeError(f"{where} has `log: true`, which needs low > 0; got {spec['low']}.")
    return n_trials, params
