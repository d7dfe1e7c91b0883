"""Top-1 accuracy through `evaluate` and the cross-entropy per image, for Trainer and the report alike."""

from __future__ import annotations

import datasets
import evaluate
import numpy as np
from scipy.special import softmax
from sklearn.metrics import accuracy_score, log_loss

from .bad_images import IGNORE_INDEX


class Accuracy(evaluate.Metric):
    # Built here: `evaluate.load("accuracy")` fetches the same few lines from the Hub, so it fails offline.
    def _info(self):
        features = datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")})
        return evaluate.MetricInfo(description="Top-1 accuracy.", citation="", features=features)

    def _compute(self, predictions, references):
        return {"accuracy": float(accuracy_score(references, predictions))}


def scores(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """The class probabilities, the top-1 accuracy and the cross-entropy of (n, classes) logits."""
    probabilities = softmax(logits.astype(np.float64), axis=-1)
    # In memory: with several processes, evaluate's on-disk cache files would collide.
    metrics = Accuracy(keep_in_memory=True).compute(predictions=probabilities.argmax(-1), references=labels)
    # Per image, not Trainer's mean of batch means, which shifts with the batch layout and process count.
    metrics["cross_entropy"] = float(log_loss(labels, probabilities, labels=np.arange(logits.shape[-1])))
    return probabilities, metrics


def compute_metrics(eval_prediction) -> dict[str, float]:
    """`Trainer.compute_metrics`, leaving out the unreadable images."""
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    keep = labels != IGNORE_INDEX
    return scores(logits[keep], labels[keep])[1]
