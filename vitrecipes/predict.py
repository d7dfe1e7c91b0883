"""Classify images with an output folder (or a Hub model) through transformers' `pipeline()`, which applies the
run's saved evaluation transform: `predict("outputs/smoke", ["cat.png", "photos/", "https://x.org/dog.jpg"], top_k=3)`.
An input that cannot be read becomes a result with an "error" key; the others are still classified."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import ImageClassificationPipeline, pipeline
from transformers.utils.logging import disable_progress_bar

from .artifacts import require_model_folder
from .errors import RecipeError, cause
from .hub import is_hub_id
from .images import load_rgb

IMAGE_EXTENSIONS = {".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp"}
URL_TIMEOUT_S = 30
Model = str | os.PathLike | ImageClassificationPipeline  # an output folder, a Hub id, or a loaded pipeline


def is_url(value: Any) -> bool:
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def expand_inputs(items: Iterable[Any]) -> list[Any]:
    """Folders replaced by their images, recursively and sorted; a folder without images stays, to be reported."""
    expanded: list[Any] = []
    for item in items:
        if isinstance(item, (str, os.PathLike)) and not is_url(item) and Path(item).is_dir():
            found = sorted(p for p in Path(item).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            expanded.extend([str(p) for p in found] or [str(item)])
        else:
            expanded.append(item if isinstance(item, Image.Image) or is_url(item) else str(item))
    return expanded


def read_image(item: Any) -> Image.Image:
    """An RGB image from a path, a URL or a PIL image, decoded as the training data was."""
    # Not transformers' load_image: its convert("RGB") drops transparency and clips 16-bit pixels, unlike training.
    if isinstance(item, Image.Image):
        return load_rgb(item)
    if is_url(item):
        request = urllib.request.Request(item, headers={"User-Agent": "vitrecipes-predict"})
        with urllib.request.urlopen(request, timeout=URL_TIMEOUT_S) as response:
            return load_rgb(response.read())
    path = Path(item)
    if path.is_dir():
        raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder")
    if not path.exists():
        raise FileNotFoundError("no such file")
    image = load_rgb(path)
    image.load()  # decode now, so a truncated file fails here and is reported for this file only
    return image


def load_classifier(model: str | os.PathLike, device: str | None = None, trust_remote_code: bool = False):
    """The image-classification pipeline of an output folder or a Hub model id: load once, classify many. A model
    that ships its own code is refused unless `trust_remote_code`."""
    name = str(model)
    if not is_hub_id(name):
        advice = "Give the output folder of a training run (e.g. outputs/smoke, from recipes/smoke.yaml) or a Hub id."
        name = str(require_model_folder(name, "--model", advice, refuse_code=not trust_remote_code))
    if device and device.startswith("cuda") and not torch.cuda.is_available():
        raise RecipeError(f"--device {device}: no CUDA GPU is available here. Use --device cpu (or leave it out).")
    try:
        return pipeline("image-classification", model=name, model_kwargs={"use_safetensors": True},  # never unpickle
                        device=None if device == "auto" else device,  # None: the GPU when there is one
                        trust_remote_code=trust_remote_code)  # False, not None: transformers would ask  # fmt: skip
    except Exception as error:  # noqa: BLE001 - any loading or download failure gets the same advice
        if not is_hub_id(name):
            raise RecipeError("--model: could not load an image classifier and its image "
                              f"processor from {name} ({cause(error)}).") from None  # fmt: skip
        raise RecipeError(f"--model: {name} is not a local folder and could not be fetched from the Hugging "
                          f"Face Hub ({cause(error)}). Check the id and your network (HF_HUB_OFFLINE must not "
                          "be set), or download the repository and give its folder.") from None  # fmt: skip


def check_counts(top_k: int, batch_size: int) -> None:
    if top_k < 1 or batch_size < 1:
        raise RecipeError(f"top_k and batch_size must be at least 1, got top_k={top_k}, batch_size={batch_size}.")


def iter_predictions(model: Model, images, top_k: int = 1, batch_size: int = 32, **load) -> Iterator[dict]:
    """`predict`'s results in input order, one batch at a time, so a large folder never sits in memory at once;
    `load`: load_classifier's device and trust_remote_code, for a model given by name."""
    check_counts(top_k, batch_size)
    classifier = load_classifier(model, **load) if isinstance(model, (str, os.PathLike)) else model
    items = expand_inputs([images] if isinstance(images, (str, os.PathLike, Image.Image)) else images)
    for start in range(0, len(items), batch_size):
        results, loaded = {}, {}
        for position, item in enumerate(items[start : start + batch_size], start):
            results[position] = {"input": f"<image {position}>" if isinstance(item, Image.Image) else str(item)}
            try:
                loaded[position] = read_image(item)
            except Exception as error:  # noqa: BLE001 - one bad input must not stop the others
                results[position]["error"] = f"{type(error).__name__}: {error}"
        outputs = classifier(list(loaded.values()), top_k=top_k, batch_size=batch_size) if loaded else []
        for position, top in zip(loaded, outputs):
            results[position].update(label=top[0]["label"], score=top[0]["score"], top_k=top)
        yield from results.values()


def predict(model: Model, images: Any, **options) -> list[dict]:
    """One dict per image: {input, label, score, top_k: [{label, score}]} or {input, error}. `model`: an output
    folder, a Hub id, or a `load_classifier(...)` to reuse; options: top_k, batch_size, device, trust_remote_code."""
    return list(iter_predictions(model, images, **options))


def run_cli(args, classifier=None) -> int:
    """Print one line per image (a table, or JSON lines); return 1 if any image failed, else 0. `classifier`:
    one to use instead of loading args.model's pipeline (predict.py --backend onnx gives its OnnxClassifier)."""
    disable_progress_bar()  # the weight-loading bar would interleave with the table on a terminal
    check_counts(args.top_k, args.batch_size)  # before the model loads
    classifier = classifier or load_classifier(args.model, args.device, args.trust_remote_code)
    id2label = classifier.model.config.id2label
    top_k = min(args.top_k, len(id2label))
    if args.top_k > len(id2label):  # the pipeline gives every class then; the header must say so
        print(f"--top_k {args.top_k}: the model has {top_k} classes, so all {top_k} are shown.", file=sys.stderr)
    items = expand_inputs(args.images)
    backend = getattr(args, "backend", "torch") + (" int8" if getattr(args, "quantized", False) else "")
    print(f"Model {args.model}: {len(id2label)} classes, {backend} backend; {len(items)} inputs", file=sys.stderr)
    started = time.perf_counter()
    width = min(max((len(item) for item in items), default=4), 80)
    label_width = max(len("label"), *(len(str(label)) for label in id2label.values()))
    if not args.json:
        header = f"{'file':<{width}}  {'label':<{label_width}}  {'probability':>11}"
        print(header + (f"  top {top_k}" if top_k > 1 else ""), flush=True)
    failed = 0
    for result in iter_predictions(classifier, items, top_k=top_k, batch_size=args.batch_size):
        failed += "error" in result
        if args.json:
            print(json.dumps(result, ensure_ascii=False), flush=True)
        elif "error" in result:
            print(f"{result['input']:<{width}}  ERROR {result['error']}", flush=True)
        else:
            row = f"{result['input']:<{width}}  {result['label']:<{label_width}}  {result['score']:>11.4f}"
            top = ", ".join(f"{t['label']} {t['score']:.3f}" for t in result["top_k"])
            print(row + (f"  {top}" if top_k > 1 else ""), flush=True)
    seconds = time.perf_counter() - started
    print(f"{len(items) - failed} of {len(items)} inputs classified in {seconds:.1f} s"
          + (f"; {failed} could not be (see their error lines)." if failed else "."), file=sys.stderr)  # fmt: skip
    return 1 if failed else 0
