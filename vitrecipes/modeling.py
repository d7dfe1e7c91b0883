"""Building the image processor and the classifier, from a checkpoint or from scratch."""

from __future__ import annotations

import difflib
import logging

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, ViTImageProcessor

from .config import ModelArguments
from .errors import RecipeError, cause, hub_unreachable
from .hub import is_hub_id
from .outputs import require_model_folder

logger = logging.getLogger(__name__)


def _hub_kwargs(model_args: ModelArguments) -> dict:
    return {
        "revision": model_args.model_revision,
        "cache_dir": model_args.cache_dir,
        "trust_remote_code": model_args.trust_remote_code,
    }


def _missing_checkpoint_error(name: str, error: Exception) -> RecipeError:
    if not is_hub_id(name):
        advice = "Give a folder written by save_pretrained (config.json + model.safetensors) or a Hub id."
        require_model_folder(name, "model_name_or_path", advice)
        return RecipeError(f"model_name_or_path: could not load {name} ({cause(error)}). {advice}")
    return RecipeError(
        f"model_name_or_path: could not load '{name}' ({hub_unreachable('the Hub could not be reached')}, or "
        f"the id is misspelt, or it is not in the local cache). Download it once with `hf download {name}` on a "
        "machine with network, or point model_name_or_path at a local folder. "
        f"Cause: {cause(error)}"
    )


def scratch_config(model_args: ModelArguments, **extra):
    """The config of a from-scratch model: the architecture's defaults plus `config_overrides`."""
    overrides = model_args.config_overrides or {}
    try:
        defaults = AutoConfig.for_model(model_args.model_type).to_dict()
    except ValueError as error:
        raise RecipeError(f"model_type: {error}") from None
    # Configs accept any keyword silently, so a typo would otherwise train the default size.
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        hints = [difflib.get_close_matches(k, list(defaults), n=1) for k in unknown]
        hint = "; ".join(f"'{k}' -> did you mean '{h[0]}'?" for k, h in zip(unknown, hints) if h)
        raise RecipeError(
            f"config_overrides: {unknown} are not fields of a {model_args.model_type} config. {hint}".rstrip()
        )
    return AutoConfig.for_model(model_args.model_type, **extra, **overrides)


def build_image_processor(model_args: ModelArguments):
    """The checkpoint's own processor, or a ViT-style one sized to a from-scratch config."""
    if model_args.model_name_or_path is None:
        config = scratch_config(model_args)
        size = getattr(config, "image_size", 224)
        return ViTImageProcessor(size={"height": size, "width": size})
    name = model_args.image_processor_name or model_args.model_name_or_path
    try:
        return AutoImageProcessor.from_pretrained(name, **_hub_kwargs(model_args))
    except OSError as error:
        raise _missing_checkpoint_error(name, error) from None


def build_model(model_args: ModelArguments, class_names: list[str]):
    """An image classifier with one output per class and the class names in its config."""
    label2id = {name: i for i, name in enumerate(class_names)}
    id2label = {i: name for i, name in enumerate(class_names)}
    # The classes, and the attention kernel (None: the library's choice, sdpa where the architecture has it).
    labels = {"label2id": label2id, "id2label": id2label, "attn_implementation": model_args.attn_implementation}
    if model_args.model_name_or_path is None:
        config = scratch_config(model_args, **labels)
        _set_drop_path_rate(config, model_args.drop_path_rate)
        return _as_classifier(
            lambda: AutoModelForImageClassification.from_config(config),
            model_args.model_type,
        )

    name = model_args.model_name_or_path
    try:
        config = AutoConfig.from_pretrained(name, **labels, **_hub_kwargs(model_args))
    except OSError as error:
        raise _missing_checkpoint_error(name, error) from None
    _set_drop_path_rate(config, model_args.drop_path_rate)
    try:
        model = _as_classifier(
            lambda: AutoModelForImageClassification.from_pretrained(
                name,
                config=config,
                ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
                use_safetensors=True,  # never unpickle weights
                **_hub_kwargs(model_args),
            ),
            name,
        )
    except OSError as error:
        raise _missing_checkpoint_error(name, error) from None
    if model_args.image_size:
        resize_position_embeddings(model, model_args.image_size)
    materialize_new_weights(model)
    return model


def _set_drop_path_rate(config, rate: float | None) -> None:
    if rate is None:
        return
    if not hasattr(config, "drop_path_rate"):
        raise RecipeError(
            f"drop_path_rate: {config.model_type} models have no stochastic depth (their config has no "
            "drop_path_rate). Remove the key."
        )
    config.drop_path_rate = rate


def materialize_new_weights(model) -> None:
    """Give weights left on the meta device (a new head, under FSDP's `fsdp_cpu_ram_efficient_loading`) zeros.

    transformers initialises a new head on the first process of each machine only and leaves it on the meta
    device elsewhere, for FSDP to overwrite with process 0's weights. Before that, the probe and `freeze_unused`
    run the head, and accelerate maps the optimiser's parameters by `data_ptr`, which is 0 for every meta tensor.
    """
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if parameter.is_meta:
                value = torch.zeros_like(parameter, device="cpu")
                setattr(module, name, torch.nn.Parameter(value, requires_grad=parameter.requires_grad))


def resize_position_embeddings(model, image_size: int) -> None:
    """Make a fixed-size ViT-style checkpoint native at `image_size`, so that it (and pipeline()) needs no flag.

    The model's own `interpolate_pos_encoding` resamples the position grid once; the config then records
    the new size. Models that interpolate on every call (DINOv2: no `image_size` check) are left as they are.
    """
    embeddings = getattr(getattr(model, model.base_model_prefix, None), "embeddings", None)
    native = getattr(model.config, "image_size", None)
    if native == image_size or embeddings is None or model.config.model_type == "dinov2":
        return
    if not (hasattr(embeddings, "interpolate_pos_encoding") and hasattr(embeddings, "position_embeddings")):
        raise RecipeError(
            f"image_size: {type(model).__name__} cannot change its input size from {native}. Remove image_size, "
            "or use a checkpoint that interpolates position embeddings (ViT, DeiT, DINOv2)."
        )
    patch = model.config.patch_size
    with torch.no_grad():
        tokens = torch.zeros(1, 1 + (image_size // patch) ** 2, model.config.hidden_size)
        table = embeddings.interpolate_pos_encoding(tokens, image_size, image_size)
    embeddings.position_embeddings = torch.nn.Parameter(table.detach().clone())
    model.config.image_size = image_size
    for module in (embeddings, embeddings.patch_embeddings):  # where the size checks read it
        if hasattr(module, "image_size"):
            module.image_size = (image_size, image_size)
    embeddings.patch_embeddings.num_patches = (image_size // patch) ** 2
    logger.info("Position embeddings resampled from %s px to %d px.", native, image_size)


def _as_classifier(make, what: str):
    try:
        return make()
    except ValueError as error:
        if "Unrecognized configuration class" in str(error) or "image classification" in str(error).lower():
            raise RecipeError(
                f"{what} is not an image-classification architecture: AutoModelForImageClassification has no "
                "class for it. Use a vision checkpoint such as google/vit-base-patch16-224-in21k."
            ) from None
        if "attn_implementation" in str(error) or "attention implementation" in str(error):
            raise RecipeError(
                f"attn_implementation: {what} cannot use this attention kernel ({str(error).splitlines()[0]}). "
                "Set attn_implementation: eager, which every architecture supports."
            ) from None
        raise
