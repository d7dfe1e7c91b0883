"""Loading the splits: Hub ids, local imagefolders, save_to_disk folders and the built-in digits.

`load_splits` returns the train / validation / (test) splits with a `ClassLabel` label column and
an undecoded image column; decoding happens lazily in `transforms.py`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets import ClassLabel, Dataset, DatasetDict

from .bad_images import BadImageLog, find_unreadable
from .config import DataArguments
from .errors import RecipeError, hub_unreachable
from .images import describe

logger = logging.getLogger(__name__)

BUILTIN_DIGITS = "builtin:digits"
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# The Hub's automatic Parquet export: used when a dataset's main branch holds a loading script,
# which datasets 4 and later refuse to run (Matthijs/snacks is such a dataset).
PARQUET_REVISION = "refs/convert/parquet"


@dataclass
class Splits:
    train: Dataset
    validation: Dataset
    test: Dataset | None
    class_names: list[str]

    def items(self):
        """(split name, dataset) for the splits that exist, in train / validation / test order."""
        pairs = [("train", self.train), ("validation", self.validation), ("test", self.test)]
        return [(name, ds) for name, ds in pairs if ds is not None]


def cache_root() -> Path:
    base = os.environ.get("VITRECIPES_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "vitrecipes"
    )
    return Path(base)


def materialize_digits(root: Path | None = None, image_size: int = 32) -> Path:
    """Write scikit-learn's bundled 8x8 digits as an imagefolder of grayscale PNGs; return its path.

    Splits are stratified and fixed (train 1197 / validation 300 / test 300). The folder is
    written once and reused; concurrent writers (several processes) are safe.
    """
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    target = (root or cache_root()) / f"digits-{image_size}px-v1"
    if (target / "COMPLETE").exists():
        return target
    digits = load_digits()
    indices = np.arange(len(digits.target))
    rest, test = train_test_split(indices, test_size=300, stratify=digits.target, random_state=0)
    train, validation = train_test_split(rest, test_size=300, stratify=digits.target[rest], random_state=0)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".digits-", dir=target.parent))
    for split, split_indices in (("train", train), ("validation", validation), ("test", test)):
        for i in split_indices:
            folder = staging / split / DIGIT_NAMES[digits.target[i]]
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
            image = Image.fromarray(pixels, mode="L").resize((image_size, image_size), Image.BILINEAR)
            image.save(folder / f"{i:04d}.png")
    (staging / "COMPLETE").touch()
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _is_saved_to_disk(path: Path) -> bool:
    return (path / "dataset_dict.json").exists() or (path / "state.json").exists()


def load_raw_dataset(data_args: DataArguments) -> DatasetDict:
    """Load whatever `dataset_name` points at, as a DatasetDict keyed by split name."""
    name = data_args.dataset_name
    if name == BUILTIN_DIGITS:
        return datasets.load_dataset("imagefolder", data_dir=str(materialize_digits()))
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
    name = data_args.dataset_name
    kwargs = {"name": data_args.dataset_config_name, "revision": data_args.dataset_revision}
    try:
        return datasets.load_dataset(name, **kwargs)
    except Exception as error:  # noqa: BLE001 - each failure below gets its own advice
        first_error = error
    message = str(first_error)
    if "script" in message.lower() and data_args.dataset_revision is None:
        logger.warning(
            "%s ships a loading script, which this datasets version refuses; loading its Parquet export "
            "(revision %s) instead.",
            name,
            PARQUET_REVISION,
        )
        try:
            return datasets.load_dataset(name, name=data_args.dataset_config_name, revision=PARQUET_REVISION)
        except Exception as error:  # noqa: BLE001
            message = f"{message} Then the Parquet export failed too: {error}"
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


def _class_names(train: Dataset, label_column: str) -> list[str]:
    feature = train.features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = train.unique(label_column)
    if all(isinstance(v, str) for v in values):
        return sorted(values)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return [str(i) for i in range(max(values) + 1)]
    raise RecipeError(
        f"label_column_name: column '{label_column}' holds {feature}, which is not a label. Use a column of "
        "ClassLabel, strings or integers."
    )


def _as_class_label(split_name: str, dataset: Dataset, column: str, names: list[str]) -> Dataset:
    feature = dataset.features[column]
    if isinstance(feature, ClassLabel):
        if list(feature.names) != names:
            raise RecipeError(
                f"The '{split_name}' split names its classes {feature.names}, but train names them {names}. "
                "All splits must share one class list."
            )
        return dataset
    values = dataset.unique(column)
    if feature.dtype in ("string", "large_string"):
        unknown = sorted(set(values) - set(names))
    else:
        unknown = sorted(v for v in values if not 0 <= v < len(names))
    if unknown:
        raise RecipeError(
            f"The '{split_name}' split has labels {unknown[:10]} in column '{column}' that the train split "
            f"does not have (train classes: {names[:25]}). Fix the labels or add those classes to train."
        )
    return dataset.cast_column(column, ClassLabel(names=names))


def _check_train_has_every_class(found: dict[str, Dataset], data_args: DataArguments, names: list[str]) -> None:
    """Name the classes that other splits have and train does not: the imagefolder builder takes its class
    list from every split, so a folder only in validation/ or test/ would become a class never trained on."""
    label, train_split = data_args.label_column_name, data_args.train_split
    in_train = set(found[train_split].unique(label))
    missing: dict[str, list[str]] = {}
    for split_name, dataset in found.items():
        for index in sorted(set(dataset.unique(label)) - in_train):
            if index >= 0:  # -1: ClassLabel's "no label"
                missing.setdefault(names[index], []).append(split_name)
    if missing:
        listed = ", ".join(f"'{name}' (in {', '.join(splits)})" for name, splits in sorted(missing.items()))
        raise RecipeError(
            f"{data_args.dataset_name}: the classes {listed} have no train images (split '{train_split}'), so the "
            "model would get classes it never learns. Add their images to train, or remove them from those splits."
        )


def _warn_empty_class_folders(train: Dataset, image_column: str) -> None:
    """An imagefolder's train class folder without images is not a class at all: say so, by folder."""
    class_folders = {Path(value["path"]).parent for value in train[image_column] if value.get("path")}
    for split_folder in {folder.parent for folder in class_folders}:
        for folder in sorted(split_folder.iterdir()):
            if folder.is_dir() and folder not in class_folders and not folder.name.startswith("."):
                logger.warning(
                    "%s holds no images, so it is not a class of the model. Add images to it or remove it.", folder
                )


def _limit(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    if limit is None or limit >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(limit))


def load_splits(data_args: DataArguments, seed: int = 42) -> Splits:
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
    label = data_args.label_column_name
    names = _class_names(raw[data_args.train_split], label)
    found = {k: _as_class_label(k, v, label, names) for k, v in raw.items()}
    _check_train_has_every_class(found, data_args, names)
    folder = Path(data_args.dataset_name).expanduser()
    if folder.is_dir() and not _is_saved_to_disk(folder):
        _warn_empty_class_folders(raw[data_args.train_split], image)
    train = found[data_args.train_split]

    validation = found.get(data_args.validation_split)
    if validation is None:
        logger.warning(
            "No '%s' split in %s: holding out %.0f%% of train (stratified, seed %d) for validation.",
            data_args.validation_split,
            data_args.dataset_name,
            100 * data_args.validation_split_size,
            seed,
        )
        parts = train.train_test_split(test_size=data_args.validation_split_size, stratify_by_column=label, seed=seed)
        train, validation = parts["train"], parts["test"]

    test = found.get(data_args.test_split) if data_args.test_split else None
    if test is None:
        logger.warning(
            "No test split ('%s') in %s: the test step will be skipped.", data_args.test_split, data_args.dataset_name
        )

    return Splits(
        train=_limit(train, data_args.max_train_samples, seed),
        validation=_limit(validation, data_args.max_eval_samples, seed),
        test=_limit(test, data_args.max_eval_samples, seed) if test is not None else None,
        class_names=names,
    )


def drop_unreadable(
    splits: Splits, image_column: str, bad_images: BadImageLog, max_pixels: int | None, decode: bool = True
) -> Splits:
    """`verify_images`: decode every image once, record and leave out the ones that fail.

    With `decode=False` (the other processes of a multi-process run, after the main one), the images
    are not decoded again: the ones the main process recorded in the shared log are left out.
    """
    kept, recorded = {}, bad_images.read()
    for name, dataset in splits.items():
        if decode:
            bad = find_unreadable(dataset[image_column], max_pixels)
            for _, file, cause in bad:
                bad_images.record(name, file, f"left out by verify_images: {cause}", enforce_limit=False)
        else:
            known = recorded.get(name, {})
            bad = [(i, f, known[f]) for i, f in enumerate(map(describe, dataset[image_column])) if f in known]
        if bad:
            logger.warning(
                "verify_images: %d unreadable image(s) left out of %s:\n  %s",
                len(bad),
                name,
                "\n  ".join(f"{file}  ({cause})" for _, file, cause in bad),
            )
            drop = {index for index, _, _ in bad}
            dataset = dataset.select([i for i in range(len(dataset)) if i not in drop])
        elif decode:
            logger.info("verify_images: all %d images of %s decode.", len(dataset), name)
        kept[name] = dataset
    return Splits(kept["train"], kept["validation"], kept.get("test"), splits.class_names)
