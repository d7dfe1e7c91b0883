"""Preprocessing with torchvision v2, sized by the checkpoint's image processor, applied lazily through
`Dataset.with_transform`. Images stay (3, H, W) uint8 until `collate` converts and normalises the batch."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as tvF
from transformers import BitImageProcessor
from transformers.image_utils import PILImageResampling

from .bad_images import IGNORE_INDEX, BadImageLog
from .config import DataArguments
from .images import DECODE_ERRORS, describe, load_rgb
from .modeling import build_image_processor


def image_size_from_processor(processor) -> tuple[int, int]:
    """(height, width) the model expects: the processor's crop_size where it centre-crops, else its size."""
    crop_size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    for size in (crop_size, getattr(processor, "size", None)):
        if isinstance(size, int):
            return size, size
        if size and size.get("height") and size.get("width"):  # a dict or transformers' SizeDict
            return int(size["height"]), int(size["width"])
        if size and size.get("shortest_edge"):
            return int(size["shortest_edge"]), int(size["shortest_edge"])
    raise ValueError(f"Cannot tell the input size from image processor {type(processor).__name__}.")


def train_augmentation(data_args: DataArguments, size: tuple[int, int], mean: list[float]):
    """The training transform on (3, H, W) uint8, or None where training uses the eval transform."""
    if data_args.train_augmentation == "none":
        return None
    steps = [v2.RandomResizedCrop(list(size), scale=tuple(data_args.random_resized_crop_scale), antialias=True)]
    if data_args.horizontal_flip:
        steps.append(v2.RandomHorizontalFlip())
    policy = {"trivial": v2.TrivialAugmentWide, "rand": v2.RandAugment}.get(data_args.auto_augment)
    if policy is not None:
        steps.append(policy())
    if data_args.random_erasing > 0:
        # Erased areas take the normalisation mean, so they become zeros at the model input.
        steps.append(v2.RandomErasing(p=data_args.random_erasing, value=[round(255 * m) for m in mean]))
    return v2.Compose(steps)


def build_preprocessing(model_args, data_args: DataArguments) -> tuple[Preprocessing, Preprocessing]:
    """A run's training and evaluation preprocessing, sized by the model's image processor or `image_size`;
    evaluation at `eval_image_size` where it is set (FixRes). The probe's features keep the training side."""
    processor, mean, std = build_image_processor(model_args), model_args.image_mean, model_args.image_std
    prep = Preprocessing.build(processor, data_args, mean=mean, std=std, image_size=model_args.image_size)
    return prep, prep.at_eval_size(model_args.eval_image_size, data_args.eval_crop_pct)


@dataclass
class Preprocessing:
    """Resizing, augmentation and normalisation for one model."""

    size: tuple[int, int]  # (height, width) of the model input
    mean: list[float]
    std: list[float]
    resize_to: int = 224  # eval: the shorter side is resized to this, then centre-cropped to `size`
    train_transform: Any = None  # see `train_augmentation`; None: training uses the eval transform
    jpeg_draft: bool = False  # decode the train split's JPEGs at the smallest DCT scale that covers `size`

    @classmethod
    def build(cls, processor, data_args: DataArguments, mean=None, std=None, image_size=None) -> Preprocessing:
        """`image_size`: the model input side, instead of the processor's."""
        size = (image_size, image_size) if image_size else image_size_from_processor(processor)
        mean = list(mean or getattr(processor, "image_mean", None) or [0.5, 0.5, 0.5])
        std = list(std or getattr(processor, "image_std", None) or [0.5, 0.5, 0.5])
        resize_to = int(round(max(size) / data_args.eval_crop_pct))
        return cls(size, mean, std, resize_to, train_augmentation(data_args, size, mean), data_args.jpeg_draft)

    def at_eval_size(self, side: int | None, crop_pct: float) -> Preprocessing:
        """The same evaluation view at another input side; training keeps its own."""
        if not side or (side, side) == self.size:
            return self
        return replace(self, size=(side, side), resize_to=int(round(side / crop_pct)))

    def eval_uint8(self, pixels: torch.Tensor) -> torch.Tensor:
        """Resize the shorter side to `resize_to`, then centre-crop: the operations, rounding and crop offsets of
        the image processor saved with the model (`serving_processor`), so `pipeline()` sees exactly these pixels."""
        resized = tvF.resize(pixels, self.resize_to, interpolation=tvF.InterpolationMode.BILINEAR, antialias=True)
        height, width = resized.shape[-2:]  # the shorter side is resize_to >= either side of the crop
        top, left = (height - self.size[0]) // 2, (width - self.size[1]) // 2
        return resized[:, top : top + self.size[0], left : left + self.size[1]]

    def train_uint8(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.eval_uint8(pixels) if self.train_transform is None else self.train_transform(pixels)

    def serving_processor(self):
        """The evaluation transform for `pipeline()`: BitImageProcessor (RGB, resize, crop, rescale, normalise)."""
        return BitImageProcessor(size={"shortest_edge": self.resize_to}, resample=PILImageResampling.BILINEAR,
                                 crop_size={"height": self.size[0], "width": self.size[1]},
                                 image_mean=list(self.mean), image_std=list(self.std))  # fmt: skip

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, H, W) -> normalised float32."""
        return tvF.normalize(tvF.to_dtype(pixels, torch.float32, scale=True), self.mean, self.std)

    def eval(self, image: Image.Image) -> torch.Tensor:
        """One RGB image -> the normalised tensor evaluation gives the model."""
        return self.normalize(self.eval_uint8(tvF.pil_to_tensor(image)))

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Stack a batch and normalise it once (uint8 inputs); float inputs pass through unchanged."""
        pixels = torch.stack([e["pixel_values"] for e in examples])
        labels = torch.tensor([e["labels"] for e in examples], dtype=torch.long)
        return {"pixel_values": self.normalize(pixels) if pixels.dtype == torch.uint8 else pixels, "labels": labels}

    def batch_transform(self, train: bool, image_column, label_column, split="train", bad_images=None, max_pixels=None):
        """For `Dataset.with_transform`: rows -> uint8 model inputs. An unreadable image is logged and becomes a blank
        one labelled IGNORE_INDEX, which loss and metrics skip, so batch shapes (and processes) stay in step."""
        # A partial of a method, not a closure: DataLoader workers started by spawn or forkserver (Linux's default
        # from Python 3.14) receive the transform pickled.
        columns = (image_column, label_column)
        return partial(self._rows, train, columns, split, bad_images or BadImageLog(None), max_pixels)

    def _rows(self, train, columns, split, bad_images, max_pixels, batch: dict[str, list]) -> dict:
        pixels, labels = [], []
        # The train split only (training, the probe's features): evaluation and pipeline() decode images whole.
        draft = (max(self.size),) * 2 if self.jpeg_draft and split == "train" else None
        for value, label in zip(batch[columns[0]], batch[columns[1]]):
            try:
                image = tvF.pil_to_tensor(load_rgb(value, max_pixels, draft))
                pixels.append(self.train_uint8(image) if train else self.eval_uint8(image))
                labels.append(label)
            except DECODE_ERRORS as error:
                bad_images.record(split, describe(value), error)
                pixels.append(torch.zeros(3, *self.size, dtype=torch.uint8))
                labels.append(IGNORE_INDEX)
        return {"pixel_values": pixels, "labels": labels}
