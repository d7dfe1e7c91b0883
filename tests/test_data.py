"""Each data source: Hub-style DatasetDict, imagefolder on disk, save_to_disk, built-in digits."""

from collections import Counter

import datasets
import pytest
from helpers import CLASS_COLOURS, class_image, write_imagefolder

from vitrecipes import data as data_module
from vitrecipes.bad_images import BadImageLog
from vitrecipes.config import DataArguments
from vitrecipes.data import DIGIT_NAMES, class_names, drop_unreadable, load_splits
from vitrecipes.errors import RecipeError
from vitrecipes.hub import PARQUET_REVISION
from vitrecipes.images import load_rgb


def test_imagefolder_with_all_splits(imagefolder):
    splits = load_splits(DataArguments(dataset_name=str(imagefolder)))
    assert splits["train"].features["label"].names == sorted(CLASS_COLOURS)
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (24, 9, 9)
    row = splits["train"][0]
    assert load_rgb(row["image"]).mode == "RGB"  # undecoded on purpose; decoding is lazy


def test_missing_validation_is_carved_stratified_and_missing_test_is_skipped(tmp_path, caplog):
    root = write_imagefolder(tmp_path / "trainonly", {"train": 10})
    args = DataArguments(dataset_name=str(root), validation_split_size=0.2)
    splits = load_splits(args, seed=3)
    assert len(splits["validation"]) == 6 and len(splits["train"]) == 24
    assert Counter(splits["validation"]["label"]) == {0: 2, 1: 2, 2: 2}
    assert "test" not in splits
    assert "test step will be skipped" in caplog.text
    again = load_splits(args, seed=3)
    assert again["validation"]["label"] == splits["validation"]["label"]


@pytest.mark.parametrize("dtype", ["string", "large_string"])
def test_save_to_disk_folder_with_string_labels(tmp_path, dtype):
    images = [class_image(c, i) for i, c in enumerate(list(CLASS_COLOURS.values()) * 4)]
    names = list(CLASS_COLOURS) * 4
    features = datasets.Features({"img": datasets.Image(), "kind": datasets.Value(dtype)})
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"img": images, "kind": names}, features=features),
            "validation": datasets.Dataset.from_dict({"img": images[:3], "kind": names[:3]}, features=features),
        }
    )
    dd.save_to_disk(tmp_path / "saved")
    args = DataArguments(dataset_name=str(tmp_path / "saved"), image_column_name="img", label_column_name="kind")
    splits = load_splits(args)
    assert class_names(splits, args) == sorted(CLASS_COLOURS)
    assert isinstance(splits["train"].features["kind"], datasets.ClassLabel)
    first = splits["train"][0]
    assert class_names(splits, args)[first["kind"]] == names[0]
    assert load_rgb(first["img"]).size == images[0].size


def _hub_style_dataset():
    images = [class_image(c, i) for i, c in enumerate(list(CLASS_COLOURS.values()) * 3)]
    labels = datasets.ClassLabel(names=list(CLASS_COLOURS))
    features = datasets.Features({"image": datasets.Image(), "label": labels})
    ids = [i % 3 for i in range(9)]
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict({"image": images, "label": ids}, features=features)
            for split in ("train", "validation", "test")
        }
    )


# datasets 4 and later refuse a loading script (datasets 5.2's words first); any other failure gets the same retry.
@pytest.mark.parametrize("refusal", ["Dataset scripts are no longer supported, but found snacks.py", "unsupported"])
def test_hub_id_with_a_loading_script_falls_back_to_parquet(monkeypatch, caplog, refusal):
    calls = []

    def fake_load_dataset(path, **kwargs):  # the Hub's network is the one thing we cannot reach
        calls.append((path, kwargs.get("revision")))
        if kwargs.get("revision") != PARQUET_REVISION:
            raise RuntimeError(refusal)
        return _hub_style_dataset()

    monkeypatch.setattr(data_module.datasets, "load_dataset", fake_load_dataset)
    splits = load_splits(DataArguments(dataset_name="Matthijs/snacks"))
    assert calls == [("Matthijs/snacks", None), ("Matthijs/snacks", PARQUET_REVISION)]
    assert splits["train"].features["label"].names == list(CLASS_COLOURS) and len(splits["test"]) == 9
    assert "Parquet export" in caplog.text


def test_hub_id_offline_says_how_to_use_a_local_copy():
    with pytest.raises(RecipeError, match=r"(?s)Could not load dataset 'someone/no-such-data'.*HF_HUB_OFFLINE.*local"):
        load_splits(DataArguments(dataset_name="someone/no-such-data"))


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(RecipeError, match=r"the folder .*nowhere does not exist"):
        load_splits(DataArguments(dataset_name=str(tmp_path / "nowhere")))


def test_wrong_column_lists_the_columns(imagefolder):
    with pytest.raises(RecipeError, match=r"image_column_name: column 'picture'.*Its columns are: image, label"):
        load_splits(DataArguments(dataset_name=str(imagefolder), image_column_name="picture"))


def test_missing_train_split_lists_the_splits(imagefolder):
    with pytest.raises(RecipeError, match=r"no split 'training'.*train, validation, test"):
        load_splits(DataArguments(dataset_name=str(imagefolder), train_split="training"))


def test_label_outside_the_train_classes_is_named(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    img = [class_image((1, 2, 3), 0)] * 2
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"image": img, "label": ["a", "b"]}, features=features),
            "validation": datasets.Dataset.from_dict({"image": img, "label": ["a", "zebra"]}, features=features),
        }
    )
    dd.save_to_disk(tmp_path / "d")
    with pytest.raises(RecipeError, match=r"the classes 'zebra' \(in validation\) have no train images"):
        load_splits(DataArguments(dataset_name=str(tmp_path / "d")))


def test_splits_with_different_class_lists_are_refused(tmp_path):
    def split(names):
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
        return datasets.Dataset.from_dict({"image": [class_image((1, 2, 3), 0)], "label": [0]}, features=features)

    datasets.DatasetDict(train=split(["a", "b"]), validation=split(["b", "a"])).save_to_disk(tmp_path / "d")
    with pytest.raises(RecipeError, match=r"'validation' split's labels are .* must share one class list"):
        load_splits(DataArguments(dataset_name=str(tmp_path / "d")))


def test_max_samples_limit_every_split(imagefolder):
    splits = load_splits(DataArguments(dataset_name=str(imagefolder), max_train_samples=5, max_eval_samples=2))
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (5, 2, 2)


def test_builtin_digits_are_pngs_in_fixed_splits():
    splits = load_splits(DataArguments(dataset_name="builtin:digits"))
    assert {name: len(dataset) for name, dataset in splits.items()} == {"train": 1197, "validation": 300, "test": 300}
    assert splits["train"].features["label"].names == sorted(DIGIT_NAMES)
    assert splits["train"][0]["image"]["bytes"].startswith(b"\x89PNG")
    assert load_rgb(splits["test"][0]["image"]).size == (32, 32)


def test_class_only_in_validation_or_test_is_named_not_made_a_class(imagefolder):
    # The imagefolder builder takes its class list from every split; train has no zebra or okapi.
    for split, name in (("validation", "zebra"), ("test", "zebra"), ("test", "okapi")):
        (imagefolder / split / name).mkdir()
        class_image((0, 0, 0), 1).save(imagefolder / split / name / "0.png")
    (imagefolder / "train" / "zebra").mkdir()  # an empty train folder does not give the class images
    named = r"'okapi' \(in test\), 'zebra' \(in validation, test\).*no train images"
    with pytest.raises(RecipeError, match=named) as e:
        load_splits(DataArguments(dataset_name=str(imagefolder)))
    assert "\n" not in str(e.value)


def test_empty_train_class_folder_is_named_in_a_warning(imagefolder, caplog):
    (imagefolder / "train" / "yellow").mkdir()
    splits = load_splits(DataArguments(dataset_name=str(imagefolder)))
    assert splits["train"].features["label"].names == sorted(CLASS_COLOURS)
    assert f"{imagefolder / 'train' / 'yellow'} holds no images" in caplog.text


def test_imagefolder_with_metadata_labels_warns_of_no_empty_class_folder(tmp_path, caplog):
    # Images straight in each split folder, labels in metadata.csv: the split folders are not empty class folders.
    for split in ("train", "validation"):
        (tmp_path / split).mkdir()
        rows = ["file_name,label"]
        for i, (name, colour) in enumerate(CLASS_COLOURS.items()):
            class_image(colour, i).save(tmp_path / split / f"{i}.png")
            rows.append(f"{i}.png,{name}")
        (tmp_path / split / "metadata.csv").write_text("\n".join(rows) + "\n")
    splits = load_splits(DataArguments(dataset_name=str(tmp_path)))
    assert class_names(splits, DataArguments()) == sorted(CLASS_COLOURS)
    assert "holds no images" not in caplog.text


@pytest.mark.parametrize("files", [[], ["notes.txt"], ["train/red/notes.txt"]])
def test_folder_without_images_names_the_folder_and_the_layout(tmp_path, files):
    (tmp_path / "data").mkdir()
    for name in files:
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / name).write_text("not an image")
    with pytest.raises(RecipeError, match=r"dataset_name: the folder .*data holds no image files.*<split>/<class") as e:
        load_splits(DataArguments(dataset_name=str(tmp_path / "data")))
    assert "\n" not in str(e.value)


def test_verify_images_hands_its_result_to_the_other_processes_through_the_cache(imagefolder, tmp_path):
    (imagefolder / "train" / "red" / "0.png").write_bytes(b"<html>404</html>")
    args = DataArguments(dataset_name=str(imagefolder))
    log = BadImageLog(tmp_path / "bad_images.jsonl")
    kept = drop_unreadable(load_splits(args), args, log, fresh=True)  # the main process
    assert len(kept["train"]) == 23 and list(log.read()["train"]) == [str(imagefolder / "train" / "red" / "0.png")]
    again = drop_unreadable(load_splits(args), args, log, fresh=False)  # another: from the cache, no decoding
    assert len(again["train"]) == 23 and len(log.path.read_text().splitlines()) == 1
