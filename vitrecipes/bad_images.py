"""Unreadable images: found before training (`verify_images`) or met while loading, logged, counted, limited."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadImagesError
from .images import DECODE_ERRORS, describe, load_rgb

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label of a placeholder: the loss and the metrics skip it


@dataclass
class BadImageLog:
    """Counts the unreadable images of each split, in memory and in `<output_dir>/bad_images.jsonl`: a file shared
    by DataLoader workers and processes (appends of one short line each), so the limit holds for the whole run."""

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
        bad = self.read().get(split, {})
        limit = self.limits.get(split)
        if enforce_limit and limit is not None and len(bad) > limit:
            examples = "; ".join(f"{k} ({v})" for k, v in list(bad.items())[:5])
            raise BadImagesError(f"Too many unreadable images in the {split} split: {len(bad)}, more than "
                                 f"max_bad_images allows ({limit}). First ones: {examples}. Run with "
                                 "--verify_images true to list and leave out every bad file before "
                                 "training, fix or delete the files, or raise max_bad_images.")  # fmt: skip

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


def readable(value, split: str, log: Path | None, max_pixels: int | None = None) -> bool:
    """`verify_images`' filter: whether `value` decodes; the log records it when it does not."""
    try:
        load_rgb(value, max_pixels, draft=(64, 64))  # a check only: 1/8 scale, but the whole stream is read
    except DECODE_ERRORS as error:
        cause = f"left out by verify_images: {type(error).__name__}: {error}"
        BadImageLog(log).record(split, describe(value), cause, enforce_limit=False)
        return False
    return True


def shareable_names(found: dict[str, dict[str, str]], dataset_name: str) -> dict[str, list[str]]:
    """{split: sorted files} for the uploaded metrics.json, where no path of the training machine is published."""
    root = Path(dataset_name).expanduser().resolve()

    def shareable(name: str) -> str:
        path = Path(name)
        if not path.is_absolute():
            return name
        return str(path.relative_to(root)) if path.is_relative_to(root) else path.name

    return {split: sorted(map(shareable, files)) for split, files in found.items()}
