"""Calibration: ECE against a second implementation, the temperature fold, and a run with calibrate_temperature."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.special import softmax
from sklearn.metrics import log_loss
from transformers import AutoModelForImageClassification, pipeline

import run_snacks
from vitrecipes.calibration import expected_calibration_error, fit_temperature, fold_temperature, nll
from vitrecipes.config import DataArguments, parse_recipe
from vitrecipes.data import load_splits
from vitrecipes.errors import RecipeError


def _ece_by_hand(probabilities, labels, bins=15):
    """Top-label ECE written out: |accuracy - mean confidence| per equal-width bin, weighted by its share."""
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return sum(abs(correct[which == b].mean() - confidence[which == b].mean()) * (which == b).mean()
               for b in range(bins) if (which == b).any())  # fmt: skip


def test_ece_and_nll_match_a_second_implementation_and_the_fit_finds_the_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 7)) * 3
    # Labels drawn from softmax(logits / 2): the true temperature is 2, so the fit should find about 2.
    labels = np.array([rng.choice(7, p=p) for p in softmax(logits / 2.0, axis=1)])
    probabilities = softmax(logits, axis=1)
    ece = expected_calibration_error(probabilities, labels)
    assert ece == pytest.approx(_ece_by_hand(probabilities, labels), abs=1e-6)  # torchmetrics works in float32
    assert nll(logits, labels) == pytest.approx(log_loss(labels, probabilities, labels=np.arange(7)), rel=1e-6)
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(2.0, rel=0.1)
    calibrated = softmax(logits / temperature, axis=1)
    assert expected_calibration_error(calibrated, labels) < ece / 3


def test_fold_keeps_the_classes_and_gives_softmax_of_logits_over_t(tiny_checkpoint):
    model = AutoModelForImageClassification.from_pretrained(tiny_checkpoint).eval()
    pixels = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        before = model(pixel_values=pixels).logits
        fold_temperature(model, 2.5)
        after = model(pixel_values=pixels).logits
    torch.testing.assert_close(after, before / 2.5)
    assert torch.equal(after.argmax(1), before.argmax(1))
    assert not torch.allclose(after.softmax(1), before.softmax(1))


def _head(folder):
    weights = load_file(folder / "model.safetensors")
    return weights["classifier.weight"], weights["classifier.bias"]


def test_a_run_folds_the_temperature_once_and_reports_it(tmp_path, tiny_dinov2, jpeg_folder):
    out = tmp_path / "out"
    argv = [
        "--model_name_or_path", str(tiny_dinov2), "--dataset_name", str(jpeg_folder), "--output_dir", str(out),
        "--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--learning_rate", "1.0e-3",
        "--load_best_model_at_end", "false", "--use_cpu", "--report_to", "none", "--calibrate_temperature", "true",
    ]  # fmt: skip
    metrics = run_snacks.main(argv)
    calibration = metrics["calibration"]
    temperature = calibration["temperature"]
    assert calibration["fitted_on"] == "validation" and set(calibration) >= {"validation", "test"}
    trained = _head(max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])))
    for saved, before in zip(_head(out), trained, strict=True):  # folded once: weight and bias divided by T
        torch.testing.assert_close(saved * temperature, before)
    report = json.loads((out / "eval_test" / "metrics.json").read_text())
    assert report["calibration"] == calibration["test"]
    assert json.loads((out / "metrics.json").read_text())["calibration"] == calibration
    stored = np.load(out / "eval_test" / "predictions.npz")  # the saved model's logits: calibrated
    probabilities = softmax(stored["logits"].astype(np.float64), axis=1)
    assert report["ece"] == pytest.approx(calibration["test"]["ece_after"], abs=1e-6)
    assert report["ece"] == pytest.approx(expected_calibration_error(probabilities, stored["labels"]), abs=1e-6)
    assert (out / "eval_test" / "reliability_diagram.png").stat().st_size > 0
    assert f"Temperature T = {temperature:.4f}" in (out / "eval_test" / "report.md").read_text()
    assert f"T = {temperature:.4f}" in (out / "README.md").read_text()
    # pipeline() returns the calibrated probabilities, in the order the run evaluated the test images.
    args = DataArguments(dataset_name=str(jpeg_folder))
    paths = [row["path"] for row in load_splits(args)["test"]["image"]]
    classifier = pipeline("image-classification", model=str(out), device="cpu")
    names = [classifier.model.config.id2label[i] for i in range(3)]
    scores = np.array([[{o["label"]: o["score"] for o in r}[n] for n in names] for r in classifier(paths, top_k=3)])
    np.testing.assert_allclose(scores, probabilities, atol=1e-4)

    # A crash between the fold and metrics.json: the rerun resumes from the checkpoint and folds it once, afresh.
    (out / "metrics.json").unlink()
    rerun = run_snacks.main(argv)["calibration"]["temperature"]
    assert rerun == pytest.approx(temperature, rel=1e-4)
    for saved, before in zip(_head(out), trained, strict=True):
        torch.testing.assert_close(saved * rerun, before)
    # A finished run is not rerun: its weights stay as they are.
    weights = (out / "model.safetensors").read_bytes()
    with pytest.raises(RecipeError, match="already holds a finished run"):
        run_snacks.main(argv)
    assert (out / "model.safetensors").read_bytes() == weights


def test_an_evaluation_only_run_keeps_the_folded_temperature_and_refits_nothing(tmp_path, tiny_dinov2, jpeg_folder):
    out = tmp_path / "out"
    run_snacks.main([
        "--model_name_or_path", str(tiny_dinov2), "--dataset_name", str(jpeg_folder), "--output_dir", str(out),
        "--num_train_epochs", "1", "--learning_rate", "1.0e-3", "--use_cpu", "--report_to", "none",
        "--calibrate_temperature", "true",
    ])  # fmt: skip
    trained = json.loads((out / "metrics.json").read_text())
    temperature, weights = trained["calibration"]["temperature"], (out / "model.safetensors").read_bytes()
    # What it ran on, by the folder's name, never the machine's path (metrics.json is published with the model).
    splits = {"train": 30, "validation": 12, "test": 12}
    assert trained["data"] == {"dataset": "jpegs", "splits": splits, "classes": ["blue", "green", "red"]}
    evaluate = [str(out / "resolved_recipe.yaml"), "--do_train", "false"]  # conftest.evaluate_only, in-process
    # Asked on the command line, calibration would silently not happen: refused before any data loads.
    with pytest.raises(RecipeError, match=r"calibrate_temperature: an evaluation-only run .* fits no temperature"):
        parse_recipe([*evaluate, "--calibrate_temperature", "true"])
    # The resolved recipe's calibrate_temperature: true is the record of the training: accepted, nothing refitted.
    reports = {p: p.read_bytes() for p in out.glob("eval_*/*") if p.is_file()}
    evaluated = run_snacks.main(evaluate)
    assert (out / "model.safetensors").read_bytes() == weights
    assert {p: p.read_bytes() for p in reports} == reports  # the training run's reports are kept as they were
    assert evaluated["calibration"]["temperature"] == temperature  # read from metrics.json, not fitted again
    assert json.loads((out / "eval_only_metrics.json").read_text())["calibration"] == evaluated["calibration"]
    for split in ("validation", "test"):
        assert evaluated[split]["accuracy"] == trained[split]["accuracy"]
        assert evaluated[split]["cross_entropy"] == pytest.approx(trained[split]["cross_entropy"], rel=1e-4)
        # The same images: the numbers without and with T are those training reported.
        assert evaluated["calibration"][split] == pytest.approx(trained["calibration"][split], rel=1e-4)
        report = json.loads((out / f"eval_only_{split}" / "metrics.json").read_text())
        assert report["calibration"] == evaluated["calibration"][split]
        assert f"Temperature T = {temperature:.4f}" in (out / f"eval_only_{split}" / "report.md").read_text()
    # A metrics.json that cannot be read leaves it unknown whether the model holds a T: refused, naming the file.
    (out / "metrics.json").write_text('{"calibration": {"temper')
    with pytest.raises(RecipeError, match=rf"{out / 'metrics.json'} cannot be read .* folded temperature"):
        run_snacks.main(evaluate)
