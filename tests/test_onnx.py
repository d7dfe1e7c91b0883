"""ONNX export (the recipe key and export.py), its parity check, predict.py --backend onnx and their bad inputs,
on one tiny digits run trained with export: [onnx]."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import ROOT, run_cli
from safetensors.torch import save_file
from transformers import AutoImageProcessor, AutoModelForImageClassification

import export as export_script
import predict as predict_script
from vitrecipes import onnx_export
from vitrecipes.config import DataArguments
from vitrecipes.data import class_names, load_splits
from vitrecipes.images import load_rgb
from vitrecipes.onnx_export import OnnxClassifier
from vitrecipes.predict import load_classifier, predict

JS_DIR = ROOT / "tests" / "js"


@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory) -> Path:
    """The smoke recipe, 3 steps, with the recipe key that exports at the end of training."""
    out = tmp_path_factory.mktemp("onnx") / "out"
    result = run_cli("recipes/smoke.yaml", "--output_dir", out, "--max_steps", 3, "--export", "onnx",
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
    assert set(parity["inputs_sha256"]) == {"model.safetensors", "config.json", "preprocessor_config.json"}
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
    for quantized in (False, True):  # --quantized reaches the classifier: the int8 file's own probability
        argv = ["--model", str(onnx_run), images[0], "--backend", "onnx", "--json"] + ["--quantized"] * quantized
        assert predict_script.main(argv) == 0
        expected = predict(OnnxClassifier(onnx_run, quantized), images[:1])[0]["score"]
        assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(expected, abs=1e-6)


def _logits(path: Path, pixels: np.ndarray) -> np.ndarray:
    """In batches of 32, as the export checks: dynamic int8 quantises each batch's activations by that batch's range."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batches = [pixels[start : start + 32] for start in range(0, len(pixels), 32)]
    return np.concatenate([session.run(None, {"pixel_values": batch})[0] for batch in batches])


def test_parity_json_agrees_with_an_independent_computation(onnx_run):
    """Each figure of parity.json computed again here, straight from the test split and the two files: int8's
    must come from model_quantized.onnx (not the fp32 session), and predict --quantized must run that file too."""
    args = DataArguments(dataset_name="builtin:digits")
    splits = load_splits(args)
    test, names = splits["test"], class_names(splits, args)
    model = AutoModelForImageClassification.from_pretrained(onnx_run).eval()
    processor = AutoImageProcessor.from_pretrained(onnx_run)
    pictures = [load_rgb(row["image"]) for row in test]
    labels = np.array([model.config.label2id[names[row["label"]]] for row in test])
    pixels = processor(pictures, return_tensors="np")["pixel_values"]
    with torch.no_grad():
        reference = model(pixel_values=torch.from_numpy(pixels)).logits.numpy()
    parity = json.loads((onnx_run / "onnx" / "parity.json").read_text())
    assert parity["pytorch"]["accuracy"] == pytest.approx((reference.argmax(1) == labels).mean())
    for name, file in (("fp32", "model.onnx"), ("int8", "model_quantized.onnx")):
        logits = _logits(onnx_run / "onnx" / file, pixels)
        assert parity[name]["top1_agreement"] == pytest.approx((logits.argmax(1) == reference.argmax(1)).mean())
        assert parity[name]["max_abs_logit_diff"] == pytest.approx(np.abs(logits - reference).max(), rel=1e-3)
        assert parity[name]["accuracy"] == pytest.approx((logits.argmax(1) == labels).mean())
    assert parity["int8"]["max_abs_logit_diff"] > 10 * parity["fp32"]["max_abs_logit_diff"]  # really another model
    int8 = _logits(onnx_run / "onnx" / "model_quantized.onnx", pixels[:5])  # one batch of 5, as predict's below
    probabilities = np.exp(int8) / np.exp(int8).sum(1, keepdims=True)
    ours = predict(OnnxClassifier(onnx_run, quantized=True), pictures[:5])
    assert [r["score"] for r in ours] == pytest.approx(probabilities.max(1).tolist(), abs=1e-5)


def _one_paragraph(err: str) -> str:
    err = re.sub(r"[^\n]*\r", "", err)  # a progress bar's refreshes, each ended by a carriage return
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def _export(folder: Path, images: list[str], *extra: str) -> int:
    return export_script.main([str(folder), "--images", *images[:3], *extra])


def test_a_stale_export_is_refused_and_export_makes_it_again(onnx_run, images, tmp_path, capsys):
    """After a retrain into the same folder (other weights), a changed image processor or label names, predict
    --backend onnx refuses the old files, naming what changed; export.py exports again instead of keeping them."""
    folder = Path(shutil.copytree(onnx_run, tmp_path / "run"))
    model = AutoModelForImageClassification.from_pretrained(folder)
    with torch.no_grad():
        model.classifier.bias[3] += 100.0  # the retrained model answers class 3 for everything
    save_file(model.state_dict(), folder / "model.safetensors", metadata={"format": "pt"})  # only the weights change
    for quantized in ([], ["--quantized"]):
        assert predict_script.main(["--model", str(folder), images[0], "--backend", "onnx", *quantized]) == 2
        err = _one_paragraph(capsys.readouterr().err)
        assert "stale: model.safetensors changed since it was exported" in err
        assert f"python export.py {folder} --overwrite" in err
    assert _export(folder, images) == 0
    assert "Exporting again: model.safetensors changed" in capsys.readouterr().out
    assert predict_script.main(["--model", str(folder), *images[:3], "--backend", "onnx", "--json"]) == 0
    assert {json.loads(line)["label"] for line in capsys.readouterr().out.splitlines()} == {model.config.id2label[3]}

    processor = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps({**processor, "image_mean": [0.1, 0.2, 0.3]}))
    config = json.loads((folder / "config.json").read_text())
    config["id2label"]["3"] = "drei"
    (folder / "config.json").write_text(json.dumps(config))
    assert predict_script.main(["--model", str(folder), images[0], "--backend", "onnx"]) == 2
    assert "stale: config.json, preprocessor_config.json changed since" in _one_paragraph(capsys.readouterr().err)
    assert _export(folder, images) == 0
    assert "Exporting again: config.json, preprocessor_config.json changed" in capsys.readouterr().out
    assert predict_script.main(["--model", str(folder), images[0], "--backend", "onnx", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] == "drei"

    # parity.json written before per-file digests: stale too.
    parity = json.loads((folder / "onnx" / "parity.json").read_text())
    del parity["inputs_sha256"]
    (folder / "onnx" / "parity.json").write_text(json.dumps({**parity, "weights_sha256": "0" * 64}))
    assert predict_script.main(["--model", str(folder), images[0], "--backend", "onnx"]) == 2
    assert "does not record the files it was exported from" in _one_paragraph(capsys.readouterr().err)
    assert _export(folder, images) == 0
    assert "Exporting again: onnx/parity.json does not record" in capsys.readouterr().out
    (folder / "onnx" / "model_quantized.onnx").unlink()  # an export cut short, or a file lost: not kept either
    assert _export(folder, images) == 0
    assert "Exporting again: onnx/model_quantized.onnx is missing" in capsys.readouterr().out
    assert _export(folder, images) == 0
    assert "Kept the ONNX export" in capsys.readouterr().out


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
    # --images with an unreadable file among them: that file is named.
    (tmp_path / "photos").mkdir()
    shutil.copy(images[0], tmp_path / "photos" / "good.png")
    (tmp_path / "photos" / "notes.png").write_text("not an image")
    assert export_script.main([str(broken), "--overwrite", "--images", str(tmp_path / "photos")]) == 2
    err = _one_paragraph(capsys.readouterr().err)
    assert f"--images: {tmp_path / 'photos' / 'notes.png'} could not be read as an image (Unidentified" in err


@pytest.fixture
def unwritable(tmp_path):
    """Make a folder read-only for this process, for real: chmod, or as root (whom chmod does not stop) chattr +i."""
    made = []

    def make(folder: Path) -> Path:
        folder.chmod(0o555)
        made.append(folder)
        try:
            (folder / "probe").touch()
        except PermissionError:
            return folder
        (folder / "probe").unlink()
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("cannot make a folder read-only here (root, and no chattr)")
        return folder

    yield make
    for folder in made:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)


def test_export_into_a_folder_it_cannot_write_stops_before_loading_anything(
    onnx_run, images, tmp_path, monkeypatch, capsys, unwritable
):
    folder = Path(shutil.copytree(onnx_run, tmp_path / "run"))
    shutil.rmtree(folder / "onnx")
    loads = []
    monkeypatch.setattr(onnx_export, "load_saved", lambda *args, **kwargs: loads.append(args))
    unwritable(folder)
    assert _export(folder, images) == 2
    err = _one_paragraph(capsys.readouterr().err)
    assert f"the export cannot be written into {folder} (PermissionError" in err and "cp -r" in err
    assert loads == [] and not (folder / "onnx").exists()


def _fault(monkeypatch, shift) -> None:
    """The exported fp32 file with its classifier's bias moved by `shift`: ONNX disagreeing with PyTorch for real."""
    import onnx
    from onnx import numpy_helper

    export = onnx_export.export_model

    def faulty_export(model, path, pixels):
        export(model, path, pixels)
        graph = onnx.load(str(path))
        (bias,) = [t for t in graph.graph.initializer if t.name.endswith("classifier.bias")]
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + shift, bias.name))
        onnx.save(graph, str(path))

    monkeypatch.setattr(onnx_export, "export_model", faulty_export)


@pytest.mark.parametrize("shift, agreement", [(0.01, "1.0000"), (np.eye(10, dtype=np.float32)[2] * 100, "0.")])
def test_fp32_that_disagrees_with_pytorch_is_refused_and_the_old_export_kept(
    onnx_run, images, tmp_path, monkeypatch, capsys, shift, agreement
):
    """Every logit 0.01 off (the same top-1 classes, above the 1e-3 allowed), or one class 100 up (other classes)."""
    folder = Path(shutil.copytree(onnx_run, tmp_path / "run"))
    before = {p.name: p.read_bytes() for p in (folder / "onnx").iterdir()}
    _fault(monkeypatch, shift)
    assert export_script.main([str(folder), "--overwrite", "--images", *images[:12]]) == 2
    err = _one_paragraph(capsys.readouterr().err)
    assert "The fp32 ONNX model does not match PyTorch on 12 given images: top-1 agreement " + agreement in err
    assert {p.name: p.read_bytes() for p in (folder / "onnx").iterdir()} == before


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


@pytest.fixture(scope="module")
def transformers_js() -> Path:
    """tests/js with its packages (transformers.js 4.3.2, from the lock file), installed here as .ci/run does."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("transformers.js needs Node.js and npm, which are not installed here")
    if not (JS_DIR / "node_modules" / "@huggingface" / "transformers").is_dir():
        # onnxruntime-node bundles its CPU binary; its install script would download GPU ones (from api.nuget.org).
        env = {**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"}
        result = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, env=env, capture_output=True,
                                text=True, timeout=900)  # fmt: skip
        assert result.returncode == 0, f"npm ci in {JS_DIR} failed:\n{result.stderr[-2000:]}"
    return JS_DIR


def test_transformers_js_reads_the_export_and_agrees(onnx_run, images, transformers_js):
    """The Hub layout is usable from JavaScript: transformers.js (Node) loads the folder offline, fp32 and int8,
    and gives pipeline()'s labels (fp32) and ONNX Runtime's int8 labels in Python, image by image (batch 1)."""
    expected = {"fp32": predict(load_classifier(onnx_run, device="cpu"), images[:8]),
                "q8": predict(OnnxClassifier(onnx_run, quantized=True), images[:8], batch_size=1)}  # fmt: skip
    for dtype, ours in expected.items():
        command = ["node", "classify.mjs", str(onnx_run.parent), onnx_run.name, dtype, *images[:8]]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=transformers_js)
        assert result.returncode == 0, result.stderr[-2000:]
        assert json.loads(result.stdout) == [r["label"] for r in ours]


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
