"""Shared fixtures: everything offline, built in temporary folders from real files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SNACKS = (ROOT.parent / "shared" / "data" / "snacks").resolve()

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


CLASS_COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def class_image(colour, seed: int, size=(40, 30)) -> Image.Image:
    """A noisy image dominated by one colour: trivially learnable, still real pixels."""
    rng = np.random.default_rng(seed)
    base = np.array(colour, dtype=np.float32)
    pixels = np.clip(base + rng.normal(0, 25, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def write_imagefolder(root: Path, splits: dict[str, int], classes=CLASS_COLOURS, fmt="png") -> Path:
    """root/<split>/<class>/<i>.<fmt>, `splits[split]` images per class."""
    seed = 0
    for split, per_class in splits.items():
        for name, colour in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                seed += 1
                class_image(colour, seed).save(folder / f"{i}.{fmt}")
    return root


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


# The timeout only catches a hang: on a loaded 2-core machine one smoke run has taken 10 minutes.
def run_cli(*args, cwd=ROOT, timeout=1800) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run_snacks.py"), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )


def evaluate_only(output_dir: Path, *extra) -> subprocess.CompletedProcess:
    """The documented evaluation-only command for a finished run: its resolved recipe, --do_train false."""
    return run_cli(output_dir / "resolved_recipe.yaml", "--do_train", "false", *extra)


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


DINOV2 = (ROOT.parent / "shared" / "models" / "dinov2-small").resolve()


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
    seed = 100
    for split, per_class in {"train": 10, "validation": 4, "test": 4}.items():
        for name, colour in CLASS_COLOURS.items():
            folder = tmp_path / "jpegs" / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                seed += 1
                size = (72, 48) if i % 2 else (45, 70)  # landscape and portrait
                class_image(colour, seed, size=size).save(folder / f"{i}.jpg", quality=85)
    return tmp_path / "jpegs"
