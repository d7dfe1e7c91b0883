"""Reading images: whatever an image column holds, opened and converted to 8-bit RGB."""

from __future__ import annotations

import io
import os
import struct
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# What Pillow raises for a file that is not a readable image: not an image, cut short, corrupt, or too big.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)

_HIGH_BIT_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


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


def open_checked(value: Any, max_pixels: int | None = None) -> Image.Image:
    """Open what a datasets Image column holds ({'bytes', 'path'}, a path, raw bytes or a PIL image),
    refusing images above `max_pixels` from their header, before decoding anything."""
    if isinstance(value, dict):
        value = value.get("bytes") or value["path"]
    if isinstance(value, (bytes, bytearray)):
        value = io.BytesIO(value)
    image = value if isinstance(value, Image.Image) else Image.open(value)
    if max_pixels and image.width * image.height > max_pixels:
        raise Image.DecompressionBombError(
            f"{image.width}x{image.height} pixels is more than max_image_pixels ({max_pixels})"
        )
    return image


def load_rgb(value: Any, max_pixels: int | None = None) -> Image.Image:
    return to_rgb(open_checked(value, max_pixels))


def describe(value: Any) -> str:
    """A name for an image-column value in messages: its path, or its size in bytes."""
    if isinstance(value, dict):
        return value.get("path") or f"<{len(value.get('bytes') or b'')} bytes in the dataset>"
    return str(value) if isinstance(value, (str, os.PathLike)) else f"<{type(value).__name__}>"
