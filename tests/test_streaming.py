"""Training from shards: the writer (make_shards.py), the readers, ShardStream's dealing, equal steps and exact resume,
and RecipeTrainer's hooks, in one process and under `accelerate launch` with two."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import CLASS_COLOURS, class_image, launch, run_cli, write_imagefolder

from vitrecipes import shards as shards_module
from vitrecipes.config import DataArguments
from vitrecipes.data import load_splits
from vitrecipes.errors import RecipeError
from vitrecipes.images import load_rgb
from vitrecipes.shards import write_shards
from vitrecipes.streaming import (
    RowTransform,
    ShardStream,
    StreamLoader,
    StreamPosition,
    hub_parquet_urls,
    local_dataset,
    open_shards,
)
from vitrecipes.training import RecipeTrainer
from vitrecipes.transforms import Preprocessing


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    class_image((200, 30, 30), seed, size=(6, 5)).save(buffer, format="PNG")
    return buffer.getvalue()


def tar_shards(folder: Path, sizes: list[int], split: str = "train") -> str:
    """webdataset shards of `sizes` samples (keys k<shard>_<i>) and their _info.json; returns the glob."""
    folder.mkdir(parents=True, exist_ok=True)
    listed = []
    for s, size in enumerate(sizes):
        name = f"{split}-{s:06d}.tar"
        with tarfile.open(folder / name, "w") as tar:
            for i in range(size):
                for ext, payload in (("png", _png(s * 100 + i)), ("cls", str(i % 3).encode())):
                    member = tarfile.TarInfo(f"k{s:02d}_{i:03d}.{ext}")
                    member.size = len(payload)
                    tar.addfile(member, io.BytesIO(payload))
        listed.append({"file": name, "num_samples": size})
    info = {"version": 1, "classes": ["a", "b", "c"], "splits": {split: {"num_samples": sum(sizes), "shards": listed}}}
    (folder / "_info.json").write_text(json.dumps(info))
    return str(folder / f"{split}-*.tar")


def shard_keys(shards, index: int) -> list[str]:
    with tarfile.open(shards.files[index]) as tar:
        return sorted({m.name.split(".")[0] for m in tar.getmembers()})


class Decode:
    """A real decoder that notes each key it decodes in a file (DataLoader workers are processes)."""

    def __init__(self, log: Path):
        self.log = log

    def __call__(self, record: dict) -> str:
        load_rgb(record["image"])
        with open(self.log, "a") as handle:
            handle.write(record["key"] + "\n")
        return record["key"]


def epoch_batches(stream: ShardStream, epoch: int) -> list[list[str]]:
    loader = StreamLoader(stream, collate_fn=list)
    loader.set_epoch(epoch)
    return list(loader)


def stream(glob: str, log: Path, rank=0, world=2, workers=0, batch=3, seed=0, buffer=5) -> ShardStream:
    return ShardStream(open_shards(glob), Decode(log), batch, rank, world, workers, seed, buffer)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_covers_every_key_once_with_equal_steps_per_rank(tmp_path, workers):
    glob = tar_shards(tmp_path / "shards", [6] * 8)  # 48 samples: 2 ranks x 8 batches of 3, no remainder
    all_keys = sorted(k for s in range(8) for k in shard_keys(open_shards(glob), s))
    epochs = []
    for epoch in (0, 1):
        ranks = [epoch_batches(stream(glob, tmp_path / "log", r, workers=workers), epoch) for r in (0, 1)]
        assert [len(batches) for batches in ranks] == [8, 8]  # equal steps
        assert all(len(batch) == 3 for batches in ranks for batch in batches)
        seen = [k for batches in ranks for batch in batches for k in batch]
        assert sorted(seen) == all_keys  # every key once across all (rank, worker) pairs
        epochs.append(ranks)
    assert epochs[0][0] != epochs[1][0] and epochs[0][1] != epochs[1][1]  # the order changes with the epoch
    dealing = stream(glob, tmp_path / "log", workers=workers)
    assert dealing.deal(0) != dealing.deal(1)  # the shards too, not only the buffer
    again = epoch_batches(stream(glob, tmp_path / "log", 1, workers=workers), 1)
    assert again == epochs[1][1]  # and is the same for the same epoch


def test_uneven_shards_are_cut_or_read_again_with_equal_steps(tmp_path):
    # 4 shards for 4 readers (2 ranks x 2 workers): one each. 48 samples -> 8 batches of 3 per rank -> 4 per worker,
    # 12 samples each: the 20-sample shard is cut at 12, the 4-sample one read 3 times, the 12-sample ones whole.
    glob = tar_shards(tmp_path / "shards", [20, 4, 12, 12])
    shards = open_shards(glob)
    ranks = [epoch_batches(stream(glob, tmp_path / "log", r, workers=2), 0) for r in (0, 1)]
    assert [len(batches) for batches in ranks] == [8, 8]
    dealt = stream(glob, tmp_path / "log", workers=2).deal(0)
    assert sorted(len(d) for d in dealt) == [1, 1, 1, 1]
    by_worker = {}
    for rank, batches in enumerate(ranks):
        for k, batch in enumerate(batches):  # batch k of a rank comes from its worker k % 2
            by_worker.setdefault(rank * 2 + k % 2, []).extend(batch)
    for g, keys in by_worker.items():
        own = shard_keys(shards, dealt[g][0])
        assert set(keys) <= set(own) and len(keys) == 12
        counts = Counter(keys)
        if len(own) >= 12:  # cut: 12 different samples of the shard
            assert len(counts) == 12
        else:  # read again: every sample of the 4-sample shard 3 times
            assert sorted(counts.values()) == [3] * 4
    assert set(by_worker[0] + by_worker[1]).isdisjoint(by_worker[2] + by_worker[3])  # the ranks never share


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_gives_the_same_batches_and_decodes_nothing_skipped(tmp_path, workers):
    glob = tar_shards(tmp_path / "shards", [9, 3, 7, 5, 8, 4, 6, 6])
    full = stream(glob, tmp_path / "full.log", rank=1, workers=workers)
    uninterrupted = [epoch_batches(full, epoch) for epoch in (0, 1, 2)]
    for k in (3, 5):  # odd: with 2 workers the next batch comes from worker 1
        position = full.position(1, k)
        position.save(tmp_path / "stream_state.json")
        log = tmp_path / f"resumed-{k}.log"
        fresh = stream(glob, log, rank=1, workers=workers)
        resumed = StreamLoader(fresh.resumed(StreamPosition.load(tmp_path / "stream_state.json")), collate_fn=list)
        resumed.set_epoch(1)  # as Trainer does with the loader get_resumed_dataloader returned
        after = list(resumed)
        assert after == uninterrupted[1][k:]
        decoded = log.read_text().split()
        assert sorted(decoded) == sorted(key for batch in after for key in batch)  # the skipped ones never decoded
        resumed.set_epoch(2)
        assert list(resumed) == uninterrupted[2]  # the next epoch starts from its beginning


def test_refusals_name_the_numbers_and_what_to_do(tmp_path):
    glob = tar_shards(tmp_path / "shards", [6, 6, 6])
    too_few = r"3 shards for 4 readers \(2 processes x 2 DataLoader workers\).*--shard_size"
    with pytest.raises(RecipeError, match=too_few):
        stream(glob, tmp_path / "log", workers=2)
    with pytest.raises(RecipeError, match=r"fewer than one batch per process \(2 x 10\)"):
        stream(glob, tmp_path / "log", batch=10)
    saved = stream(glob, tmp_path / "log", workers=1).position(0, 2)
    for changed, message in [
        (stream(glob, tmp_path / "log", world=3, workers=1), "world_size 2 -> 3"),
        (stream(glob, tmp_path / "log", workers=0), "num_workers 1 -> 0"),
        (stream(glob, tmp_path / "log", workers=1, seed=5), "seed 0 -> 5"),
        (stream(tar_shards(tmp_path / "other", [6, 6, 7]), tmp_path / "log", workers=1), "shards "),
    ]:
        with pytest.raises(RecipeError, match=f"stream_state.json: the stream was saved with other .*{message}"):
            changed.resumed(saved)
    with pytest.raises(RecipeError, match="built for num_workers 0 but a DataLoader with 2 workers"):
        list(torch.utils.data.DataLoader(stream(glob, tmp_path / "log"), batch_size=3, num_workers=2))
    # A shard that holds other than its info says is refused, not read as it is.
    info = json.loads((tmp_path / "shards" / "_info.json").read_text())
    info["splits"]["train"]["shards"][1]["num_samples"] = 5
    (tmp_path / "shards" / "_info.json").write_text(json.dumps(info))
    with pytest.raises(RecipeError, match=r"train-000001.tar holds 6 samples, but its info says 5"):
        local_dataset(open_shards(glob))
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "x.tar").write_bytes((tmp_path / "shards" / "train-000000.tar").read_bytes())
    with pytest.raises(RecipeError, match=r"x.tar: no _info.json beside it lists this file"):
        open_shards(str(tmp_path / "bare" / "*.tar"))
    with pytest.raises(RecipeError, match="No shard file matches"):
        open_shards(str(tmp_path / "bare" / "*.parquet"))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    samples = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, _, ext = member.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def _make_shards(*args):
    return run_cli(*args, script="make_shards.py", timeout=600)


def test_make_shards_keeps_the_original_bytes_and_counts_them(tmp_path):
    source = write_imagefolder(tmp_path / "colours", {"train": 8, "validation": 3}, fmt="jpg")
    result = _make_shards(source, tmp_path / "out", "--shard_size", 5)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train: 24 samples in 5 shards" in result.stdout
    info = json.loads((tmp_path / "out" / "_info.json").read_text())
    assert info["classes"] == sorted(CLASS_COLOURS) and info["complete"]
    assert [s["num_samples"] for s in info["splits"]["train"]["shards"]] == [5, 5, 5, 5, 4]  # uneven: the last
    assert [s["num_samples"] for s in info["splits"]["validation"]["shards"]] == [5, 4]
    for split in ("train", "validation"):
        originals = Counter()  # (bytes, class) of every source file
        for file in (source / split).rglob("*.jpg"):
            originals[(_sha(file.read_bytes()), file.parent.name)] += 1
        written = Counter()
        for shard in info["splits"][split]["shards"]:
            path = tmp_path / "out" / shard["file"]
            samples = _tar_samples(path)
            assert len(samples) == shard["num_samples"] and shard["sha256"] == _sha(path.read_bytes())
            for parts in samples.values():
                assert set(parts) == {"jpg", "cls"}  # the file's own format, not re-encoded
                written[(_sha(parts["jpg"]), info["classes"][int(parts["cls"])])] += 1
        assert written == originals
    # Read back as an evaluation split: the columns load_splits gives, the same images and labels.
    local = local_dataset(open_shards(str(tmp_path / "out" / "validation-*.tar")))
    loaded = load_splits(DataArguments(dataset_name=str(source)))["validation"]
    assert local.features == loaded.features
    assert _pairs(local) == _pairs(loaded)


def _pairs(dataset) -> Counter:
    """(image bytes, label) of every row, whether the row holds the bytes or a file's path."""
    return Counter((_sha(r["image"]["bytes"] or Path(r["image"]["path"]).read_bytes()), r["label"]) for r in dataset)


def test_make_shards_from_the_builtin_digits(tmp_path):
    splits = load_splits(DataArguments(dataset_name="builtin:digits"))
    info = write_shards(splits, tmp_path / "digits", 500, "builtin:digits", only=["train", "test"])
    assert sorted(info["splits"]) == ["test", "train"]
    assert [s["num_samples"] for s in info["splits"]["train"]["shards"]] == [500, 500, 197]
    written = Counter()
    for shard in info["splits"]["train"]["shards"]:
        for parts in _tar_samples(tmp_path / "digits" / shard["file"]).values():
            written[(_sha(parts["png"]), int(parts["cls"]))] += 1
    assert written == Counter((_sha(r["image"]["bytes"]), r["label"]) for r in splits["train"])
    assert open_shards(str(tmp_path / "digits" / "train-*.tar")).total == 1197


def test_make_shards_continues_after_a_crash_and_refuses_another_source(tmp_path, monkeypatch):
    source = write_imagefolder(tmp_path / "colours", {"train": 8})  # 24 train, 6 held out for validation
    splits = load_splits(DataArguments(dataset_name=str(source)))
    out, real_write, calls = tmp_path / "out", shards_module._write_tar, []

    def crash_on_the_third(*args):
        calls.append(args[0].name)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while writing the third shard
        real_write(*args)

    monkeypatch.setattr(shards_module, "_write_tar", crash_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        write_shards(splits, out, 4, str(source))
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert sorted(first) == ["train-000000.tar", "train-000001.tar"]
    with pytest.raises(RecipeError, match="has not finished writing.*Rerun the same make_shards.py command"):
        open_shards(str(out / "train-*.tar"))  # half-written shards are never read
    monkeypatch.setattr(shards_module, "_write_tar", real_write)
    info = write_shards(splits, out, 4, str(source))
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar") if p.name in first} == first  # kept, not redone
    assert info["complete"]
    clean = write_shards(splits, tmp_path / "clean", 4, str(source))
    assert info["splits"] == clean["splits"]  # the same bytes (sha256) as one uninterrupted run
    reseeded = write_shards(splits, tmp_path / "reseeded", 4, str(source), seed=1)  # same names and counts
    assert [s["num_samples"] for s in reseeded["splits"]["train"]["shards"]] == [
        s["num_samples"] for s in clean["splits"]["train"]["shards"]]  # fmt: skip
    folders = (out, tmp_path / "clean", tmp_path / "reseeded")
    digests = [open_shards(str(folder / "train-*.tar")).digest() for folder in folders]
    assert digests[0] == digests[1] != digests[2]  # a resumed stream refuses shards of other content
    assert not (out / "_progress.jsonl").exists()

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    class_image((0, 0, 0), 1).save(source / "train" / "red" / "0.png")  # the same files and labels, one image changed
    result = _make_shards(source, out, "--shard_size", 4)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{out} holds shards written from another source or with other settings (what differs from its " \
        "_info.json: source;" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written is lost
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(RecipeError, match="holds files but no _info.json"):
        write_shards(splits, tmp_path / "mine", 4, str(source))


def test_parquet_shards_with_an_image_struct_or_binary_column(tmp_path):
    names = ["cat", "dog", "fox"]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    (tmp_path / "struct").mkdir()
    for part in range(3):
        rows = {"image": [{"bytes": _png(part * 10 + i), "path": f"{i}.png"} for i in range(4 + part)],
                "label": [i % 3 for i in range(4 + part)]}  # fmt: skip
        datasets.Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "struct" / f"train-{part}.parquet")
    shards = open_shards(str(tmp_path / "struct" / "*.parquet"))
    assert shards.counts == (4, 5, 6) and shards.classes == tuple(names)  # footers and datasets' metadata
    batches = epoch_batches(ShardStream(shards, Decode(tmp_path / "log"), 3, 0, 1, 0, seed=1, shuffle_buffer=4), 0)
    assert sorted(k for batch in batches for k in batch) == sorted(f"train-{p}/{i}" for p in range(3)
                                                                   for i in range(4 + p))  # fmt: skip
    local = local_dataset(shards)
    assert local.features == datasets.Features({"image": datasets.Image(decode=False), "label": features["label"]})
    assert local[4]["image"]["bytes"] == _png(10) and local[4]["label"] == 0  # train-1.parquet, row 0
    (tmp_path / "binary").mkdir()
    table = pa.table({"jpg": [_png(1), _png(2)], "cls": [2, 0]})
    pq.write_table(table, tmp_path / "binary" / "part.parquet")
    with pytest.raises(RecipeError, match="class names .* are not recorded"):
        open_shards(str(tmp_path / "binary" / "*.parquet"), image_column="jpg", label_column="cls")
    plain = open_shards(str(tmp_path / "binary" / "*.parquet"), classes=["x", "y", "z"], image_column="jpg",
                        label_column="cls")  # fmt: skip
    rows = list(local_dataset(plain))
    assert [(r["jpg"]["bytes"], r["cls"]) for r in rows] == [(_png(1), 2), (_png(2), 0)]
    with pytest.raises(RecipeError, match="has no column picture; its columns are jpg, cls"):
        open_shards(str(tmp_path / "binary" / "*.parquet"), classes=["x"], image_column="picture", label_column="cls")


def test_a_changed_shard_is_read_again_not_served_from_the_cache(tmp_path):
    glob = tar_shards(tmp_path / "shards", [3, 3])
    first = local_dataset(open_shards(glob))
    tar_path = tmp_path / "shards" / "train-000001.tar"
    with tarfile.open(tar_path, "w") as tar:  # the same keys and count, other images
        for i in range(3):
            for ext, payload in (("png", _png(999 + i)), ("cls", b"1")):
                member = tarfile.TarInfo(f"k01_{i:03d}.{ext}")
                member.size = len(payload)
                tar.addfile(member, io.BytesIO(payload))
    os.utime(tar_path, ns=(1, 1))  # even a date set back must not let the old cache through
    second = local_dataset(open_shards(glob))
    assert [r["image"]["bytes"] for r in second][3:] == [_png(999 + i) for i in range(3)]
    assert first[3]["image"]["bytes"] != second[3]["image"]["bytes"]


def test_hub_parquet_listing(monkeypatch):
    from huggingface_hub import HfApi

    listing = ["default/train/0001.parquet", "default/train/0000.parquet", "default/test/0000.parquet", "README.md"]
    asked = []
    monkeypatch.setattr(HfApi, "list_repo_files", lambda self, repo, **kw: asked.append((repo, kw)) or listing)
    assert hub_parquet_urls("someone/pets", "train") == [
        "hf://datasets/someone/pets@refs%2Fconvert%2Fparquet/default/train/0000.parquet",
        "hf://datasets/someone/pets@refs%2Fconvert%2Fparquet/default/train/0001.parquet",
    ]
    assert asked == [("someone/pets", {"repo_type": "dataset", "revision": "refs/convert/parquet"})]
    with pytest.raises(RecipeError, match="no default/validation/\\*.parquet"):
        hub_parquet_urls("someone/pets", "validation")
    listing[:] = ["default/partial-train/0000.parquet"]
    with pytest.raises(RecipeError, match="converted only the first part of split 'train'"):
        hub_parquet_urls("someone/pets", "train")


# ---- RecipeTrainer with a ShardStream: the same helper runs in-process and under accelerate launch (DRIVER).


class Logged:
    """The project's row transform, noting each decoded key in a file."""

    def __init__(self, inner, log: Path):
        self.inner, self.log = inner, log

    def __call__(self, record: dict) -> dict:
        with open(self.log, "a") as handle:
            handle.write(record["key"] + "\n")
        return self.inner(record)


class KeyedCollate:
    def __init__(self, prep):
        self.prep = prep

    def __call__(self, examples: list[dict]) -> dict:
        return {**self.prep.collate(examples), "sample_ids": torch.tensor([int(e["key"]) for e in examples])}


class Recording(RecipeTrainer):
    """Notes the samples of every batch the model trains on."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        with open(self.seen, "a") as handle:
            handle.write(json.dumps(inputs.pop("sample_ids").tolist()) + "\n")
        return super().training_step(model, inputs, num_items_in_batch)


def train_from_shards(glob, run_dir, tag, resume=None, workers=0, seed=7, batch=4, stream_batch=None, epochs=3):
    from transformers import TrainingArguments, ViTConfig, ViTForImageClassification

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    logs = Path(run_dir).parent
    prep = Preprocessing((32, 32), [0.5] * 3, [0.5] * 3, resize_to=32)
    transform = Logged(RowTransform(prep.batch_transform(True, "image", "label")), logs / f"decoded-{tag}-{rank}")
    train = ShardStream(open_shards(glob), transform, stream_batch or batch, rank, world, workers, seed, 6)
    args = TrainingArguments(output_dir=str(run_dir), per_device_train_batch_size=batch, gradient_accumulation_steps=2,
                             num_train_epochs=epochs, save_strategy="steps", save_steps=3, report_to="none",
                             eval_strategy="no", use_cpu=True, dataloader_num_workers=workers, disable_tqdm=True,
                             ddp_find_unused_parameters=False, learning_rate=1e-3)  # fmt: skip
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_labels=3)  # fmt: skip
    trainer = Recording(model=ViTForImageClassification(config), args=args, train_dataset=train,
                        data_collator=KeyedCollate(prep))  # fmt: skip
    trainer.seen = logs / f"seen-{tag}-{rank}"
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _lines(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _decoded(path: Path) -> list[int]:
    return sorted(int(key) for key in path.read_text().split()) if path.exists() else []


def reference(glob, rank, world, workers, seed=7, epochs=3) -> list[list[int]]:
    """The batches the stream's rule gives one rank, read without Trainer."""
    keys = ShardStream(open_shards(glob), lambda r: int(r["key"]), 4, rank, world, workers, seed, 6)
    return [batch for epoch in range(epochs) for batch in epoch_batches(keys, epoch)]


@pytest.fixture
def colour_shards(tmp_path) -> str:
    source = write_imagefolder(tmp_path / "colours", {"train": 12, "validation": 2})  # 36 train images
    splits = load_splits(DataArguments(dataset_name=str(source)))
    write_shards(splits, tmp_path / "shards", 5, str(source), only=["train"])  # 8 shards: 7 of 5, 1 of 1
    return str(tmp_path / "shards" / "train-*.tar")


def test_recipe_trainer_trains_and_resumes_from_a_stream_in_one_process(tmp_path, colour_shards):
    # 36 samples, batch 4: 9 batches an epoch, 5 optimizer steps (accumulation 2, the last step one batch); 3 epochs.
    full = train_from_shards(colour_shards, tmp_path / "full", "full")
    assert full.state.global_step == 15
    seen = _lines(tmp_path / "seen-full-0")
    assert seen == reference(colour_shards, 0, 1, 0)
    assert _decoded(tmp_path / "decoded-full-0") == sorted(k for b in seen for k in b)  # decoded once each
    saved = json.loads((tmp_path / "full" / "checkpoint-6" / "stream_state.json").read_text())
    assert (saved["epoch"], saved["batches"], saved["world_size"]) == (1, 2, 1)  # step 6: epoch 1 after 1 step
    for step, batches_before in ((6, 9 + 2), (3, 6)):
        run = tmp_path / f"resumed-{step}"
        (run / f"checkpoint-{step}").mkdir(parents=True)
        for file in (tmp_path / "full" / f"checkpoint-{step}").iterdir():
            (run / f"checkpoint-{step}" / file.name).write_bytes(file.read_bytes())
        resumed = train_from_shards(colour_shards, run, f"resumed-{step}", resume=True)
        assert resumed.state.global_step == 15
        after = _lines(tmp_path / f"seen-resumed-{step}-0")
        assert after == seen[batches_before:]
        assert _decoded(tmp_path / f"decoded-resumed-{step}-0") == sorted(k for b in after for k in b)

    checkpoint = str(tmp_path / "full" / "checkpoint-6")
    with pytest.raises(RecipeError, match=r"checkpoint-6/stream_state.json: the stream was saved .*seed 7 -> 8"):
        train_from_shards(colour_shards, tmp_path / "other-seed", "x", resume=checkpoint, seed=8)
    with pytest.raises(RecipeError, match=r"The train stream was built for \{'batch_size': 2"):
        train_from_shards(colour_shards, tmp_path / "other-batch", "x", stream_batch=2)
    (tmp_path / "full" / "checkpoint-6" / "stream_state.json").unlink()
    with pytest.raises(RecipeError, match=r"checkpoint-6/stream_state.json is missing"):
        train_from_shards(colour_shards, tmp_path / "no-state", "x", resume=checkpoint)


DRIVER = """
import os, shutil, sys
import torch.distributed as dist
from test_streaming import train_from_shards

glob, logs = sys.argv[1], sys.argv[2]
train_from_shards(glob, os.path.join(logs, "full"), "full", workers=2)
if dist.get_rank() == 0:  # a new run that holds only the mid-epoch checkpoint
    shutil.copytree(os.path.join(logs, "full", "checkpoint-3"), os.path.join(logs, "resumed", "checkpoint-3"))
dist.barrier()
trainer = train_from_shards(glob, os.path.join(logs, "resumed"), "resumed", workers=2, resume=True)
print("finished at step", trainer.state.global_step)
"""


def test_two_processes_train_from_uneven_shards_and_resume(tmp_path, colour_shards):
    # 36 samples, 2 ranks x batch 4: 4 batches per rank and epoch (4 samples dropped), 2 steps with accumulation 2;
    # 8 shards for 2 x 2 workers, one of them a single sample, so some worker reads its shards again.
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    result = launch(script, colour_shards, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("finished at step 6") == 2
    seen = [_lines(tmp_path / f"seen-full-{rank}") for rank in (0, 1)]
    assert [len(s) for s in seen] == [12, 12] and all(len(b) == 4 for s in seen for b in s)  # equal steps
    for epoch in range(3):
        ours = [{k for b in s[4 * epoch : 4 * epoch + 4] for k in b} for s in seen]
        assert ours[0].isdisjoint(ours[1])  # no sample on both ranks
    assert seen[0][:4] != seen[0][4:8]  # another order each epoch
    for rank in (0, 1):
        assert seen[rank] == reference(colour_shards, rank, 2, 2)  # exactly the rank's share, in the stream's order
        assert _decoded(tmp_path / f"decoded-full-{rank}") == sorted(k for b in seen[rank] for k in b)
        after = _lines(tmp_path / f"seen-resumed-{rank}")
        assert after == seen[rank][6:]  # checkpoint-3: epoch 1 after 2 batches
        assert _decoded(tmp_path / f"decoded-resumed-{rank}") == sorted(k for b in after for k in b)
    state = json.loads((tmp_path / "full" / "checkpoint-3" / "stream_state.json").read_text())
    assert (state["epoch"], state["batches"], state["world_size"], state["num_workers"]) == (1, 2, 2, 2)


# ---- The recipe keys: run_snacks.py on shards.


def _digits_shards(root: Path) -> Path:
    splits = load_splits(DataArguments(dataset_name="builtin:digits"))
    write_shards(splits, root, 130, "builtin:digits")  # uneven: 10 train shards, the last of 27 images
    return root


def test_a_two_process_streamed_run_finishes_and_counts_every_evaluation_image_once(tmp_path):
    shards, out = _digits_shards(tmp_path / "shards"), tmp_path / "out"
    result = launch(
        "run_snacks.py", "recipes/smoke.yaml", "--train_files", shards / "train-*.tar", "--validation_files",
        shards / "validation-*.tar", "--test_files", shards / "test-*.tar", "--streaming", "true",
        "--gradient_accumulation_steps", "2", "--dataloader_num_workers", "1", "--num_train_epochs", "1",
        "--output_dir", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation"]["samples"] == metrics["test"]["samples"] == 300  # each image once, no padding
    assert metrics["data"]["splits"] == {"train": 1197, "validation": 300, "test": 300}
    assert metrics["data"]["dataset"] == "builtin:digits"  # what the shards were written from: compare_runs matches it
    # 1197 // (2 processes x 32) = 18 batches a process; accumulation 2: 9 optimizer steps, the same on both.
    assert metrics["train"]["global_step"] == 9 and metrics["effective_batch_size"] == 128
    assert (out / "checkpoint-9" / "stream_state.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--streaming", "true"], "streaming: true needs train_files"),
        (["--streaming", "true", "--validation_files", "v-*.tar", "--max_train_samples", "5"],
         "max_train_samples: it needs random access"),
        (["--streaming", "true", "--validation_files", "v-*.tar", "--verify_images", "true"],
         "verify_images: it needs random access"),
        (["--streaming", "true"], "without validation_files, validation would be carved"),
    ],
)  # fmt: skip
def test_keys_that_need_random_access_are_refused_for_a_stream(tmp_path, args, message):
    from vitrecipes.config import parse_recipe

    train = [] if message.startswith("streaming: true needs") else ["--train_files", "t-*.tar"]
    with pytest.raises(RecipeError, match=message):
        parse_recipe(["recipes/smoke.yaml", *train, *args, "--output_dir", str(tmp_path / "out")])


def test_train_files_on_the_command_line_take_over_from_the_recipes_dataset(tmp_path):
    from vitrecipes.config import parse_recipe

    shards = _digits_shards(tmp_path / "shards")
    files = ["--train_files", str(shards / "train-*.tar"), "--validation_files", str(shards / "validation-*.tar")]
    _, data_args, training_args, _ = parse_recipe(["recipes/smoke.yaml", *files])
    assert data_args.dataset_name == str(shards)  # what the card and metrics name: the shards' folder
    assert "train_files (command line) take over from the recipe's dataset_name builtin:digits" in " ".join(
        training_args.gpu_settings_switched_off
    )
    recipe = tmp_path / "both.yaml"
    recipe.write_text(f"dataset_name: builtin:digits\ntrain_files: [{shards / 'train-*.tar'}]\n")
    with pytest.raises(RecipeError, match="sets both dataset_name and train_files"):
        parse_recipe([str(recipe)])
