"""Loading the splits: Hub ids, local imagefolders, save_to_disk folders and the built-in digits.

`load_splits` returns a DatasetDict ("train", "validation" and, when there is one, "test") with a
`ClassLabel` label column and an undecoded image column; decoding happens lazily in `transforms.py`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import datasets
from datasets import ClassLabel, Dataset, DatasetDict

from .bad_images import BadImageLog, readable
from .config import DataArguments
from .errors import RecipeError, hub_unreachable

logger = logging.getLogger(__name__)

BUILTIN_DIGITS = "builtin:digits"
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# The Hub's automatic Parquet export, tried when the main branch does not load: e.g. it holds a loading
# script, which datasets 4 and later refuse to run (Matthijs/snacks is such a dataset).
PARQUET_REVISION = "refs/convert/parquet"


def cache_root() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "vitrecipes"
    return Path(os.environ.get("VITRECIPES_CACHE") or default)


def builtin_digits(image_size: int = 32) -> DatasetDict:
    """scikit-learn's bundled 8x8 digits as grayscale PNGs, in fixed stratified splits (1197 / 300 / 300)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

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


def _is_saved_to_disk(path: Path) -> bool:
    return (path / "dataset_dict.json").exists() or (path / "state.json").exists()


def load_raw_dataset(data_args: DataArguments) -> DatasetDict:
    """Load whatever `dataset_name` points at, as a DatasetDict keyed by split name."""
    name = data_args.dataset_name
    if name == BUILTIN_DIGITS:
        return builtin_digits()
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise RecipeError(
                f"dataset_name: {path} is a file. Give a folder: an imagefolder (<split>/<class>/<image>) "
                "or a folder written by Dataset.save_to_disk."
            )
        if _is_saved_to_disk(path):
            loaded = datasets.load_from_disk(str(path))
            return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
        return _load_imagefolder(path)
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
        raise RecipeError(
            f"dataset_name: the folder {name} does not exist. Check the path, or give a Hub id such as "
            "'Matthijs/snacks'."
        )
    return _load_from_hub(data_args)


def _load_imagefolder(path: Path) -> DatasetDict:
    from PIL import Image

    # Checked first: the builder fails on a folder without images with an error that depends on what else is there.
    extensions = Image.registered_extensions()
    if not any(file.suffix.lower() in extensions for file in path.rglob("*")):
        raise RecipeError(
            f"dataset_name: the folder {path} holds no image files. Lay it out as an imagefolder, "
            "<split>/<class name>/<image> (e.g. train/cat/1.jpg and validation/cat/2.jpg; validation/ and test/ "
            "are optional), or give a folder written by save_to_disk."
        )
    return datasets.load_dataset("imagefolder", data_dir=str(path))


def _load_from_hub(data_args: DataArguments) -> DatasetDict:
    name, config = data_args.dataset_name, data_args.dataset_config_name
    try:
        return datasets.load_dataset(name, name=config, revision=data_args.dataset_revision)
    except Exception as error:  # noqa: BLE001 - the Parquet export is tried next, then one message for both
        first_error = message = error
    if data_args.dataset_revision is None:
        try:
            loaded = datasets.load_dataset(name, name=config, revision=PARQUET_REVISION)
        except Exception as error:  # noqa: BLE001
            message = f"{first_error} Then the Parquet export (revision {PARQUET_REVISION}) failed too: {error}"
        else:
            logger.warning(
                "%s did not load (%s); loaded its Parquet export, revision %s.", name, first_error, PARQUET_REVISION
            )
            return loaded
    hint = hub_unreachable("The Hub may be unreachable, or the id may be misspelt")
    raise RecipeError(
        f"Could not load dataset '{name}' from the Hugging Face Hub. {hint}. To use a local copy, set "
        "dataset_name to a folder: an imagefolder laid out as <split>/<class name>/<image> (e.g. "
        "../shared/data/snacks) or a folder written by save_to_disk. Cause: "
        f"{type(first_error).__name__}: {message}"
    ) from None


def _check_columns(split_name: str, dataset: Dataset, data_args: DataArguments) -> None:
    for key in ("image_column_name", "label_column_name"):
        column = getattr(data_args, key)
        if column not in dataset.column_names:
            raise RecipeError(
                f"{key}: column '{column}' is not in the '{split_name}' split of {data_args.dataset_name}. "
                f"Its columns are: {', '.join(dataset.column_names)}. Set {key} in the recipe."
            )


def _encode_labels(raw: DatasetDict, data_args: DataArguments) -> DatasetDict:
    """Every split's labels cast to one ClassLabel; the classes that no train image has are named."""
    label, train_split = data_args.label_column_name, data_args.train_split
    train_feature = feature = raw[train_split].features[label]
    for split_name, dataset in raw.items():
        if getattr(dataset.features[label], "names", None) != getattr(train_feature, "names", None):
            raise RecipeError(
                f"The '{split_name}' split's labels are {dataset.features[label]}, but train's are {train_feature}. "
                "All splits must share one class list."
            )
    if not isinstance(feature, ClassLabel):
        # The labels of every split, so that one that train lacks is named below rather than failing the cast.
        values = set().union(*(dataset.unique(label) for dataset in raw.values()))
        if all(isinstance(v, str) for v in values):
            feature = ClassLabel(names=sorted(values))
        elif all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            feature = ClassLabel(num_classes=max(values) + 1)
        else:
            raise RecipeError(
                f"label_column_name: column '{label}' holds {train_feature}, which is not a label. Use a column of "
                "ClassLabel, strings or non-negative integers."
            )
        raw = raw.cast_column(label, feature)
    in_train = set(raw[train_split].unique(label))
    missing: dict[str, list[str]] = {}
    for split_name, dataset in raw.items():
        for index in sorted(set(dataset.unique(label)) - in_train):
            if index >= 0:  # -1: ClassLabel's "no label"
                missing.setdefault(feature.names[index], []).append(split_name)
    if missing:
        # The imagefolder builder takes its class list from every split: a folder only in validation/ would be a class.
        listed = ", ".join(f"'{name}' (in {', '.join(splits)})" for name, splits in sorted(missing.items()))
        raise RecipeError(
            f"{data_args.dataset_name}: the classes {listed} have no train images (split '{train_split}'), so the "
            "model would get classes it never learns. Add their images to train, or remove them from those splits."
        )
    return raw


def _warn_empty_class_folders(train: Dataset, image_column: str) -> None:
    """An imagefolder's train class folder without images is not a class at all: say so, by folder."""
    class_folders = {Path(value["path"]).parent for value in train[image_column] if value.get("path")}
    for split_folder in {folder.parent for folder in class_folders}:
        for folder in sorted(split_folder.iterdir()):
            if folder.is_dir() and folder not in class_folders and not folder.name.startswith("."):
                logger.warning(
                    "%s holds no images, so it is not a class of the model. Add images to it or remove it.", folder
                )


def load_splits(data_args: DataArguments, seed: int = 42) -> DatasetDict:
    raw = load_raw_dataset(data_args)
    if data_args.train_split not in raw:
        raise RecipeError(
            f"train_split: {data_args.dataset_name} has no split '{data_args.train_split}'. "
            f"Its splits are: {', '.join(raw)}. Set train_split in the recipe."
        )
    for split_name, dataset in raw.items():
        _check_columns(split_name, dataset, data_args)
    # Images are decoded in the lazy transform, which logs an unreadable file instead of failing the batch.
    image = data_args.image_column_name
    if isinstance(raw[data_args.train_split].features[image], datasets.Image):
        raw = raw.cast_column(image, datasets.Image(decode=False))
    raw = _encode_labels(raw, data_args)
    folder = Path(data_args.dataset_name).expanduser()
    if folder.is_dir() and not _is_saved_to_disk(folder):
        _warn_empty_class_folders(raw[data_args.train_split], image)

    splits = DatasetDict(train=raw[data_args.train_split])
    if data_args.validation_split in raw:
        splits["validation"] = raw[data_args.validation_split]
    else:
        logger.warning(
            "No '%s' split in %s: holding out %.0f%% of train (stratified, seed %d) for validation.",
            data_args.validation_split,
            data_args.dataset_name,
            100 * data_args.validation_split_size,
            seed,
        )
        parts = splits["train"].train_test_split(
            test_size=data_args.validation_split_size, stratify_by_column=data_args.label_column_name, seed=seed
        )
        splits["train"], splits["validation"] = parts["train"], parts["test"]
    if data_args.test_split in raw:
        splits["test"] = raw[data_args.test_split]
    else:
        logger.warning(
            "No test split ('%s') in %s: the test step will be skipped.", data_args.test_split, data_args.dataset_name
        )
    for name in list(splits):
        limit = data_args.max_train_samples if name == "train" else data_args.max_eval_samples
        if limit is not None and limit < len(splits[name]):
            splits[name] = splits[name].shuffle(seed=seed).select(range(limit))
    return splits


def class_names(splits: DatasetDict, data_args: DataArguments) -> list[str]:
    return splits["train"].features[data_args.label_column_name].names


def drop_unreadable(splits: DatasetDict, data_args: DataArguments, bad_images: BadImageLog, fresh: bool) -> DatasetDict:
    """`verify_images`: decode every image once, record and leave out the ones that fail. Inside `main_process_first`
    the main process decodes afresh (`fresh`); the datasets cache hands its result to the others."""
    kept = {}
    for name, dataset in splits.items():
        kept[name] = dataset.filter(
            readable,
            input_columns=data_args.image_column_name,
            fn_kwargs={"split": name, "log": bad_images.path, "max_pixels": data_args.max_image_pixels},
            num_proc=min(os.cpu_count() or 1, len(dataset)),
            load_from_cache_file=not fresh,
            desc=f"verify_images: decoding {name}",
        )
        if len(kept[name]) < len(dataset):
            logger.warning(
                "verify_images: %d unreadable image(s) left out of %s:\n  %s",
                len(dataset) - len(kept[name]),
                name,
                "\n  ".join(f"{file}  ({cause})" for file, cause in bad_images.read().get(name, {}).items()),
            )
        else:
            logger.info("verify_images: all %d images of %s decode.", len(dataset), name)
    return DatasetDict(kept)
