#!/usr/bin/env python
"""What `calibrate_temperature` does to a finished run trained without it, measured from its own files.

    python benchmarks/calibration_check.py RUN_DIR [--fold_into COPY_DIR --images DIR] [--out result.json]

Fits T on RUN_DIR/eval_validation/predictions.npz (the final evaluation's logits), and prints validation and
test accuracy, ECE (15 bins) and NLL before and after, as the run would have reported them with the key on, and
a bootstrap of the test differences (1000 resamples of the test images: their 95 % interval, and how often
"after" is lower), which tells a real improvement from sampling noise.
--fold_into copies the model files of RUN_DIR to COPY_DIR (which must not exist; RUN_DIR is only read), folds
T into the copy's head, and checks on the first 16 images under --images that pipeline() on the copy returns
softmax(logits / T) of the original, with the same top class.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from scipy.special import softmax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vitrecipes.artifacts import PREDICTIONS_FILE, REPORT_DIR  # noqa: E402
from vitrecipes.calibration import calibration_numbers, fit_temperature, fold_temperature  # noqa: E402

MODEL_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


def split_numbers(run: Path, split: str, temperature: float | None = None) -> tuple[dict, float]:
    saved = np.load(run / REPORT_DIR.format(split=split) / PREDICTIONS_FILE)
    logits, labels = saved["logits"], saved["labels"]
    temperature = fit_temperature(logits, labels) if temperature is None else temperature
    accuracy = [float((x.argmax(1) == labels).mean()) for x in (logits, logits / temperature)]
    numbers = {"samples": len(labels), "accuracy_before": accuracy[0], "accuracy_after": accuracy[1]}
    return {**numbers, **calibration_numbers(logits, labels, temperature)}, temperature


def bootstrap(run: Path, temperature: float, resamples: int = 1000) -> dict:
    """Whether the test differences beat sampling noise: the same test images resampled with replacement."""
    saved = np.load(run / REPORT_DIR.format(split="test") / PREDICTIONS_FILE)
    logits, labels = saved["logits"].astype(np.float64), saved["labels"]
    rng, differences = np.random.default_rng(0), {"ece": [], "nll": []}
    for _ in range(resamples):
        i = rng.integers(0, len(labels), len(labels))
        numbers = calibration_numbers(logits[i], labels[i], temperature)
        for key in differences:
            differences[key].append(numbers[f"{key}_after"] - numbers[f"{key}_before"])
    return {
        f"{key}_after_minus_before": {
            "interval_95": np.percentile(d, [2.5, 97.5]).tolist(),
            "share_lower": float(np.mean(np.array(d) < 0)),
        }
        for key, d in differences.items()
    }


def check_pipeline(run: Path, copy: Path, images: Path, temperature: float) -> dict:
    from transformers import AutoModelForImageClassification, pipeline

    copy.mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copy2(run / name, copy / name)
    model = AutoModelForImageClassification.from_pretrained(copy)
    fold_temperature(model, temperature)
    model.save_pretrained(copy)
    files = sorted(str(p) for p in images.rglob("*.jpg"))[:16]
    probabilities = []
    for folder in (run, copy):
        classifier = pipeline("image-classification", model=str(folder), device="cpu")
        names = list(classifier.model.config.id2label.values())
        outputs = classifier(files, top_k=len(names))
        probabilities.append(np.array([[{o["label"]: o["score"] for o in out}[n] for n in names] for out in outputs]))
    original, folded = probabilities
    expected = softmax(np.log(original.astype(np.float64)) / temperature, axis=1)
    return {
        "images": len(files),
        "same_top_class": bool((original.argmax(1) == folded.argmax(1)).all()),
        "largest_probability_difference": float(np.abs(folded - expected).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--fold_into", type=Path)
    parser.add_argument("--images", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if json.loads((args.run / "metrics.json").read_text()).get("calibration"):
        sys.exit(f"{args.run} was trained with calibrate_temperature on: its logits are calibrated already.")
    validation, temperature = split_numbers(args.run, "validation")
    result = {"temperature": temperature, "validation": validation}
    if (args.run / REPORT_DIR.format(split="test") / PREDICTIONS_FILE).is_file():
        result["test"] = split_numbers(args.run, "test", temperature)[0]
        result["test_bootstrap"] = bootstrap(args.run, temperature)
    if args.fold_into:
        result["pipeline"] = check_pipeline(args.run, args.fold_into, args.images, temperature)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
