"""A per-split evaluation report: metrics, confusion matrix, most confident mistakes and a Markdown page.

Everything is computed from the logits the final evaluation already produced, so a report costs no
second pass over the data; only the few images shown as mistakes are decoded again.

    out_dir/
        metrics.json            top-1 / top-k accuracy, macro and weighted P/R/F1, per-class P/R/F1/support
        confusion_matrix.json   raw counts (rows: true class, columns: predicted class) and the class names
        confusion_matrix.png    row-normalised colours, counts written in the non-zero cells
        mistakes.png            the most confident wrong predictions (a placeholder tile when there are none)
        curves.png              training loss, validation loss and accuracy against step (runs that trained)
        predictions.npz         logits, labels and class names, to recompute any of the above later
        report.md               a page that shows all of it
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from matplotlib.figure import Figure  # a bare Figure, no pyplot: no global backend switch, no figures left open
from scipy.special import softmax
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from .images import load_rgb
from .outputs import (
    CONFUSION_JSON,
    CONFUSION_PNG,
    CURVES_PNG,
    METRICS_FILE,
    MISTAKES_PNG,
    PREDICTIONS_FILE,
    REPORT_FILE,
)

REPORT_TEMPLATE = "report_template.md"


@dataclass
class SplitPredictions:
    """One split's logits and labels from the final evaluation, kept so reports need no second pass."""

    split: str
    logits: np.ndarray
    labels: np.ndarray
    dataset: Any  # the split as evaluated (transform attached), in prediction order


TOP_K = 5
MAX_MISTAKES = 16
MAX_CONFUSED_PAIRS = 10
# Beyond this many classes the numbers no longer fit their cells; colours alone still show the pattern.
MAX_ANNOTATED_CLASSES = 40


def write_report(
    out_dir: str | Path,
    predictions: SplitPredictions,
    class_names: Sequence[str],
    image_column: str,
    checkpoint: str,
    log_history: list[dict] | None = None,
    final_validation: dict | None = None,
) -> Path:
    """Write the report for one evaluated split into `out_dir` and return the path of its report.md.

    `log_history`: Trainer's (`trainer.state.log_history`, as in trainer_state.json), for the curves;
    `final_validation`: the final validation metrics, drawn there when nothing was evaluated during training.

    `predictions.dataset` must hold the evaluated rows in prediction order; its transform is
    bypassed so the mistakes grid shows the stored images, not the normalised model inputs.
    """
    logits, labels = _checked_inputs(predictions, class_names, image_column)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [str(name) for name in class_names]

    probabilities = softmax(logits.astype(np.float64), axis=1)
    predicted = probabilities.argmax(axis=1)
    counts = confusion_matrix(labels, predicted, labels=np.arange(len(names)))
    metrics = {
        "split": predictions.split,
        "checkpoint": checkpoint,
        **compute_report_metrics(probabilities, labels, names),
        "most_confused": most_confused_pairs(counts, names),
    }

    _write_json(out / METRICS_FILE, metrics)
    _write_json(
        out / CONFUSION_JSON, {"class_names": names, "rows": "true", "columns": "predicted", "counts": counts.tolist()}
    )
    np.savez_compressed(out / PREDICTIONS_FILE, logits=logits, labels=labels, class_names=np.array(names))
    title = f"{predictions.split} · {_tail(checkpoint, 60)} · n={len(labels)}"
    # "tight" on top of the constrained layout: long rotated class names must never be clipped.
    plot_confusion_matrix(counts, names, title).savefig(out / CONFUSION_PNG, bbox_inches="tight")
    mistakes = most_confident_mistakes(probabilities, labels)
    plot_mistakes(predictions, image_column, mistakes, probabilities, labels, names, title).savefig(out / MISTAKES_PNG)
    curves = plot_curves(log_history, final_validation) if log_history else None
    if curves is not None:
        curves.savefig(out / CURVES_PNG)
    report = out / REPORT_FILE
    markdown = render_markdown(metrics, names, int((predicted != labels).sum()), curves is not None)
    report.write_text(markdown, encoding="utf-8")
    return report


def _checked_inputs(
    predictions: SplitPredictions, class_names: Sequence[str], image_column: str
) -> tuple[np.ndarray, np.ndarray]:
    """Fail loudly, before anything is written, on inputs that would pair the wrong image, label or class name."""
    logits = np.asarray(predictions.logits)
    labels = np.asarray(predictions.labels).astype(np.int64)
    if logits.ndim != 2 or logits.shape[1] != len(class_names):
        raise ValueError(f"logits must have shape (samples, {len(class_names)} classes), got {logits.shape}.")
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must have shape ({logits.shape[0]},) to match the logits, got {labels.shape}.")
    if len(labels) == 0:
        raise ValueError(f"The {predictions.split} split has no samples to report on.")
    if len(predictions.dataset) != len(labels):
        raise ValueError(
            f"The {predictions.split} dataset has {len(predictions.dataset)} rows but there are {len(labels)} "
            "predictions; the mistakes grid would show the wrong images."
        )
    if image_column not in predictions.dataset.column_names:
        raise ValueError(
            f"image column '{image_column}' is not in the {predictions.split} dataset "
            f"(columns: {', '.join(predictions.dataset.column_names)})."
        )
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise ValueError(f"labels must lie in [0, {len(class_names)}), got {labels.min()}..{labels.max()}.")
    return logits, labels


def compute_report_metrics(probabilities: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict:
    """Headline and per-class numbers, all from scikit-learn. A class never predicted gets precision 0."""
    classes = np.arange(len(class_names))
    predicted = probabilities.argmax(axis=1)
    k = min(TOP_K, len(class_names))
    metrics = {
        "samples": int(len(labels)),
        "num_classes": len(class_names),
        "accuracy": float(accuracy_score(labels, predicted)),
        "top_k": k,
        "top_k_accuracy": _top_k_accuracy(probabilities, labels, k),
    }
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, predicted, labels=classes, average=average, zero_division=0
        )
        metrics[average] = {"precision": float(precision), "recall": float(recall), "f1": float(f1)}
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=classes, average=None, zero_division=0
    )
    metrics["per_class"] = {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)
    }
    return metrics


def _top_k_accuracy(probabilities: np.ndarray, labels: np.ndarray, k: int) -> float:
    classes = np.arange(probabilities.shape[1])
    # scikit-learn wants the positive class's score alone when there are two classes.
    scores = probabilities[:, 1] if len(classes) == 2 else probabilities
    with warnings.catch_warnings():
        # k is capped at the number of classes on purpose; its "perfect score" warning would only be noise.
        warnings.filterwarnings("ignore", message=".*will result in a perfect score.*")
        return float(top_k_accuracy_score(labels, scores, k=k, labels=classes))


def most_confused_pairs(counts: np.ndarray, class_names: Sequence[str], limit: int = MAX_CONFUSED_PAIRS) -> list[dict]:
    """Off-diagonal cells of the confusion matrix, largest count first (ties: by class order)."""
    off_diagonal = counts.copy()
    np.fill_diagonal(off_diagonal, 0)
    true_ids, predicted_ids = np.nonzero(off_diagonal)
    order = np.lexsort((predicted_ids, true_ids, -off_diagonal[true_ids, predicted_ids]))[:limit]
    return [
        {"true": class_names[t], "predicted": class_names[p], "count": int(off_diagonal[t, p])}
        for t, p in zip(true_ids[order], predicted_ids[order], strict=True)
    ]


def most_confident_mistakes(probabilities: np.ndarray, labels: np.ndarray, limit: int = MAX_MISTAKES) -> np.ndarray:
    """Row indices of wrong predictions, most confident first: the errors a user would trust the most."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:limit]


def plot_confusion_matrix(counts: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """Colours are row-normalised (recall per true class), so rare classes are as visible as common ones."""
    n = len(class_names)
    side = min(4.0 + 0.45 * n, 40.0)
    figure = Figure(figsize=(side, side * 0.9), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    row_totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, row_totals, out=np.zeros(counts.shape, dtype=float), where=row_totals > 0)
    image = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of the true class")

    labels = [_short(name, 24) for name in class_names]
    font_size = 10 if n <= 20 else max(5, int(200 / n))
    axes.set_xticks(np.arange(n), labels=labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=font_size)
    axes.set_yticks(np.arange(n), labels=labels, fontsize=font_size)
    axes.set_xlabel("Predicted class")
    axes.set_ylabel("True class")
    axes.set_title(f"Confusion matrix: {title}")
    if n <= MAX_ANNOTATED_CLASSES:
        # Zero cells stay blank: a sea of zeros hides the few cells that matter.
        for t, p in zip(*np.nonzero(counts), strict=True):
            colour = "white" if fractions[t, p] > 0.5 else "black"
            axes.text(p, t, str(counts[t, p]), ha="center", va="center", color=colour, fontsize=font_size - 1)
    return figure


def plot_mistakes(
    predictions: SplitPredictions,
    image_column: str,
    indices: np.ndarray,
    probabilities: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    title: str,
) -> Figure:
    """A grid of the given mistakes from the stored images; one tile saying so when there are none.

    A placeholder instead of no file keeps report.md's link and any tool reading the folder working.
    """
    if len(indices) == 0:
        figure = Figure(figsize=(5, 2), dpi=100, layout="constrained")
        figure.text(0.5, 0.5, f"No mistakes\n{title}", ha="center", va="center", fontsize=13)
        return figure

    rows_of_dataset = predictions.dataset.with_format(None)  # drops the transform: raw rows, undecoded image
    columns = min(4, len(indices))
    grid_rows = -(-len(indices) // columns)
    figure = Figure(figsize=(3.2 * columns, 3.6 * grid_rows + 0.6), dpi=100, layout="constrained")
    figure.suptitle(f"Most confident mistakes: {title}", fontsize=12)
    for tile, index in enumerate(indices):
        axes = figure.add_subplot(grid_rows, columns, tile + 1)
        axes.set_axis_off()
        true, predicted = int(labels[index]), int(probabilities[index].argmax())
        # The true class's own probability tells a near miss from a confident blunder.
        axes.set_title(
            f"true: {_short(class_names[true], 22)} ({probabilities[index, true]:.0%})\n"
            f"pred: {_short(class_names[predicted], 22)} ({probabilities[index, predicted]:.0%})",
            fontsize=9,
            color="firebrick",
        )
        try:
            image = load_rgb(rows_of_dataset[int(index)][image_column])
        except (OSError, ValueError) as error:  # a moved or broken file must not cost the whole report
            axes.text(0.5, 0.5, f"image unavailable\n{type(error).__name__}", ha="center", va="center", fontsize=8)
            continue
        axes.imshow(np.asarray(image), interpolation="nearest" if max(image.size) < 128 else "antialiased")
    return figure


def plot_curves(log_history: list[dict], final_validation: dict | None = None) -> Figure | None:
    """Training and validation loss, and validation accuracy, against the optimiser step.

    A run that evaluated only at the end gets that evaluation (`final_validation`: its `accuracy` and
    `loss`) as one point at the last step; with none either, the accuracy panel says so.
    """
    series = {
        key: [(e["step"], e[key]) for e in log_history if key in e and "step" in e]
        for key in ("loss", "eval_loss", "eval_accuracy")
    }
    if not series["loss"] and not series["eval_loss"]:
        return None
    figure = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    losses, accuracy = figure.subplots(1, 2)
    for key, label in (("loss", "training loss"), ("eval_loss", "validation loss")):
        if series[key]:
            losses.plot(*zip(*series[key]), marker="." if key == "eval_loss" else None, label=label)
    if series["eval_accuracy"]:
        accuracy.plot(*zip(*series["eval_accuracy"]), marker="o", color="tab:green")
    elif final_validation:
        last_step = max(e["step"] for e in log_history if "step" in e)
        accuracy.plot([last_step], [final_validation["accuracy"]], "o", color="tab:green", label="final evaluation")
        accuracy.legend()
        if "loss" in final_validation:
            losses.plot([last_step], [final_validation["loss"]], "o", label="validation loss (final evaluation)")
    else:
        accuracy.text(0.5, 0.5, "no evaluation during training", ha="center", va="center", transform=accuracy.transAxes)
    losses.set(xlabel="step", ylabel="loss", title="Loss")
    losses.legend()
    accuracy.set(xlabel="step", ylabel="accuracy", title="Validation accuracy", ylim=(0, 1))
    return figure


_PAGES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent), trim_blocks=True, lstrip_blocks=True, autoescape=False
)
_PAGES.filters["cell"] = lambda text: str(text).replace("|", "\\|")  # a class name inside a Markdown table


def render_markdown(metrics: dict, class_names: Sequence[str], n_mistakes: int, curves: bool = False) -> str:
    files = {
        "confusion_png": CONFUSION_PNG,
        "mistakes_png": MISTAKES_PNG,
        "curves_png": CURVES_PNG,
        "metrics": METRICS_FILE,
        "confusion_json": CONFUSION_JSON,
        "predictions": PREDICTIONS_FILE,
    }
    page = _PAGES.get_template(REPORT_TEMPLATE).render(
        m=metrics, class_names=class_names, n_mistakes=n_mistakes, max_mistakes=MAX_MISTAKES, curves=curves, files=files
    )
    return page.rstrip() + "\n"


def _short(text: str, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tail(text: str, limit: int) -> str:
    # The end of a checkpoint path names the run; its start is usually a long, shared prefix.
    text = str(text)
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
