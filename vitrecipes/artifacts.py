"""What a run and an export leave in an output folder: one list, which the Hub upload, `overwrite_output_dir`, the
card and the docs read (docs/outputs.md); and how to tell a folder that holds a saved model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import RecipeError

METRICS_FILE = "metrics.json"
RESOLVED_RECIPE_NAME = "resolved_recipe.yaml"
BAD_IMAGES_FILE = "bad_images.jsonl"
CARD_NAME = "README.md"
LOG_FILE = "run.log"
REPORT_DIR = "eval_{split}"
# Inside each report folder (see report.py); its metrics file is METRICS_FILE too.
CONFUSION_JSON, CONFUSION_PNG = "confusion_matrix.json", "confusion_matrix.png"
MISTAKES_PNG, CURVES_PNG, RELIABILITY_PNG = "mistakes.png", "curves.png", "reliability_diagram.png"
PREDICTIONS_FILE, REPORT_FILE = "predictions.npz", "report.md"
# Several runs of one recipe (see experiments.py): .json and .md of each name.
SUMMARY_NAME, SWEEP_TRIALS_NAME = "summary", "sweep_trials"
SWEEP_STUDY_FILE, BEST_RECIPE_NAME = "sweep.db", "best_recipe.yaml"
# An evaluation-only run writes these instead, so it never replaces what the training run wrote.
EVAL_ONLY_METRICS_FILE = "eval_only_metrics.json"
EVAL_ONLY_RECIPE_NAME = "eval_only_recipe.yaml"
EVAL_ONLY_BAD_IMAGES_FILE = "eval_only_bad_images.jsonl"


@dataclass(frozen=True)
class Artifact:
    pattern: str  # a name or glob in the output folder
    upload: bool = False  # pushed to the Hub (an allow-list: nothing else leaves the machine)
    result: bool = True  # a result of one run, removed by overwrite_output_dir so a crashed new run is not the old one


ARTIFACTS = [
    *(Artifact(name, upload=True, result=False) for name in ("config.json", "preprocessor_config.json",
      "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json", RESOLVED_RECIPE_NAME)),
    Artifact(METRICS_FILE, upload=True),
    Artifact(CARD_NAME, upload=True),
    *map(Artifact, (BAD_IMAGES_FILE, LOG_FILE, EVAL_ONLY_METRICS_FILE, EVAL_ONLY_BAD_IMAGES_FILE,
                    REPORT_DIR.format(split="*"), "checkpoint-*", "runs", SWEEP_STUDY_FILE, "trial-*")),
    # An export format: its files here, and one module (see export.py).
    *(Artifact(f"onnx/{name}", upload=True) for name in ("model.onnx", "model_quantized.onnx", "parity.json")),
]  # fmt: skip
UPLOADED = [artifact.pattern for artifact in ARTIFACTS if artifact.upload]
RESULTS = [artifact.pattern for artifact in ARTIFACTS if artifact.result]


def require_model_folder(folder: str | Path, what: str, advice: str, weights: bool = True) -> Path:
    """`folder` if save_pretrained wrote a model there (config.json, and safetensors weights when `weights`)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise RecipeError(f"{what}: the folder {folder} does not exist. {advice}")
    if not (folder / "config.json").is_file():
        raise RecipeError(f"{what}: {folder} holds no saved model (config.json). {advice}")
    if weights and not any(folder.glob("*.safetensors")):
        raise RecipeError(
            f"{what}: {folder} holds no model.safetensors. Only safetensors weights are loaded, because pickled "
            "weights (pytorch_model.bin) can run code when loaded. Convert it once, in a trusted environment: load "
            "it with from_pretrained and call save_pretrained (which writes safetensors)."
        )
    return folder


def check_output_dir(output_dir: str, dataset_name: str) -> None:
    """Before anything is written: output_dir must be, or be able to become, a folder outside the dataset's."""
    path = Path(output_dir).expanduser().absolute()
    blocking = next(p for p in (path, *path.parents) if p.exists())
    if not blocking.is_dir():
        raise RecipeError(
            f"output_dir: {blocking} is a file, so {output_dir} cannot be the run's folder. Choose another "
            "output_dir (e.g. --output_dir outputs/my-run), or move the file away."
        )
    data = Path(dataset_name).expanduser()
    if data.is_dir() and path.resolve().is_relative_to(data.resolve()):
        raise RecipeError(
            f"output_dir {output_dir} is inside the dataset folder {dataset_name}: the run's files (its eval_<split>/ "
            "reports, checkpoints) would be read as images and classes the next time that folder is loaded. "
            "Choose an output_dir outside it, e.g. --output_dir outputs/my-run."
        )
