"""Decoding and preprocessing, applied lazily through `Dataset.with_transform`.

Train: RandomResizedCrop + horizontal flip. Eval: resize the shorter side, centre-crop.
Size, mean and std come from the checkpoint's image processor; reading the files is `images.py`'s.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as tvF
from transformers import BitImageProcessor
from transformers.image_utils import PILImageResampling

from .bad_images import IGNORE_INDEX, BadImageLog
from .config import DataArguments
from .images import DECODE_ERRORS, as_pixels, describe, open_checked, to_rgb


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


def resize_pixels(pixels: torch.Tensor, box: tuple[int, int, int, int], size: tuple[int, int], flip: bool = False):
    """Crop `box` (left, top, right, bottom) out of (H, W, 3) uint8 pixels and resize it to `size` (h, w).

    torchvision's `resized_crop` on uint8: bilinear with antialiasing, PyTorch's vectorised kernel
    (about 4x faster than Pillow's resize, see benchmarks/), the same one the eval transform and the
    saved image processor use.
    """
    left, top, right, bottom = box
    out = tvF.resized_crop(pixels.permute(2, 0, 1), top, left, bottom - top, right - left, list(size), antialias=True)
    out = tvF.horizontal_flip(out) if flip else out
    return out.permute(1, 2, 0).contiguous()  # contiguous, so a batch stacks with one copy each


@dataclass
class Preprocessing:
    """Decoding, resizing and normalisation for one model.

    Crops and resizes work on uint8 pixels through PyTorch's vectorised kernel (torchvision), and the
    conversion to float and the normalisation happen once per batch, in `collate`.
    """

    size: tuple[int, int]  # (height, width) of the model input
    mean: list[float]
    std: list[float]
    random_crop: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    horizontal_flip: bool = True
    resize_to: int = 224  # eval: the shorter side is resized to this, then centre-cropped to `size`
    augment: Any = None  # a torchvision v2 transform on (3, H, W) uint8 after crop and flip, or None

    @classmethod
    def build(
        cls, processor, data_args: DataArguments, mean=None, std=None, image_size: int | None = None
    ) -> Preprocessing:
        """`image_size`: the model input side, instead of the processor's."""
        size = (image_size, image_size) if image_size else image_size_from_processor(processor)
        return cls(
            size=size,
            mean=list(mean or getattr(processor, "image_mean", None) or [0.5, 0.5, 0.5]),
            std=list(std or getattr(processor, "image_std", None) or [0.5, 0.5, 0.5]),
            random_crop=data_args.train_augmentation == "random_resized_crop",
            crop_scale=tuple(data_args.random_resized_crop_scale),
            horizontal_flip=data_args.horizontal_flip,
            resize_to=int(round(max(size) / data_args.eval_crop_pct)),
            augment=image_augmentation(data_args, mean or getattr(processor, "image_mean", None)),
        )

    def decode(self, value: Any, train: bool = False, max_pixels: int | None = None) -> Image.Image:
        """Open an image-column value as RGB (the same for training and evaluation, as pipeline() does)."""
        return to_rgb(open_checked(value, max_pixels))

    def train_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop sampling: area fraction, log-uniform aspect ratio, 10 tries.

        Python's `random` rather than torch: a dozen tiny torch calls cost more than the resize itself.
        DataLoader workers, `set_seed` and checkpoint resumption seed and restore it like torch's.
        After 10 misses, the largest centred crop whose aspect ratio lies in the range, as torchvision does.
        """
        area = width * height
        log_ratio = (math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
        for _ in range(10):
            target = area * random.uniform(*self.crop_scale)
            ratio = math.exp(random.uniform(*log_ratio))
            w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                left, top = random.randint(0, width - w), random.randint(0, height - h)
                return (left, top, left + w, top + h)
        w, h = width, height
        if width / height < self.crop_ratio[0]:
            h = round(width / self.crop_ratio[0])
        elif width / height > self.crop_ratio[1]:
            w = round(height * self.crop_ratio[1])
        left, top = (width - w) // 2, (height - h) // 2
        return (left, top, left + w, top + h)

    def train_uint8(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """A random crop and flip of an RGB image or of its (H, W, 3) uint8 pixels."""
        if not self.random_crop:
            return self.eval_uint8(image)
        pixels = image if isinstance(image, torch.Tensor) else as_pixels(image)
        box = self.train_box(pixels.shape[0], pixels.shape[1])
        flip = self.horizontal_flip and random.random() < 0.5
        out = resize_pixels(pixels, box, self.size, flip)
        if self.augment is not None:  # torchvision's v2 transforms work on (3, H, W) uint8
            out = self.augment(out.permute(2, 0, 1)).permute(1, 2, 0).contiguous()
        return out

    def eval_uint8(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """Resize the shorter side to `resize_to`, then take the centre crop of the model's size.

        The same torchvision operations, output-size rounding and crop offsets as the image processor
        saved with the model (`serving_processor`), so `pipeline()` sees exactly these pixels.
        """
        pixels = image if isinstance(image, torch.Tensor) else as_pixels(image)
        resized = tvF.resize(
            pixels.permute(2, 0, 1), self.resize_to, interpolation=tvF.InterpolationMode.BILINEAR, antialias=True
        )
        height, width = resized.shape[-2:]  # the shorter side is resize_to >= either side of the crop
        top, left = (height - self.size[0]) // 2, (width - self.size[1]) // 2
        return resized[:, top : top + self.size[0], left : left + self.size[1]].permute(1, 2, 0).contiguous()

    def serving_processor(self):
        """An image processor that gives `pipeline()` exactly the evaluation transform's pixels."""
        return BitImageProcessor(
            do_resize=True,
            size={"shortest_edge": self.resize_to},
            resample=PILImageResampling.BILINEAR,
            do_center_crop=True,
            crop_size={"height": self.size[0], "width": self.size[1]},
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            image_mean=list(self.mean),
            image_std=list(self.std),
            do_convert_rgb=True,
        )

    def __post_init__(self):
        # (x / 255 - mean) / std == x * scale + shift, precomputed once
        std = torch.tensor(self.std, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std)).view(3, 1, 1)
        self._shift = (-torch.tensor(self.mean, dtype=torch.float32) / std).view(3, 1, 1)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (..., H, W, 3) -> normalised float32 (..., 3, H, W), contiguous."""
        channels_first = pixels.movedim(-1, -3)
        out = torch.empty(channels_first.shape, dtype=torch.float32)
        out.copy_(channels_first)  # converts and transposes in one pass
        return out.mul_(self._scale).add_(self._shift)

    def eval(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """One RGB image (or its pixels) -> the normalised tensor evaluation gives the model."""
        return self.normalize(self.eval_uint8(image))

    def train(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        return self.normalize(self.train_uint8(image))

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Stack a batch and normalise it once (uint8 inputs); float inputs pass through unchanged."""
        batch = collate(examples)
        if batch["pixel_values"].dtype == torch.uint8:
            batch["pixel_values"] = self.normalize(batch["pixel_values"])
        return batch

    def batch_transform(
        self,
        train: bool,
        image_column: str,
        label_column: str,
        split: str = "train",
        bad_images: BadImageLog | None = None,
        max_pixels: int | None = None,
    ):
        """A function for `Dataset.with_transform` that turns a batch of rows into uint8 model inputs.

        An unreadable image becomes a blank image with label IGNORE_INDEX: the loss and the metrics
        skip it, batch shapes stay intact (so several processes stay in step), and it is logged.
        Normalisation follows in `collate`.
        """
        bad_images = bad_images or BadImageLog(None)
        placeholder = torch.zeros(*self.size, 3, dtype=torch.uint8)

        def transform(batch: dict[str, list]) -> dict[str, list]:
            pixels, labels = [], []
            for value, label in zip(batch[image_column], batch[label_column]):
                try:
                    decoded = as_pixels(self.decode(value, train, max_pixels))
                    pixels.append(self.train_uint8(decoded) if train else self.eval_uint8(decoded))
                    labels.append(label)
                except DECODE_ERRORS as error:
                    bad_images.record(split, describe(value), error)
                    pixels.append(placeholder)
                    labels.append(IGNORE_INDEX)
            return {"pixel_values": pixels, "labels": labels}

        return transform


def image_augmentation(data_args: DataArguments, mean=None):
    """TrivialAugment / RandAugment and random erasing from torchvision, or None when both are off.

    Erased areas take the normalisation mean, so they become zeros at the model input.
    """
    steps = []
    if data_args.auto_augment == "trivial":
        steps.append(v2.TrivialAugmentWide())
    elif data_args.auto_augment == "rand":
        steps.append(v2.RandAugment())
    if data_args.random_erasing > 0:
        fill = [round(255 * m) for m in (mean or [0.5, 0.5, 0.5])]
        steps.append(v2.RandomErasing(p=data_args.random_erasing, value=fill))
    return v2.Compose(steps) if steps else None


def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long),
    }
