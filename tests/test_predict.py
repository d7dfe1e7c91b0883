"""predict.py and vitrecipes.predict on the trained smoke model and its own digits images."""

from __future__ import annotations

import builtins
import functools
import http.server
import json
import shutil
import threading
import warnings
from pathlib import Path

import pytest
import torch
from helpers import run_cli
from PIL import Image

import demo as demo_script
import export as export_script
import predict as predict_script
from vitrecipes.config import DataArguments, parse_recipe
from vitrecipes.images import MAX_IMAGE_PIXELS, load_rgb
from vitrecipes.modeling import build_image_processor
from vitrecipes.predict import load_classifier, predict
from vitrecipes.transforms import Preprocessing


@pytest.fixture(scope="module")
def classifier(model_dir):
    return load_classifier(model_dir, device="cpu")


def _accuracy(results: list[dict]) -> float:
    # The folder a digits image sits in is its true class name.
    return sum(Path(r["input"]).parent.name == r["label"] for r in results) / len(results)


def _validation_accuracy(model_dir: Path) -> float:
    return json.loads((model_dir / "metrics.json").read_text())["validation"]["accuracy"]


def test_cli_reproduces_the_validation_accuracy_exactly(model_dir, digits_validation):
    """Same images, same eval transform as the run's evaluation: the accuracy must be identical."""
    result = run_cli("--model", model_dir, digits_validation, "--json", script="predict.py", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    results = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(results) == 300 and not any("error" in r for r in results)
    assert _accuracy(results) == _validation_accuracy(model_dir)


def test_predictions_agree_with_the_runs_eval_transform_image_by_image(tmp_path, model_dir, digits_validation,
                                                                       classifier):  # fmt: skip
    """predict() runs the saved processor through pipeline(); evaluation ran the recipe's own transform. On
    non-square images (where squashing to a square and resize-then-centre-crop give different pixels) both
    must see the same pixels: scores within float rounding, every label, hence the accuracy, identical."""
    files = []
    for i, source in enumerate(sorted(digits_validation.rglob("*.png"))[::3]):
        target = tmp_path / source.parent.name / source.name
        target.parent.mkdir(exist_ok=True)
        size = (48, 32) if i % 2 else (30, 45)  # landscape and portrait
        Image.open(source).resize(size, Image.BILINEAR).save(target)
        files.append(str(target))
    ours = predict(classifier, files, batch_size=64)
    # The evaluation's transform, built from the run's resolved recipe as run_snacks.py builds it.
    model_args, data_args, _, _ = parse_recipe([str(model_dir / "resolved_recipe.yaml"), "--use_cpu", "true"])
    prep = Preprocessing.build(build_image_processor(model_args), data_args, image_size=model_args.image_size)
    with torch.no_grad():
        logits = classifier.model(pixel_values=torch.stack([prep.eval(load_rgb(f)) for f in files])).logits
    probabilities, labels = logits.softmax(-1).max(-1)
    id2label = classifier.model.config.id2label
    assert [o["label"] for o in ours] == [id2label[int(i)] for i in labels]
    assert max(abs(float(p) - o["score"]) for p, o in zip(probabilities, ours)) < 1e-4
    squashed = predict(classifier, [Image.open(f).resize((32, 32), Image.BILINEAR) for f in files], batch_size=64)
    assert max(abs(q["score"] - o["score"]) for q, o in zip(squashed, ours)) > 1e-3  # the crop really mattered


def test_folders_are_searched_recursively_for_images_only(tmp_path, digits_validation, classifier):
    sources = sorted(digits_validation.glob("seven/*.png"))[:3]
    (tmp_path / "a" / "b").mkdir(parents=True)
    shutil.copy(sources[0], tmp_path / "top.png")
    shutil.copy(sources[1], tmp_path / "a" / "middle.png")
    shutil.copy(sources[2], tmp_path / "a" / "b" / "DEEP.PNG")
    (tmp_path / "a" / "notes.txt").write_text("not an image, and not an image extension either")
    results = predict(classifier, [tmp_path])
    expected = sorted(str(p) for p in (tmp_path / "top.png", tmp_path / "a/middle.png", tmp_path / "a/b/DEEP.PNG"))
    assert [r["input"] for r in results] == expected
    assert all("error" not in r for r in results)


def test_top_k_gives_sorted_classes_and_accepts_pil_images(digits_validation, classifier):
    image = Image.open(sorted(digits_validation.glob("three/*.png"))[0])
    (result,) = predict(classifier, [image], top_k=3)
    assert result["input"] == "<image 0>"
    scores = [t["score"] for t in result["top_k"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True) and sum(scores) <= 1.0 + 1e-6
    assert result["top_k"][0] == {"label": result["label"], "score": result["score"]}
    assert len({t["label"] for t in result["top_k"]}) == 3
    (everything,) = predict(classifier, [image], top_k=100)  # more than there are classes
    assert len(everything["top_k"]) == 10 and sum(t["score"] for t in everything["top_k"]) == pytest.approx(1.0)


def test_unreadable_files_get_an_error_line_and_exit_status_1(tmp_path, model_dir, digits_validation, capsys):
    good = sorted(digits_validation.glob("zero/*.png"))[0]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    missing = tmp_path / "missing.png"
    argv = ["--model", str(model_dir), str(broken), str(good), str(missing), str(truncated), "--json"]
    assert predict_script.main(argv) == 1
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["input"] for line in lines] == [str(broken), str(good), str(missing), str(truncated)]
    assert "UnidentifiedImageError" in lines[0]["error"]
    assert lines[1]["label"] and "error" not in lines[1]
    assert "no such file" in lines[2]["error"] and "error" in lines[3]
    # A header and a closing summary on stderr: stdout stays pure JSON lines.
    assert captured.err.startswith(f"Model {model_dir}: 10 classes, torch backend; 4 inputs\n")
    assert "1 of 4 inputs classified in " in captured.err and "; 3 could not be (see their error" in captured.err


def test_table_output_is_readable(model_dir, digits_validation, capsys):
    images = sorted(digits_validation.glob("five/*.png"))[:2]
    assert predict_script.main(["--model", str(model_dir), *map(str, images), "--top_k", "2"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["file", "label", "probability", "top", "2"]
    assert len(rows) == 2
    for image, row in zip(images, rows):
        name, label, probability, *top = row.split()
        assert name == str(image) and 0.0 < float(probability) <= 1.0
        assert top[0] == label and len(top) == 4  # "label score, label score"


def test_top_k_above_the_number_of_classes_is_clamped_with_one_note(model_dir, digits_validation, capsys):
    image = sorted(digits_validation.glob("five/*.png"))[0]
    assert predict_script.main(["--model", str(model_dir), str(image), "--top_k", "1000"]) == 0
    captured = capsys.readouterr()
    header, row = captured.out.splitlines()
    assert header.split()[-2:] == ["top", "10"] and len(row.split()) == 3 + 2 * 10
    assert "--top_k 1000: the model has 10 classes, so all 10 are shown." in captured.err
    assert captured.err.count("--top_k") == 1


def test_http_urls_are_downloaded(model_dir, digits_validation, classifier, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=digits_validation)
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        local = sorted(digits_validation.glob("four/*.png"))[0]
        base = f"http://127.0.0.1:{server.server_address[1]}"
        results = predict(classifier, [f"{base}/four/{local.name}", f"{base}/four/absent.png"], top_k=2)
    finally:
        server.shutdown()
        server.server_close()
    (expected,) = predict(classifier, [local], top_k=2)
    assert results[0]["top_k"] == expected["top_k"]
    assert "HTTPError" in results[1]["error"] and "404" in results[1]["error"]


def test_bad_usage_is_a_clear_message_with_status_2(tmp_path, capsys):
    assert predict_script.main(["--model", str(tmp_path / "no-such-run"), "x.png"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "outputs/smoke" in err and "Traceback" not in err
    # Offline, a Hub id that is not cached cannot be fetched: the same kind of message, no traceback.
    assert predict_script.main(["--model", "nobody-here/no-such-model", "x.png"]) == 2
    assert "could not be fetched" in capsys.readouterr().err
    # A folder with a config but no weights is refused before loading, without talk of pickled weights it lacks.
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "num_labels": 2}))
    assert predict_script.main(["--model", str(tmp_path), "x.png"]) == 2
    err = capsys.readouterr().err
    assert f"--model: {tmp_path} holds no model weights (model.safetensors)" in err and "pickled" not in err
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickled")  # that one is named, with how to convert it
    assert predict_script.main(["--model", str(tmp_path), "x.png"]) == 2
    assert "holds no model.safetensors. Only safetensors weights are loaded" in capsys.readouterr().err
    (tmp_path / "pytorch_model.bin").unlink()
    # Weights the pipeline cannot load: the message says from where.
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    assert predict_script.main(["--model", str(tmp_path), "x.png"]) == 2
    err = capsys.readouterr().err
    assert f"could not load an image classifier and its image processor from {tmp_path}" in err
    assert "Traceback" not in err
    assert predict_script.main(["--model", str(tmp_path), "x.png", "--top_k", "0"]) == 2
    assert "top_k and batch_size must be at least 1" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without a GPU")
def test_asking_for_a_missing_gpu_is_a_usage_error(model_dir, capsys):
    assert predict_script.main(["--model", str(model_dir), "x.png", "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_an_image_above_the_pixel_limit_is_an_error_line_without_a_warning(tmp_path, model_dir, digits_validation,
                                                                          capsys):  # fmt: skip
    """Training's limit (Pillow's threshold, above which Pillow only warns): 10000 x 9000 pixels is read from the
    header and refused, not decoded; the other images are classified."""
    assert DataArguments().max_image_pixels == MAX_IMAGE_PIXELS == 89_478_485  # one limit, training's default
    big, good = tmp_path / "big.png", sorted(digits_validation.glob("zero/*.png"))[0]
    Image.new("1", (10_000, 9_000)).save(big)  # 1 bit per pixel: a small file, 270 MB once decoded to RGB
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert predict_script.main(["--model", str(model_dir), str(big), str(good), "--json"]) == 1
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    captured = capsys.readouterr()
    first, second = map(json.loads, captured.out.splitlines())
    limit = f"DecompressionBombError: 10000x9000 pixels is more than the limit of {MAX_IMAGE_PIXELS} (max_image_pixels)"
    assert first["error"] == limit
    assert second["label"] and "Warning" not in captured.err


CUSTOM_CODE = """open({marker!r}, "w").close()  # the proof that this file ran
from transformers import ViTConfig, ViTForImageClassification


class EvilConfig(ViTConfig):
    model_type = "evilnet"


class EvilModel(ViTForImageClassification):
    config_class = EvilConfig
"""


def test_a_model_that_ships_its_own_code_is_refused_unless_trusted(model_dir, digits_validation, tmp_path, monkeypatch,
                                                                   capsys):  # fmt: skip
    """predict.py (both backends), demo.py and export.py refuse before transformers is asked, which on a terminal
    offers to run the code (and runs it on a `y`); --trust_remote_code runs it."""
    folder = Path(shutil.copytree(model_dir, tmp_path / "evilnet", ignore=shutil.ignore_patterns("checkpoint-*")))
    marker = tmp_path / "ran"
    config = json.loads((folder / "config.json").read_text())
    auto_map = {"AutoConfig": "custom.EvilConfig", "AutoModelForImageClassification": "custom.EvilModel"}
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "evilnet", "auto_map": auto_map}))
    (folder / "custom.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    asked = []
    monkeypatch.setattr(builtins, "input", lambda prompt="": asked.append(prompt) or "y")  # a user answering y
    image = str(sorted(digits_validation.glob("four/*.png"))[0])
    # Its model_type without the code (no auto_map): transformers' raw ValueError becomes one paragraph.
    unknown = Path(shutil.copytree(folder, tmp_path / "unknown", ignore=shutil.ignore_patterns("custom.py")))
    (unknown / "config.json").write_text(json.dumps({**config, "model_type": "evilnet"}))
    assert export_script.main([str(unknown), "--images", image]) == 2
    err = capsys.readouterr().err
    assert f"{unknown}: transformers could not load its ModelForImageClassification (ValueError: " in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    for what, script, argv in (("--model", predict_script, ["--model", str(folder), image]),
                               ("--model", predict_script, ["--model", str(folder), image, "--backend", "onnx"]),
                               ("OUTPUT_DIR", export_script, [str(folder), "--images", image]),
                               ("OUTPUT_DIR", demo_script, [str(folder), "--examples", "2"])):  # fmt: skip
        assert script.main(argv) == 2
        err = capsys.readouterr().err
        assert f"{what}: {folder} ships its own code (the Python files that auto_map in its config.json names)" in err
        assert "add --trust_remote_code" in err and "Traceback" not in err
    assert asked == [] and not marker.exists()
    assert predict_script.main(["--model", str(folder), image, "--json", "--trust_remote_code"]) == 0
    assert marker.exists() and asked == []
    expected = json.loads(capsys.readouterr().out)
    assert export_script.main([str(folder), "--images", image, "--trust_remote_code"]) == 0
    argv = ["--model", str(folder), image, "--backend", "onnx", "--json", "--trust_remote_code"]
    assert predict_script.main(argv) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["label"] == expected["label"]
    import gradio  # the app is built with the shipped model; serving it is test_demo.py's part

    monkeypatch.setattr(gradio.Blocks, "launch", lambda self, **options: None)
    assert demo_script.main([str(folder), "--trust_remote_code"]) == 0
