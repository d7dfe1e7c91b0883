"""Accuracy through the `evaluate` library, built locally so that it works with no network.

`evaluate.load("accuracy")` downloads a metric script from the Hub; this module defines the same
metric as an `evaluate.Metric` subclass, so runs are identical online and offline.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np
from scipy.special import softmax
from sklearn.metrics import accuracy_score, log_loss

from .bad_images import IGNORE_INDEX


class Accuracy(evaluate.Metric):
    """Fraction of predictions equal to the references (top-1 accuracy)."""

    def _info(self):
        return evaluate.MetricInfo(
            description="Top-1 accuracy: the fraction of predictions that equal the reference label.",
            citation="",
            inputs_description="predictions and references: lists of integer class ids.",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return {"accuracy": float(accuracy_score(references, predictions)) if len(references) else 0.0}


def load_accuracy() -> evaluate.Metric:
    # In memory: with several processes, evaluate's on-disk cache files would collide.
    return Accuracy(keep_in_memory=True)


def compute_metrics(eval_prediction) -> dict[str, float]:
    """`Trainer.compute_metrics`: logits of shape (n, classes) and labels of shape (n,)."""
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    keep = labels != IGNORE_INDEX  # unreadable images
    logits, labels = logits[keep], labels[keep]
    metrics = load_accuracy().compute(predictions=np.argmax(logits, axis=-1), references=labels)
    # Per image, not Trainer's mean of batch means, which shifts with the batch layout and process count.
    probabilities = softmax(logits.astype(np.float64), axis=-1)
    metrics["cross_entropy"] = float(log_loss(labels, probabilities, labels=np.arange(logits.shape[-1])))
    return metrics
