"""How a pretrained backbone is adapted (recipe key `adaptation`, docs/models.md): which weights train, at which
learning rate, from which head. Every mode is one entry of MODES, with its keys in AdaptationArguments: the rest of the
code asks the registry and never names a mode."""

from __future__ import annotations

import logging
import os
import re
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from datasets.fingerprint import Hasher
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from .console import progress, show
from .errors import RecipeError, cause

logger = logging.getLogger(__name__)

_BLOCK_INDEX = re.compile(r"\.(?:layer|layers|blocks)\.(\d+)\.")


@dataclass(frozen=True)
class Mode:
    """An adaptation mode: the keys that act only in it, with their limits (a test and its words); whether a linear
    probe fits the head first and whether the Trainer loop runs; how the model is prepared and, after training,
    finished; and why it cannot run under FSDP, if it cannot."""

    keys: dict = field(default_factory=dict)
    probe: bool = False
    trainer_loop: bool = True
    needs_checkpoint: bool = True
    prepare: Callable = lambda model, args: model
    finish: Callable = lambda model: model
    no_fsdp: str | None = None

    def check(self, args) -> None:
        for key, (ok, words) in self.keys.items():
            value = getattr(args, key)
            if not all(ok(item) for item in (value if isinstance(value, list) else [value])):
                raise RecipeError(f"{key} must {words}, got {value}.")


def _train_head_only(model: nn.Module, args) -> nn.Module:
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("classifier" in name.split("."))
    return model


_PROBE_KEYS = {"probe_regularization": (lambda v: v > 0, "be positive (the inverse L2 strength C)"),
               "probe_feature_cache": (lambda v: True, "")}  # fmt: skip
MODES = {
    "full": Mode(needs_checkpoint=False),
    "linear_probe": Mode(_PROBE_KEYS, probe=True, trainer_loop=False, prepare=_train_head_only),
    "lp_ft": Mode(_PROBE_KEYS, probe=True),
    "freeze": Mode({"freeze_blocks": (lambda v: v >= 1, "be 1 or more, up to the model's number of encoder blocks "
                                      "(checked when the model loads)")},
                   prepare=lambda model, args: freeze_first_blocks(model, args.freeze_blocks)),
    "lora": Mode(
        {"lora_rank": (lambda v: v >= 1, "be 1 or more"),
         "lora_alpha": (lambda v: v > 0, "be positive (the adapters' scale is alpha / rank)"),
         "lora_dropout": (lambda v: 0 <= v < 1, "lie in [0, 1) (a probability)"),
         "lora_target_modules": (lambda v: bool(v), "name at least one layer")},
        prepare=lambda model, args: add_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout,
                                             args.lora_target_modules),
        finish=lambda model: model.merge_and_unload(),
        no_fsdp="folding the adapters into sharded weights (merge_and_unload) leaves a model that FSDP can no longer "
        "run for the final evaluation. LoRA trains a small fraction of the weights, so plain data parallel fits the "
        "models FSDP would: launch with recipes/accelerate_configs/ddp.yaml, or use adaptation: full under FSDP",
    ),
}  # fmt: skip
ADAPTATIONS = tuple(MODES)


def recipe_key(default, help: str):
    """A recipe key with one line of help (docs/recipes.md says more); a list default is copied per instance."""
    default = {"default_factory": default.copy} if isinstance(default, list) else {"default": default}
    return field(**default, metadata={"help": help})


@dataclass
class AdaptationArguments:
    """The recipe keys of the adaptation modes (part of ModelArguments); each acts only in the modes of MODES that
    list it."""

    adaptation: Literal[ADAPTATIONS] = recipe_key(
        "full", "Which weights train: full, linear_probe, lp_ft, freeze or lora."
    )
    freeze_blocks: int = recipe_key(0, "adaptation freeze: the embeddings and this many encoder blocks stay frozen.")
    probe_regularization: float = recipe_key(0.1, "linear_probe / lp_ft: inverse L2 strength C of the probe's fit.")
    probe_feature_cache: bool = recipe_key(True, "linear_probe / lp_ft: keep the training features on disk for reuse.")
    lora_rank: int = recipe_key(16, "adaptation lora: rank of the adapters.")
    lora_alpha: float = recipe_key(16.0, "adaptation lora: scale of the adapters (alpha / rank).")
    lora_dropout: float = recipe_key(0.0, "adaptation lora: dropout on the adapter input.")
    lora_target_modules: list[str] = recipe_key(["q_proj", "v_proj"], "adaptation lora: layers that get adapters.")

    def __post_init__(self):
        MODES[self.adaptation].check(self)


def mode_keys() -> dict[str, tuple[str, ...]]:
    """{key: the modes it acts in} for every mode key."""
    keys = dict.fromkeys(key for mode in MODES.values() for key in mode.keys)
    return {key: tuple(name for name, mode in MODES.items() if key in mode.keys) for key in keys}


def cache_root() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "vitrecipes"
    return Path(os.environ.get("VITRECIPES_CACHE") or default)


def feature_cache_file(root: Path, model_args, prep, images_key: str, bf16: bool = False) -> Path:
    """Where the probe features of this backbone, transform and training images (`images_key`, data.py's) are kept."""
    source = model_args.model_name_or_path
    weights = sorted(Path(source).glob("*.safetensors")) if Path(source).is_dir() else []
    identity = {
        "model": str(Path(source).resolve()) if weights else source,
        "revision": model_args.model_revision,
        "weights": [(w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights],
        "transform": [list(prep.size), prep.resize_to, list(prep.mean), list(prep.std)],
        **({"jpeg_draft": True} if getattr(prep, "jpeg_draft", False) else {}),  # drafted pixels differ a little
        "images": images_key,
        **({"bf16": True} if bf16 else {}),  # features computed under bf16 autocast differ a little from fp32 ones
    }
    return root / "probe-features" / f"{Hasher.hash(identity)}.npz"


def classifier_head(model: nn.Module) -> nn.Linear:
    head = getattr(model, "classifier", None)
    if not isinstance(head, nn.Linear):
        raise RecipeError(f"{type(model).__name__} has no single linear `classifier` head, "
                          "which the adaptation modes linear_probe and lp_ft fit. Use "
                          "adaptation: full, freeze or lora with this model.")  # fmt: skip
    return head


def encoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The Transformer blocks in order (`vit.layers`, `dinov2.encoder.layer`, ...)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.endswith(("layer", "layers", "blocks")):
            return module
    raise RecipeError(f"{type(model).__name__}: no list of encoder blocks (`layers`, "
                      "`encoder.layer`) was found, so freeze_blocks and layer_decay cannot tell the "
                      "depth of a parameter. Use adaptation: full and layer_decay: 1.0.")  # fmt: skip


def block_depth(name: str, num_blocks: int) -> int:
    """0 for the embeddings, i + 1 for block i, num_blocks + 1 for what comes after (final norm, head)."""
    if "embeddings" in name:
        return 0
    found = _BLOCK_INDEX.search(f".{name}")
    return int(found.group(1)) + 1 if found else num_blocks + 1


def freeze_first_blocks(model: nn.Module, count: int) -> nn.Module:
    blocks = encoder_blocks(model)
    if not 0 < count <= len(blocks):
        raise RecipeError(f"freeze_blocks: {count} is not between 1 and the model's {len(blocks)} blocks.")
    for name, parameter in model.named_parameters():
        if block_depth(name, len(blocks)) <= count:
            parameter.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("Frozen: embeddings and %d blocks; %d parameters train.", count, trainable)
    return model


def parameter_groups(model: nn.Module, decay_names: set, learning_rate, weight_decay, head_multiplier, layer_decay):
    """Optimiser groups: the head at `head_multiplier` x the rate, block d at layer_decay ** (depth - d)."""
    num_blocks = len(encoder_blocks(model)) if layer_decay != 1.0 else 0
    groups: dict[tuple[float, float], list] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if "classifier" in name.split("."):
            scale = head_multiplier
        else:
            scale = layer_decay ** (num_blocks + 1 - block_depth(name, num_blocks)) if num_blocks else 1.0
        key = (learning_rate * scale, weight_decay if name in decay_names else 0.0)
        groups.setdefault(key, []).append(parameter)
    return [{"params": params, "lr": lr, "weight_decay": wd} for (lr, wd), params in groups.items()]


def freeze_unused(model: nn.Module, size: tuple[int, int]) -> list[str]:
    """Freeze, and name, the trainable parameters the classification forward never uses (DINOv2's mask_token):
    DDP's fast path (no find_unused_parameters) fails at step 2 on them. One blank image finds them."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    first = trainable[0][1]
    pixels = torch.zeros(1, getattr(model.config, "num_channels", 3), *size, device=first.device, dtype=first.dtype)
    model.eval()  # no random numbers drawn, so the same on every process; Trainer switches training back on
    logits = model(pixel_values=pixels).logits
    grads = torch.autograd.grad(logits.sum(), [p for _, p in trainable], allow_unused=True)
    unused = {name: parameter for (name, parameter), grad in zip(trainable, grads) if grad is None}
    for parameter in unused.values():
        parameter.requires_grad_(False)
    if unused:
        logger.info("Frozen, as the classification forward does not use them: %s", ", ".join(unused))
    return list(unused)


def add_patch_dropout(model: nn.Module, rate: float) -> None:
    """PatchDropout (Liu et al., 2022): in each training step every image keeps a random (1 - rate) of its patch tokens
    (the class and register tokens always stay), so a step costs about that much less. Evaluation sees every patch."""
    embeddings = getattr(getattr(model, model.base_model_prefix, None), "embeddings", None)
    if embeddings is None or model.config.model_type not in ("vit", "dinov2", "dinov2_with_registers"):
        raise RecipeError(f"patch_dropout: {type(model).__name__} is not a ViT or DINOv2 model, "
                          "whose token sequence (a class token, registers, then one token per "
                          "patch) it knows. Set patch_dropout: 0 for this model.")  # fmt: skip
    first = 1 + getattr(model.config, "num_register_tokens", 0)

    def drop(module, inputs, tokens: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return tokens
        patches = tokens[:, first:]
        keep = max(1, round(patches.shape[1] * (1 - rate)))
        chosen = torch.rand(patches.shape[:2], device=tokens.device).argsort(dim=1)[:, :keep]
        kept = patches.gather(1, chosen.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        return torch.cat([tokens[:, :first], kept], dim=1)

    embeddings.register_forward_hook(drop)


def add_lora(model: nn.Module, rank: int, alpha: float, dropout: float, target_modules: list[str]):
    """Wrap `model` with peft LoRA adapters; the classification head trains in full."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        modules_to_save=["classifier"])  # fmt: skip
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as error:
        raise RecipeError(f"lora_target_modules: {target_modules} do not match {type(model).__name__}'s "
                          f"layers ({error}). ViT and DINOv2 name their attention projections q_proj, "
                          "k_proj, v_proj and o_proj.") from None  # fmt: skip
    trainable, total = wrapped.get_nb_trainable_parameters()
    logger.info("LoRA rank %d on %s: %d of %d parameters train.", rank, target_modules, trainable, total)
    return wrapped


@torch.inference_mode()
def head_features(model: nn.Module, loader, device=None, bf16=False, shown=False) -> tuple[np.ndarray, np.ndarray]:
    """What the classifier head sees for every batch of `loader`, with the labels (unreadable ones dropped),
    computed on `device` (the accelerator, when the model is still on the CPU), under bf16 autocast if asked;
    `shown`: with a progress bar."""
    head = classifier_head(model)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _module, inputs, _output: captured.append(inputs[0].float().cpu()))
    home = next(model.parameters()).device
    device = home if device is None else torch.device(device)
    labels = []
    model.eval().to(device)
    try:
        for batch in progress(loader, "probe features", enabled=shown):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                model(pixel_values=batch["pixel_values"].to(device))
            labels.append(batch["labels"])
    finally:
        hook.remove()
        model.to(home)  # where the caller left it: Trainer places it (or shards it, under FSDP) itself
    features, labels = torch.cat(captured).numpy(), torch.cat(labels).numpy()
    keep = labels >= 0
    return features[keep], labels[keep]


def fit_linear_head(model: nn.Module, train_loader, regularization: float, cache_file: Path | None = None,
                    device=None, bf16=False, shown=False):  # fmt: skip
    """Fit the head, in place, as scikit-learn's logistic regression on standardised frozen features (the
    standardisation folded into its weights). `cache_file` keeps the features for later runs."""
    head = classifier_head(model)
    start = time.perf_counter()
    cached = cache_file is not None and cache_file.is_file()
    if cached:
        try:
            with np.load(cache_file) as stored:
                features, labels = stored["features"], stored["labels"]
            (show if shown else logger.info)(f"probe features: read from the cache, {cache_file}")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:  # truncated, emptied, flipped
            logger.warning("Feature cache %s is unreadable (%s): removed, recomputing it.", cache_file, cause(error))
            cache_file.unlink(missing_ok=True)
            cached = False
    if not cached:
        features, labels = head_features(model, train_loader, device=device, bf16=bf16, shown=shown)
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            partial = cache_file.with_suffix(f".{os.getpid()}.npz")
            np.savez(partial, features=features, labels=labels)
            partial.replace(cache_file)  # atomic: a killed run leaves no half-written cache
    extracted = time.perf_counter()
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=regularization, max_iter=1000))
    scaler, classifier = probe.fit(features, labels).named_steps.values()
    coef, intercept, seen = classifier.coef_, classifier.intercept_, classifier.classes_
    if len(seen) == 2:  # scikit-learn keeps one row for two classes: the logit difference
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, intercept]
    weight = np.zeros((head.out_features, features.shape[1]))
    bias = np.full(head.out_features, -1e4)  # classes never seen in train
    weight[seen] = coef / scaler.scale_
    bias[seen] = intercept - weight[seen] @ scaler.mean_
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    summary = {"probe_features_cached": cached, "probe_samples": int(len(labels)),
               "probe_feature_seconds": round(extracted - start, 2),
               "probe_fit_seconds": round(time.perf_counter() - extracted, 2),
               "probe_train_accuracy": float(probe.score(features, labels))}  # fmt: skip
    logger.info("Linear probe on %d features: %s", features.shape[1], summary)
    return summary


def adapt(model: nn.Module, args, training_args, prep, data, resume_from=None) -> tuple[nn.Module, dict | None]:
    """`model` made ready to train as its mode says; with a probe, and no checkpoint to resume, its head fitted first on
    `data.probe` (the training images through the evaluation transform). Returns the model and the probe's figures."""
    mode = MODES[args.adaptation]
    if args.patch_dropout:
        add_patch_dropout(model, args.patch_dropout)
    model = mode.prepare(model, args)
    freeze_unused(model, prep.size)  # so that DDP keeps its fast path (no find_unused_parameters)
    if not mode.probe or resume_from is not None:
        return model, None
    # Every process fits the same head on all the images (not on its shard), so replicas agree; with the cache on,
    # the main process computes the features and the others read them. On the accelerator: the model is still on the
    # CPU here, where accelerate launch allows one thread.
    images = torch.utils.data.DataLoader(data.probe, batch_size=training_args.per_device_eval_batch_size,
                                         num_workers=training_args.dataloader_num_workers,
                                         collate_fn=prep.collate)  # fmt: skip
    bf16 = training_args.bf16
    cache = feature_cache_file(cache_root(), args, prep, data.probe_key, bf16) if args.probe_feature_cache else None
    with training_args.main_process_first(desc="linear probe"):
        shown = training_args.process_index == 0 and not training_args.disable_tqdm
        figures = fit_linear_head(model, images, args.probe_regularization, cache, training_args.device, bf16, shown)
    return model, figures
