"""Shared fixtures: everything offline, built in temporary folders from real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import run_cli, write_imagefolder

# Set before transformers / datasets are imported by any test module.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    os.environ["VITRECIPES_CACHE"] = str(cache / "vitrecipes")
    os.environ["HF_DATASETS_CACHE"] = str(cache / "datasets")
    yield


@pytest.fixture
def imagefolder(tmp_path) -> Path:
    return write_imagefolder(tmp_path / "colours", {"train": 8, "validation": 3, "test": 3})


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random ViT classifier with a 5-way head, saved like a Hub checkpoint."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    path = tmp_path_factory.mktemp("tiny-vit")
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
    )
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """`python run_snacks.py recipes/smoke.yaml`, run once as a user would, shared by many tests."""
    out = tmp_path_factory.mktemp("smoke") / "out"
    result = run_cli("recipes/smoke.yaml", "--output_dir", out)
    assert result.returncode == 0, result.stderr[-4000:]
    return out, result


@pytest.fixture(scope="session")
def digits_validation(tmp_path_factory) -> Path:
    """The built-in digits' validation split as <class name>/<i>.png files, the PNGs the run evaluated."""
    from vitrecipes.config import DataArguments
    from vitrecipes.data import class_names, load_splits

    args = DataArguments(dataset_name="builtin:digits")
    splits = load_splits(args)
    root, names = tmp_path_factory.mktemp("digits-validation"), class_names(splits, args)
    for i, row in enumerate(splits["validation"]):
        (root / names[row["label"]]).mkdir(exist_ok=True)
        (root / names[row["label"]] / f"{i:04d}.png").write_bytes(row["image"]["bytes"])
    return root


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory) -> Path:
    """A random DINOv2 backbone (no head), saved like the shared pretrained one."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    path = tmp_path_factory.mktemp("tiny-dinov2")
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, mlp_ratio=2, patch_size=8, image_size=32
    )
    Dinov2Model(config).save_pretrained(path)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture
def jpeg_folder(tmp_path) -> Path:
    """Non-square JPEG photos (the eval resize and centre crop matter), 3 colour classes."""
    return write_imagefolder(tmp_path / "jpegs", {"train": 10, "validation": 4, "test": 4}, fmt="jpg",
                             sizes=[(45, 70), (72, 48)], seed=100, quality=85)  # fmt: skip


@pytest.fixture(scope="session")
def model_dir(smoke_run) -> Path:
    """The smoke run's output folder: a trained model with its processor, card and reports."""
    return smoke_run[0]
