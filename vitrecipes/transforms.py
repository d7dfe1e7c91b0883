"""Decoding and preprocessing, applied lazily through `Dataset.with_transform`.

Train: RandomResizedCrop + horizontal flip. Eval: resize the shorter side, centre-crop.
Size, mean and std come from the checkpoint's image processor. Every image becomes 3-channel
RGB with its EXIF orientation applied, whatever mode it was stored in.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

from .config import DataArguments
from .errors import BadImagesError

logger = logging.getLogger(__name__)

# What Pillow raises for a file that is not a readable image: not an image, cut short, corrupt, or too big.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)
IGNORE_INDEX = -100  # the label of a placeholder: the loss and the metrics skip it
BAD_IMAGES_FILE = "bad_images.jsonl"

_HIGH_BIT_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def open_image(value: Any) -> Image.Image:
    """Open what a datasets Image column holds: {'bytes', 'path'}, a path, raw bytes or a PIL image."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes"):
            return Image.open(io.BytesIO(value["bytes"]))
        return Image.open(value["path"])
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value))
    return Image.open(value)


def to_rgb(image: Image.Image) -> Image.Image:
    """Orient by EXIF and convert to 8-bit RGB; transparent areas become white."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        pixels = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if pixels.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(pixels * (255.0 / peak), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" or image.mode in ("LA", "PA", "RGBA", "La", "RGBa"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def load_rgb(value: Any, max_pixels: int | None = None) -> Image.Image:
    image = open_image(value)  # reads the header only
    if max_pixels and image.width * image.height > max_pixels:
        raise Image.DecompressionBombError(
            f"{image.width}x{image.height} pixels is more than max_image_pixels ({max_pixels})"
        )
    return to_rgb(image)


def describe(value: Any) -> str:
    """A name for an image-column value in messages: its path, or its size in bytes."""
    if isinstance(value, dict):
        return value.get("path") or f"<{len(value.get('bytes') or b'')} bytes in the dataset>"
    return str(value) if isinstance(value, (str, os.PathLike)) else f"<{type(value).__name__}>"


@dataclass
class BadImageLog:
    """Counts the unreadable images of each split, in memory and in `<output_dir>/bad_images.jsonl`.

    The file is shared by DataLoader workers and processes (appends of one short line each), so the
    limit applies to the whole run, not to each worker.
    """

    path: Path | None
    limits: dict[str, int] = field(default_factory=dict)
    seen: dict[str, dict[str, str]] = field(default_factory=dict)

    def record(self, split: str, name: str, error: BaseException | str, enforce_limit: bool = True) -> None:
        cause = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        if name in self.seen.setdefault(split, {}):
            return
        self.seen[split][name] = cause
        if enforce_limit:
            logger.warning("Unreadable image in %s, left out of loss and metrics: %s (%s)", split, name, cause)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"split": split, "file": name, "error": cause}) + "\n")
        bad = self.read().get(split, {}) if self.path is not None else self.seen[split]
        limit = self.limits.get(split)
        if enforce_limit and limit is not None and len(bad) > limit:
            examples = "; ".join(f"{k} ({v})" for k, v in list(bad.items())[:5])
            raise BadImagesError(
                f"Too many unreadable images in the {split} split: {len(bad)}, more than max_bad_images allows "
                f"({limit}). First ones: {examples}. Run with --verify_images true to list and leave out every "
                "bad file before training, fix or delete the files, or raise max_bad_images."
            )

    def read(self) -> dict[str, dict[str, str]]:
        """{split: {file: cause}} from the shared file (or from memory when there is none)."""
        if self.path is None or not self.path.exists():
            return {k: dict(v) for k, v in self.seen.items()}
        found: dict[str, dict[str, str]] = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut short by a killed process
                continue
            found.setdefault(entry["split"], {}).setdefault(entry["file"], entry["error"])
        return found


def find_unreadable(values: list, max_pixels: int | None = None) -> list[tuple[int, str, str]]:
    """(index, name, cause) of every value that does not decode; decodes in threads (Pillow frees the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    def check(item):
        index, value = item
        try:
            image = open_image(value)
            if max_pixels and image.width * image.height > max_pixels:
                raise Image.DecompressionBombError(
                    f"{image.width}x{image.height} pixels is more than max_image_pixels ({max_pixels})"
                )
            if image.format == "JPEG":
                image.draft("RGB", (64, 64))  # decodes at 1/8 scale but still reads the whole stream
            to_rgb(image)
        except DECODE_ERRORS as error:
            return index, describe(value), f"{type(error).__name__}: {error}"
        return None

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return [found for found in pool.map(check, enumerate(values)) if found is not None]


def bad_image_limit(max_bad_images: float, split_size: int) -> int:
    return int(max_bad_images) if max_bad_images >= 1 else int(max_bad_images * split_size)


def image_size_from_processor(processor) -> tuple[int, int]:
    """(height, width) the model expects, read from an image processor's crop_size or size."""
    for attr, enabled in (("crop_size", "do_center_crop"), ("size", None)):
        size = getattr(processor, attr, None)
        if size is None or (enabled and not getattr(processor, enabled, False)):
            continue
        if isinstance(size, int):
            size = {"height": size, "width": size}
        elif not isinstance(size, dict):  # transformers' SizeDict
            size = {k: getattr(size, k, None) for k in ("height", "width", "shortest_edge")}
        if size.get("height") and size.get("width"):
            return int(size["height"]), int(size["width"])
        if size.get("shortest_edge"):
            return int(size["shortest_edge"]), int(size["shortest_edge"])
    raise ValueError(f"Cannot tell the input size from image processor {type(processor).__name__}.")


@dataclass
class Preprocessing:
    """The train and eval pipelines for one model, as callables on a single RGB image."""

    size: tuple[int, int]
    mean: list[float]
    std: list[float]
    train: v2.Compose
    eval: v2.Compose

    @classmethod
    def build(cls, processor, data_args: DataArguments, mean=None, std=None) -> Preprocessing:
        size = image_size_from_processor(processor)
        mean = list(mean or getattr(processor, "image_mean", None) or [0.5, 0.5, 0.5])
        std = list(std or getattr(processor, "image_std", None) or [0.5, 0.5, 0.5])
        finish = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=mean, std=std)]
        resize_to = int(round(max(size) / data_args.eval_crop_pct))
        eval_steps = [v2.PILToTensor(), v2.Resize(resize_to, antialias=True), v2.CenterCrop(size)]
        if data_args.train_augmentation == "random_resized_crop":
            train_steps = [
                v2.PILToTensor(),
                v2.RandomResizedCrop(size, scale=tuple(data_args.random_resized_crop_scale), antialias=True),
            ]
        else:
            train_steps = list(eval_steps)
        if data_args.horizontal_flip:
            train_steps.append(v2.RandomHorizontalFlip())
        return cls(size, mean, std, v2.Compose(train_steps + finish), v2.Compose(eval_steps + finish))

    def batch_transform(
        self,
        train: bool,
        image_column: str,
        label_column: str,
        split: str = "train",
        bad_images: BadImageLog | None = None,
        max_pixels: int | None = None,
    ):
        """A function for `Dataset.with_transform` that turns a batch of rows into model inputs.

        An unreadable image becomes a zero tensor with label IGNORE_INDEX: the loss and the metrics
        skip it, batch shapes stay intact (so several processes stay in step), and it is logged.
        """
        pipeline = self.train if train else self.eval
        bad_images = bad_images or BadImageLog(None)
        placeholder = torch.zeros(3, *self.size)

        def transform(batch: dict[str, list]) -> dict[str, list]:
            pixels, labels = [], []
            for value, label in zip(batch[image_column], batch[label_column]):
                try:
                    pixels.append(pipeline(load_rgb(value, max_pixels)))
                    labels.append(label)
                except DECODE_ERRORS as error:
                    bad_images.record(split, describe(value), error)
                    pixels.append(placeholder)
                    labels.append(IGNORE_INDEX)
            return {"pixel_values": pixels, "labels": labels}

        return transform


def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long),
    }
