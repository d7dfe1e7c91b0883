"""Building the image processor and the classifier, from a checkpoint or from scratch."""

from __future__ import annotations

import difflib
import logging

import torch
from transformers import (
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING,
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    ViTImageProcessor,
)

from .artifacts import require_model_folder
from .config import INTERPOLATING, ModelArguments, eval_size_error
from .console import show
from .errors import RecipeError, cause, hub_unreachable
from .hub import is_hub_id

logger = logging.getLogger(__name__)


def _hub_kwargs(args: ModelArguments) -> dict:
    return {"revision": args.model_revision, "cache_dir": args.cache_dir, "trust_remote_code": args.trust_remote_code}


def _missing_checkpoint_error(name: str, error: Exception) -> RecipeError:
    if not is_hub_id(name):
        advice = "Give a folder written by save_pretrained (config.json + model.safetensors) or a Hub id."
        require_model_folder(name, "model_name_or_path", advice)
        return RecipeError(f"model_name_or_path: could not load {name} ({cause(error)}). {advice}")
    return RecipeError(f"model_name_or_path: could not load '{name}' "
                       f"({hub_unreachable('the Hub could not be reached')}, or the id is misspelt, or it is not in "
                       f"the local cache). Download it once with `hf download {name}` on a machine with network, or "
                       f"point model_name_or_path at a local folder. Cause: {cause(error)}")  # fmt: skip


def scratch_config(model_args: ModelArguments, **extra):
    """The config of a from-scratch model: the architecture's defaults plus `config_overrides`."""
    overrides = model_args.config_overrides or {}
    try:
        defaults = AutoConfig.for_model(model_args.model_type).to_dict()
    except ValueError as error:
        raise RecipeError(f"model_type: {error}") from None
    # Configs accept any keyword silently, so a typo would otherwise train the default size.
    if unknown := sorted(set(overrides) - set(defaults)):
        hints = [difflib.get_close_matches(k, list(defaults), n=1) for k in unknown]
        hint = "; ".join(f"'{k}' -> did you mean '{h[0]}'?" for k, h in zip(unknown, hints) if h)
        raise RecipeError(f"config_overrides: {unknown} are not fields of a {model_args.model_type} config. "
                          f"{hint}".rstrip())  # fmt: skip
    return AutoConfig.for_model(model_args.model_type, **extra, **overrides)


def build_image_processor(model_args: ModelArguments):
    """The checkpoint's own processor, or a ViT-style one sized to a from-scratch config."""
    if model_args.model_name_or_path is None:
        size = getattr(scratch_config(model_args), "image_size", 224)
        return ViTImageProcessor(size={"height": size, "width": size})
    name = model_args.image_processor_name or model_args.model_name_or_path
    try:
        return AutoImageProcessor.from_pretrained(name, **_hub_kwargs(model_args))
    except OSError as error:
        raise _missing_checkpoint_error(name, error) from None


def build_model(model_args: ModelArguments, class_names: list[str]):
    """An image classifier with one output per class and the class names in its config."""
    # The classes, and the attention kernel (None: the library's choice, sdpa where the architecture has it).
    labels = {"label2id": {label: i for i, label in enumerate(class_names)}, "id2label": dict(enumerate(class_names)),
              "attn_implementation": model_args.attn_implementation}  # fmt: skip
    name = model_args.model_name_or_path
    what = name or model_args.model_type
    try:
        if name is None:
            config = scratch_config(model_args, **labels)
        else:
            config = AutoConfig.from_pretrained(name, **labels, **_hub_kwargs(model_args))
        if model_args.drop_path_rate is not None:
            if not hasattr(config, "drop_path_rate"):
                raise RecipeError(f"drop_path_rate: {config.model_type} models have no stochastic depth "
                                  "(their config has no drop_path_rate). Remove the key.")  # fmt: skip
            config.drop_path_rate = model_args.drop_path_rate
        # Checked before building: for another architecture AutoModelForImageClassification raises a bare ValueError.
        remote = "AutoModelForImageClassification" in (getattr(config, "auto_map", None) or {})
        if type(config) not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING and not remote:
            raise RecipeError(f"{what} is not an image-classification architecture: "
                              "AutoModelForImageClassification has no class for it. Use a vision "
                              "checkpoint such as google/vit-base-patch16-224-in21k.")  # fmt: skip
        if name is None:  # from scratch: on to the checks below too
            model = AutoModelForImageClassification.from_config(config)
        else:
            model, loading = AutoModelForImageClassification.from_pretrained(
                name, config=config, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
                use_safetensors=True,  # never unpickle weights
                output_loading_info=True,  # its report goes to the log file; report_new_weights says it in one line
                **_hub_kwargs(model_args),
            )  # fmt: skip
            report_new_weights(model, loading)
    except OSError as error:
        raise _missing_checkpoint_error(name, error) from None
    except ValueError as error:
        # Message text: transformers 5.24.0 refuses a kernel by a ValueError naming attention (test_attention_kernel_*).
        if "attention" not in str(error).lower():
            raise
        raise RecipeError(f"attn_implementation: {what} cannot use this attention kernel "
                          f"({str(error).splitlines()[0]}). Set attn_implementation: eager, "
                          "which every architecture supports.") from None  # fmt: skip
    if model_args.image_size:
        model = resize_position_embeddings(model, model_args.image_size)
    side = getattr(model.config, "image_size", None)
    if model_args.eval_image_size not in (None, side) and model.config.model_type not in INTERPOLATING:
        raise eval_size_error(type(model).__name__, side, model_args.eval_image_size)
    materialize_new_weights(model)
    return model


def report_new_weights(model, loading: dict) -> None:
    """One line for the new classification head a fine-tuning run expects; a warning for any other weight that
    the checkpoint lacks, holds at another size, or holds unused."""
    head = {f"classifier.{part}" for part in ("weight", "bias")}
    new = set(loading["missing_keys"]) | {key for key, *_ in loading["mismatched_keys"]}
    if new & head:
        show(f"A new {model.config.num_labels}-class head (expected for fine-tuning).")
    for what, keys in (("are not in the checkpoint, so they start untrained", new - head),
                       ("of the checkpoint are not used by this model", set(loading["unexpected_keys"]))):  # fmt: skip
        if keys:
            listed = ", ".join(sorted(keys)[:8]) + (", ..." if len(keys) > 8 else "")
            logger.warning("%d weights %s: %s", len(keys), what, listed)


def materialize_new_weights(model) -> None:
    """Zeros for weights left on the meta device (FSDP's `fsdp_cpu_ram_efficient_loading` makes a new head on each
    machine's first process only); the probe and `freeze_unused` run it; accelerate maps by `data_ptr`, 0 on meta."""
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if parameter.is_meta:
                value = torch.zeros_like(parameter, device="cpu")
                setattr(module, name, torch.nn.Parameter(value, requires_grad=parameter.requires_grad))


def resize_position_embeddings(model, image_size: int):
    """A fixed-size ViT-style model rebuilt native at `image_size` (so pipeline() needs no flag), its position table
    resampled once by its own `interpolate_pos_encoding`. DINOv2 interpolates on every call: returned as it is."""
    embeddings = getattr(getattr(model, model.base_model_prefix, None), "embeddings", None)
    native = getattr(model.config, "image_size", None)
    if native == image_size or embeddings is None or model.config.model_type == "dinov2":
        return model
    if not (hasattr(embeddings, "interpolate_pos_encoding") and hasattr(embeddings, "position_embeddings")):
        raise RecipeError(f"image_size: {type(model).__name__} cannot change its input size "
                          f"from {native}. Remove image_size, or use a checkpoint that "
                          "interpolates position embeddings (ViT, DeiT, DINOv2).")  # fmt: skip
    tokens = torch.zeros(1, 1 + (image_size // model.config.patch_size) ** 2, model.config.hidden_size)
    state = model.state_dict()
    with torch.no_grad():
        table = embeddings.interpolate_pos_encoding(tokens, image_size, image_size)
    state[f"{model.base_model_prefix}.embeddings.position_embeddings"] = table
    model.config.image_size = image_size
    resized = type(model)(model.config).train(model.training)
    resized.load_state_dict(state, assign=True)  # assign: the loaded tensors themselves, in their dtype
    logger.info("Position embeddings resampled from %s px to %d px.", native, image_size)
    return resized
