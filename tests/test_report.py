"""The evaluation report: its numbers agree with an independent recomputation, its pictures are readable.

Datasets are real imagefolders loaded and transformed as a run does; logits are either made by hand
(to plant known mistakes) or come from a real, tiny ViT through `evaluate_splits`.
"""

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from helpers import write_imagefolder
from PIL import Image
from transformers import TrainingArguments, ViTImageProcessor

from vitrecipes.bad_images import BadImageLog
from vitrecipes.config import DataArguments, ModelArguments
from vitrecipes.data import attach_transforms, load_splits
from vitrecipes.modeling import build_model
from vitrecipes.report import SplitPredictions, compute_report_metrics, write_report
from vitrecipes.training import build_trainer, evaluate_splits
from vitrecipes.transforms import Preprocessing

SNACK_NAMES = [
    "apple", "banana", "cake", "candy", "carrot", "cookie", "doughnut", "grape", "hot dog", "ice cream",
    "juice", "muffin", "orange", "pineapple", "popcorn", "pretzel", "salad", "strawberry", "waffle", "watermelon",
]  # fmt: skip
HOT_DOG_YELLOW = (235, 205, 20)
APPLE_CYAN = (20, 200, 225)
# Every other class gets a dull grey-blue, far from the two colours the mistakes test looks for.
SNACK_COLOURS = {
    name: {"hot dog": HOT_DOG_YELLOW, "apple": APPLE_CYAN}.get(name, (90 + 4 * i, 90 + 2 * i, 140 - 2 * i))
    for i, name in enumerate(SNACK_NAMES)
}


def _splits(root, classes, per_class):
    """A real imagefolder loaded and transformed exactly as a run does it."""
    write_imagefolder(root, {"train": 1, "validation": per_class}, classes=classes)
    data_args = DataArguments(dataset_name=str(root), test_split=None)
    raw = load_splits(data_args)
    prep = Preprocessing.build(ViTImageProcessor(size={"height": 32, "width": 32}), data_args)
    return raw, attach_transforms(raw, prep, data_args, BadImageLog(None))


def _class_names(splits) -> list[str]:
    return splits["train"].features["label"].names


def _planted_logits(labels, names, rng):
    """Mostly right; both hot dogs called pretzel (confidently, hot dog second); one muffin called cake."""
    logits = rng.normal(0.0, 0.3, size=(len(labels), len(names)))
    logits[np.arange(len(labels)), labels] += 4.0
    index = names.index
    for row in np.flatnonzero(labels == index("hot dog")):
        logits[row, index("pretzel")] += 7.0
    muffin = np.flatnonzero(labels == index("muffin"))[0]
    logits[muffin, index("cake")] += 5.5
    return logits


@pytest.fixture(scope="module")
def snack_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("snack-report")
    raw, splits = _splits(root / "snacks", SNACK_COLOURS, per_class=2)
    assert _class_names(splits) == sorted(SNACK_NAMES)
    labels = np.array(list(raw["validation"]["label"]))
    logits = _planted_logits(labels, _class_names(splits), np.random.default_rng(0))
    predictions = SplitPredictions("validation", logits, labels, splits["validation"])
    out = root / "run" / "eval_validation"
    report = write_report(out, predictions, _class_names(splits), "image", checkpoint="outputs/snacks-run")
    return out, report


def test_report_writes_every_file(snack_report):
    out, report = snack_report
    assert report == out / "report.md"
    for name in ("metrics.json", "confusion_matrix.json", "confusion_matrix.png", "mistakes.png", "predictions.npz"):
        assert (out / name).stat().st_size > 0, name


def test_metrics_agree_with_a_recomputation_from_the_saved_predictions(snack_report):
    out, _ = snack_report
    metrics = json.loads((out / "metrics.json").read_text())
    saved = np.load(out / "predictions.npz")
    logits, labels = saved["logits"], saved["labels"]
    predicted = logits.argmax(axis=1)

    assert list(saved["class_names"]) == sorted(SNACK_NAMES)
    assert metrics["split"] == "validation" and metrics["checkpoint"] == "outputs/snacks-run"
    assert metrics["samples"] == len(labels) == 40 and metrics["num_classes"] == 20
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == labels)) == pytest.approx(37 / 40)
    # The hot dogs' true class is their second guess, so top-5 recovers them; the muffin's too.
    assert metrics["top_k"] == 5 and metrics["top_k_accuracy"] == 1.0 > metrics["accuracy"]
    per_class = metrics["per_class"]
    assert list(per_class) == sorted(SNACK_NAMES)
    assert sum(c["support"] for c in per_class.values()) == metrics["samples"]
    assert per_class["hot dog"]["recall"] == 0.0 and per_class["pretzel"]["precision"] == pytest.approx(2 / 4)
    assert per_class["muffin"]["recall"] == pytest.approx(0.5) and per_class["apple"]["f1"] == pytest.approx(1.0)
    assert metrics["macro"]["recall"] == pytest.approx(np.mean([c["recall"] for c in per_class.values()]))
    assert metrics["weighted"]["recall"] == pytest.approx(metrics["accuracy"])  # equal supports: recall = accuracy

    confusion = json.loads((out / "confusion_matrix.json").read_text())
    counts = np.array(confusion["counts"])
    assert confusion["class_names"] == sorted(SNACK_NAMES) and counts.shape == (20, 20)
    expected = np.zeros((20, 20), dtype=int)
    np.add.at(expected, (labels, predicted), 1)
    assert (counts == expected).all()


def test_most_confused_pair_leads_the_list_and_the_page(snack_report):
    out, report = snack_report
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["most_confused"] == [
        {"true": "hot dog", "predicted": "pretzel", "count": 2},
        {"true": "muffin", "predicted": "cake", "count": 1},
    ]
    page = report.read_text()
    assert "![Confusion matrix](confusion_matrix.png)" in page
    assert "![Most confident mistakes](mistakes.png)" in page
    pair_rows = [line for line in page.splitlines() if line.endswith(("| 2 |", "| 1 |")) and line.count("|") == 4]
    assert pair_rows[0] == "| hot dog | pretzel | 2 |"
    assert "| 0.9250 |" in page  # top-1 accuracy, 37 / 40


def test_pictures_are_readable_at_twenty_classes(snack_report):
    out, _ = snack_report
    for name in ("confusion_matrix.png", "mistakes.png"):
        with Image.open(out / name) as image:
            assert min(image.size) >= 400, (name, image.size)


def test_mistakes_grid_shows_the_stored_images_of_the_mistaken_samples(snack_report):
    out, _ = snack_report
    with Image.open(out / "mistakes.png") as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)

    def share_near(colour):
        return np.mean(np.abs(pixels - np.array(colour)).max(axis=-1) < 60)

    # Two hot dog tiles of raw yellow pixels; apples were never mistaken, so their cyan never appears.
    assert share_near(HOT_DOG_YELLOW) > 0.05
    assert share_near(APPLE_CYAN) < 0.001


def test_no_mistakes_gives_a_placeholder_and_says_so(tmp_path):
    raw, splits = _splits(
        tmp_path / "colours", {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}, 3
    )
    labels = np.array(list(raw["validation"]["label"]))
    logits = np.eye(3)[labels] * 5.0
    report = write_report(
        tmp_path / "eval",
        SplitPredictions("validation", logits, labels, splits["validation"]),
        _class_names(splits),
        "image",
        "ckpt",
    )

    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["accuracy"] == 1.0 and metrics["top_k"] == 3 and metrics["most_confused"] == []
    page = report.read_text()
    assert "No mistakes on this split" in page and "every sample was classified correctly" in page
    with Image.open(tmp_path / "eval" / "mistakes.png") as image:
        assert image.size[0] > 100


def test_two_classes_get_top_k_two():
    logits = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    _, metrics = compute_report_metrics(logits, np.array([0, 1, 1, 0]), ["cat", "dog"])
    assert metrics["accuracy"] == 0.5 and metrics["top_k"] == 2 and metrics["top_k_accuracy"] == 1.0


def test_curves_of_a_run_evaluated_only_at_the_end_show_that_evaluation(tmp_path, monkeypatch):
    """eval_strategy "no" (as config_cpu.yaml): the accuracy panel holds the final evaluation, not nothing."""
    import run_snacks
    from vitrecipes import report

    plot_curves, drawn, histories = report.plot_curves, [], []

    def record(log_history, *args):  # the real plot_curves draws; its figures are kept to read back
        histories.append(log_history)
        drawn.append(plot_curves(log_history, *args))
        return drawn[-1]

    monkeypatch.setattr(report, "plot_curves", record)
    metrics = run_snacks.main(["recipes/smoke.yaml", "--output_dir", str(tmp_path / "out"),
                               "--max_train_samples", "64", "--max_eval_samples", "20", "--num_train_epochs", "1",
                               "--logging_steps", "1", "--eval_strategy", "no", "--load_best_model_at_end", "false",
                               "--save_strategy", "no"])  # fmt: skip
    assert len(drawn) == 2  # the validation and the test report
    last_step, validation = metrics["train"]["global_step"], metrics["validation"]
    for figure in drawn:
        losses, accuracy = figure.axes
        assert [line.get_xydata().tolist() for line in accuracy.lines] == [[[last_step, validation["accuracy"]]]]
        assert [[last_step, validation["loss"]]] in [line.get_xydata().tolist() for line in losses.lines]
    # With no validation at all, the panel says why it is empty.
    (text,) = plot_curves(histories[0]).axes[1].texts
    assert text.get_text() == "no evaluation during training"


def _evaluate(folder, tiny_checkpoint, tmp_path, **data):
    """A real, tiny ViT evaluated through `evaluate_splits`, on the run's own transforms."""
    data_args = DataArguments(dataset_name=str(folder), **data)
    processor = ViTImageProcessor.from_pretrained(tiny_checkpoint)
    prep = Preprocessing.build(processor, data_args)
    splits = attach_transforms(load_splits(data_args), prep, data_args, BadImageLog(None))
    model = build_model(ModelArguments(model_name_or_path=str(tiny_checkpoint)), _class_names(splits))
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        do_train=False,
        use_cpu=True,
        report_to="none",
        per_device_eval_batch_size=4,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    return splits, *evaluate_splits(build_trainer(model, processor, args, splits, prep), splits)


def test_an_unreadable_image_leaves_the_rows_and_the_predictions_paired(tmp_path, imagefolder, tiny_checkpoint):
    """write_report trusts this pairing (it no longer re-checks it): the mistakes grid shows each prediction's image."""
    red = imagefolder / "validation" / "red"
    (red / "truncated.png").write_bytes((red / "0.png").read_bytes()[:60])
    splits, split_metrics, predictions = _evaluate(imagefolder, tiny_checkpoint, tmp_path, max_bad_images=1)
    validation = predictions["validation"]
    assert split_metrics["validation"]["unreadable_images"] == 1 and len(validation.labels) == 9
    rows = validation.dataset.with_format(None).cast_column("image", datasets.Image(decode=False))
    assert rows["label"] == validation.labels.tolist()
    assert "truncated.png" not in {Path(image["path"]).name for image in rows["image"]}


def test_report_from_a_real_model_evaluation(tmp_path, imagefolder, tiny_checkpoint):
    """The predictions `evaluate_splits` returns (transform attached) are what the report consumes."""
    splits, split_metrics, predictions = _evaluate(imagefolder, tiny_checkpoint, tmp_path)

    for split in ("validation", "test"):
        out = tmp_path / "run" / f"eval_{split}"
        write_report(out, predictions[split], _class_names(splits), "image", str(tiny_checkpoint))
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["accuracy"] == pytest.approx(split_metrics[split]["accuracy"])
        assert metrics["samples"] == split_metrics[split]["samples"] == 9
        assert metrics["top_k"] == 3 and metrics["top_k_accuracy"] >= metrics["accuracy"]
        with Image.open(out / "mistakes.png") as image:
            image.verify()
