"""Reading images: whatever an image column holds, opened and converted to 8-bit RGB."""

from __future__ import annotations

import io
import os
import struct
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# What Pillow raises for a file that is not a readable image: not an image, cut short, corrupt, or too big.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)
# The one limit on an image's size, in training (DataArguments.max_image_pixels), predict.py, the demo and export.py:
# Pillow's decompression-bomb threshold (PIL.Image.MAX_IMAGE_PIXELS): Pillow only warns above it, up to twice as many.
MAX_IMAGE_PIXELS = 89_478_485


def load_rgb(value: Any, max_pixels: int | None = MAX_IMAGE_PIXELS, draft: tuple[int, int] | None = None):
    """What a datasets Image column holds ({'bytes', 'path'}, a path, raw bytes or a PIL image) as 8-bit RGB, oriented
    by EXIF, transparent areas white. An image above `max_pixels` is refused from its header, before decoding. A JPEG
    with `draft` (width, height) is decoded at the smallest 1/2, 1/4 or 1/8 scale still at least that large."""
    if isinstance(value, dict):
        value = value.get("bytes") or value["path"]
    if isinstance(value, (bytes, bytearray)):
        value = io.BytesIO(value)
    with warnings.catch_warnings():  # Pillow's DecompressionBombWarning: the size is checked here instead
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = value if isinstance(value, Image.Image) else Image.open(value)
    if max_pixels and image.width * image.height > max_pixels:
        raise Image.DecompressionBombError(f"{image.width}x{image.height} pixels is more than the "
                                           f"limit of {max_pixels} (max_image_pixels)")  # fmt: skip
    if draft and image.format == "JPEG":
        image.draft("RGB", draft)  # the JPEG's own DCT scaling: a fraction of the decoding work
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # high bit depth: scaled to 8 bits, not clipped
        pixels = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if pixels.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(pixels * (255.0 / peak), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("P", "LA", "PA", "RGBA", "La", "RGBa"):
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image.convert("RGBA"))
    return image.convert("RGB")


def describe(value: Any) -> str:
    """A name for an image-column value in messages: its path, or its size in bytes."""
    if isinstance(value, dict):
        return value.get("path") or f"<{len(value.get('bytes') or b'')} bytes in the dataset>"
    return str(value) if isinstance(value, (str, os.PathLike)) else f"<{type(value).__name__}>"
