"""A per-split evaluation report (files listed in docs/outputs.md), from the logits of the final evaluation:
only the few images shown as mistakes are decoded again, a report costs no second pass over the data."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from matplotlib.figure import Figure  # a bare Figure, no pyplot: no global backend switch, no figures left open
from sklearn.metrics import classification_report, confusion_matrix, top_k_accuracy_score

from . import artifacts as outputs
from .calibration import expected_calibration_error, plot_reliability
from .images import load_rgb
from .metrics import scores


@dataclass
class SplitPredictions:  # one split's logits and labels from the final evaluation
    split: str
    logits: np.ndarray
    labels: np.ndarray
    dataset: Any  # the split as evaluated (transform attached), in prediction order, unreadable rows left out


TOP_K = 5
MAX_MISTAKES = 16
MAX_CONFUSED_PAIRS = 10
# Beyond this many classes the numbers no longer fit their cells; colours alone still show the pattern.
MAX_ANNOTATED_CLASSES = 40


def write_report(out_dir, predictions, class_names, image_column, checkpoint, log_history=None, final_validation=None,
                 calibration=None) -> Path:  # fmt: skip
    """Write the report of one split's SplitPredictions (from `evaluate_splits`); return its report.md. `log_history`
    (Trainer's) gives the curves, `final_validation` their point when nothing was evaluated during training;
    `calibration`: the split's numbers before and after the temperature, whose logits `predictions` holds."""
    logits, labels = predictions.logits, predictions.labels
    probabilities, numbers = compute_report_metrics(logits, labels, class_names)
    predicted = probabilities.argmax(axis=1)
    counts = confusion_matrix(labels, predicted, labels=np.arange(len(class_names)))
    metrics = {"split": predictions.split, "checkpoint": checkpoint, **numbers}
    metrics["ece"], metrics["calibration"] = expected_calibration_error(probabilities, labels), calibration
    # Off-diagonal cells, largest count first (ties: by class order).
    pairs = sorted((-int(counts[t, p]), t, p) for t, p in zip(*np.nonzero(counts), strict=True) if t != p)
    top = pairs[:MAX_CONFUSED_PAIRS]
    metrics["most_confused"] = [{"true": class_names[t], "predicted": class_names[p], "count": -n} for n, t, p in top]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / outputs.METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    confusion = {"class_names": list(class_names), "rows": "true", "columns": "predicted", "counts": counts.tolist()}
    (out / outputs.CONFUSION_JSON).write_text(json.dumps(confusion, indent=2) + "\n", encoding="utf-8")
    np.savez_compressed(out / outputs.PREDICTIONS_FILE, logits=logits, labels=labels, class_names=np.array(class_names))
    title = f"{predictions.split} · {_short(checkpoint, 60, keep_end=True)} · n={len(labels)}"
    # "tight" on top of the constrained layout: long rotated class names must never be clipped.
    plot_confusion_matrix(counts, class_names, title).savefig(out / outputs.CONFUSION_PNG, bbox_inches="tight")
    temperature = calibration["temperature"] if calibration else None
    plot_reliability(probabilities, labels, title, temperature).savefig(out / outputs.RELIABILITY_PNG)
    wrong = np.flatnonzero(predicted != labels)
    # The most confident mistakes first: the errors a user would trust the most.
    mistakes = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:MAX_MISTAKES]
    figure = plot_mistakes(predictions, image_column, mistakes, probabilities, class_names, title)
    figure.savefig(out / outputs.MISTAKES_PNG)
    curves = plot_curves(log_history, final_validation) if log_history else None
    if curves is not None:
        curves.savefig(out / outputs.CURVES_PNG)
    page = _PAGE.render(m=metrics, n_mistakes=len(wrong), max_mistakes=MAX_MISTAKES, curves=curves is not None,
                        files=outputs)  # fmt: skip
    report = out / outputs.REPORT_FILE
    report.write_text(page.rstrip() + "\n", encoding="utf-8")
    return report


def compute_report_metrics(logits: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> tuple:
    """The class probabilities, and the headline and per-class numbers. A class never predicted gets precision 0."""
    probabilities, headline = scores(logits, labels)
    classes = np.arange(len(class_names))
    k = min(TOP_K, len(classes))
    # With k as many as the classes every label is in the top k (scikit-learn would also warn so).
    top_k_accuracy = top_k_accuracy_score(labels, probabilities, k=k, labels=classes) if k < len(classes) else 1.0
    table = classification_report(labels, logits.argmax(axis=1), labels=classes, output_dict=True, zero_division=0)
    # Rows by class id, not name: a class called "accuracy" or "macro avg" would clash with the summary rows.
    per_class = {name: {**_prf(table[str(i)]), "support": int(table[str(i)]["support"])}
                 for i, name in enumerate(class_names)}  # fmt: skip
    return probabilities, {"samples": len(labels), "num_classes": len(classes), **headline, "top_k": k,
                           "top_k_accuracy": float(top_k_accuracy), "macro": _prf(table["macro avg"]),
                           "weighted": _prf(table["weighted avg"]), "per_class": per_class}  # fmt: skip


def _prf(row: dict[str, float]) -> dict[str, float]:
    return {"precision": row["precision"], "recall": row["recall"], "f1": row["f1-score"]}


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
    axes.set(xlabel="Predicted class", ylabel="True class", title=f"Confusion matrix: {title}")
    if n <= MAX_ANNOTATED_CLASSES:
        # Zero cells stay blank: a sea of zeros hides the few cells that matter.
        for t, p in zip(*np.nonzero(counts), strict=True):
            colour = "white" if fractions[t, p] > 0.5 else "black"
            axes.text(p, t, str(counts[t, p]), ha="center", va="center", color=colour, fontsize=font_size - 1)
    return figure


def plot_mistakes(predictions, image_column: str, indices, probabilities, class_names, title: str) -> Figure:
    """A grid of the given mistakes from the stored images; with none, one tile saying so (a placeholder, not
    no file: report.md's link and any tool reading the folder keep working)."""
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
        shown = {"true": int(predictions.labels[index]), "pred": int(probabilities[index].argmax())}
        # The true class's own probability tells a near miss from a confident blunder.
        lines = [f"{what}: {_short(class_names[c], 22)} ({probabilities[index, c]:.0%})" for what, c in shown.items()]
        axes.set_title("\n".join(lines), fontsize=9, color="firebrick")
        try:
            image = load_rgb(rows_of_dataset[int(index)][image_column])
        except (OSError, ValueError) as error:  # a moved or broken file must not cost the whole report
            axes.text(0.5, 0.5, f"image unavailable\n{type(error).__name__}", ha="center", va="center", fontsize=8)
            continue
        axes.imshow(np.asarray(image), interpolation="nearest" if max(image.size) < 128 else "antialiased")
    return figure


def plot_curves(log_history: list[dict], final_validation: dict | None = None) -> Figure | None:
    """Training and validation loss, and validation accuracy, by step. A run evaluated only at the end gets that
    evaluation (`final_validation`) as one point at the last step; with none either, the accuracy panel says so."""
    series = {key: [(e["step"], e[key]) for e in log_history if key in e and "step" in e]
              for key in ("loss", "eval_loss", "eval_accuracy")}  # fmt: skip
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


_PAGE = jinja2.Template(Path(__file__).with_name("report_template.md").read_text("utf-8"), trim_blocks=True,
                        lstrip_blocks=True)  # fmt: skip


def _short(text: str, limit: int, keep_end: bool = False) -> str:
    if len(text) <= limit:
        return text
    # The end of a checkpoint path names the run (keep_end); its start is usually a long, shared prefix.
    return "…" + text[-(limit - 1) :] if keep_end else text[: limit - 1] + "…"
