"""ONNX export (the recipe key and export.py), its parity check, predict.py --backend onnx and their bad inputs,
on one tiny digits run trained with export_onnx: true."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_cli
from transformers import AutoModelForImageClassification

import export as export_script
import predict as predict_script
from vitrecipes.onnx_export import OnnxClassifier
from vitrecipes.predict import load_classifier, predict

JS_DIR = ROOT / "tests" / "js"


@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory) -> Path:
    """The smoke recipe, 3 steps, with the recipe key that exports at the end of training."""
    out = tmp_path_factory.mktemp("onnx") / "out"
    result = run_cli("recipes/smoke.yaml", "--output_dir", out, "--max_steps", 3, "--export_onnx", "true",
                     "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def images(digits_validation) -> list[str]:
    return [str(p) for p in sorted(digits_validation.rglob("*.png"))[::25]]


def test_the_recipe_key_exports_both_files_with_parity_and_a_rerun_keeps_them(onnx_run, capsys):
    onnx = onnx_run / "onnx"
    assert (onnx / "model.onnx").is_file() and (onnx / "model_quantized.onnx").is_file()
    parity = json.loads((onnx / "parity.json").read_text())
    assert parity["images"] == 300 and parity["source"] == "the test split"
    assert parity["fp32"]["top1_agreement"] == 1.0 and parity["fp32"]["max_abs_logit_diff"] <= 1e-3
    # PyTorch through the saved processor sees what the run's evaluation saw.
    assert parity["pytorch"]["accuracy"] == json.loads((onnx_run / "metrics.json").read_text())["test"]["accuracy"]
    assert parity["int8"]["accuracy_drop"] == parity["pytorch"]["accuracy"] - parity["int8"]["accuracy"]
    card = (onnx_run / "README.md").read_text()
    assert "`onnx/model_quantized.onnx` (int8)" in card and "onnxruntime" in card and "100.00 %" in card
    before = {p.name: p.stat().st_mtime_ns for p in onnx.iterdir()}
    assert export_script.main([str(onnx_run)]) == 0
    assert "Kept the ONNX export" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in onnx.iterdir()} == before


def test_predict_with_the_onnx_backend_gives_the_torch_backends_labels(onnx_run, images):
    torch_results = predict(load_classifier(onnx_run, device="cpu"), images, top_k=3)
    for quantized in (False, True):
        onnx_results = predict(OnnxClassifier(onnx_run, quantized), images, top_k=3)
        assert [r["input"] for r in onnx_results] == [r["input"] for r in torch_results]
        labels = [r["label"] for r in onnx_results]
        if not quantized:  # fp32: the same labels and, to float rounding, the same probabilities
            assert labels == [r["label"] for r in torch_results]
            for ours, theirs in zip(onnx_results, torch_results):
                assert ours["score"] == pytest.approx(theirs["score"], abs=1e-5)
                assert [t["label"] for t in ours["top_k"]] == [t["label"] for t in theirs["top_k"]]


def test_predict_cli_with_the_onnx_backend(onnx_run, images, capsys):
    assert predict_script.main(["--model", str(onnx_run), images[0], "--backend", "onnx", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["label"] == predict(load_classifier(onnx_run, device="cpu"), images[:1])[0]["label"]


def test_bad_inputs_get_one_paragraph_and_exit_2(onnx_run, smoke_run, images, tmp_path, capsys):
    assert export_script.main([str(tmp_path)]) == 2  # not a model folder
    assert "holds no saved model (config.json)" in capsys.readouterr().err
    # --backend onnx on a run that was never exported.
    assert predict_script.main(["--model", str(smoke_run[0]), images[0], "--backend", "onnx"]) == 2
    assert f"Export the model first: python export.py {smoke_run[0]}" in capsys.readouterr().err
    # A corrupt model.onnx.
    broken = Path(shutil.copytree(onnx_run, tmp_path / "broken"))
    (broken / "onnx" / "model.onnx").write_bytes(b"not a protobuf")
    assert predict_script.main(["--model", str(broken), images[0], "--backend", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "model.onnx is not a readable ONNX model" in err and "--overwrite" in err


def test_export_traces_at_the_processors_size_not_the_checkpoints(tmp_path, images, capsys):
    """A fine-tuned DINOv2 keeps the checkpoint's config.image_size (518) while its processor crops to the run's
    size (112): the export must take the processor's, and check parity on the given images."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2ForImageClassification

    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=8,
                          image_size=64, num_labels=3)  # fmt: skip
    Dinov2ForImageClassification(config).save_pretrained(tmp_path)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    assert export_script.main([str(tmp_path), "--images", *images[:3]]) == 0, capsys.readouterr().err
    parity = json.loads((tmp_path / "onnx" / "parity.json").read_text())
    assert parity["source"] == "3 given images" and parity["fp32"]["top1_agreement"] == 1.0
    assert "accuracy" not in parity["fp32"]  # no labels for given images


class _Eigenvalues(torch.nn.Module):
    def forward(self, logits):  # no ONNX operator computes eigenvalues
        return torch.linalg.eigvals(logits[..., None, None] * torch.eye(2)).real.sum(-1)


def test_a_model_that_fails_to_export_names_the_operator_and_layer(onnx_run, tmp_path, monkeypatch, capsys):
    folder = Path(shutil.copytree(onnx_run, tmp_path / "run"))
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    load = AutoModelForImageClassification.from_pretrained

    def with_an_unexportable_layer(*args, **kwargs):
        model = load(*args, **kwargs)
        model.classifier = torch.nn.Sequential(model.classifier, _Eigenvalues())
        return model

    monkeypatch.setattr(AutoModelForImageClassification, "from_pretrained", with_an_unexportable_layer)
    assert export_script.main([str(folder), "--overwrite", "--images", str(next(folder.rglob("*.png")))]) == 2
    err = capsys.readouterr().err
    assert "could not be exported to ONNX" in err and "'aten::linalg_eigvals'" in err and "layer classifier.1" in err
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


@pytest.mark.skipif(not (JS_DIR / "node_modules" / "@huggingface" / "transformers").is_dir(),
                    reason="transformers.js is not installed: cd tests/js && npm install")  # fmt: skip
def test_transformers_js_reads_the_export_and_agrees(onnx_run, images):
    """The Hub layout is usable from JavaScript: transformers.js (Node) loads the folder offline, fp32 and int8."""
    expected = predict(load_classifier(onnx_run, device="cpu"), images[:4])
    for dtype in ("fp32", "q8"):
        command = ["node", "classify.mjs", str(onnx_run.parent), onnx_run.name, dtype, *images[:4]]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=JS_DIR)
        assert result.returncode == 0, result.stderr[-2000:]
        labels = json.loads(result.stdout)
        if dtype == "fp32":
            assert labels == [r["label"] for r in expected]
        else:
            assert len(labels) == 4


def test_onnx_benchmark_times_the_three_variants_and_names_the_run_relative_to_the_repository(onnx_run, tmp_path):
    from benchmarks.bench_onnx import main as bench_onnx

    out = tmp_path / "bench.json"
    result = bench_onnx([str(onnx_run), "--runs", "3", "--warmup", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert not Path(result["output_dir"]).is_absolute()
    assert (ROOT / result["output_dir"]).resolve() == onnx_run.resolve()
    parity = json.loads((onnx_run / "onnx" / "parity.json").read_text())  # the same test split, the same pixels
    assert result["images"] == parity["images"] == 300
    for name, key in (("pytorch eager", "pytorch"), ("onnx fp32", "fp32"), ("onnx int8", "int8")):
        row = result["variants"][name]
        assert row["accuracy"] == pytest.approx(parity[key]["accuracy"], abs=0.01)  # thread counts may flip a tie
        assert row["batch1_median_ms"] > 0 and row["batch32_images_per_s"] > 0
    assert result["variants"]["pytorch eager"]["speedup_vs_eager_batch1"] == 1.0
