"""What a run and an export leave in an output folder: one list, which the Hub upload, `overwrite_output_dir`, the
card and the docs read (docs/outputs.md); and how to tell a folder that holds a saved model."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
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
EVAL_ONLY_REPORT_DIR = "eval_only_{split}"


@dataclass(frozen=True)
class Export:
    """An export format: its folder in the output folder, its files (the last one its record, written last, with the
    sha256 of the files it was made from), and the module that writes (`export_folder`) and serves (`Classifier`) it."""

    folder: str
    files: tuple[str, ...]
    module: str
    needs: tuple[str, ...] = ()  # the packages it imports (requirements-serve.txt): checked before training

    def check_installed(self) -> None:
        if missing := [name for name in self.needs if importlib.util.find_spec(name) is None]:
            raise RecipeError(f"The {self.folder} export needs {', '.join(missing)}, which is not installed. Install "
                              "the serving libraries with: pip install -r requirements-serve.txt")  # fmt: skip

    def paths(self, output_dir) -> list[Path]:
        return [Path(output_dir) / self.folder / name for name in self.files]


EXPORTS = {"onnx": Export("onnx", ("model.onnx", "model_quantized.onnx", "parity.json"), "vitrecipes.onnx_export",
                          ("onnx", "onnxruntime"))}  # fmt: skip
_EXPORTED_FROM = ("config.json", "preprocessor_config.json")  # besides the weights


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
    *(Artifact(f"{e.folder}/{name}", upload=True) for e in EXPORTS.values() for name in e.files),
]  # fmt: skip
UPLOADED = [artifact.pattern for artifact in ARTIFACTS if artifact.upload]
RESULTS = [artifact.pattern for artifact in ARTIFACTS if artifact.result]


def require_model_folder(folder: str | Path, what: str, advice: str, weights: bool = True, refuse_code=False) -> Path:
    """`folder` if save_pretrained wrote a model there (config.json, and safetensors weights when `weights`), and,
    with `refuse_code` (no trust_remote_code), if it ships no code of its own (`refuse_shipped_code`)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise RecipeError(f"{what}: the folder {folder} does not exist. {advice}")
    if not (folder / "config.json").is_file():
        raise RecipeError(f"{what}: {folder} holds no saved model (config.json). {advice}")
    if weights and not any(folder.glob("*.safetensors")):
        if not any(folder.glob("pytorch_model*.bin")):
            raise RecipeError(f"{what}: {folder} holds no model weights (model.safetensors). {advice}")
        raise RecipeError(f"{what}: {folder} holds no model.safetensors. Only safetensors weights are "
                          "loaded, because pickled weights (pytorch_model.bin) can run code when loaded. "
                          "Convert it once, in a trusted environment: load it with from_pretrained and "
                          "call save_pretrained (which writes safetensors).")  # fmt: skip
    if refuse_code:
        refuse_shipped_code(folder, what)
    return folder


def check_output_dir(output_dir: str, dataset_name: str) -> None:
    """Before anything is written: output_dir must be, or be able to become, a folder outside the dataset's."""
    path = Path(output_dir).expanduser().absolute()
    blocking = next(p for p in (path, *path.parents) if p.exists())
    if not blocking.is_dir():
        raise RecipeError(f"output_dir: {blocking} is a file, so {output_dir} cannot be the run's folder. Choose "
                          "another output_dir (e.g. --output_dir outputs/my-run), or move the file away.")  # fmt: skip
    data = Path(dataset_name).expanduser()
    if data.is_dir() and path.resolve().is_relative_to(data.resolve()):
        raise RecipeError(f"output_dir {output_dir} is inside the dataset folder {dataset_name}: the "
                          "run's files (its eval_<split>/ reports, checkpoints) would be read as "
                          "images and classes the next time that folder is loaded. Choose an "
                          "output_dir outside it, e.g. --output_dir outputs/my-run.")  # fmt: skip


def refuse_shipped_code(folder: str | Path, what: str, allow: str = "add --trust_remote_code") -> None:
    """A RecipeError for a model folder that ships its own code (auto_map in config.json or preprocessor_config.json),
    raised before transformers is asked: on a terminal it would offer to run that code, and run it on a `y`."""
    for name in ("config.json", "preprocessor_config.json"):
        try:
            shipped = json.loads((Path(folder) / name).read_text(encoding="utf-8")).get("auto_map")
        except (OSError, ValueError, AttributeError):  # no such file, or not a JSON object: loading explains that
            shipped = None
        if shipped:
            raise RecipeError(f"{what}: {folder} ships its own code (the Python files that "
                              f"auto_map in its {name} names), which is not run unless you allow "
                              f"it. Read that code; if you trust it, {allow}.")  # fmt: skip


def export_inputs(folder: Path) -> dict[str, str]:
    """sha256 of each file an export is made from, which its serving reads too: the weights, config.json (id2label)
    and preprocessor_config.json."""
    digests = {}
    for path in sorted(folder.glob("*.safetensors")) + [folder / name for name in _EXPORTED_FROM]:
        if path.is_file():
            with path.open("rb") as file:
                digests[path.name] = hashlib.file_digest(file, "sha256").hexdigest()
    return digests


def read_record(folder: str | Path, export: Export) -> dict | None:
    """The export's record (onnx/parity.json), or None when there is none (or it is not JSON)."""
    try:
        return json.loads(export.paths(folder)[-1].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def stale_export(folder: Path, export: Export) -> str | None:
    """Why the export is not a whole export of the folder's current files (what is missing or changed), or None."""
    for path in export.paths(folder):
        if not path.is_file():
            return f"{export.folder}/{path.name} is missing (an export that did not finish)"
    recorded = (read_record(folder, export) or {}).get("inputs_sha256")
    if not isinstance(recorded, dict):
        return f"{export.folder}/{export.files[-1]} does not record the files it was exported from (an older export)"
    now = export_inputs(folder)
    changed = sorted(name for name in recorded.keys() | now.keys() if recorded.get(name) != now.get(name))
    return f"{', '.join(changed)} changed since it was exported" if changed else None


def current_export(folder: Path, export: Export) -> tuple[dict | None, str | None]:
    """(the record if the export is whole and of the folder's current files, else None; why not, if it holds one)."""
    stale = stale_export(folder, export)
    started = any(path.is_file() for path in export.paths(folder))
    return None if stale else read_record(folder, export), stale if started else None


def require_fresh_exports(folder: Path, then: str = "") -> None:
    """A RecipeError when the folder holds an export that is not of its current files: it would be served (or
    pushed) as if it were the model."""
    for name, export in EXPORTS.items():
        if reason := current_export(folder, export)[1]:
            again = f"python export.py {folder}" + ("" if name == next(iter(EXPORTS)) else f" --format {name}")
            raise RecipeError(f"The {name.upper()} export in {folder / export.folder} is stale: {reason}, so it may "
                              f"not answer as the model does. Export it again: {again} --overwrite{then}.")  # fmt: skip


def export_module(name: str):
    """The module of export format `name`: export_folder() writes it, Classifier serves it."""
    EXPORTS[name].check_installed()
    return importlib.import_module(EXPORTS[name].module)
