"""Calibration: the expected calibration error and reliability diagram of a split, and temperature scaling
(recipe key `calibrate_temperature`): one T fitted on the validation logits and folded into the classifier head,
so the saved model, pipeline() and its exports give softmax(logits / T); the predicted classes stay the same."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.calibration import calibration_curve
from torch import nn

from .artifacts import METRICS_FILE
from .errors import RecipeError, cause

logger = logging.getLogger(__name__)

BINS = 15
LOG_T_BOUNDS = (-3.0, 3.0)  # T from 0.05 to 20


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Top-label ECE over 15 equal-width confidence bins (torchmetrics)."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    return float(multiclass_calibration_error(torch.as_tensor(probabilities, dtype=torch.float64),
                                              torch.as_tensor(labels), probabilities.shape[1], BINS))  # fmt: skip


def nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """The mean negative log-likelihood of the labels (natural log)."""
    return float(-log_softmax(logits.astype(np.float64), axis=1)[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the NLL of softmax(logits / T); searched on log T."""
    result = minimize_scalar(lambda log_t: nll(logits / np.exp(log_t), labels), bounds=LOG_T_BOUNDS, method="bounded")
    if min(abs(result.x - bound) for bound in LOG_T_BOUNDS) < 1e-3:
        logger.warning("calibrate_temperature: T = %.3g is at its bound: the validation split (%d images) is too "
                       "small or too well separated to calibrate on, so the probabilities become extreme. Consider "
                       "calibrate_temperature: false.", np.exp(result.x), len(labels))  # fmt: skip
    return float(np.exp(result.x))


def calibration_numbers(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, float]:
    """ECE and NLL of the raw logits and of logits / T."""
    after = logits / temperature
    ece = [expected_calibration_error(softmax(z.astype(np.float64), axis=1), labels) for z in (logits, after)]
    return {"temperature": temperature, "ece_before": ece[0], "ece_after": ece[1], "nll_before": nll(logits, labels),
            "nll_after": nll(after, labels)}  # fmt: skip


def fold_temperature(model: nn.Module, temperature: float) -> None:
    """Divide the classifier head's weight and bias by T: its logits become logits / T."""
    head = getattr(model, "classifier", None)
    if not isinstance(head, nn.Linear):
        raise RecipeError(f"calibrate_temperature: {type(model).__name__} has no single linear `classifier` head to "
                          "fold the temperature into. Set calibrate_temperature: false for this model.")  # fmt: skip
    with torch.no_grad():  # in place, so a sharded (FSDP) head divides each of its shards
        head.weight.div_(temperature)
        if head.bias is not None:
            head.bias.div_(temperature)


def calibrate(model: nn.Module, predictions: dict, split_metrics: dict) -> dict:
    """Fit T on predictions["validation"] and fold it into `model`; each split's logits (SplitPredictions) and
    cross-entropy (`split_metrics`) become the folded model's, in place. Returns T and each split's ECE and NLL
    before and after."""
    validation = predictions["validation"]
    temperature = fit_temperature(validation.logits, validation.labels)
    fold_temperature(model, temperature)
    numbers = {"temperature": temperature, "fitted_on": "validation"}
    for name, split in predictions.items():
        numbers[name] = calibration_numbers(split.logits, split.labels, temperature)
        split.logits = (split.logits / temperature).astype(split.logits.dtype)
        split_metrics[name]["cross_entropy"] = numbers[name]["nll_after"]
    return numbers


def folded_calibration(model_folder, predictions: dict) -> dict | None:
    """For an evaluation-only run: the T that training folded into this model, as its metrics.json records (nothing
    is refitted), and each split's ECE and NLL without it (logits * T) and with it, on the images evaluated now."""
    path = Path(str(model_folder)) / METRICS_FILE
    if not path.is_file():
        return None  # a checkpoint that no run of this project trained
    try:
        temperature = (json.loads(path.read_text(encoding="utf-8")).get("calibration") or {}).get("temperature")
    except (ValueError, AttributeError) as error:
        raise RecipeError(f"{path} cannot be read ({cause(error)}), so whether the model holds "
                          "a folded temperature is unknown. Restore it from a copy, or retrain "
                          "the model (the reports need to know).") from None  # fmt: skip
    if temperature is None:
        return None
    record = {"temperature": temperature, "fitted_on": "validation", "source": f"{METRICS_FILE}: folded in training"}
    for name, split in predictions.items():
        record[name] = calibration_numbers(split.logits.astype(np.float64) * temperature, split.labels, temperature)
    return record


def plot_reliability(probabilities: np.ndarray, labels: np.ndarray, title: str, temperature: float | None = None):
    """Accuracy against confidence per bin (scikit-learn's calibration_curve on the top label), with the share
    of images per bin; with `temperature`, the uncalibrated model's curve too (probabilities ** T, renormalised)."""
    figure = Figure(figsize=(5.5, 5), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    curves = {"this model": probabilities}
    if temperature is not None:  # softmax(z) ** T, renormalised, is softmax(z * T): the logits before folding
        raw = probabilities.astype(np.float64) ** temperature
        curves = {"before": raw / raw.sum(axis=1, keepdims=True), f"after, T = {temperature:.3g}": probabilities}
    for label, probs in curves.items():
        confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
        accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=BINS, strategy="uniform")
        ece = expected_calibration_error(probs, labels)
        axes.plot(mean_confidence, accuracy, "o-", label=f"{label} (ECE {ece:.3f})")
    axes.hist(probabilities.max(axis=1), bins=BINS, range=(0, 1), weights=np.full(len(labels), 1 / len(labels)),
              color="tab:blue", alpha=0.15, label="share of images")  # fmt: skip
    axes.set(xlabel="confidence (top-class probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    axes.set_title(f"Reliability: {title}", fontsize=10)
    axes.legend(loc="upper left", fontsize=8)
    return figure
