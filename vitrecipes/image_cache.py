"""Decoded training images kept in memory between epochs, and filled ahead of the loader.

A CPU-only speed-up for runs without DataLoader workers (the only case where the pipeline benchmark
measures a gain): with workers each one would keep a private slice of the budget, so it is off there.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .images import DECODE_ERRORS

logger = logging.getLogger(__name__)


class DecodedImageCache:
    """Decoded RGB pixels kept in memory up to a byte budget, so that later epochs skip decoding.

    Decoding is the largest per-image cost left (see benchmarks/), and it gives the same pixels every
    epoch; the random crop and flip are applied afterwards, so augmentation is unchanged. Entries are
    never evicted: with random sampling every image is equally likely next, so once the budget is
    full the first images simply stay. It is used only without DataLoader workers: each worker would
    keep a private copy, and hit in proportion to its share of the budget. A background thread may fill
    it ahead of the loader (`decode_ahead`).
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


def decode_ahead(cache: DecodedImageCache, values: Callable[[int, int], list], length: int, side: int, decode) -> None:
    """Start decoding the training images into `cache`, in one background thread; once per cache.

    Without DataLoader workers, the first epoch decodes every JPEG in the training loop, while the
    training step leaves part of the cores idle (its Python and optimiser stretches run on one
    thread). The thread runs at the lowest scheduling priority, so it fills the cache from that idle
    time. Same pixels either way; it stops when every image is in, or when the budget is full.
    `values(start, stop)` returns the image-column values of those rows; `decode(value)` their pixels.
    """
    if cache.budget == 0 or cache.background is not None:
        return

    def fill():
        _lowest_thread_priority()
        try:
            for start in range(0, length, 256):
                for value in values(start, min(start + 256, length)):
                    cache.background_allowed.wait()
                    key = cache.key(value, side)
                    if key is None:
                        return  # values the cache cannot hold (decoded images): nothing to gain
                    if cache.get(key) is not None:
                        continue
                    try:
                        pixels = decode(value)
                    except DECODE_ERRORS:
                        continue  # the loader reports it when it reaches this image
                    if not cache.put(key, pixels):
                        return  # budget full
        except Exception as error:  # the loader decodes for itself; nothing is lost
            logger.debug("Decoding ahead stopped: %s: %s", type(error).__name__, error)

    cache.background = threading.Thread(target=fill, name="vitrecipes-decode-ahead", daemon=True)
    cache.background.start()
