"""Training from shards that need not fit on the disk: webdataset `.tar` or Parquet files, local or remote (any fsspec
URL: hf://, s3://, https://), read once in order as a stream.

`ShardStream` is the training stream. The project owns it instead of datasets' streaming + accelerate because those,
under several processes, decode everything on rank 0, split the data twice, give ranks unequal step counts (a hang)
and decode every skipped batch on resume. Here:

- each epoch the shard order is shuffled by (seed, epoch), the same on every process, and the shards are dealt to the
  global workers (process rank x DataLoader workers + worker id): first one each, then each to the one still needing
  the most samples;
- every process takes exactly `batches` = total samples // (world_size x batch_size) batches per epoch (the rest are
  dropped). Batch k of a process comes from its worker k % W (DataLoader deals batches round-robin), so worker w
  yields a fixed quota of batches; one whose shards hold fewer samples reads them again, one with more is cut;
- undecoded records (encoded bytes + label) pass a shuffle buffer seeded by (seed, epoch, global worker) and are
  decoded and transformed last, in the worker;
- `StreamPosition` (epoch, batches each process consumed) restores a run exactly: each worker replays its undecoded
  records through the same buffer and drops the ones already used before the transform, so nothing skipped is decoded.
"""

from __future__ import annotations

import copy
import hashlib
import heapq
import json
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from urllib.parse import quote

import fsspec
import numpy as np
import pyarrow.parquet as pq
from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature
from datasets.exceptions import DatasetGenerationError
from fsspec.implementations.local import LocalFileSystem
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .errors import RecipeError
from .hub import PARQUET_REVISION

INFO_NAME = "_info.json"  # beside the shards: classes and per-shard sample counts (timm's _info.json idea)
STREAM_STATE = "stream_state.json"  # in each checkpoint folder: the stream's position
IMAGE_EXTENSIONS = {ext.lstrip(".") for ext in Image.registered_extensions()}


@dataclass(frozen=True)
class Shards:
    """The files of one split in order, their sample counts and the class names."""

    files: tuple[str, ...]
    counts: tuple[int, ...]
    classes: tuple[str, ...]
    image_column: str = "image"  # Parquet column names; also the columns of `local_dataset`
    label_column: str = "label"
    checksums: tuple[str, ...] = ()  # the sha256 of each file where its info records one

    @property
    def total(self) -> int:
        return sum(self.counts)

    def digest(self) -> str:
        """Names, counts and checksums: a resumed run refuses other shards, wherever the same files now live."""
        listed = json.dumps([[posixpath.basename(f), n] for f, n in zip(self.files, self.counts)] + [self.checksums])
        return hashlib.sha256(listed.encode()).hexdigest()[:16]


_fs = fsspec.core.url_to_fs  # a URL's (filesystem, path)


def _expand(pattern: str) -> list[str]:
    fs, path = _fs(pattern)
    if not any(c in path for c in "*?["):  # a named file: not looked up where remote (a request each)
        return [] if isinstance(fs, LocalFileSystem) and not fs.exists(path) else [pattern]
    found = sorted(fs.glob(path))
    return found if isinstance(fs, LocalFileSystem) else [fs.unstrip_protocol(p) for p in found]


def shard_info(url: str) -> dict | None:
    """The `_info.json` beside a shard file, or None."""
    fs, path = _fs(url)
    info_path = posixpath.join(posixpath.dirname(path), INFO_NAME)
    if not fs.exists(info_path):
        return None
    with fs.open(info_path, "r") as handle:
        info = json.load(handle)
    if not info.get("complete", True):
        raise RecipeError(f"{info_path} belongs to shards that make_shards.py has not finished writing. Rerun "
                          "the same make_shards.py command: it continues where it stopped.")  # fmt: skip
    return info


def open_shards(patterns, classes=None, image_column: str = "image", label_column: str = "label") -> Shards:
    """Shard files from globs or URLs (each glob sorted). Counts and classes come from the `_info.json` beside the
    files (make_shards.py writes it), else, for Parquet, from the file footers and datasets' schema metadata."""
    patterns = [patterns] if isinstance(patterns, str | Path) else list(patterns)
    files = [f for pattern in patterns for f in _expand(str(pattern))]
    if not files:
        raise RecipeError(f"No shard file matches {patterns}. Check the path or glob (e.g. shards/train-*.tar).")
    counts, checksums, found_classes, infos = [], [], set(), {}
    for url in files:
        folder = posixpath.dirname(_fs(url)[1])
        info = infos[folder] if folder in infos else infos.setdefault(folder, shard_info(url))
        splits = (info or {}).get("splits", {}).values()
        listed = {s["file"]: s for split in splits for s in split["shards"]}
        name = posixpath.basename(url)
        checksums.append(listed.get(name, {}).get("sha256", ""))
        if name in listed:
            counts.append(listed[name]["num_samples"])
            found_classes.add(tuple(info["classes"]))
        elif url.endswith(".parquet"):
            fs, path = _fs(url)
            with fs.open(path, "rb") as handle:
                meta = pq.ParquetFile(handle)
                counts.append(meta.metadata.num_rows)
                found_classes.add(_parquet_classes(url, meta.schema_arrow, image_column, label_column))
        else:
            raise RecipeError(
                f"{url}: no {INFO_NAME} beside it lists this file, so its sample count is unknown (a stream needs "
                "it to give every process the same number of steps). Write the shards with make_shards.py, or add the "
                f'file to {INFO_NAME}: {{"classes": [...], "splits": {{"train": {{"shards": [{{"file": "{name}", '
                '"num_samples": N}]}}}.'
            )
    found_classes.discard(())
    kept = [i for i, n in enumerate(counts) if n > 0]  # an empty shard has nothing to read
    if classes is None and len(found_classes) != 1:
        problem = "differ between files" if found_classes else "are not recorded"
        raise RecipeError(f"The class names of {patterns} {problem}: pass them (classes=[...]) or rewrite the shards.")
    names = tuple(classes or found_classes.pop())
    files, counts, checksums = (tuple(values[i] for i in kept) for values in (files, counts, checksums))
    return Shards(files, counts, names, image_column, label_column, checksums)


def _parquet_classes(url: str, schema, image_column: str, label_column: str) -> tuple:
    if missing := [c for c in (image_column, label_column) if c not in schema.names]:
        raise RecipeError(f"{url} has no column {', '.join(missing)}; its columns are "
                          f"{', '.join(schema.names)}. Set image_column_name / label_column_name.")  # fmt: skip
    feature = Features.from_arrow_schema(schema).get(label_column)  # datasets' 'huggingface' schema metadata
    return tuple(feature.names) if isinstance(feature, ClassLabel) else ()


def hub_parquet_urls(repo_id: str, split: str, config: str = "default", revision: str = PARQUET_REVISION) -> list[str]:
    """The hf:// URLs of a Hub dataset's Parquet files for one split (the Hub's Parquet export by default)."""
    from huggingface_hub import HfApi

    files = HfApi().list_repo_files(repo_id, repo_type="dataset", revision=revision)
    chosen = sorted(f for f in files if f.startswith(f"{config}/{split}/") and f.endswith(".parquet"))
    if not chosen:
        why = f"it has no {config}/{split}/*.parquet. Its Parquet files: {', '.join(sorted(files)[:10]) or 'none'}"
        if any(f.startswith(f"{config}/partial-{split}/") for f in files):
            why = (f"the Hub converted only the first part of split '{split}' (partial-{split}/), so streaming it "
                   "would quietly train on part of the data. Stream the dataset's own Parquet files (another "
                   "revision) or write shards with make_shards.py")  # fmt: skip
        raise RecipeError(f"{repo_id} (revision {revision}): {why}.")
    return [f"hf://datasets/{repo_id}@{quote(revision, safe='')}/{f}" for f in chosen]


def _read_tar(url: str, shards: Shards) -> Iterator[dict]:
    """webdataset's layout: members <key>.<ext> in a row form one sample; <key>.cls is the label index as text."""
    fs, path = _fs(url)
    name = posixpath.basename(path)
    with fs.open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:  # streaming mode: no seeks
        key, parts = None, {}
        for member in tar:
            if not member.isfile():
                continue
            folder, _, base = member.name.rpartition("/")
            stem, _, ext = base.partition(".")
            member_key = f"{folder}/{stem}" if folder else stem
            if member_key != key and parts:
                yield _tar_sample(name, key, parts)
                parts = {}
            key, parts[ext] = member_key, tar.extractfile(member).read()
        if parts:
            yield _tar_sample(name, key, parts)


def _tar_sample(shard: str, key: str, parts: dict) -> dict:
    image = sorted((e not in IMAGE_EXTENSIONS, e) for e in parts if e != "cls")  # an image extension first
    if "cls" not in parts or not image:
        raise RecipeError(f"{shard}: sample '{key}' has {', '.join(parts)}; a sample needs an image and a .cls label.")
    ext = image[0][1]
    return {"key": key, "image": {"bytes": parts[ext], "path": f"{shard}/{key}.{ext}"}, "label": int(parts["cls"])}


def _read_parquet(url: str, shards: Shards) -> Iterator[dict]:
    fs, path = _fs(url)
    stem = posixpath.basename(path).removesuffix(".parquet")
    with fs.open(path, "rb") as raw:
        file, row = pq.ParquetFile(raw), 0
        _parquet_classes(url, file.schema_arrow, shards.image_column, shards.label_column)
        for batch in file.iter_batches(batch_size=64, columns=[shards.image_column, shards.label_column]):
            for image, label in zip(*(column.to_pylist() for column in batch.columns)):
                image = image if isinstance(image, dict) else {"bytes": image, "path": None}  # a binary column
                yield {"key": f"{stem}/{row}", "image": image, "label": label}
                row += 1


READERS = {".tar": _read_tar, ".parquet": _read_parquet}


def read_shard(shards: Shards, index: int) -> Iterator[dict]:
    """Shard `index`'s records {key, image: {bytes, path}, label}, undecoded; refused where the count is stale."""
    url, expected = shards.files[index], shards.counts[index]
    reader = READERS.get(Path(_fs(url)[1]).suffix)
    if reader is None:
        raise RecipeError(f"{url}: shards are read from {' or '.join(READERS)} files.")
    count = 0
    for record in reader(url, shards):
        count += 1
        yield record
    if count != expected:
        raise RecipeError(f"{url} holds {count} samples, but its info says {expected}: the "
                          f"shards and {INFO_NAME} do not belong together. Write them "
                          "again with make_shards.py into an empty folder.")  # fmt: skip


def _all_records(shards: Shards):
    for index in range(len(shards.files)):
        for record in read_shard(shards, index):
            yield {shards.image_column: record["image"], shards.label_column: record["label"]}


def local_dataset(shards: Shards, cache_dir: str | None = None) -> Dataset:
    """An evaluation split read once, in order, into a local map-style Dataset with load_splits' columns: the image
    undecoded ({'bytes', 'path'}) and a ClassLabel label. Cached by the files' sizes and dates, never served stale."""
    stamps = [json.dumps(fs.info(path), sort_keys=True, default=str) for fs, path in map(_fs, shards.files)]
    fingerprint = hashlib.sha256(json.dumps([shards.digest(), shards.classes, stamps]).encode()).hexdigest()[:32]
    features = Features({shards.image_column: ImageFeature(decode=False),
                         shards.label_column: ClassLabel(names=list(shards.classes))})  # fmt: skip
    try:
        return Dataset.from_generator(_all_records, features=features, gen_kwargs={"shards": shards},
                                      cache_dir=cache_dir, fingerprint=fingerprint)  # fmt: skip
    except DatasetGenerationError as error:  # datasets wraps what the generator raised; a RecipeError is shown as is
        if isinstance(error.__cause__, RecipeError):
            raise error.__cause__ from None
        raise


@dataclass(frozen=True)
class StreamPosition:
    """Where a stream stands: `batches` taken by each process in `epoch`, and what makes that exact."""

    epoch: int
    batches: int
    seed: int
    world_size: int
    num_workers: int
    batch_size: int
    shuffle_buffer: int
    shards: str  # Shards.digest()

    def worker_samples(self) -> list[int]:
        """Samples each of a process's workers has given: batch k came from worker k % workers."""
        workers = max(self.num_workers, 1)
        return [(self.batches // workers + (w < self.batches % workers)) * self.batch_size for w in range(workers)]

    def save(self, path: Path) -> None:
        temporary = Path(path).with_suffix(".partial")
        temporary.write_text(json.dumps({**asdict(self), "worker_samples": self.worker_samples()}, indent=1))
        temporary.replace(path)

    @classmethod
    def load(cls, path: Path) -> StreamPosition:
        saved = json.loads(Path(path).read_text())
        return cls(**{k: saved[k] for k in cls.__dataclass_fields__})


class ShardStream(IterableDataset):
    """One process's training stream (see the module docstring). `len()` is this process's samples per epoch,
    `batches` x `batch_size`, so DataLoader and Trainer size an epoch at `batches`. Use it through `StreamLoader`.
    Memory: each worker's buffer holds `shuffle_buffer` encoded images (e.g. 1000 x 100 kB = 100 MB)."""

    def __init__(self, shards: Shards, transform: Callable[[dict], dict], batch_size: int, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, seed: int = 0, shuffle_buffer: int = 1000):  # fmt: skip
        self.shards, self.transform, self.batch_size = shards, transform, batch_size
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.workers = max(num_workers, 1)  # num_workers 0: the main process is the one worker
        self.epoch, self._start = 0, None
        readers = world_size * self.workers
        if len(shards.files) < readers:
            raise RecipeError(f"{len(shards.files)} shards for {readers} readers ({world_size} processes x "
                              f"{self.workers} DataLoader workers): each reader streams whole shards, so "
                              "it needs one at least. Write smaller shards (make_shards.py --shard_size), "
                              "or lower dataloader_num_workers or the number of processes.")  # fmt: skip
        self.batches = shards.total // (world_size * batch_size)  # per process and epoch; the remainder is dropped
        if self.batches == 0:
            raise RecipeError(f"The shards hold {shards.total} samples, fewer than one batch per process ({world_size} "
                              f"x {batch_size}). Lower per_device_train_batch_size or add data.")  # fmt: skip

    def __len__(self) -> int:
        return self.batches * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def quota(self, worker: int) -> int:
        """Batches worker `worker` of each process gives per epoch: batch k of a process comes from worker k % W."""
        return self.batches // self.workers + (worker < self.batches % self.workers)

    def deal(self, epoch: int) -> list[list[int]]:
        """Shard indices per global worker (rank x workers + worker): the same answer on every process."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards.files)).tolist()
        readers, counts = self.world_size * self.workers, self.shards.counts
        dealt = [[s] for s in order[:readers]]
        # A heap of (-samples still needed, global worker): the neediest takes the next shard, ties to the lower id.
        heap = [(counts[order[g]] - self.quota(g % self.workers) * self.batch_size, g) for g in range(readers)]
        heapq.heapify(heap)
        for shard in order[readers:]:
            needed, g = heapq.heappop(heap)
            dealt[g].append(shard)
            heapq.heappush(heap, (needed + counts[shard], g))
        return dealt

    def position(self, epoch: int, batches: int) -> StreamPosition:
        return StreamPosition(epoch, batches, self.seed, self.world_size, self.num_workers, self.batch_size,
                              self.shuffle_buffer, self.shards.digest())  # fmt: skip

    def position_after(self, steps: int, accumulation: int) -> StreamPosition:
        """The position after `steps` optimizer steps of Trainer, which takes ceil(batches / accumulation) steps
        per epoch (the last one short where `accumulation` does not divide `batches`)."""
        epoch, step = divmod(steps, -(-self.batches // accumulation))
        return self.position(epoch, step * accumulation)

    def check(self, saved: StreamPosition, where: str = STREAM_STATE) -> None:
        """Refuse a position saved by a stream that deals or batches differently: resuming from it is not exact."""
        now = self.position(saved.epoch, saved.batches)
        changed = [f"{k} {getattr(saved, k)} -> {getattr(now, k)}" for k in ("world_size", "num_workers", "batch_size",
                   "seed", "shuffle_buffer", "shards") if getattr(saved, k) != getattr(now, k)]  # fmt: skip
        if changed:
            raise RecipeError(f"{where}: the stream was saved with other settings ({'; '.join(changed)}; "
                              "'shards' is a digest of the shard names and counts). Resuming exactly needs the "
                              "same processes, DataLoader workers, batch size, seed, shuffle buffer and "
                              "shards: resume with the saved values, or start a new output_dir.")  # fmt: skip
        if not 0 <= saved.batches < self.batches:
            raise RecipeError(f"{where}: batch {saved.batches} is not within an epoch of {self.batches} batches.")

    def resumed(self, saved: StreamPosition) -> ShardStream:
        """A copy that starts epoch `saved.epoch` after `saved.batches` batches (later epochs start at 0)."""
        self.check(saved)
        stream = copy.copy(self)
        stream.epoch, stream._start = saved.epoch, (saved.epoch, saved.batches)
        return stream

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if workers != self.workers:
            raise RecipeError(f"The stream was built for num_workers {self.num_workers} but a "
                              f"DataLoader with {workers} workers reads it: build both from the "
                              "same dataloader_num_workers (StreamLoader does).")  # fmt: skip
        start = self._start[1] if self._start and self._start[0] == self.epoch else 0
        # A fresh DataLoader asks worker 0 first: it plays the worker that batch `start` comes from.
        role = (worker + start) % workers
        done = start // workers + (role < start % workers)  # batches this role gave before `start`
        g = self.rank * workers + role
        records = self._records(self.deal(self.epoch)[g], self.quota(role) * self.batch_size, g)
        for record in islice(records, done * self.batch_size, None):  # the skipped ones are never decoded
            yield self.transform(record)

    def _records(self, shard_ids: list[int], needed: int, g: int) -> Iterator[dict]:
        """Exactly `needed` undecoded records of these shards, through the shuffle buffer; re-read where short."""
        if needed == 0:
            return iter(())
        passes = -(-needed // sum(self.shards.counts[s] for s in shard_ids))
        source = (r for _ in range(passes) for s in shard_ids for r in read_shard(self.shards, s))
        rng = np.random.default_rng([self.seed, self.epoch, g])
        return islice(_shuffled(source, max(self.shuffle_buffer, 1), rng), needed)


def _shuffled(records: Iterator[dict], size: int, rng: np.random.Generator) -> Iterator[dict]:
    """A shuffle buffer: each record takes the place of a random one held, which goes out; the rest at the end."""
    held = []
    for record in records:
        if len(held) < size:
            held.append(record)
            continue
        i = int(rng.integers(size))
        yield held[i]
        held[i] = record
    rng.shuffle(held)
    yield from held


class StreamLoader(DataLoader):
    """The DataLoader of a ShardStream: its batch size and workers, whole batches only, batches in worker order, and
    workers started afresh each epoch so that `set_epoch` reaches them (persistent workers would keep the old one)."""

    def __init__(self, stream: ShardStream, collate_fn=None, **kwargs):
        super().__init__(stream, batch_size=stream.batch_size, num_workers=stream.num_workers, collate_fn=collate_fn,
                         drop_last=True, persistent_workers=False, in_order=True, **kwargs)  # fmt: skip

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


@dataclass
class RowTransform:
    """A `Dataset.with_transform` batch function (e.g. `Preprocessing.batch_transform(True, "image", "label", ...)`)
    applied to one stream record; the record's key rides along (collators ignore it)."""

    batch_transform: Callable[[dict], dict]

    def __call__(self, record: dict) -> dict:
        out = self.batch_transform({"image": [record["image"]], "label": [record["label"]]})
        return {"key": record["key"], **{k: v[0] for k, v in out.items()}}


class ShardReader(IterableDataset):
    """Every record of `shards` once, transformed (the linear probe's pass over the training set): DataLoader workers
    take every W-th shard, so each record is read by one worker."""

    def __init__(self, shards: Shards, transform: Callable[[dict], dict]):
        self.shards, self.transform = shards, transform

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        for index in range(info.id if info else 0, len(self.shards.files), info.num_workers if info else 1):
            yield from map(self.transform, read_shard(self.shards, index))
