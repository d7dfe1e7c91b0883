"""Decoding and preprocessing, applied lazily through `Dataset.with_transform`.

Train: RandomResizedCrop + horizontal flip. Eval: resize the shorter side, centre-crop.
Size, mean and std come from the checkpoint's image processor. Every image becomes 3-channel
RGB with its EXIF orientation applied, whatever mode it was stored in.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import random
import struct
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as tvF
from transformers import BitImageProcessor
from transformers.image_utils import PILImageResampling

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


_niceness_applied = False


def _lower_worker_priority(niceness: int) -> None:
    """In a DataLoader worker process, lower its scheduling priority once.

    The training step runs on every core with synchronised threads; a worker competing at equal
    priority delays all of them. At a lower priority it still gets every idle moment of a core
    (the Python parts of the step, the optimiser), which is where the decoding then hides.
    """
    global _niceness_applied
    if niceness and not _niceness_applied and torch.utils.data.get_worker_info() is not None:
        _niceness_applied = True
        try:
            os.nice(niceness)
        except OSError:  # not permitted on this system: run at normal priority
            pass


class DecodedImageCache:
    """Decoded RGB pixels kept in memory up to a byte budget, so that later epochs skip decoding.

    Decoding is the largest per-image cost left (see benchmarks/), and it gives the same pixels every
    epoch; the random crop and flip are applied afterwards, so augmentation is unchanged. Entries are
    never evicted: with random sampling every image is equally likely next, so once the budget is
    full the first images simply stay. Each process keeps its own cache; a copy sent to a DataLoader
    worker starts empty. A background thread may fill it ahead of the loader (`Preprocessing.decode_ahead`).
    """

    def __init__(self, budget_mib: int):
        self.__setstate__({"budget": budget_mib * 2**20})

    def __getstate__(self):
        return {"budget": self.budget}

    def __setstate__(self, state):
        self.budget = state["budget"]
        self.used = 0
        self.images: dict[Any, torch.Tensor] = {}
        self.lock = threading.Lock()  # the loader and the background thread both add entries
        self.background_allowed = threading.Event()  # cleared: the background thread waits
        self.background_allowed.set()
        self.background: threading.Thread | None = None

    @staticmethod
    def key(value: Any, draft_side: int):
        if isinstance(value, dict):
            data = value.get("bytes")
            return (draft_side, value.get("path"), len(data), hash(data)) if data else (draft_side, value.get("path"))
        if isinstance(value, str | Path):
            return (draft_side, str(value))
        return None  # decoded PIL images or raw bytes: nothing to gain

    def get(self, key) -> torch.Tensor | None:
        return self.images.get(key) if key is not None else None

    def put(self, key, pixels: torch.Tensor) -> bool:
        """Keep `pixels` under `key` if the budget allows; False when it does not."""
        cost = pixels.numel()  # uint8: a byte a value
        with self.lock:
            if key in self.images:
                return True
            if key is None or self.used + cost > self.budget:
                return False
            self.images[key] = pixels
            self.used += cost
            return True


def _lowest_thread_priority() -> None:
    """Give the calling thread the lowest scheduling priority (Linux schedules threads one by one)."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:  # not permitted here: stay at normal priority
            pass


def as_pixels(image: Image.Image) -> torch.Tensor:
    """An RGB image as a (H, W, 3) uint8 tensor."""
    return torch.from_numpy(np.array(image, dtype=np.uint8))


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

    The per-image work is kept to what each image needs (profiled in benchmarks/): JPEGs are decoded
    at a reduced scale when the model input is smaller (`jpeg_draft`); decoded pixels are kept in
    memory for later epochs (`decoded_image_cache_mib`); crops and resizes work on uint8 pixels
    through PyTorch's vectorised kernel; and the conversion to float and the normalisation happen
    once per batch, in `collate`.
    """

    size: tuple[int, int]  # (height, width) of the model input
    mean: list[float]
    std: list[float]
    random_crop: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    horizontal_flip: bool = True
    resize_to: int = 224  # eval: the shorter side is resized to this, then centre-cropped to `size`
    jpeg_draft: bool = False  # training only; see DataArguments.jpeg_draft
    worker_niceness: int = 0
    cache_mib: int = 0  # per process; see DecodedImageCache
    augment: Any = None  # a torchvision v2 transform on (3, H, W) uint8 after crop and flip, or None

    @classmethod
    def build(
        cls, processor, data_args: DataArguments, mean=None, std=None, workers: int = 0, image_size: int | None = None
    ) -> Preprocessing:
        """`workers`: DataLoader worker processes per training process; they share the cache budget.
        `image_size`: the model input side, instead of the processor's."""
        size = (image_size, image_size) if image_size else image_size_from_processor(processor)
        return cls(
            size=size,
            mean=list(mean or getattr(processor, "image_mean", None) or [0.5, 0.5, 0.5]),
            std=list(std or getattr(processor, "image_std", None) or [0.5, 0.5, 0.5]),
            random_crop=data_args.train_augmentation == "random_resized_crop",
            crop_scale=tuple(data_args.random_resized_crop_scale),
            horizontal_flip=data_args.horizontal_flip,
            resize_to=int(round(max(size) / data_args.eval_crop_pct)),
            jpeg_draft=data_args.jpeg_draft,
            worker_niceness=data_args.dataloader_worker_niceness,
            cache_mib=data_args.decoded_image_cache_mib // max(1, workers),
            augment=image_augmentation(data_args, mean or getattr(processor, "image_mean", None)),
        )

    def decode(self, value: Any, train: bool, max_pixels: int | None = None) -> Image.Image:
        """Open an image-column value as RGB, decoding a JPEG at the smallest scale that loses nothing.

        A JPEG can be decoded at 1/2, 1/4 or 1/8 scale for a fraction of the work. The requested
        size keeps the shorter side at least as large as what the transform will sample from it:
        `resize_to` for eval, and the model input for training (so a random crop of a drafted image
        is at most upsampled by the crop factor, as it would be from a small original).
        """
        image = open_image(value)
        if max_pixels and image.width * image.height > max_pixels:
            raise Image.DecompressionBombError(
                f"{image.width}x{image.height} pixels is more than max_image_pixels ({max_pixels})"
            )
        if self.jpeg_draft and train and image.format == "JPEG":
            side = self.draft_side(train)
            image.draft("RGB", (side, side))
        return to_rgb(image)

    def draft_side(self, train: bool) -> int:
        """The side a drafted JPEG keeps at least (0: decoded in full, as evaluation always is)."""
        return max(self.size) if train and self.jpeg_draft else 0

    def decode_pixels(self, value: Any, train: bool, max_pixels: int | None = None) -> torch.Tensor:
        """`decode` as (H, W, 3) uint8 pixels, served from memory when this process has decoded them before."""
        key = self._cache.key(value, self.draft_side(train))
        pixels = self._cache.get(key)
        if pixels is None:
            pixels = as_pixels(self.decode(value, train, max_pixels))
            self._cache.put(key, pixels)
        return pixels

    @property
    def background_allowed(self) -> threading.Event:
        """Cleared, the background decoding of `decode_ahead` waits (the benchmark pauses it this way)."""
        return self._cache.background_allowed

    def decode_ahead(self, dataset, image_column: str, max_pixels: int | None = None) -> None:
        """Start decoding the training images of `dataset` (untransformed) into the cache, in the background.

        Without DataLoader workers, the first epoch decodes every JPEG in the training loop, while the
        training step leaves part of the cores idle (its Python and optimiser stretches run on one
        thread). One thread at the lowest scheduling priority fills the cache from that idle time,
        so the loader mostly finds images already decoded. Same pixels either way; it stops when
        every image is in, or when the budget is full. Once per process; later calls do nothing.
        """
        cache = self._cache
        if cache.budget == 0 or cache.background is not None:
            return
        side = self.draft_side(train=True)

        def fill():
            _lowest_thread_priority()
            try:
                for start in range(0, len(dataset), 256):
                    for value in dataset[start : start + 256][image_column]:
                        cache.background_allowed.wait()
                        key = cache.key(value, side)
                        if key is None:
                            return  # values the cache cannot hold (decoded images): nothing to gain
                        if cache.get(key) is not None:
                            continue
                        try:
                            pixels = as_pixels(self.decode(value, train=True, max_pixels=max_pixels))
                        except DECODE_ERRORS:
                            continue  # the loader reports it when it reaches this image
                        if not cache.put(key, pixels):
                            return  # budget full
            except Exception as error:  # the loader decodes for itself; nothing is lost
                logger.debug("Decoding ahead stopped: %s: %s", type(error).__name__, error)

        cache.background = threading.Thread(target=fill, name="vitrecipes-decode-ahead", daemon=True)
        cache.background.start()

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
        _lower_worker_priority(self.worker_niceness)
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
        _lower_worker_priority(self.worker_niceness)
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
        self._cache = DecodedImageCache(self.cache_mib)

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
        decode_ahead_from=None,
    ):
        """A function for `Dataset.with_transform` that turns a batch of rows into uint8 model inputs.

        `decode_ahead_from`: the untransformed dataset; the first batch loaded in the main process
        (no DataLoader workers) starts `decode_ahead` on it.

        An unreadable image becomes a blank image with label IGNORE_INDEX: the loss and the metrics
        skip it, batch shapes stay intact (so several processes stay in step), and it is logged.
        Normalisation follows in `collate`.
        """
        bad_images = bad_images or BadImageLog(None)
        placeholder = torch.zeros(*self.size, 3, dtype=torch.uint8)

        def transform(batch: dict[str, list]) -> dict[str, list]:
            if decode_ahead_from is not None and torch.utils.data.get_worker_info() is None:
                self.decode_ahead(decode_ahead_from, image_column, max_pixels)
            pixels, labels = [], []
            for value, label in zip(batch[image_column], batch[label_column]):
                try:
                    decoded = self.decode_pixels(value, train, max_pixels)
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
