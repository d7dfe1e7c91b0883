"""What the tests share besides fixtures (conftest.py): paths, generated images, the commands as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SNACKS = (ROOT.parent / "shared" / "data" / "snacks").resolve()
DINOV2 = (ROOT.parent / "shared" / "models" / "dinov2-small").resolve()
CLASS_COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def class_image(colour, seed: int, size=(40, 30)) -> Image.Image:
    """A noisy image dominated by one colour: trivially learnable, still real pixels."""
    rng = np.random.default_rng(seed)
    base = np.array(colour, dtype=np.float32)
    pixels = np.clip(base + rng.normal(0, 25, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def write_imagefolder(root: Path, splits: dict[str, int], classes=CLASS_COLOURS, fmt="png", sizes=None, seed=0,
                      **save) -> Path:  # fmt: skip
    """root/<split>/<class>/<i>.<fmt>, `splits[split]` images per class; `sizes`: image sizes taken in turn."""
    for split, per_class in splits.items():
        for name, colour in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                seed += 1
                size = sizes[i % len(sizes)] if sizes else (40, 30)
                class_image(colour, seed, size=size).save(folder / f"{i}.{fmt}", **save)
    return root


# Subprocesses import this checkout's package and test helpers, whatever is installed.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}


# The timeout only catches a hang: on a loaded 2-core machine one smoke run has taken 10 minutes.
def run_cli(*args, cwd=ROOT, timeout=1800, script="run_snacks.py") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, env=ENV,
    )  # fmt: skip


def evaluate_only(output_dir: Path, *extra) -> subprocess.CompletedProcess:
    """The documented evaluation-only command for a finished run: its resolved recipe, --do_train false."""
    return run_cli(output_dir / "resolved_recipe.yaml", "--do_train", "false", *extra)


def launch(*args, options=("--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no"), timeout=900, popen=False):  # fmt: skip
    """`accelerate launch` as a user types it (two CPU processes over gloo by default) from the repository root."""
    command = [sys.executable, "-m", "accelerate.commands.launch", *options, *map(str, args)]
    if popen:
        return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ENV)
