"""The model card (model_card_template.md) from the files a run leaves, and the end of training: card, then push.
A card never holds a token, nor a path on the training machine (a local folder is named by its name)."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .artifacts import CARD_NAME, EXPORTS, METRICS_FILE, RESOLVED_RECIPE_NAME, current_export, require_model_folder
from .config import DEFAULTS
from .hub import is_hub_id, push_output_dir, scrub

logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).with_name("model_card_template.md")
DEFAULT_LICENSE = "apache-2.0"
BASE_TAGS = ["image-classification", "vision", "vit", "generated-from-recipe"]
_SPLITS = ("validation", "test")
# The card's ONNX section, between two comments (invisible on the Hub) that export.py finds to bring it up to date.
_ONNX_SECTION = re.compile(r"<!-- onnx section(?:, model (\S+) on the Hub)? -->.*?<!-- end of the onnx section -->",
                           re.S)  # fmt: skip


def folder_name(path: str | Path) -> str:
    """How a card names a local folder: its name, not its path (/data/snacks/: snacks, builtin:digits: digits)."""
    return Path(os.path.abspath(os.path.expanduser(str(path).rpartition(":")[2]))).name


@dataclass
class RunFiles:
    """What an output folder says about its run; the card template reads it too."""

    output_dir: Path
    config: dict
    metrics: dict
    recipe: dict

    @classmethod
    def read(cls, output_dir: str | Path) -> RunFiles:
        advice = "Give the output folder of a run, e.g. outputs/smoke after `python run_snacks.py recipes/smoke.yaml`."
        # The card is made from the files that describe the run; its weights are not read.
        output_dir = require_model_folder(output_dir, "output_dir", advice, weights=False)
        metrics_path, recipe_path = output_dir / METRICS_FILE, output_dir / RESOLVED_RECIPE_NAME
        metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
        recipe = yaml.safe_load(recipe_path.read_text(encoding="utf-8")) if recipe_path.is_file() else None
        config = json.loads((output_dir / "config.json").read_text(encoding="utf-8"))
        return cls(output_dir, config, metrics, recipe or {})

    @property
    def labels(self) -> list[str]:
        id2label = self.config.get("id2label") or {}
        return [str(id2label[key]) for key in sorted(id2label, key=int)]

    @property
    def base_model(self) -> str | None:
        name = self.recipe.get("model_name_or_path")
        return name if is_hub_id(name) else None  # None: trained from scratch, or from a local checkpoint

    @property
    def dataset(self) -> str:
        """As a user would name it: `dataset_name_for_card`, else the Hub id, else the folder's name."""
        name = self.recipe.get("dataset_name") or "unknown"
        return str(self.recipe.get("dataset_name_for_card") or self.hub_dataset or folder_name(name))

    @property
    def hub_dataset(self) -> str | None:
        """The Hub dataset to link to: the card's name for it, else the one trained on."""
        names = (self.recipe.get("dataset_name_for_card"), self.recipe.get("dataset_name"))
        return next((name for name in names if is_hub_id(name)), None)

    def local_paths(self, *more: str | Path | None) -> dict[str, str]:
        """The run's absolute paths (as a command or recipe may quote them), longest first, with their folder's name."""
        names = {}
        for path in (self.recipe.get("dataset_name"), self.recipe.get("model_name_or_path"), self.output_dir, *more):
            expanded = os.path.expanduser(str(path or ""))
            if os.path.isabs(expanded) and folder_name(expanded):
                names.update(dict.fromkeys({str(path), expanded, os.path.abspath(expanded)}, folder_name(expanded)))
        return dict(sorted(names.items(), key=lambda item: -len(item[0])))


def build_model_card(output_dir, *, repo_id=None, command=None, recipe_path=None, license=None,
                     token=None) -> ModelCard:  # fmt: skip
    """The card of an output folder; `repo_id` names it in the usage snippet; tokens are scrubbed (`hub.scrub`)."""
    run = RunFiles.read(output_dir)
    model_name = (repo_id or "").split("/")[-1] or run.output_dir.resolve().name
    model_type = run.config.get("model_type")
    results = [
        EvalResult(task_type="image-classification", task_name="Image Classification", metric_type="accuracy",
                   dataset_type=run.hub_dataset or "imagefolder", dataset_name=run.dataset, metric_name="Accuracy",
                   dataset_split=str(run.recipe.get(f"{split}_split") or split),
                   metric_value=float(run.metrics[split]["accuracy"]))
        for split in _SPLITS  # a dataset without a test split reports validation only
        if (run.metrics.get(split) or {}).get("accuracy") is not None
    ]  # fmt: skip
    # ModelCardData checks the model-index as it is built: a malformed result fails here, not on the Hub.
    data = ModelCardData(model_name=model_name, base_model=run.base_model, metrics=["accuracy"],
                         datasets=[run.hub_dataset] if run.hub_dataset else None,
                         license=license or run.recipe.get("hub_license") or DEFAULT_LICENSE,
                         library_name="transformers", pipeline_tag="image-classification",
                         tags=list(dict.fromkeys(BASE_TAGS + ([model_type] if model_type else []))),
                         eval_results=results or None)  # fmt: skip
    checkpoint = run.recipe.get("model_name_or_path")
    onnx, stale = current_export(run.output_dir, EXPORTS["onnx"])
    if stale:
        logger.warning("The model card leaves out the stale ONNX export: %s. Export it again: python export.py %s "
                       "--overwrite", stale, run.output_dir)  # fmt: skip
    recipe_text = None
    if recipe_path and Path(recipe_path).is_file():
        lines = Path(recipe_path).read_text(encoding="utf-8").rstrip().splitlines()
        # A recipe may carry a token by mistake; such a line never reaches a public card.
        recipe_text = "\n".join(line for line in lines if "token" not in line.split(":", 1)[0])
    card = ModelCard.from_template(
        data,  # its fields (base_model, license...) reach the template too
        template_path=str(TEMPLATE), run=run, defaults=DEFAULTS, command=command, recipe_path=recipe_path,
        model_name=model_name,  # not among them when there are results: it moves into the model-index
        checkpoint=folder_name(checkpoint) if checkpoint and not run.base_model else None,
        results={split: run.metrics[split] for split in _SPLITS if run.metrics.get(split)},
        calibration=run.metrics.get("calibration"), model_ref=repo_id or str(run.output_dir), recipe_text=recipe_text,
        resolved_recipe=RESOLVED_RECIPE_NAME, onnx=onnx, hub_ref=bool(repo_id), version=importlib.metadata.version,
    )  # fmt: skip
    text = scrub(str(card), token)
    for path, name in run.local_paths(recipe_path).items():
        text = text.replace(path, name)
    return ModelCard(text)  # parses the header back: invalid YAML or metadata fails now, not on upload


def write_model_card(output_dir: str | Path, **kwargs) -> Path:
    """Write `<output_dir>/README.md` (arguments: `build_model_card`'s); return its path."""
    path = Path(output_dir) / CARD_NAME
    path.write_text(str(build_model_card(output_dir, **kwargs)), encoding="utf-8")
    return path


def refresh_onnx_section(output_dir: str | Path) -> str | None:
    """After an export: the ONNX section of the folder's card (README.md) made again from onnx/, the rest kept as
    written (the training command and recipe it quotes are not in the folder). What was done, None if no card."""
    path = Path(output_dir) / CARD_NAME
    if not path.is_file():
        return None
    card = path.read_text(encoding="utf-8")
    if not (old := _ONNX_SECTION.search(card)):
        return (f"{path} has no ONNX section to bring up to date (an older or hand-written card), so it does not "
                f"describe onnx/. Write a new card with: python push_to_hub.py {output_dir} --hub_model_id ID "
                "--new_card")  # fmt: skip
    new = _ONNX_SECTION.search(str(build_model_card(output_dir, repo_id=old.group(1))))
    if new.group(0) == old.group(0):
        return None
    path.write_text(card[: old.start()] + new.group(0) + card[old.end() :], encoding="utf-8")
    return f"Brought the ONNX section of {path} up to date."


@dataclass
class HubSettings:
    push_to_hub: bool
    hub_model_id: str | None
    hub_private_repo: bool | None
    hub_token: str | None = field(repr=False)  # never printed


def take_hub_settings(args) -> HubSettings:
    """Move the Hub settings out of the TrainingArguments `args`: Trainer would create the repository before
    training (failing the run when offline), overwrite README.md with its own card and pickle the token."""
    settings = HubSettings(args.push_to_hub, args.hub_model_id, args.hub_private_repo, args.hub_token)
    args.push_to_hub, args.hub_token = False, None
    return settings


def finish_for_hub(output_dir, hub: HubSettings, recipe_path=None, argv: list[str] | None = None) -> str | None:
    """Write the model card (after metrics.json); push when `hub.push_to_hub` and return the URL, or raise PushError."""
    # The card is scrubbed of the token, so a --hub_token value on the command line shows as ***.
    command = shlex.join(["python", "run_snacks.py", *argv]) if argv is not None else None
    card = write_model_card(output_dir, repo_id=hub.hub_model_id, command=command, recipe_path=recipe_path,
                            token=hub.hub_token)  # fmt: skip
    logger.info("Model card: %s", card)
    if not hub.push_to_hub:
        return None
    repo_id = hub.hub_model_id or Path(output_dir).resolve().name  # Trainer's default repository name
    return push_output_dir(output_dir, repo_id, private=bool(hub.hub_private_repo), token=hub.hub_token)
