"""Heads of another size are replaced, from-scratch configs are checked, bad checkpoints are explained."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import run_cli
from transformers import (
    BertConfig,
    BertModel,
    Trainer,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

from vitrecipes.config import ModelArguments
from vitrecipes.errors import RecipeError
from vitrecipes.modeling import build_image_processor, build_model
from vitrecipes.training import RecipeTrainer, load_weights

CLASSES = ["apple", "banana", "hot dog"]


def test_head_of_another_size_is_replaced(tiny_checkpoint):
    model = build_model(ModelArguments(model_name_or_path=str(tiny_checkpoint)), CLASSES)
    assert model.classifier.out_features == 3
    assert model.config.id2label == {0: "apple", 1: "banana", 2: "hot dog"}
    assert model.config.label2id == {"apple": 0, "banana": 1, "hot dog": 2}
    assert build_image_processor(ModelArguments(model_name_or_path=str(tiny_checkpoint))).size.height == 32


def test_headless_checkpoint_gets_a_new_head(tmp_path):
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    backbone = ViTModel(config, add_pooling_layer=False)
    backbone.save_pretrained(tmp_path)
    model = build_model(ModelArguments(model_name_or_path=str(tmp_path)), CLASSES)
    assert model.classifier.out_features == 3
    # The pre-trained backbone really is loaded, not re-initialised.
    expected = backbone.embeddings.patch_embeddings.projection.weight
    assert torch.equal(model.vit.embeddings.patch_embeddings.projection.weight, expected)


def test_from_scratch_config_and_processor():
    args = ModelArguments(
        model_name_or_path=None,
        model_type="vit",
        config_overrides={
            "image_size": 48,
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
    )
    model = build_model(args, CLASSES)
    assert model.config.hidden_size == 32 and model.config.num_labels == 3
    assert build_image_processor(args).size.height == 48


def test_unknown_config_override_is_named():
    args = ModelArguments(model_name_or_path=None, model_type="vit", config_overrides={"hiden_size": 32})
    with pytest.raises(RecipeError, match=r"config_overrides: \['hiden_size'\]"):
        build_model(args, CLASSES)


def test_missing_checkpoint_folder_is_named(tmp_path):
    with pytest.raises(RecipeError, match=r"model_name_or_path: the folder .*missing does not exist"):
        build_model(ModelArguments(model_name_or_path=str(tmp_path / "missing")), CLASSES)


def test_hub_checkpoint_offline_says_so():
    with pytest.raises(RecipeError, match=r"HF_HUB_OFFLINE is set"):
        build_image_processor(ModelArguments(model_name_or_path="someone/not-cached-vit"))


def test_text_model_is_not_an_image_classifier(tmp_path):
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=50)
    ).save_pretrained(tmp_path)
    with pytest.raises(RecipeError, match=r"not an image-classification architecture"):
        build_model(ModelArguments(model_name_or_path=str(tmp_path)), CLASSES)


def test_load_weights_restores_every_tensor(tiny_checkpoint, tmp_path):
    # Guards against transformers 5 renaming ViT parameters on save: a raw load_state_dict(strict=False)
    # of the file silently skips the encoder. load_weights must restore all of it.
    source = build_model(ModelArguments(model_name_or_path=str(tiny_checkpoint)), CLASSES)
    source.save_pretrained(tmp_path)
    target = build_model(ModelArguments(model_name_or_path=str(tiny_checkpoint)), CLASSES)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(1.0)
    load_weights(target, str(tmp_path))
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name


def test_attention_kernel_defaults_to_the_library_choice_and_an_unsupported_one_is_explained():
    # ConvNeXt has no attention: the default must build it, an explicit 'sdpa' must say what to do.
    convnext = ModelArguments(model_name_or_path=None, model_type="convnext")
    assert build_model(convnext, ["a", "b"]).config.num_labels == 2
    convnext.attn_implementation = "sdpa"
    with pytest.raises(RecipeError, match="attn_implementation: convnext cannot use this attention kernel.*eager"):
        build_model(convnext, ["a", "b"])
    vit = ModelArguments(model_name_or_path=None, model_type="vit", attn_implementation="eager",
                         config_overrides={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                           "intermediate_size": 64, "image_size": 32})  # fmt: skip
    assert build_model(vit, ["a", "b"]).config._attn_implementation == "eager"


def test_drop_path_rate_acts_on_a_from_scratch_model_or_is_refused():
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32}
    dinov2 = ModelArguments(model_name_or_path=None, model_type="dinov2", config_overrides=small, drop_path_rate=0.2)
    assert build_model(dinov2, CLASSES).config.drop_path_rate == 0.2
    vit = ModelArguments(model_name_or_path=None, model_type="vit", config_overrides=small, drop_path_rate=0.2)
    with pytest.raises(RecipeError, match="drop_path_rate: vit models have no stochastic depth"):
        build_model(vit, CLASSES)


def test_a_checkpoint_that_ships_its_own_code_needs_trust_remote_code(tiny_checkpoint, tmp_path):
    """Its code is never run; the message names the folder and the key that allows it. An unknown model_type
    gave transformers' raw ValueError; a known one (vit) silently built the library's class instead."""
    marker = tmp_path / "code_ran"

    def with_code(model_type: str) -> Path:
        folder = Path(shutil.copytree(tiny_checkpoint, tmp_path / model_type))
        config = json.loads((folder / "config.json").read_text())
        auto_map = {"AutoConfig": "custom.EvilConfig", "AutoModelForImageClassification": "custom.EvilModel"}
        (folder / "config.json").write_text(json.dumps({**config, "model_type": model_type, "auto_map": auto_map}))
        (folder / "custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
        return folder

    folder = with_code("evilnet")
    result = run_cli("recipes/smoke.yaml", "--model_name_or_path", folder, "--model_type", "null",
                     "--config_overrides", "null", "--output_dir", tmp_path / "out", "--max_train_samples", "32",
                     "--max_eval_samples", "16", "--num_train_epochs", "1")  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{folder} ships its own code" in result.stderr and "trust_remote_code: true" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(RecipeError, match=r"ships its own code.*trust_remote_code: true"):
        ModelArguments(model_name_or_path=str(with_code("vit")))
    assert not marker.exists()


@pytest.mark.parametrize("trainer_class", [Trainer, RecipeTrainer])
def test_trainer_reloads_of_a_vit_checkpoint_keep_the_encoder(trainer_class, tiny_checkpoint, tmp_path):
    # transformers 5.24.0 saves ViT under legacy names and Trainer's reloads (load_state_dict strict=False) skip
    # them (huggingface/transformers#43701). If plain Trainer passes here, remove RecipeTrainer's two overrides.
    data = [{"pixel_values": torch.randn(3, 32, 32), "labels": i % 5} for i in range(4)]
    scores = iter([1.0, 0.0])  # checkpoint-1 is the best
    args = dict(use_cpu=True, report_to="none", learning_rate=0.1, per_device_train_batch_size=4, save_steps=1)
    at_end = dict(load_best_model_at_end=True, metric_for_best_model="score")
    trainer = trainer_class(
        model=ViTForImageClassification.from_pretrained(tiny_checkpoint),
        args=TrainingArguments(tmp_path / "a", max_steps=2, eval_strategy="steps", eval_steps=1, **at_end, **args),
        train_dataset=data,
        eval_dataset=data,
        compute_metrics=lambda _: {"score": next(scores)},
    )
    trainer.train()
    best = ViTForImageClassification.from_pretrained(tmp_path / "a" / "checkpoint-1").state_dict()
    # Resuming from checkpoint-1 with nothing left to train: only the reload acts.
    resumed = trainer_class(
        model=ViTForImageClassification.from_pretrained(tiny_checkpoint),
        args=TrainingArguments(tmp_path / "b", max_steps=1, **args),
        train_dataset=data,
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-1"))
    for model in (trainer.model, resumed.model):
        kept = [torch.equal(value, best[name]) for name, value in model.state_dict().items()]
        assert all(kept) == (trainer_class is RecipeTrainer), sum(kept)


def test_image_size_resamples_the_pretrained_position_table_once(tiny_checkpoint):
    names = [f"c{i}" for i in range(5)]  # the checkpoint's own head size: every weight comes from it
    resized = build_model(ModelArguments(model_name_or_path=str(tiny_checkpoint), image_size=48), names).eval()
    original = ViTForImageClassification.from_pretrained(tiny_checkpoint).eval()
    pixels = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = original(pixel_values=pixels, interpolate_pos_encoding=True).logits
        assert torch.allclose(resized(pixel_values=pixels).logits, expected, atol=1e-5)
    assert resized.config.image_size == 48 and resized.dtype == original.dtype
