"""Decoding and preprocessing, applied lazily through `Dataset.with_transform`.

Train: RandomResizedCrop + horizontal flip. Eval: resize the shorter side, centre-crop.
Size, mean and std come from the checkpoint's image processor. Every image becomes 3-channel
RGB with its EXIF orientation applied, whatever mode it was stored in.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

from .config import DataArguments

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


def load_rgb(value: Any) -> Image.Image:
    return to_rgb(open_image(value))


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

    def batch_transform(self, train: bool, image_column: str, label_column: str):
        """A function for `Dataset.with_transform` that turns a batch of rows into model inputs."""
        pipeline = self.train if train else self.eval

        def transform(batch: dict[str, list]) -> dict[str, list]:
            return {
                "pixel_values": [pipeline(load_rgb(value)) for value in batch[image_column]],
                "labels": batch[label_column],
            }

        return transform


def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long),
    }
