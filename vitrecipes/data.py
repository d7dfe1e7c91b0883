"""The data of a run: each source kind (the built-in digits, a save_to_disk folder, an imagefolder, a Hub id) is one
function that returns its splits, a DatasetDict with a `ClassLabel` label column and an undecoded image column; the
rest of the pipeline takes them through `load_data`, which checks the splits, carves what is missing and attaches the
lazy preprocessing (`transforms.py`). Every split is map-style (a length and random access): the stratified carving of
validation, `max_*_samples`, `verify_images` and the report's mistakes grid (by index) rely on that."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import datasets
import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .bad_images import BadImageLog, readable
from .config import DataArguments
from .errors import RecipeError, hub_unreachable
from .hub import PARQUET_REVISION, is_hub_id
from .streaming import RowTransform, ShardReader, ShardStream, hub_parquet_urls, local_dataset, open_shards, shard_info

logger = logging.getLogger(__name__)

BUILTIN_DIGITS = "builtin:digits"
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def builtin_digits(image_size: int = 32) -> DatasetDict:
    """scikit-learn's bundled 8x8 digits as grayscale PNGs, in fixed stratified splits (1197 / 300 / 300)."""
    digits = load_digits()
    rest, test = train_test_split(np.arange(len(digits.target)), test_size=300, stratify=digits.target, random_state=0)
    train, validation = train_test_split(rest, test_size=300, stratify=digits.target[rest], random_state=0)
    features = datasets.Features({"image": datasets.Image(), "label": ClassLabel(names=sorted(DIGIT_NAMES))})

    def split(indices) -> Dataset:
        # By class name, then index: the imagefolder order these digits once had, which the smoke numbers follow.
        names = {i: DIGIT_NAMES[digits.target[i]] for i in indices}
        indices = sorted(indices, key=lambda i: (names[i], i))
        pixels = (digits.images[indices] * (255.0 / 16.0)).astype(np.uint8)
        images = [Image.fromarray(p, mode="L").resize((image_size, image_size), Image.BILINEAR) for p in pixels]
        return Dataset.from_dict({"image": images, "label": [names[i] for i in indices]}, features=features)

    return DatasetDict(train=split(train), validation=split(validation), test=split(test))


def load_raw_dataset(data_args: DataArguments) -> DatasetDict:
    """The splits of `dataset_name` (or `train_files`) from the source kind it names."""
    name = data_args.dataset_name
    if data_args.train_files:
        return _load_shards(data_args)
    if name == BUILTIN_DIGITS:
        return builtin_digits()
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():  # written by save_to_disk
            loaded = datasets.load_from_disk(str(path))
            return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
        return _load_imagefolder(path)
    if path.exists() or name.startswith("~") or ("/" in name and not is_hub_id(name)):
        problem = f"{path} is a file" if path.exists() else f"the folder {name} does not exist"
        raise RecipeError(f"dataset_name: {problem}. Check the path: give a folder (an imagefolder, "
                          "<split>/<class>/<image>, or one written by Dataset.save_to_disk) or a "
                          "Hub id such as 'Matthijs/snacks'.")  # fmt: skip
    return _load_from_hub(data_args)


def _load_shards(data_args: DataArguments, streamed: bool = False) -> DatasetDict:
    """Shards of each split read once into local datasets; all but train's where train is `streamed` (`_stream`)."""
    columns = data_args.image_column_name, data_args.label_column_name
    files = {"train": data_args.train_files, "validation": data_args.validation_files, "test": data_args.test_files}
    return DatasetDict({split: local_dataset(open_shards(shard_urls(found, split, data_args), None, *columns))
                        for split, found in files.items()
                        if found and not (streamed and split == "train")})  # fmt: skip


def shard_urls(files: list[str], split: str, data_args: DataArguments) -> list[str]:
    """Globs as they are; a Hub dataset id as the hf:// URLs of its Parquet export of `split`."""
    revision = data_args.dataset_revision or PARQUET_REVISION
    return [url for entry in files for url in (hub_parquet_urls(entry, split, data_args.dataset_config_name or
            "default", revision) if is_hub_id(entry) else [entry])]  # fmt: skip


def _load_imagefolder(path: Path) -> DatasetDict:
    extensions = Image.registered_extensions()
    class_folders = {file.parent for file in path.rglob("*") if file.suffix.lower() in extensions}
    # Checked first: the builder fails on a folder without images with an error that depends on what else is there.
    if not class_folders:
        raise RecipeError(f"dataset_name: the folder {path} holds no image files. Lay it out as an imagefolder, "
                          "<split>/<class name>/<image> (e.g. train/cat/1.jpg and validation/cat/2.jpg; validation/ "
                          "and test/ are optional), or give a folder written by save_to_disk.")  # fmt: skip
    for split_folder in sorted({folder.parent for folder in class_folders}):
        for folder in sorted(split_folder.iterdir()):
            if folder.is_dir() and folder not in class_folders and not folder.name.startswith("."):
                logger.warning("%s holds no images, so it is not a class of the model: add images or remove it", folder)
    return datasets.load_dataset("imagefolder", data_dir=str(path))


def _load_from_hub(data_args: DataArguments) -> DatasetDict:
    name, chosen = data_args.dataset_name, data_args.dataset_revision
    failures = []
    for revision in [chosen] if chosen is not None else [None, PARQUET_REVISION]:
        try:
            loaded = datasets.load_dataset(name, name=data_args.dataset_config_name, revision=revision)
        except Exception as error:  # noqa: BLE001 - the Parquet export is tried next, then one message for both
            failures.append(f"revision {revision or 'main'}: {type(error).__name__}: {error}")
            continue
        if failures:
            logger.warning("%s did not load (%s); loaded its Parquet export, revision %s.", name, failures[0], revision)
        return loaded
    hint = hub_unreachable("The Hub may be unreachable, or the id may be misspelt")
    raise RecipeError(f"Could not load dataset '{name}' from the Hugging Face Hub. {hint}. To use a "
                      "local copy, set dataset_name to a folder: an imagefolder laid out as "
                      "<split>/<class name>/<image> (e.g. ../shared/data/snacks) or a folder written "
                      f"by save_to_disk. Cause: {'; then '.join(failures)}") from None  # fmt: skip


def _encode_labels(raw: DatasetDict, data_args: DataArguments) -> DatasetDict:
    """Every split's labels cast to one ClassLabel; the classes that no train image has are named."""
    label, train_split = data_args.label_column_name, data_args.train_split
    feature = raw[train_split].features[label]
    for split_name, dataset in raw.items():
        if getattr(dataset.features[label], "names", None) != getattr(feature, "names", None):
            raise RecipeError(f"The '{split_name}' split's labels are {dataset.features[label]}, but "
                              f"train's are {feature}. All splits must share one class list.")  # fmt: skip
    if not isinstance(feature, ClassLabel):
        # The labels of every split, so that one that train lacks is named below rather than failing the cast.
        values = set().union(*(dataset.unique(label) for dataset in raw.values()))
        if all(isinstance(v, str) for v in values):
            raw = raw.cast_column(label, ClassLabel(names=sorted(values)))
        elif all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raw = raw.cast_column(label, ClassLabel(num_classes=max(values) + 1))
        else:
            raise RecipeError(f"label_column_name: column '{label}' holds {feature}, which is not a label. "
                              "Use a column of ClassLabel, strings or non-negative integers.")  # fmt: skip
    names, in_train = raw[train_split].features[label].names, set(raw[train_split].unique(label))
    missing: dict[str, list[str]] = {}
    for split_name, dataset in raw.items():
        for index in sorted(set(dataset.unique(label)) - in_train - {-1}):  # -1: ClassLabel's "no label"
            missing.setdefault(names[index], []).append(split_name)
    if missing:
        # The imagefolder builder takes its class list from every split: a folder only in validation/ would be a class.
        listed = ", ".join(f"'{name}' (in {', '.join(splits)})" for name, splits in sorted(missing.items()))
        raise RecipeError(f"{data_args.dataset_name}: the classes {listed} have no train images "
                          f"(split '{train_split}'), so the model would get classes it never learns. "
                          "Add their images to train, or remove them from those splits.")  # fmt: skip
    return raw


def load_splits(data_args: DataArguments, seed: int = 42) -> DatasetDict:
    raw, name = load_raw_dataset(data_args), data_args.dataset_name
    if data_args.train_split not in raw:
        raise RecipeError(f"train_split: {name} has no split '{data_args.train_split}'. Its splits "
                          f"are: {', '.join(raw)}. Set train_split in the recipe.")  # fmt: skip
    for split_name, dataset in raw.items():
        for key in ("image_column_name", "label_column_name"):
            if getattr(data_args, key) not in dataset.column_names:
                raise RecipeError(f"{key}: column '{getattr(data_args, key)}' is not in the '{split_name}' "
                                  f"split of {name}. Its columns are: {', '.join(dataset.column_names)}. "
                                  f"Set {key} in the recipe.")  # fmt: skip
    # Images are decoded in the lazy transform, which logs an unreadable file instead of failing the batch.
    image = data_args.image_column_name
    if isinstance(raw[data_args.train_split].features[image], datasets.Image):
        raw = raw.cast_column(image, datasets.Image(decode=False))
    raw = _encode_labels(raw, data_args)
    splits = DatasetDict(train=raw[data_args.train_split])
    if data_args.validation_split in raw:
        splits["validation"] = raw[data_args.validation_split]
    else:
        held_out = f"{data_args.validation_split_size:.0%} of train (stratified, seed {seed})"
        logger.warning("No '%s' split in %s: holding out %s for validation.", data_args.validation_split, name,
                       held_out)  # fmt: skip
        parts = splits["train"].train_test_split(test_size=data_args.validation_split_size, seed=seed,
                                                 stratify_by_column=data_args.label_column_name)  # fmt: skip
        splits["train"], splits["validation"] = parts["train"], parts["test"]
    if data_args.test_split in raw:
        splits["test"] = raw[data_args.test_split]
    else:
        logger.warning("No test split ('%s') in %s: the test step will be skipped.", data_args.test_split, name)
    for split in list(splits):
        limit = data_args.max_train_samples if split == "train" else data_args.max_eval_samples
        if limit is not None and limit < len(splits[split]):
            splits[split] = splits[split].shuffle(seed=seed).select(range(limit))
    return splits


def class_names(splits: DatasetDict, data_args: DataArguments) -> list[str]:
    return splits["train"].features[data_args.label_column_name].names


def shareable_dataset(name: str, name_for_card: str | None = None) -> str:
    """The dataset as a published file may name it: the card's name, a Hub id or builtin:, else the folder's name."""
    if name_for_card or is_hub_id(name) or name.startswith("builtin:"):
        return name_for_card or name
    return Path(os.path.abspath(os.path.expanduser(name))).name  # never the training machine's path


def drop_unreadable(splits: DatasetDict, data_args: DataArguments, bad_images: BadImageLog, fresh: bool) -> DatasetDict:
    """`verify_images`: decode every image once, record and leave out the ones that fail. Inside `main_process_first`
    the main process decodes afresh (`fresh`); the datasets cache hands its result to the others."""
    kept = {}
    for name, dataset in splits.items():
        kept[name] = dataset.filter(
            readable, input_columns=data_args.image_column_name, num_proc=min(os.cpu_count() or 1, len(dataset)),
            fn_kwargs={"split": name, "log": bad_images.path, "max_pixels": data_args.max_image_pixels},
            load_from_cache_file=not fresh, desc=f"verify_images: decoding {name}",
        )  # fmt: skip
        if left_out := len(dataset) - len(kept[name]):
            listed = "\n  ".join(f"{file}  ({cause})" for file, cause in bad_images.read().get(name, {}).items())
            logger.warning("verify_images: %d unreadable image(s) left out of %s:\n  %s", left_out, name, listed)
        else:
            logger.info("verify_images: all %d images of %s decode.", len(dataset), name)
    return DatasetDict(kept)


@dataclass
class Data:
    splits: dict  # every split with its lazy preprocessing attached (train: a ShardStream where streaming)
    names: list[str]  # the class names, in label order
    probe: Dataset  # the training images through the evaluation transform, each once: the linear probe's input
    probe_key: str  # names exactly those images, for the probe's feature cache
    source: str | None = None  # shards: the dataset make_shards.py wrote them from, as their _info.json names it

    def record(self, data_args: DataArguments) -> dict:
        """metrics.json's `data`: what the run trained and evaluated on, so that runs on other data are not compared.
        Shards count as the dataset they were written from: the split sizes and classes must still match."""
        dataset = shareable_dataset(self.source or data_args.dataset_name, data_args.dataset_name_for_card)
        return {"dataset": dataset, "splits": {name: size(split) for name, split in self.splits.items()},
                "classes": self.names}  # fmt: skip


def load_data(data_args: DataArguments, training_args, prep, eval_prep, bad_images: BadImageLog) -> Data:
    """The run's splits, checked, with `prep` attached to train and `eval_prep` (FixRes: a larger side) to the others.
    The main process loads (and, with verify_images, decodes) first; the others reuse its work. With verify_images,
    the main process of all machines (local=False): each machine's own would read the bad-image log before machine 0
    had written it, and machines would train on different images."""
    if data_args.streaming:
        return _stream(data_args, training_args, prep, eval_prep, bad_images)
    with training_args.main_process_first(local=not data_args.verify_images, desc="loading and checking the data"):
        splits = load_splits(data_args, seed=training_args.seed)
        if data_args.verify_images:
            splits = drop_unreadable(splits, data_args, bad_images, fresh=training_args.process_index == 0)
    names = class_names(splits, data_args)
    logger.info("Data: %s, %d classes; %s", data_args.dataset_name, len(names), sizes(splits))
    transformed = attach_transforms(splits, prep, data_args, bad_images, eval_prep)
    probe = with_preprocessing(splits["train"], "train", False, prep, data_args, bad_images)
    return Data(transformed, names, probe, rows_key(splits["train"]))


def rows_key(dataset: Dataset) -> str:
    """A key that changes with the rows of `dataset` (which files, which labels, in which order)."""
    # Private: datasets' own key of these rows, with no public one (datasets 5.2.0; test_feature_cache_key_*).
    return dataset._fingerprint


def attach_transforms(splits: DatasetDict, prep, data_args, bad_images: BadImageLog, eval_prep=None) -> DatasetDict:
    """Every split with its lazy preprocessing: `prep` for train, `eval_prep` (or `prep`) for the others; and each
    split's limit of unreadable images."""
    transformed = {}
    for name, dataset in splits.items():
        limit = data_args.max_bad_images  # a fraction below 1, else a count
        bad_images.limits[name] = int(limit) if limit >= 1 else int(limit * len(dataset))
        split_prep = prep if name == "train" else eval_prep or prep
        transformed[name] = with_preprocessing(dataset, name, name == "train", split_prep, data_args, bad_images)
    return DatasetDict(transformed)


def with_preprocessing(dataset, split: str, train: bool, prep, data_args, bad_images) -> Dataset:
    """Lazy preprocessing: images are decoded and transformed only when a batch is drawn."""
    columns = data_args.image_column_name, data_args.label_column_name
    return dataset.with_transform(prep.batch_transform(train, *columns, split, bad_images, data_args.max_image_pixels))


def _stream(data_args: DataArguments, training_args, prep, eval_prep, bad_images: BadImageLog) -> Data:
    """A streamed training split: this process's share of the shards, decoded in its DataLoader workers (streaming.py);
    the evaluation splits read once into local datasets, so that every image counts once, as in any other run. The
    probe streams the training shards once. A stream has no random access: config.py refuses what needs it."""
    columns = data_args.image_column_name, data_args.label_column_name
    shards = open_shards(shard_urls(data_args.train_files, "train", data_args), None, *columns)
    with training_args.main_process_first(desc="reading the evaluation shards"):
        local = _load_shards(data_args, streamed=True)
    names = list(shards.classes)
    for split, dataset in local.items():
        if dataset.features[columns[1]].names != names:
            raise RecipeError(f"{split}_files: their classes differ from train_files': write all splits' shards from "
                              "one dataset (make_shards.py does).")  # fmt: skip
    limit = data_args.max_bad_images
    bad_images.limits["train"] = int(limit) if limit >= 1 else int(limit * shards.total)
    transform = partial(prep.batch_transform, image_column="image", label_column="label", split="train",
                        bad_images=bad_images, max_pixels=data_args.max_image_pixels)  # fmt: skip
    args = training_args
    stream = ShardStream(shards, RowTransform(transform(True)), args.per_device_train_batch_size, args.process_index,
                         args.world_size, args.dataloader_num_workers, args.seed, data_args.shuffle_buffer)  # fmt: skip
    splits = {"train": stream, **attach_transforms(local, eval_prep, data_args, bad_images)}
    logger.info("Data: %s streamed, %d classes; %s", data_args.train_files, len(names), sizes(splits))
    source = (shard_info(shards.files[0]) or {}).get("source", {}).get("name") or None
    return Data(splits, names, ShardReader(shards, RowTransform(transform(False))), shards.digest(), source)


def size(split) -> int:
    """The images of a split: all of a stream's shards, not this process's share."""
    return split.shards.total if isinstance(split, ShardStream) else len(split)


def sizes(splits: dict) -> str:
    return ", ".join(f"{name} {size(split)}" for name, split in splits.items())
