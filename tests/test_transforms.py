"""Every image mode becomes 3-channel RGB, EXIF orientation is applied, and both pipelines give model-sized tensors."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import pil_to_tensor
from transformers import ViTImageProcessor

from vitrecipes.config import DataArguments
from vitrecipes.images import load_rgb
from vitrecipes.transforms import Preprocessing, image_size_from_processor


def _save(tmp_path, image: Image.Image, name: str, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return str(path)


def _modes(tmp_path):
    rgb = Image.new("RGB", (24, 16), (200, 100, 50))
    palette_transparent = rgb.convert("P")
    palette_transparent.info["transparency"] = 0
    sixteen = Image.fromarray(np.full((16, 24), 65535, dtype=np.uint16))
    return {
        "L": _save(tmp_path, rgb.convert("L"), "l.png"),
        "LA": _save(tmp_path, rgb.convert("LA"), "la.png"),
        "P": _save(tmp_path, rgb.convert("P"), "p.png"),
        "P+transparency": _save(tmp_path, palette_transparent, "pt.png"),
        "RGBA": _save(tmp_path, rgb.convert("RGBA"), "rgba.png"),
        "CMYK": _save(tmp_path, rgb.convert("CMYK"), "cmyk.jpg"),
        "I;16": _save(tmp_path, sixteen, "i16.png"),
        "1": _save(tmp_path, rgb.convert("1"), "bw.png"),
        "RGB jpeg": _save(tmp_path, rgb, "rgb.jpg"),
        "gif": _save(tmp_path, rgb.convert("P"), "anim.gif"),
    }


def test_every_mode_becomes_rgb(tmp_path):
    for mode, path in _modes(tmp_path).items():
        image = load_rgb({"path": path, "bytes": None})
        assert image.mode == "RGB", mode
        assert image.size == (24, 16), mode


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    path = _modes(tmp_path)["I;16"]
    assert Image.open(path).mode.startswith("I")
    assert np.asarray(load_rgb(path)).min() == 255


def test_transparent_pixels_become_white(tmp_path):
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    path = _save(tmp_path, clear, "clear.png")
    assert np.asarray(load_rgb(path))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(tmp_path, image, "rotated.jpg", exif=exif.tobytes())
    assert Image.open(path).size == (40, 20)
    assert load_rgb(path).size == (20, 40)


def test_bytes_and_paths_are_both_read(tmp_path):
    path = _modes(tmp_path)["RGB jpeg"]
    data = open(path, "rb").read()
    assert load_rgb({"bytes": data, "path": None}).size == load_rgb(path).size


@pytest.mark.parametrize("augmentation", ["random_resized_crop", "none"])
def test_pipelines_give_normalised_model_sized_tensors(tmp_path, augmentation):
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    prep = Preprocessing.build(processor, DataArguments(train_augmentation=augmentation, eval_crop_pct=0.875))
    assert prep.size == (32, 32)
    batch = {"image": list(_modes(tmp_path).values()), "label": list(range(10))}
    for train in (True, False):
        out = prep.batch_transform(train, "image", "label")(batch)
        assert all(p.dtype == torch.uint8 for p in out["pixel_values"])  # normalised per batch, in collate
        tensors = prep.collate([{"pixel_values": p, "labels": y} for p, y in zip(out["pixel_values"], out["labels"])])
        assert tensors["pixel_values"].shape == (10, 3, 32, 32)
        assert tensors["pixel_values"].dtype == torch.float32
        assert -1.0 - 1e-6 <= tensors["pixel_values"].min() and tensors["pixel_values"].max() <= 1.0 + 1e-6
        assert tensors["labels"].tolist() == list(range(10))


def test_eval_transform_is_deterministic(tmp_path):
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    prep = Preprocessing.build(processor, DataArguments())
    image = load_rgb(_modes(tmp_path)["RGB jpeg"])
    assert torch.equal(prep.eval(image), prep.eval(image))


def test_size_comes_from_the_processor():
    assert image_size_from_processor(ViTImageProcessor(size={"height": 224, "width": 160})) == (224, 160)

    class ShortestEdge:
        size = {"shortest_edge": 256}
        crop_size = {"height": 224, "width": 224}
        do_center_crop = True

    assert image_size_from_processor(ShortestEdge()) == (224, 224)


def test_batch_path_and_single_image_path_agree(tmp_path):
    """Evaluation (batched, normalised in collate) and predict.py (one image at a time) see the same tensor."""
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2] * 3)
    prep = Preprocessing.build(processor, DataArguments(eval_crop_pct=0.875))
    paths = list(_modes(tmp_path).values())
    out = prep.batch_transform(False, "image", "label")({"image": paths, "label": [0] * len(paths)})
    batch = prep.collate([{"pixel_values": p, "labels": 0} for p in out["pixel_values"]])
    single = torch.stack([prep.eval(load_rgb(p)) for p in paths])
    assert torch.equal(batch["pixel_values"], single)


def _photos(tmp_path, count=4):
    rng = np.random.default_rng(1)
    return [
        _save(tmp_path, Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)), f"{i}.jpg")
        for i in range(count)
    ]


def test_train_transform_is_the_recipes_torchvision_augmentation():
    processor = ViTImageProcessor(size={"height": 32, "width": 48}, image_mean=[0.2, 0.4, 0.6])
    data = DataArguments(random_resized_crop_scale=[0.35, 1.0], auto_augment="trivial", random_erasing=0.25)
    prep = Preprocessing.build(processor, data)
    crop, flip, policy, erasing = prep.train_transform.transforms
    assert isinstance(crop, v2.RandomResizedCrop) and list(crop.size) == [32, 48] and crop.scale == (0.35, 1.0)
    assert isinstance(flip, v2.RandomHorizontalFlip) and isinstance(policy, v2.TrivialAugmentWide)
    assert isinstance(erasing, v2.RandomErasing) and erasing.p == 0.25
    assert erasing.value == [51, 102, 153]  # the mean in uint8: erased areas are zeros at the model input
    pixels = torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8)
    torch.manual_seed(0)
    assert {prep.train_uint8(pixels).shape for _ in range(50)} == {(3, 32, 48)}
    plain = Preprocessing.build(processor, DataArguments(horizontal_flip=False, auto_augment="rand"))
    assert [type(t) for t in plain.train_transform.transforms] == [v2.RandomResizedCrop, v2.RandAugment]
    none = Preprocessing.build(processor, DataArguments(train_augmentation="none", auto_augment="trivial"))
    assert none.train_transform is None and torch.equal(none.train_uint8(pixels), none.eval_uint8(pixels))


def test_eval_resize_matches_pillow_bilinear():
    """The uint8 torchvision resize and centre crop give Pillow's antialiased bilinear result, down and up."""
    smooth = np.linspace(0, 255, 120 * 90 * 3).reshape(120, 90, 3)
    image = Image.fromarray((smooth + 20 * np.sin(smooth / 7)).clip(0, 255).astype(np.uint8))  # 90 wide, 120 high
    for size, resize_to in [((32, 32), 36), ((64, 48), 64), ((150, 150), 150)]:
        prep = Preprocessing(size=size, mean=[0.5] * 3, std=[0.5] * 3, resize_to=resize_to)
        ours = prep.eval_uint8(pil_to_tensor(image))
        height = int(resize_to * 120 / 90)  # the shorter side (the width) becomes resize_to
        top, left = (height - size[0]) // 2, (resize_to - size[1]) // 2
        resized = image.resize((resize_to, height), Image.BILINEAR)
        theirs = np.asarray(resized.crop((left, top, left + size[1], top + size[0]))).transpose(2, 0, 1)
        assert ours.shape == (3, *size) and ours.dtype == torch.uint8
        assert np.abs(ours.numpy().astype(int) - theirs).mean() < 1.0, size


def test_train_augmentation_is_reproducible_from_the_seed_and_flips(tmp_path):
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    paths = _photos(tmp_path)
    rows = {"image": paths, "label": [0, 1, 2, 3]}
    prep = Preprocessing.build(processor, DataArguments())
    outputs = []
    for _ in range(2):
        torch.manual_seed(7)
        outputs.append(prep.batch_transform(True, "image", "label")(rows)["pixel_values"])
    assert all(torch.equal(a, b) for a, b in zip(*outputs))
    no_flip = Preprocessing.build(processor, DataArguments(horizontal_flip=False))
    flips = set()
    for seed in range(40):
        torch.manual_seed(seed)
        plain = no_flip.train_uint8(pil_to_tensor(load_rgb(paths[0])))
        torch.manual_seed(seed)
        maybe_flipped = prep.train_uint8(pil_to_tensor(load_rgb(paths[0])))
        flips.add(not torch.equal(plain, maybe_flipped))
        assert torch.equal(plain, maybe_flipped) or torch.equal(plain.flip(-1), maybe_flipped)
    assert flips == {True, False}


@pytest.mark.parametrize("start_method", [None, "spawn"])  # spawn (and forkserver) pickle the transform
def test_dataloader_workers_transform_batches(tmp_path, start_method):
    """With workers, each worker process decodes and transforms its own batches."""
    import datasets

    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    paths = _photos(tmp_path, count=8)
    raw = datasets.Dataset.from_dict({"image": [{"path": p, "bytes": None} for p in paths], "label": list(range(8))})
    prep = Preprocessing.build(processor, DataArguments())
    dataset = raw.with_transform(prep.batch_transform(True, "image", "label"))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=4, num_workers=2, collate_fn=prep.collate, multiprocessing_context=start_method
    )
    batches = list(loader)
    assert [b["pixel_values"].shape for b in batches] == [(4, 3, 32, 32)] * 2
    assert sorted(torch.cat([b["labels"] for b in batches]).tolist()) == list(range(8))


def test_jpeg_draft_decodes_the_train_split_small_and_evaluation_whole(tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 384, 3), dtype=np.uint8)).save(photo, quality=90)
    assert load_rgb(str(photo), draft=(32, 32)).size == (48, 32)  # 1/8: the smallest scale still covering 32 px
    drafted, whole = (Preprocessing((32, 32), [0.5] * 3, [0.5] * 3, resize_to=32, jpeg_draft=d) for d in (True, False))
    rows = {"image": [{"path": str(photo), "bytes": None}], "label": [0]}

    def pixels(prep, split):
        return prep.batch_transform(False, "image", "label", split)(rows)["pixel_values"][0]

    assert torch.equal(pixels(drafted, "validation"), pixels(whole, "validation"))  # what pipeline() sees: whole
    assert not torch.equal(pixels(drafted, "train"), pixels(whole, "train"))  # training and the probe: drafted
