"""Classify images with a trained output folder, through exactly the eval transform of its run.

    from vitrecipes.predict import predict
    predict("outputs/smoke", ["cat.png", "photos/", "https://example.com/dog.jpg"], top_k=3)

Inputs are files, folders (searched recursively for images), http(s) URLs or PIL images. An input
that cannot be read becomes a result with an "error" key; the other inputs are still classified.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .config import DataArguments, read_yaml
from .errors import RecipeError
from .hub import is_hub_id
from .images import load_rgb
from .outputs import RESOLVED_RECIPE_NAME
from .transforms import Preprocessing

IMAGE_EXTENSIONS = {".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp"}
URL_TIMEOUT_S = 30
# Files a prediction needs from a Hub repository; weights of other frameworks are not fetched.
_HUB_FILES = ["*.json", "*.safetensors", RESOLVED_RECIPE_NAME]


def is_url(value: Any) -> bool:
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def expand_inputs(items: Iterable[Any]) -> list[Any]:
    """Files and URLs as given; folders replaced by their images, recursively, in sorted order.

    A folder without images stays in the list so that it is reported, not silently skipped.
    """
    expanded: list[Any] = []
    for item in items:
        if isinstance(item, (str, os.PathLike)) and not is_url(item) and Path(item).is_dir():
            found = sorted(p for p in Path(item).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            expanded.extend([str(p) for p in found] or [str(item)])
        else:
            expanded.append(item if isinstance(item, Image.Image) or is_url(item) else str(item))
    return expanded


def read_image(item: Any, decode=load_rgb) -> Image.Image:
    """An RGB image from a path, a URL or a PIL image, decoded as the training data was."""
    if isinstance(item, Image.Image):
        return decode(item)
    if is_url(item):
        request = urllib.request.Request(item, headers={"User-Agent": "vitrecipes-predict"})
        with urllib.request.urlopen(request, timeout=URL_TIMEOUT_S) as response:
            return decode(response.read())
    path = Path(item)
    if path.is_dir():
        raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder")
    if not path.exists():
        raise FileNotFoundError("no such file")
    image = decode(path)
    image.load()  # decode now, so a truncated file fails here and is reported for this file only
    return image


def _recipe_data_arguments(model_dir: Path) -> tuple[DataArguments, dict]:
    """The run's DataArguments and recipe values, so the eval transform matches evaluation exactly."""
    path = model_dir / RESOLVED_RECIPE_NAME
    values = read_yaml(path) if path.is_file() else {}
    names = {f.name for f in dataclasses.fields(DataArguments) if f.init}
    return DataArguments(**{k: v for k, v in values.items() if k in names}), values


def _resolve_model_dir(model: str | os.PathLike) -> Path:
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise RecipeError(
                f"--model: {path} holds no config.json. Give an output folder of a training run "
                "(config.json, model.safetensors, preprocessor_config.json), e.g. outputs/smoke."
            )
        return path
    text = str(model)
    if not is_hub_id(text):
        raise RecipeError(
            f"--model: the folder {text} does not exist. Give the output folder of a training run "
            "(e.g. outputs/smoke, written by `python run_snacks.py recipes/smoke.yaml`) or a Hub model id."
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, allow_patterns=_HUB_FILES))
    except Exception as error:  # noqa: BLE001 - any download failure gets the same advice
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise RecipeError(
            f"--model: {text} is not a local folder and could not be fetched from the Hugging Face Hub "
            f"({type(error).__name__}: {first_line}). Check the id and your network (HF_HUB_OFFLINE must not "
            "be set), or download the repository and give its folder."
        ) from None


def _pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RecipeError(f"--device {device}: no CUDA GPU is available here. Use --device cpu (or leave it out).")
    try:
        return torch.device(device)
    except RuntimeError:
        raise RecipeError(f"--device {device}: not a device name; use cpu, cuda or cuda:N.") from None


@dataclass
class Classifier:
    """A trained model with the eval transform of its run: load once, classify many batches."""

    model: torch.nn.Module
    transform: Any
    labels: list[str]
    device: torch.device
    source: str
    decode: Any = load_rgb  # the evaluation's decoding

    @classmethod
    def load(cls, model: str | os.PathLike, device: str | None = None) -> Classifier:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        model_dir = _resolve_model_dir(model)
        data_args, recipe = _recipe_data_arguments(model_dir)
        try:
            processor = AutoImageProcessor.from_pretrained(model_dir)
            network = AutoModelForImageClassification.from_pretrained(model_dir)
        except (OSError, ValueError) as error:
            raise RecipeError(
                f"--model: could not load an image classifier and its image processor from {model_dir} "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})."
            ) from None
        # The same call as training, so resize, crop and normalisation are identical.
        prep = Preprocessing.build(processor, data_args, mean=recipe.get("image_mean"), std=recipe.get("image_std"))
        target = _pick_device(device)
        id2label = network.config.id2label
        labels = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(network.config.num_labels)]
        decode = functools.partial(prep.decode, train=False)
        return cls(network.to(target).eval(), prep.eval, labels, target, str(model_dir), decode)

    @torch.inference_mode()
    def probabilities(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = torch.stack([self.transform(image) for image in images]).to(self.device)
        logits = self.model(pixel_values=pixels).logits
        return logits.float().softmax(dim=-1).cpu()

    def result(self, name: str, probabilities: torch.Tensor, top_k: int) -> dict:
        scores, indices = probabilities.topk(min(top_k, len(self.labels)))
        top = [{"label": self.labels[i], "score": float(s)} for s, i in zip(scores.tolist(), indices.tolist())]
        return {"input": name, "label": top[0]["label"], "score": top[0]["score"], "top_k": top}


def _display_name(item: Any, position: int) -> str:
    return f"<image {position}>" if isinstance(item, Image.Image) else str(item)


def iter_predictions(
    model: str | os.PathLike | Classifier,
    images: Iterable[Any],
    top_k: int = 1,
    batch_size: int = 32,
    device: str | None = None,
) -> Iterator[dict]:
    """Results in input order, one batch at a time, so a large folder never sits in memory at once."""
    if top_k < 1 or batch_size < 1:
        raise RecipeError(f"top_k and batch_size must be at least 1, got top_k={top_k}, batch_size={batch_size}.")
    classifier = model if isinstance(model, Classifier) else Classifier.load(model, device)
    items = expand_inputs([images] if isinstance(images, (str, os.PathLike, Image.Image)) else images)
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        results: list[dict | None] = [None] * len(batch)
        loaded, where = [], []
        for offset, item in enumerate(batch):
            name = _display_name(item, start + offset)
            try:
                loaded.append(read_image(item, classifier.decode))
                where.append(offset)
            except Exception as error:  # noqa: BLE001 - one bad input must not stop the others
                results[offset] = {"input": name, "error": f"{type(error).__name__}: {error}"}
        if loaded:
            probabilities = classifier.probabilities(loaded)
            for row, offset in enumerate(where):
                name = _display_name(batch[offset], start + offset)
                results[offset] = classifier.result(name, probabilities[row], top_k)
        yield from results


def predict(
    model: str | os.PathLike | Classifier,
    images: Any,
    top_k: int = 1,
    batch_size: int = 32,
    device: str | None = None,
) -> list[dict]:
    """Classify images; one dict per image: {input, label, score, top_k: [{label, score}]} or {input, error}.

    `model` is an output folder, a Hub id, or a `Classifier.load(...)` to reuse across calls.
    """
    return list(iter_predictions(model, images, top_k=top_k, batch_size=batch_size, device=device))


# --- command line -------------------------------------------------------------------------------


def format_json(result: dict) -> str:
    return json.dumps(result, ensure_ascii=False)


def format_row(result: dict, width: int, label_width: int, top_k: int) -> str:
    name = result["input"]
    if "error" in result:
        return f"{name:<{width}}  ERROR {result['error']}"
    row = f"{name:<{width}}  {result['label']:<{label_width}}  {result['score']:>11.4f}"
    if top_k > 1:
        row += "  " + ", ".join(f"{t['label']} {t['score']:.3f}" for t in result["top_k"])
    return row


def table_header(width: int, label_width: int, top_k: int) -> str:
    header = f"{'file':<{width}}  {'label':<{label_width}}  {'probability':>11}"
    return header + (f"  top {top_k}" if top_k > 1 else "")


def run_cli(args) -> int:
    """Print one line per image (a table, or JSON lines); return 1 if any image failed, else 0."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the weight-loading bar would interleave with the table on a terminal
    classifier = Classifier.load(args.model, args.device)
    items = expand_inputs(args.images)
    width = min(max((len(_display_name(item, i)) for i, item in enumerate(items)), default=4), 80)
    label_width = max(len("label"), *(len(label) for label in classifier.labels))
    if not args.json:
        print(table_header(width, label_width, args.top_k), flush=True)
    failed = 0
    for result in iter_predictions(classifier, items, top_k=args.top_k, batch_size=args.batch_size):
        failed += "error" in result
        print(format_json(result) if args.json else format_row(result, width, label_width, args.top_k), flush=True)
    if failed:
        print(f"{failed} of {len(items)} inputs could not be classified (see the error lines).", file=sys.stderr)
    return 1 if failed else 0
