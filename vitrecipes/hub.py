"""A model card for a run's output folder, and pushing that folder to the Hugging Face Hub.

The card is built from the files a run leaves (config.json, metrics.json, resolved_recipe.yaml), so
it can be written at the end of training or long afterwards. A push that fails never loses the run:
everything stays on disk and the error names the command that pushes it later.

Tokens (argument, HF_TOKEN or a cached login) are passed to huggingface_hub only; they are scrubbed
from every message and never written to the card.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import RESOLVED_RECIPE_NAME
from .errors import RecipeError
from .training import METRICS_FILE

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
DEFAULT_LICENSE = "apache-2.0"
BASE_TAGS = ["image-classification", "vision", "vit", "generated-from-recipe"]
# Only what someone using the model needs. An allow-list, so that stray files (notes, logs, an
# eval-only run's metrics) never leave the machine by accident.
UPLOAD_PATTERNS = [
    CARD_NAME,
    "config.json",
    "preprocessor_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    METRICS_FILE,
    RESOLVED_RECIPE_NAME,
]
# Belt and braces behind the allow-list: training state that is large, pickled, or may hold secrets.
NEVER_UPLOAD = ["checkpoint-*", "checkpoint-*/**", "training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state*"]
_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{8,}")
_SECRET_FLAGS = ("--hub_token", "--token")
_HIDDEN = "***"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_MAX_LISTED_LABELS = 100
_HYPERPARAMETERS = [
    ("adaptation", "adaptation mode (how the pretrained backbone was adapted)"),
    ("freeze_blocks", "frozen encoder blocks"),
    ("lora_rank", "LoRA rank (merged into the weights)"),
    ("learning_rate", "learning rate"),
    ("head_learning_rate_multiplier", "head learning-rate multiplier"),
    ("layer_decay", "layer-wise learning-rate decay"),
    ("lr_scheduler_type", "learning-rate schedule"),
    ("warmup_steps", "warm-up steps (below 1: fraction of all steps)"),
    ("num_train_epochs", "epochs"),
    ("max_steps", "max steps (-1: epochs decide)"),
    ("per_device_train_batch_size", "batch size per device"),
    ("gradient_accumulation_steps", "gradient accumulation steps"),
    ("weight_decay", "weight decay"),
    ("optim", "optimiser"),
    ("label_smoothing_factor", "label smoothing"),
    ("max_grad_norm", "gradient clipping (max norm)"),
    ("bf16", "bf16"),
    ("fp16", "fp16"),
    ("train_augmentation", "train augmentation"),
    ("random_resized_crop_scale", "random-resized-crop scale"),
    ("horizontal_flip", "horizontal flip"),
    ("auto_augment", "auto-augment policy"),
    ("random_erasing", "random erasing probability"),
    ("mixup_alpha", "MixUp alpha"),
    ("cutmix_alpha", "CutMix alpha"),
    ("drop_path_rate", "stochastic depth (drop path rate)"),
    ("ema_decay", "weight EMA decay (the saved weights are the average)"),
    ("eval_crop_pct", "eval crop fraction"),
    ("seed", "seed"),
]


# --- secrets ----------------------------------------------------------------------------------


def resolve_token(token: str | None = None) -> str | None:
    """The token huggingface_hub would use: the argument, else HF_TOKEN, else the cached login."""
    if token:
        return token
    from huggingface_hub import get_token

    try:
        return get_token()
    except Exception:  # noqa: BLE001 - an unusable login is the same as none; the push will say so
        return None


def scrub(text: str, *secrets: str | None) -> str:
    """`text` with the given secrets, and anything shaped like a Hub token, replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _TOKEN_PATTERN.sub("***", text)


def redact_argv(argv: list[str]) -> list[str]:
    """Command-line arguments with the values of token flags replaced by ***."""
    redacted, hide_next = [], False
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if hide_next:
            redacted.append(_HIDDEN)
            hide_next = False
        elif arg in _SECRET_FLAGS:
            redacted.append(arg)
            hide_next = True
        elif flag in _SECRET_FLAGS:
            redacted += [flag, _HIDDEN]
        else:
            redacted.append(arg)
    return redacted


def shell_command(argv: list[str]) -> str:
    """A copy-pasteable command; a redacted value stays a bare *** instead of a quoted '***'."""
    return " ".join(arg if arg == _HIDDEN else shlex.quote(arg) for arg in argv)


# --- model card -------------------------------------------------------------------------------


@dataclass
class RunFiles:
    """What an output folder says about its run."""

    output_dir: Path
    config: dict
    metrics: dict
    recipe: dict

    @classmethod
    def read(cls, output_dir: str | Path, metrics: dict | None = None) -> RunFiles:
        output_dir = Path(output_dir)
        config_path = output_dir / "config.json"
        if not config_path.is_file():
            what = "holds no trained model (config.json is missing)" if output_dir.is_dir() else "does not exist"
            raise RecipeError(
                f"{output_dir} {what}. Give the output folder of a training run, e.g. outputs/smoke after "
                "`python run_snacks.py recipes/smoke.yaml`."
            )
        recipe_path = output_dir / RESOLVED_RECIPE_NAME
        metrics_path = output_dir / METRICS_FILE
        if metrics is None:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
        return cls(
            output_dir=output_dir,
            config=json.loads(config_path.read_text(encoding="utf-8")),
            metrics=metrics,
            recipe=(yaml.safe_load(recipe_path.read_text(encoding="utf-8")) or {}) if recipe_path.is_file() else {},
        )

    @property
    def labels(self) -> list[str]:
        id2label = self.config.get("id2label") or {}
        return [str(id2label[key]) for key in sorted(id2label, key=int)]

    @property
    def base_model(self) -> str | None:
        """The Hub checkpoint that was fine-tuned; None for from-scratch models and local folders."""
        name = self.recipe.get("model_name_or_path")
        return name if _is_hub_id(name) else None

    @property
    def dataset(self) -> str:
        return str(self.recipe.get("dataset_name") or "unknown")

    def split_accuracy(self, split: str) -> float | None:
        value = (self.metrics.get(split) or {}).get("accuracy")
        return float(value) if value is not None else None


def _is_hub_id(name: Any) -> bool:
    return isinstance(name, str) and bool(_HUB_ID.match(name)) and not Path(name).exists()


def _eval_results(run: RunFiles) -> list:
    from huggingface_hub import EvalResult

    dataset_type = run.dataset if _is_hub_id(run.dataset) else "imagefolder"
    results = []
    for split in ("validation", "test"):
        accuracy = run.split_accuracy(split)
        if accuracy is None:
            continue  # a dataset without a test split reports validation only
        results.append(
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type=dataset_type,
                dataset_name=run.dataset,
                dataset_split=str(run.recipe.get(f"{split}_split") or split),
                metric_type="accuracy",
                metric_name="Accuracy",
                metric_value=accuracy,
            )
        )
    return results


def card_data(run: RunFiles, model_name: str, license: str | None = None):
    from huggingface_hub import ModelCardData

    model_type = run.config.get("model_type")
    tags = list(dict.fromkeys(BASE_TAGS + ([model_type] if model_type else [])))
    # ModelCardData checks the model-index as it is built: a malformed result fails here, not on the Hub.
    return ModelCardData(
        model_name=model_name,
        base_model=run.base_model,
        datasets=[run.dataset] if _is_hub_id(run.dataset) else None,
        license=license or run.recipe.get("hub_license") or DEFAULT_LICENSE,
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=tags,
        metrics=["accuracy"],
        eval_results=_eval_results(run) or None,
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _results_section(run: RunFiles) -> str:
    rows = ["| split | accuracy | loss | images |", "|---|---|---|---|"]
    for split in ("validation", "test"):
        m = run.metrics.get(split)
        if m:
            loss = f"{m['loss']:.4f}" if "loss" in m else "-"
            rows.append(f"| {split} | {m.get('accuracy', float('nan')):.4f} | {loss} | {m.get('samples', '-')} |")
    if len(rows) == 2:
        return "## Results\n\nNo evaluation metrics were found in metrics.json."
    note = "" if "test" in run.metrics else "\n\nThe dataset has no test split, so only validation is reported."
    return "## Results\n\n" + "\n".join(rows) + note


def _model_sentence(run: RunFiles) -> str:
    if _is_hub_id(run.dataset):
        dataset = f"[{run.dataset}](https://huggingface.co/datasets/{run.dataset})"
    else:
        dataset = f"`{run.dataset}`"
    if run.base_model:
        origin = f"fine-tuned from [{run.base_model}](https://huggingface.co/{run.base_model})"
    elif run.recipe.get("model_name_or_path"):
        origin = f"fine-tuned from the local checkpoint `{run.recipe['model_name_or_path']}`"
    else:
        overrides = run.recipe.get("config_overrides") or {}
        shape = ", ".join(f"{k}={v}" for k, v in overrides.items())
        origin = "trained from scratch" + (f" ({shape})" if shape else "")
    return (
        f"A `{run.config.get('model_type', 'transformers')}` image classifier with {len(run.labels)} classes, "
        f"{origin} on {dataset}, by the training recipe `run_snacks.py` of vitrecipes."
    )


def _training_section(run: RunFiles) -> str:
    rows = ["| setting | value |", "|---|---|"]
    for key, label in _HYPERPARAMETERS:
        if key not in run.recipe or (key == "max_steps" and run.recipe[key] in (-1, None)):
            continue
        if key == "random_resized_crop_scale" and run.recipe.get("train_augmentation") != "random_resized_crop":
            continue
        if key == "freeze_blocks" and run.recipe.get("adaptation") != "freeze":
            continue
        if key == "lora_rank" and run.recipe.get("adaptation") != "lora":
            continue
        rows.append(f"| {label} | {_fmt(run.recipe[key])} |")
    train = run.metrics.get("train") or {}
    extra = [
        ("input size (pixels)", run.config.get("image_size")),
        ("effective batch size", run.metrics.get("effective_batch_size")),
        ("train images", train.get("samples")),
        ("epochs run", train.get("epoch")),
        ("final train loss", train.get("train_loss")),
        ("training time (s)", train.get("train_runtime")),
    ]
    rows += [f"| {label} | {_fmt(value)} |" for label, value in extra if value is not None]
    if len(rows) == 2:
        return "## Training\n\nNo resolved_recipe.yaml was found, so the hyper-parameters are unknown."
    return "## Training\n\n" + "\n".join(rows)


def _labels_section(run: RunFiles) -> str:
    labels = run.labels
    shown = ", ".join(f"`{i}` {name}" for i, name in enumerate(labels[:_MAX_LISTED_LABELS]))
    more = (
        f", ... and {len(labels) - _MAX_LISTED_LABELS} more (see config.json)"
        if len(labels) > _MAX_LISTED_LABELS
        else ""
    )
    return f"## Labels\n\n{len(labels)} classes (id, name): {shown}{more}."


def _usage_section(run: RunFiles, model_ref: str) -> str:
    crop = float(run.recipe.get("eval_crop_pct", 1.0))
    resize = "the model's input size" if crop == 1.0 else f"the input size / {_fmt(crop)}"
    return f"""## Usage

```python
from transformers import pipeline

classifier = pipeline("image-classification", model="{model_ref}")
classifier("photo.jpg", top_k=3)
```

The saved image processor applies exactly the evaluation transform (shorter side resized to
{resize}, bilinear, then centre-cropped), so the pipeline reproduces the reported accuracy.
`predict.py` from the recipe repository does the same, takes files, folders and URLs, and batches on
the GPU when there is one:

```bash
python predict.py --model {model_ref} photo.jpg more_photos/ --top_k 3
python predict.py --model {model_ref} more_photos/ --json > predictions.jsonl
```"""


def _reproduce_section(run: RunFiles, command: str | None, recipe_path: str | Path | None) -> str:
    parts = ["## Reproduce"]
    if command:
        parts.append(f"Trained with:\n\n```bash\n{command}\n```")
    if recipe_path and Path(recipe_path).is_file():
        text = Path(recipe_path).read_text(encoding="utf-8").rstrip()
        # A recipe may carry a token by mistake; such a line never reaches a public card.
        text = "\n".join(line for line in text.splitlines() if "token" not in line.split(":", 1)[0])
        parts.append(f"The recipe `{recipe_path}`:\n\n```yaml\n{text}\n```")
    parts.append(
        f"Every setting the run used is in [{RESOLVED_RECIPE_NAME}]({RESOLVED_RECIPE_NAME}); "
        f"`python run_snacks.py {RESOLVED_RECIPE_NAME}` repeats the run."
    )
    return "\n\n".join(parts)


def _versions_section() -> str:
    import huggingface_hub
    import torch
    import transformers

    try:
        import datasets

        datasets_version = datasets.__version__
    except ImportError:
        datasets_version = "not installed"
    return (
        "## Framework versions\n\n"
        f"- transformers {transformers.__version__}\n- torch {torch.__version__}\n"
        f"- datasets {datasets_version}\n- huggingface_hub {huggingface_hub.__version__}"
    )


def build_model_card(
    output_dir: str | Path,
    *,
    repo_id: str | None = None,
    command: str | None = None,
    recipe_path: str | Path | None = None,
    license: str | None = None,
    metrics: dict | None = None,
    token: str | None = None,
):
    """A `huggingface_hub.ModelCard` for an output folder; `repo_id` names it in the usage snippet.

    `token` is only used to make sure it appears nowhere in the card (nor does the cached login's).
    """
    from huggingface_hub import ModelCard

    run = RunFiles.read(output_dir, metrics)
    model_name = (repo_id or "").split("/")[-1] or run.output_dir.resolve().name
    data = card_data(run, model_name, license)
    body = "\n\n".join(
        [
            f"# {model_name}",
            _model_sentence(run),
            _results_section(run),
            _usage_section(run, repo_id or str(run.output_dir)),
            _labels_section(run),
            _training_section(run),
            _reproduce_section(run, command, recipe_path),
            _versions_section(),
        ]
    )
    text = scrub(f"---\n{data.to_yaml()}\n---\n\n{body}\n", token, resolve_token())
    card = ModelCard(text)  # parses the header back: invalid YAML or metadata fails now, not on upload
    return card


def write_model_card(output_dir: str | Path, **kwargs) -> Path:
    """Write `<output_dir>/README.md` (see `build_model_card` for the arguments); return its path."""
    path = Path(output_dir) / CARD_NAME
    path.write_text(str(build_model_card(output_dir, **kwargs)), encoding="utf-8")
    return path


# --- push -------------------------------------------------------------------------------------


def later_push_command(output_dir: str | Path, repo_id: str, private: bool = False) -> str:
    parts = ["python", "push_to_hub.py", str(output_dir), "--hub_model_id", repo_id]
    return shlex.join(parts + (["--private"] if private else []))


def _push_failure(output_dir: Path, repo_id: str, private: bool, error: Exception, token: str | None) -> RecipeError:
    cause = scrub(f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}", token)
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    hint = (
        "HF_HUB_OFFLINE is set, so the Hub cannot be reached; unset it. "
        if offline
        else "Check the network and that your token may write to this repository (`hf auth login`, or the "
        "HF_TOKEN environment variable). "
    )
    return RecipeError(
        f"Could not push to the Hugging Face Hub repository {repo_id} ({cause}). Nothing is lost: the model, "
        f"its image processor, metrics and model card are safe on disk at {output_dir.resolve()}. {hint}"
        f"Push them later with: {later_push_command(output_dir, repo_id, private)}"
    )


def push_output_dir(
    output_dir: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload model, image processor, metrics and recipe",
) -> str:
    """Upload an output folder's model files to `repo_id` (created if needed); return the repository URL.

    Writes the model card first if the folder has none. Raises RecipeError, without the token, on failure.
    """
    from huggingface_hub import HfApi

    output_dir = Path(output_dir)
    if not (output_dir / CARD_NAME).is_file():
        write_model_card(output_dir, repo_id=repo_id, token=token)
    RunFiles.read(output_dir)  # refuse a folder without a model before touching the network
    token = resolve_token(token)
    api = HfApi()
    failure = None
    try:
        repo = api.create_repo(repo_id, token=token, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo.repo_id,
            folder_path=str(output_dir),
            commit_message=commit_message,
            token=token,
            # Copies: upload_folder extends ignore_patterns in place.
            allow_patterns=list(UPLOAD_PATTERNS),
            ignore_patterns=list(NEVER_UPLOAD),
        )
    except Exception as error:  # noqa: BLE001 - network, auth and Hub errors all get the same advice
        failure = _push_failure(output_dir, repo_id, private, error, token)
    # Raised outside the except block so the original exception (which may quote the token) is not chained.
    if failure is not None:
        raise failure
    url = str(repo)
    logger.info("Pushed %s to %s", output_dir, url)
    return url


# --- end of training --------------------------------------------------------------------------


@dataclass
class HubSettings:
    """The Hub settings of a run, kept apart from TrainingArguments (same attribute names)."""

    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private_repo: bool | None = None
    hub_token: str | None = field(default=None, repr=False)  # never in a log line or a debugger's repr


def take_hub_settings(training_args) -> HubSettings:
    """Move the Hub settings out of TrainingArguments, so that Trainer neither pushes nor pickles the token.

    Trainer would create the repository before training (failing the run when offline), overwrite
    README.md with its own card, and save `hub_token` in training_args.bin.
    """
    settings = HubSettings(
        push_to_hub=bool(training_args.push_to_hub),
        hub_model_id=training_args.hub_model_id,
        hub_private_repo=training_args.hub_private_repo,
        hub_token=training_args.hub_token,
    )
    training_args.push_to_hub = False
    training_args.hub_token = None
    return settings


def finish_for_hub(
    output_dir: str | Path,
    settings,
    metrics: dict | None = None,
    recipe_path: str | Path | None = None,
    argv: list[str] | None = None,
) -> str | None:
    """Write the model card; push when `settings.push_to_hub`. Returns the repository URL, or None.

    `settings` is a HubSettings or a TrainingArguments. A failed push is logged with the command
    that pushes later; it never raises, because the trained model is already safe on disk.
    """
    command = shell_command(["python", "run_snacks.py", *redact_argv(list(argv))]) if argv is not None else None
    token = settings.hub_token
    card = write_model_card(
        output_dir,
        repo_id=settings.hub_model_id,
        command=command,
        recipe_path=recipe_path,
        metrics=metrics,
        token=token,
    )
    logger.info("Model card: %s", card)
    if not settings.push_to_hub:
        return None
    repo_id = settings.hub_model_id or Path(output_dir).resolve().name  # Trainer's default repository name
    try:
        return push_output_dir(output_dir, repo_id, private=bool(settings.hub_private_repo), token=token)
    except RecipeError as error:
        logger.error("%s", scrub(str(error), token))
        return None
