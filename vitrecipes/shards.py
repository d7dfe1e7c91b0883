"""Writing shards: the splits `data.load_splits` gives, as webdataset `.tar` files holding the original encoded images
(never re-encoded) and their label indices, plus the `_info.json` that `streaming.open_shards` reads.

stdlib tarfile, not the webdataset package: the format is plain tar, and webdataset's ShardWriter neither writes
atomically nor continues after a crash, while its reader offers no exact resume (the stream in streaming.py does).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
from datasets import DatasetDict
from PIL import Image

from .errors import RecipeError
from .images import DECODE_ERRORS
from .streaming import IMAGE_EXTENSIONS, INFO_NAME

PROGRESS_NAME = "_progress.jsonl"  # one line per finished shard while writing; removed when all are written


def write_shards(splits: DatasetDict, out, shard_size: int, source: str = "", only=None, image_column: str = "image",
                 label_column: str = "label", seed: int = 0) -> dict:  # fmt: skip
    """`<out>/<split>-000000.tar`, ... of `shard_size` samples (the last one fewer) and `<out>/_info.json`; the
    samples in an order shuffled by `seed`, so that a shard holds a mix of classes. A rerun after a crash keeps the
    finished shards and writes the rest; a folder holding another source's or settings' shards is refused."""
    out = Path(out)
    if only:
        if unknown := [name for name in only if name not in splits]:
            raise RecipeError(f"--splits: {source} has no split {', '.join(unknown)}; it has {', '.join(splits)}.")
        splits = DatasetDict({name: splits[name] for name in only})
    if shard_size < 1:
        raise RecipeError(f"--shard_size must be 1 or more samples per shard, not {shard_size}.")
    orders = {name: np.random.default_rng(seed).permutation(len(dataset)) for name, dataset in splits.items()}
    plan = {
        "version": 1,
        "classes": splits[next(iter(splits))].features[label_column].names,
        "source": {"name": str(source), "shard_size": shard_size, "seed": seed,
                   "digest": _digest(splits, orders, image_column, label_column)},
        "complete": False,
        "splits": {name: {"num_samples": len(dataset), "shards": [
            {"file": f"{name}-{i:06d}.tar", "num_samples": min(shard_size, len(dataset) - start)}
            for i, start in enumerate(range(0, len(dataset), shard_size))]} for name, dataset in splits.items()},
    }  # fmt: skip
    info_path = out / INFO_NAME
    if info_path.exists():
        existing = json.loads(info_path.read_text())
        if _comparable(existing) != _comparable(plan):
            differ = [k for k in ("classes", "source", "splits") if _comparable(existing)[k] != _comparable(plan)[k]]
            raise RecipeError(f"{out} holds shards written from another source or with other settings (what "
                              f"differs from its {INFO_NAME}: {', '.join(differ)}; a source is compared by "
                              "its images and labels). Shards of two sources must not mix: write into "
                              f"another folder, or delete {out} to write it afresh.")  # fmt: skip
        if existing.get("complete"):
            return existing
    elif out.exists() and any(out.iterdir()):
        raise RecipeError(f"{out} holds files but no {INFO_NAME}: write shards into a new or an empty folder.")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(info_path, plan)
    progress = out / PROGRESS_NAME
    done = _read_progress(progress)
    for name, dataset in splits.items():
        for i, entry in enumerate(plan["splits"][name]["shards"]):
            path, start = out / entry["file"], i * shard_size
            if not path.exists():  # a shard is renamed into place whole, so one that exists is finished
                rows = dataset[orders[name][start : start + shard_size].tolist()]
                _write_tar(path, rows[image_column], rows[label_column], start)
            if entry["file"] not in done:  # written now, or renamed just before a crash
                done[entry["file"]] = _log(progress, path)
            elif done[entry["file"]]["bytes"] != path.stat().st_size:
                raise RecipeError(f"{path} changed since it was written: delete it and rerun to write it again.")
            entry["sha256"] = done[entry["file"]]["sha256"]
    plan["complete"] = True
    _write_json(info_path, plan)
    progress.unlink()
    return plan


def _comparable(info: dict) -> dict:
    """The info without what writing adds (checksums, completion) and the source's name (its content counts)."""
    info = copy.deepcopy(info)
    info.pop("complete", None)
    info.get("source", {}).pop("name", None)
    for split in info.get("splits", {}).values():
        for shard in split["shards"]:
            shard.pop("sha256", None)
    return info


def _digest(splits: DatasetDict, orders: dict, image_column: str, label_column: str) -> str:
    """The source's samples in writing order: labels and image bytes, or for files their path, size and date."""
    digest = hashlib.sha256()
    for name, dataset in splits.items():
        digest.update(f"\0{name}".encode())
        for start in range(0, len(dataset), 1000):
            rows = dataset[orders[name][start : start + 1000].tolist()]
            for image, label in zip(rows[image_column], rows[label_column]):
                if image.get("bytes"):
                    identity = image["bytes"]
                else:
                    stat = _stat(image["path"])
                    identity = f"{image['path']}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
                digest.update(f"\0{label}\0".encode() + identity)
    return digest.hexdigest()


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as error:
        raise RecipeError(f"{path}: the image cannot be read ({error}). Restore the file or remove it.") from None


def _encoded(image: dict) -> tuple[bytes, str]:
    """The image's bytes as stored, and an extension: the file's own, else the format Pillow sees in the bytes."""
    data, path = image.get("bytes"), image.get("path") or ""
    if not data:
        _stat(path)
        data = Path(path).read_bytes()
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in IMAGE_EXTENSIONS:
        try:
            ext = Image.open(io.BytesIO(data)).format.lower()
        except DECODE_ERRORS:  # unreadable: kept, so training logs and skips it like any bad image
            ext = "bin"
    return data, ext


def _write_tar(path: Path, images: list, labels: list, first: int) -> None:
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as handle:
        with tarfile.open(fileobj=handle, mode="w") as tar:
            for index, (image, label) in enumerate(zip(images, labels), first):
                data, ext = _encoded(image)
                for name, payload in ((f"{index:08d}.{ext}", data), (f"{index:08d}.cls", str(label).encode())):
                    member = tarfile.TarInfo(name)  # fixed owner and date: the same source gives the same bytes
                    member.size = len(payload)
                    tar.addfile(member, io.BytesIO(payload))
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)


def _log(progress: Path, path: Path) -> dict:
    with path.open("rb") as handle:
        sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
    entry = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256}
    with progress.open("a") as handle:
        handle.write(json.dumps(entry) + "\n")
    return entry


def _read_progress(progress: Path) -> dict:
    done = {}
    for line in progress.read_text().splitlines() if progress.exists() else []:
        try:
            entry = json.loads(line)
        except ValueError:  # a line cut short by a crash: that shard is hashed again
            continue
        done[entry["file"]] = entry
    return done


def _write_json(path: Path, content: dict) -> None:
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text(json.dumps(content, indent=1))
    temporary.replace(path)
