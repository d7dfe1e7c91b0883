"""Train/serve parity: the saved image processor and pipeline() see exactly what evaluation saw."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import DINOV2, SNACKS, class_image
from PIL import Image
from transformers import AutoImageProcessor, pipeline

import run_snacks
from vitrecipes.config import DataArguments
from vitrecipes.data import load_splits
from vitrecipes.errors import RecipeError
from vitrecipes.images import load_rgb
from vitrecipes.onnx_export import export_folder
from vitrecipes.transforms import Preprocessing


@pytest.mark.parametrize("crop_pct", [1.0, 0.875])
@pytest.mark.parametrize("size", [(224, 224), (112, 112), (48, 64)])
def test_serving_processor_gives_the_eval_pixels_on_non_square_jpegs(tmp_path, size, crop_pct):
    prep = Preprocessing(size=size, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    prep.resize_to = int(round(max(size) / crop_pct))
    prep.serving_processor().save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)  # as pipeline() loads it
    for seed, shape in enumerate([(500, 256), (256, 383), (97, 301), (640, 480), (300, 300)]):
        path = tmp_path / f"{seed}.jpg"
        class_image((120, 80, 200), seed, size=shape).save(path, quality=90)
        expected = prep.eval(load_rgb(path))
        served = processor(images=Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"][0]
        assert served.shape == expected.shape == (3, *size)
        assert torch.allclose(served, expected, atol=1e-5), (shape, (served - expected).abs().max())


def _pipeline_matches_evaluation(out, data_args: DataArguments, seed: int = 42, split: str = "test"):
    """pipeline() on every image of the split, compared with the run's own final evaluation."""
    metrics = json.loads((out / "metrics.json").read_text())
    saved = np.load(out / f"eval_{split}" / "predictions.npz")
    dataset = dict(load_splits(data_args, seed=seed).items())[split]
    paths = [row["path"] for row in dataset["image"]]
    classifier = pipeline("image-classification", model=str(out), device="cpu")
    outputs = classifier(paths, top_k=len(saved["class_names"]), batch_size=16)
    names = list(saved["class_names"])
    scores = np.array([[dict((o["label"], o["score"]) for o in out_)[n] for n in names] for out_ in outputs])
    logits = torch.tensor(saved["logits"], dtype=torch.float64)
    np.testing.assert_allclose(scores, torch.softmax(logits, -1).numpy(), atol=2e-4)
    accuracy = float((scores.argmax(1) == saved["labels"]).mean())
    assert abs(accuracy - metrics[split]["accuracy"]) <= 0.002
    return accuracy


def test_pipeline_reproduces_the_reported_accuracy_and_probabilities(tmp_path, tiny_checkpoint, jpeg_folder):
    out = tmp_path / "out"
    run_snacks.main(
        ["--model_name_or_path", str(tiny_checkpoint), "--dataset_name", str(jpeg_folder), "--output_dir", str(out),
         "--num_train_epochs", "1", "--eval_crop_pct", "0.875", "--use_cpu", "--report_to", "none"]
    )  # fmt: skip
    _pipeline_matches_evaluation(out, DataArguments(dataset_name=str(jpeg_folder)))


def test_eval_image_size_evaluates_and_serves_at_the_larger_side(tmp_path, tiny_dinov2, jpeg_folder, monkeypatch):
    monkeypatch.setenv("VITRECIPES_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    run_snacks.main(
        ["--model_name_or_path", str(tiny_dinov2), "--dataset_name", str(jpeg_folder), "--output_dir", str(out),
         "--image_size", "32", "--eval_image_size", "48", "--eval_crop_pct", "0.875", "--adaptation", "lp_ft",
         "--max_steps", "2", "--use_cpu", "--report_to", "none"]
    )  # fmt: skip
    processor = AutoImageProcessor.from_pretrained(out)
    assert (processor.crop_size["height"], processor.size["shortest_edge"]) == (48, round(48 / 0.875))
    _pipeline_matches_evaluation(out, DataArguments(dataset_name=str(jpeg_folder)))  # evaluated at 48 px too


def test_eval_image_size_is_refused_for_a_model_that_runs_at_one_size(tmp_path, tiny_checkpoint, jpeg_folder):
    with pytest.raises(RecipeError, match="eval_image_size: ViTForImageClassification runs at one input size"):
        run_snacks.main(
            ["--model_name_or_path", str(tiny_checkpoint), "--dataset_name", str(jpeg_folder), "--output_dir",
             str(tmp_path / "out"), "--eval_image_size", "48", "--max_steps", "1", "--use_cpu", "--report_to", "none"]
        )  # fmt: skip


def test_bf16_full_eval_evaluates_and_saves_in_bf16_so_pipeline_reproduces_it(tmp_path, tiny_dinov2, jpeg_folder,
                                                                               monkeypatch):  # fmt: skip
    from vitrecipes import hardware

    monkeypatch.setattr(hardware, "native_cpu_bf16", lambda: True)  # as on this project's CPUs (AMX)
    monkeypatch.setenv("VITRECIPES_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    run_snacks.main(
        ["--model_name_or_path", str(tiny_dinov2), "--dataset_name", str(jpeg_folder), "--output_dir", str(out),
         "--adaptation", "lp_ft", "--max_steps", "2", "--bf16", "--bf16_full_eval", "--use_cpu", "--report_to", "none"]
    )  # fmt: skip
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"  # pipeline() loads it in bf16
    _pipeline_matches_evaluation(out, DataArguments(dataset_name=str(jpeg_folder)))
    parity = export_folder(out, log=lambda *_: None)  # exported in fp32: ONNX Runtime has no bf16 kernels for it
    assert parity["fp32"]["top1_agreement"] == 1.0 and parity["fp32"]["max_abs_logit_diff"] < 1e-3


@pytest.mark.skipif(not (SNACKS.is_dir() and DINOV2.is_dir()), reason="needs ../shared snacks data and DINOv2 model")
def test_pipeline_matches_evaluation_for_dinov2_on_real_snacks_photos(tmp_path, monkeypatch):
    monkeypatch.setenv("VITRECIPES_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    args = ["--dataset_name", str(SNACKS), "--max_train_samples", "60", "--max_eval_samples", "60"]
    run_snacks.main(
        ["--model_name_or_path", str(DINOV2), "--image_size", "112", "--adaptation", "linear_probe",
         "--output_dir", str(out), "--use_cpu", "--report_to", "none", *args]
    )  # fmt: skip
    accuracy = _pipeline_matches_evaluation(out, DataArguments(dataset_name=str(SNACKS), max_eval_samples=60))
    assert accuracy > 0.1  # 20 classes, about 3 training images each: well above chance (0.05)
