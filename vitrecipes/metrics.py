"""Accuracy through the `evaluate` library, built locally so that it works with no network.

`evaluate.load("accuracy")` downloads a metric script from the Hub; this module defines the same
metric as an `evaluate.Metric` subclass, so runs are identical online and offline.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np


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
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        return {"accuracy": float((predictions == references).mean()) if len(references) else 0.0}


def load_accuracy() -> evaluate.Metric:
    # In memory: with several processes, evaluate's on-disk cache files would collide.
    return Accuracy(keep_in_memory=True)


def mean_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Cross-entropy averaged over images (no label smoothing).

    Trainer's own eval loss is a mean of batch means, so it shifts slightly with the batch layout
    (and with the number of processes); this one depends only on the images and the weights.
    """
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean()) if len(labels) else 0.0


def compute_metrics(eval_prediction) -> dict[str, float]:
    """`Trainer.compute_metrics`: logits of shape (n, classes) and labels of shape (n,)."""
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    keep = labels != -100  # unreadable images (see transforms.IGNORE_INDEX)
    logits, labels = logits[keep], labels[keep]
    metrics = load_accuracy().compute(predictions=np.argmax(logits, axis=-1), references=labels)
    metrics["cross_entropy"] = mean_cross_entropy(logits, labels)
    return metrics
