"""The Gradio app of `python demo.py OUTPUT_DIR`: upload an image, get the model's top-5 classes.

The model runs through `vitrecipes.predict` (transformers' pipeline() on the output folder), so the page shows
what `predict.py` prints. Import this module only after GRADIO_ANALYTICS_ENABLED is set (demo.py does).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import gradio as gr
import yaml

from .artifacts import RESOLVED_RECIPE_NAME
from .config import DataArguments
from .data import load_raw_dataset
from .images import load_rgb
from .predict import load_classifier, predict

logger = logging.getLogger(__name__)
TOP_K = 5
_DATA_KEYS = ("dataset_name", "dataset_config_name", "dataset_revision", "image_column_name")


def example_images(folder: Path, split: str, count: int) -> list[str]:
    """`count` images of `split` of the dataset the run recorded, as PNG files; none (the reason logged) when
    that dataset cannot be read here."""
    if count < 1:
        return []
    try:
        recipe = yaml.safe_load((folder / RESOLVED_RECIPE_NAME).read_text(encoding="utf-8"))
        args = DataArguments(**{key: recipe[key] for key in _DATA_KEYS if key in recipe})
        splits = load_raw_dataset(args)
        if split not in splits:
            raise KeyError(f"{args.dataset_name} has no split '{split}', only {', '.join(splits)}")
        dataset = splits[split]
    except Exception as error:  # noqa: BLE001 - examples are optional: any failure leaves them out, saying why
        logger.warning("No example images (%s: %s); the demo works without them.", type(error).__name__, error)
        return []
    rows = dataset.shuffle(seed=0).select(range(min(count, len(dataset))))
    target = Path(tempfile.mkdtemp(prefix="vitrecipes-demo-"))  # gradio serves files from the temp folder
    for i, row in enumerate(rows):
        load_rgb(row[args.image_column_name]).save(target / f"{i}.png")
    return [str(target / f"{i}.png") for i in range(len(rows))]


def build_demo(folder: Path, examples: list[str] = (), trust_remote_code: bool = False) -> gr.Blocks:
    classifier = load_classifier(folder, trust_remote_code=trust_remote_code)

    def classify(upload: dict | None) -> dict[str, float]:
        if not upload:
            raise gr.Error("No image yet: upload one (or pick an example), then press Classify.")
        result, name = predict(classifier, upload["path"], top_k=TOP_K)[0], upload.get("orig_name") or "The upload"
        if "error" in result:
            raise gr.Error(f"{name} could not be read as an image "
                           f"({result['error'].replace(upload['path'], name)}). Upload a photo file "
                           "(JPEG, PNG, WebP, BMP, GIF or TIFF) and press Classify again.")  # fmt: skip
        return {top["label"]: top["score"] for top in result["top_k"]}

    classes = len(classifier.model.config.id2label)
    with gr.Blocks(title=f"{folder.name}: image classifier") as demo:
        gr.Markdown(f"## {folder.name}\nUpload an image and press **Classify**: the top {TOP_K} of {classes} classes.")
        with gr.Row():
            image = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"], height=300,
                             elem_id="image")  # fmt: skip
            label = gr.Label(num_top_classes=TOP_K, label="Prediction", elem_id="prediction")
        button = gr.Button("Classify", variant="primary")
        if examples:
            gr.Examples([[path] for path in examples], inputs=image)
        # preprocess=False: the upload reaches classify as the file gradio stored, unopened, so that it is decoded
        # as training decoded images and a non-image gets our message, not gradio's PIL error.
        button.click(classify, inputs=image, outputs=label, preprocess=False, api_name="predict")
    return demo
