"""ONNX export of an output folder in transformers.js's layout (onnx/model.onnx fp32, onnx/model_quantized.onnx
int8), checked against PyTorch image by image (onnx/parity.json), and the ONNX Runtime classifier behind
`predict.py --backend onnx`. onnx and onnxruntime are imported only when used: training never needs them.

The exporter is torch.onnx.export(dynamo=False), TorchScript-based: on DINOv2-S at 112 px it took 15 s against
67 s for dynamo=True, with the same parity (max logit difference ~5e-6), and writes one file, no external data.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np

from . import artifacts
from .console import progress
from .errors import RecipeError, cause

ONNX = artifacts.EXPORTS["onnx"]
ONNX_DIR, (FP32_FILE, INT8_FILE, PARITY_FILE) = ONNX.folder, ONNX.files

MAX_LOGIT_DIFF = 1e-3
OPSET = 18
_ADVICE = ("Give the output folder of a training run, e.g. outputs/smoke after "
           "`python run_snacks.py recipes/smoke.yaml`.")  # fmt: skip


def load_saved(auto_class, folder: Path, trust_remote_code: bool, **options):
    """`auto_class.from_pretrained(folder)`; whatever transformers raises (an unknown model_type...) a RecipeError."""
    try:
        return auto_class.from_pretrained(folder, trust_remote_code=trust_remote_code, **options)
    except Exception as error:  # noqa: BLE001 - any loading failure gets the same paragraph
        raise RecipeError(f"{folder}: transformers could not load its {auto_class.__name__.removeprefix('Auto')} "
                          f"({cause(error)}). {_ADVICE}") from None  # fmt: skip


def open_session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session; a missing or unreadable file is a RecipeError saying how to export again."""
    ONNX.check_installed()
    import onnxruntime as ort

    folder = path.parent.parent
    if not path.is_file():
        raise RecipeError(f"--backend onnx: {path} does not exist. Export the model first: python export.py {folder} "
                          "(or set export: [onnx] in the recipe, which exports at the end of training).")  # fmt: skip
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - any ONNX Runtime load failure means the file is unusable
        raise RecipeError(f"{path} is not a readable ONNX model ({cause(error)}). Export it "
                          f"again: python export.py {folder} --overwrite") from None  # fmt: skip


def run_session(session, pixels: np.ndarray) -> np.ndarray:
    return session.run(None, {"pixel_values": pixels.astype(np.float32)})[0]


class OnnxClassifier:
    """What predict.py asks of a pipeline, through ONNX Runtime and the saved image processor (no torch model):
    called on PIL images, it gives each image's top_k [{label, score}]; `.model.config` is the saved config. An
    export older than the folder's weights, config or image processor is refused."""

    def __init__(self, folder: str | Path, quantized: bool = False, trust_remote_code: bool = False):
        from types import SimpleNamespace

        from transformers import AutoConfig, AutoImageProcessor

        folder = artifacts.require_model_folder(folder, "--model", _ADVICE, refuse_code=not trust_remote_code)
        artifacts.require_fresh_exports(folder)
        self.session = open_session(folder / ONNX_DIR / (INT8_FILE if quantized else FP32_FILE))
        self.processor = load_saved(AutoImageProcessor, folder, trust_remote_code)
        self.model = SimpleNamespace(config=load_saved(AutoConfig, folder, trust_remote_code))

    def __call__(self, images: list, top_k: int = 1, batch_size: int = 32) -> list[list[dict]]:
        id2label, results = self.model.config.id2label, []
        for start in range(0, len(images), batch_size):
            pixels = self.processor(images[start : start + batch_size], return_tensors="np")["pixel_values"]
            logits = run_session(self.session, pixels)
            probabilities = np.exp(logits - logits.max(-1, keepdims=True))  # softmax, as the pipeline's
            probabilities /= probabilities.sum(-1, keepdims=True)
            for row in probabilities:
                results.append([{"label": id2label[int(i)], "score": float(row[i])} for i in np.argsort(-row)[:top_k]])
        return results


def parity_images(folder: Path, split: str | None = None, images: list | None = None) -> tuple[list, list | None, str]:
    """(PIL images, label ids or None, what they are): the given files, else a split of the run's dataset."""
    from .predict import expand_inputs, read_image

    if images:
        pictures = []
        for item in expand_inputs(images):
            try:
                pictures.append(read_image(item))
            except Exception as error:  # noqa: BLE001 - parity needs every given image
                raise RecipeError(f"--images: {item} could not be read as an image ({cause(error)}). Give image "
                                  "files or folders of images only (leave this one out).") from None  # fmt: skip
        return pictures, None, f"{len(pictures)} given images"
    recipe = folder / artifacts.RESOLVED_RECIPE_NAME
    if not recipe.is_file():
        raise RecipeError(f"{folder} has no {recipe.name}, so its dataset is unknown: give --images.")
    from transformers import AutoConfig

    from .config import parse_recipe
    from .data import class_names, load_splits
    from .images import DECODE_ERRORS, load_rgb

    _, data_args, _, _ = parse_recipe([str(recipe), "--use_cpu", "true"])
    splits = load_splits(data_args)
    split = split or ("test" if "test" in splits else "validation")
    if split not in splits:
        raise RecipeError(f"--split {split}: the dataset has the splits {', '.join(splits)}.")
    names, label2id = class_names(splits, data_args), AutoConfig.from_pretrained(folder).label2id
    pictures, labels = [], []
    for row in splits[split]:
        with contextlib.suppress(*DECODE_ERRORS):  # an unreadable image is left out, as evaluation leaves it
            pictures.append(load_rgb(row[data_args.image_column_name], data_args.max_image_pixels))
            labels.append(label2id[names[row[data_args.label_column_name]]])
    return pictures, labels, f"the {split} split"


def export_model(model, path: Path, pixels: np.ndarray) -> None:
    """`model` (a transformers image classifier) to ONNX at `path`: pixel_values -> logits, dynamic batch. Traced
    on `pixels` (the processor's output: the run's size, which config.image_size, the checkpoint's, may not be)."""
    import torch

    class Logits(torch.nn.Module):  # a plain tensor out, not a ModelOutput
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).logits

    example = torch.from_numpy(np.concatenate([pixels, pixels])[:2])  # a batch of 2: 1 could be traced as a constant
    try:
        # The tracer warns about Python conditions on the input size: fixed here, as only the batch is dynamic.
        with warnings.catch_warnings(), _stdout_to_devnull():
            warnings.simplefilter("ignore")
            torch.onnx.export(Logits().eval(), (example,), str(path), input_names=["pixel_values"],
                              output_names=["logits"], opset_version=OPSET, dynamo=False,
                              dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}})  # fmt: skip
    except Exception as error:  # noqa: BLE001 - every exporter failure gets the same paragraph
        path.unlink(missing_ok=True)
        raise RecipeError("The model could not be exported to ONNX: "
                          f"{cause(error)}{_failing_layer(Logits(), example, error)}. Nothing else in the folder was "
                          "changed. Such an operator needs a newer ONNX opset or torch, or a model without that layer; "
                          "the model itself still works with predict.py (the torch backend).") from None  # fmt: skip


@contextlib.contextmanager
def _stdout_to_devnull():
    """The TorchScript exporter's C++ side prints the whole graph to stdout when an operator fails."""
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _failing_layer(module, example, error) -> str:
    """', in layer <name>': where the operator named in the error sits, from a trace's scopes ('' if unknown)."""
    import torch

    found = re.search(r"operator '([\w:.]+)'", str(error))  # UnsupportedOperatorError's message names it
    if not found:
        return ""
    with warnings.catch_warnings(), contextlib.suppress(Exception):
        warnings.simplefilter("ignore")
        graph = torch.jit.trace(module, (example,), check_trace=False).inlined_graph
        for node in graph.nodes():
            if node.kind() == found.group(1):
                return f", in layer {node.scopeName().split('/')[-1].removeprefix('__module.model.')}"
    return ""


def check_parity(model, processor, sessions, pictures: list, labels: list | None) -> dict:
    """PyTorch against the fp32 and int8 sessions on the same pixels: agreement, logit difference, accuracy."""
    import torch

    outputs = {"pytorch": [], "fp32": [], "int8": []}
    with torch.inference_mode():
        for start in progress(range(0, len(pictures), 32), "parity check (PyTorch, fp32, int8)"):
            pixels = processor(pictures[start : start + 32], return_tensors="np")["pixel_values"]
            outputs["pytorch"].append(model(pixel_values=torch.from_numpy(pixels)).logits.numpy())
            outputs["fp32"].append(run_session(sessions[0], pixels))
            outputs["int8"].append(run_session(sessions[1], pixels))
    logits = {name: np.concatenate(parts) for name, parts in outputs.items()}
    accuracy = {name: float((x.argmax(1) == np.asarray(labels)).mean()) for name, x in logits.items()} if labels else {}
    parity = {name: {"top1_agreement": float((logits["pytorch"].argmax(1) == logits[name].argmax(1)).mean()),
                     "max_abs_logit_diff": float(np.abs(logits["pytorch"] - logits[name]).max()),
                     **({"accuracy": accuracy[name]} if labels else {})} for name in ("fp32", "int8")}  # fmt: skip
    if labels:
        parity["pytorch"] = {"accuracy": accuracy["pytorch"]}
        parity["int8"]["accuracy_drop"] = parity["pytorch"]["accuracy"] - parity["int8"]["accuracy"]
    return parity


def export_folder(output_dir: str | Path, split: str | None = None, images: list | None = None,
                  overwrite: bool = False, log=print, trust_remote_code: bool = False) -> dict:  # fmt: skip
    """Write `<output_dir>/onnx/` (both files, then parity.json) and return the parity numbers. An export of the
    folder's current weights, config and image processor is kept unless `overwrite`; one of other files is made
    again. Raises RecipeError when fp32 disagrees with PyTorch."""
    ONNX.check_installed()
    folder = artifacts.require_model_folder(output_dir, "OUTPUT_DIR", _ADVICE, refuse_code=not trust_remote_code)
    onnx_dir, stale = folder / ONNX_DIR, artifacts.stale_export(folder, ONNX)
    files = [onnx_dir / FP32_FILE, onnx_dir / INT8_FILE]
    if not overwrite and not stale:
        log(f"Kept the ONNX export in {onnx_dir}: it is of these weights, config and image processor "
            "(--overwrite exports again).")  # fmt: skip
        return artifacts.read_record(folder, ONNX)
    if stale and onnx_dir.is_dir():
        log(f"Exporting again: {stale}.")
    for target in (folder, onnx_dir) if onnx_dir.is_dir() else (folder,):
        try:  # before any heavy work: a folder that cannot be written fails now, not after loading everything
            tempfile.TemporaryFile(dir=target).close()
        except OSError as error:
            raise RecipeError(f"OUTPUT_DIR: the export cannot be written into {target} ({cause(error)}). "
                              "Make it writable, or copy the folder somewhere you can write (cp -r "
                              f"{folder} my-copy) and export the copy.") from None  # fmt: skip
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoImageProcessor, AutoModelForImageClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the weight-loading bar
    inputs = artifacts.export_inputs(folder)  # the files as they are read next
    # fp32 whatever the saved dtype (bf16 after bf16_full_eval): ONNX Runtime's CPU kernels are fp32 and int8.
    model = load_saved(AutoModelForImageClassification, folder, trust_remote_code, use_safetensors=True,
                       dtype=torch.float32).eval()  # fmt: skip
    processor = load_saved(AutoImageProcessor, folder, trust_remote_code)
    pictures, labels, source = parity_images(folder, split, images)
    if not pictures:
        raise RecipeError(f"No readable image in {source} to check the export on: give --images.")
    onnx_dir.mkdir(exist_ok=True)
    # Written under other names, moved into place once they pass: a failure leaves an earlier export whole.
    partial = [path.with_suffix(".partial") for path in files]
    try:
        export_model(model, partial[0], processor(pictures[:2], return_tensors="np")["pixel_values"])
        quantize_dynamic(str(partial[0]), str(partial[1]), per_channel=True, weight_type=QuantType.QInt8)
        numbers = check_parity(model, processor, [open_session(path) for path in partial], pictures, labels)
        fp32 = numbers["fp32"]
        if fp32["top1_agreement"] < 1.0 or fp32["max_abs_logit_diff"] > MAX_LOGIT_DIFF:
            raise RecipeError(f"The fp32 ONNX model does not match PyTorch on {source}: top-1 agreement "
                              f"{fp32['top1_agreement']:.4f}, largest logit difference "
                              f"{fp32['max_abs_logit_diff']:.2e} (at most {MAX_LOGIT_DIFF:g} is accepted), so it was "
                              f"not written; nothing in {folder} was changed. An operator the exporter translates "
                              "differently is the likely cause: try a newer torch or onnxruntime.")  # fmt: skip
        for source_path, path in zip(partial, files):
            os.replace(source_path, path)
    finally:
        for path in partial:
            path.unlink(missing_ok=True)
    parity = {"images": len(pictures), "source": source, "inputs_sha256": inputs, "opset": OPSET,
              "exporter": "torch.onnx.export(dynamo=False)", "quantization": "dynamic, int8 weights, per channel",
              "file_mb": {path.name: round(path.stat().st_size / 1e6, 1) for path in files}, **numbers}  # fmt: skip
    # Last: an export counts as done (and is kept on a rerun) only once this file names what it was made from.
    (onnx_dir / PARITY_FILE).write_text(json.dumps(parity, indent=2) + "\n", encoding="utf-8")
    log(f"Wrote {files[0]}, {files[1]} and {onnx_dir / PARITY_FILE} ({summary(parity)}).")
    return parity


def summary(parity: dict) -> str:
    fp32, int8 = parity["fp32"], parity["int8"]
    text = f"fp32 agrees on {fp32['top1_agreement']:.2%} of {parity['images']} images, max logit diff "
    text += f"{fp32['max_abs_logit_diff']:.1e}; int8 agrees on {int8['top1_agreement']:.2%}"
    return text + (f", accuracy drop {int8['accuracy_drop'] * 100:.2f} points" if "accuracy_drop" in int8 else "")


Classifier = OnnxClassifier  # what predict.py --backend onnx serves with (artifacts.EXPORTS)
