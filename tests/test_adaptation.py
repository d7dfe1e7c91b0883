"""Adaptation modes and fine-tuning techniques: real Trainer runs on tiny checkpoints and real images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, ViTConfig, ViTForImageClassification

import run_snacks
from vitrecipes.adaptation import fit_linear_head, freeze_first_blocks, head_features, parameter_groups
from vitrecipes.errors import RecipeError
from vitrecipes.training import BatchMixing, RecipeTrainer


def _run(tmp_path, checkpoint, data, *extra, name="out"):
    out = tmp_path / name
    loop = [] if "linear_probe" in extra else [  # a probe has no Trainer loop for these to act in
        "--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--learning_rate", "1.0e-3", "--logging_steps",
        "1",
    ]  # fmt: skip
    argv = [
        "--model_name_or_path", str(checkpoint), "--dataset_name", str(data), "--output_dir", str(out), *loop,
        "--use_cpu", "--report_to", "none", *map(str, extra),
    ]  # fmt: skip
    return out, run_snacks.main(argv)


def _tiny_vit(**config) -> ViTForImageClassification:
    return ViTForImageClassification(
        ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
                  image_size=16, patch_size=8, **config)
    )  # fmt: skip


def _weights(folder) -> dict:
    """Parameters as the model names them (the file may use legacy names that from_pretrained renames)."""
    return AutoModelForImageClassification.from_pretrained(folder).state_dict()


def _backbone(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("classifier")}


def test_linear_probe_keeps_the_backbone_fits_the_head_and_reuses_its_features(
    tmp_path, tiny_dinov2, jpeg_folder, monkeypatch
):
    import vitrecipes.adaptation

    monkeypatch.setenv("VITRECIPES_CACHE", str(tmp_path / "cache"))
    asked, used, extract = [], [], vitrecipes.adaptation.head_features

    def spy(model, loader, **kwargs):  # the device asked for, and the one the backbone computes on
        asked.append(kwargs.get("device"))
        hook = model.register_forward_pre_hook(lambda module, _: used.append(next(module.parameters()).device))
        try:
            return extract(model, loader, **kwargs)
        finally:
            hook.remove()

    monkeypatch.setattr(vitrecipes.adaptation, "head_features", spy)
    out, metrics = _run(tmp_path, tiny_dinov2, jpeg_folder, "--adaptation", "linear_probe")
    # The features are computed on the Trainer's device (here the CPU; a GPU where there is one).
    assert asked == [torch.device("cpu")] and set(used) == {torch.device("cpu")}
    saved = _weights(out)
    original = AutoModelForImageClassification.from_pretrained(tiny_dinov2, num_labels=3).state_dict()
    for key, value in _backbone(saved).items():
        assert torch.equal(value, original[key]), key  # the backbone did not move
    assert metrics["probe"]["probe_samples"] == 30 and not metrics["probe"]["probe_features_cached"]
    # Colour classes are linearly separable in any random feature space that keeps colour.
    assert metrics["validation"]["accuracy"] == 1.0 and metrics["test"]["accuracy"] == 1.0
    assert not list(out.glob("checkpoint-*"))  # no Trainer loop: the head is fitted directly
    card = (out / "README.md").read_text()
    assert "| adaptation | linear_probe |" in card
    assert len(list((tmp_path / "cache" / "probe-features").glob("*.npz"))) == 1

    _, again = _run(tmp_path, tiny_dinov2, jpeg_folder, "--adaptation", "linear_probe", name="again")
    assert again["probe"]["probe_features_cached"]
    assert again["validation"]["accuracy"] == metrics["validation"]["accuracy"]


def test_fitted_head_reproduces_the_logistic_regression_exactly(tiny_dinov2, jpeg_folder):
    """The standardisation folded into the head gives scikit-learn's decisions, as logits."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    model = AutoModelForImageClassification.from_pretrained(tiny_dinov2, num_labels=3)
    generator = torch.Generator().manual_seed(0)
    batches = [
        {"pixel_values": torch.randn(6, 3, 32, 32, generator=generator), "labels": torch.tensor([0, 1, 2] * 2)}
        for _ in range(3)
    ]
    fit_linear_head(model, batches, regularization=0.5)
    features, labels = head_features(model, batches)
    scaler = StandardScaler().fit(features)
    reference = LogisticRegression(C=0.5, max_iter=1000).fit(scaler.transform(features), labels)
    with torch.no_grad():
        logits = torch.cat([model(pixel_values=b["pixel_values"]).logits for b in batches]).numpy()
    expected = reference.decision_function(scaler.transform(features))
    np.testing.assert_allclose(
        logits - logits.mean(1, keepdims=True), expected - expected.mean(1, keepdims=True), atol=1e-3
    )


def test_lp_ft_starts_from_the_probe_then_trains_everything(tmp_path, tiny_dinov2, jpeg_folder, monkeypatch):
    monkeypatch.setenv("VITRECIPES_CACHE", str(tmp_path / "cache"))
    out, metrics = _run(tmp_path, tiny_dinov2, jpeg_folder, "--adaptation", "lp_ft", "--learning_rate", "1.0e-3")
    assert metrics["probe"]["probe_samples"] == 30 and metrics["train"]["global_step"] == 8
    saved = _weights(out)
    original = AutoModelForImageClassification.from_pretrained(tiny_dinov2, num_labels=3).state_dict()
    moved = [k for k, v in _backbone(saved).items() if not torch.equal(v, original[k])]
    assert any("encoder.layer.0." in k for k in moved)  # the whole backbone trained after the probe


def test_lora_output_is_a_plain_merged_checkpoint(tmp_path, tiny_dinov2, jpeg_folder):
    out, metrics = _run(tmp_path, tiny_dinov2, jpeg_folder, "--adaptation", "lora", "--lora_rank", "4")
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and "adapter_config.json" not in names
    assert "adapter_model.safetensors" not in names
    assert not any("lora" in k for k in load_file(out / "model.safetensors"))
    saved = _weights(out)
    original = AutoModelForImageClassification.from_pretrained(tiny_dinov2, num_labels=3).state_dict()
    moved = {k for k, v in _backbone(saved).items() if not torch.equal(v, original[k])}
    assert moved and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in moved)  # merged adapters only
    reloaded = AutoModelForImageClassification.from_pretrained(out)  # no peft needed
    assert type(reloaded).__name__ == "Dinov2ForImageClassification"
    assert metrics["validation"]["samples"] == 12


def test_lora_merge_gives_the_adapted_model_outputs(tiny_dinov2):
    from vitrecipes.adaptation import MODES, add_lora

    torch.manual_seed(0)
    model = add_lora(
        AutoModelForImageClassification.from_pretrained(tiny_dinov2, num_labels=3), 4, 8.0, 0.0, ["q_proj"]
    )
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter)  # B starts at zero: make the adapters do something
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        adapted = model(pixel_values=x).logits
        merged = MODES["lora"].finish(model)
        assert not hasattr(merged, "peft_config")
        np.testing.assert_allclose(merged(pixel_values=x).logits.numpy(), adapted.numpy(), atol=1e-5)


def test_freeze_keeps_the_first_blocks_and_trains_the_rest(tmp_path, tiny_dinov2, jpeg_folder):
    out, _ = _run(tmp_path, tiny_dinov2, jpeg_folder, "--adaptation", "freeze", "--freeze_blocks", "2")
    saved = _weights(out)
    original = AutoModelForImageClassification.from_pretrained(tiny_dinov2, num_labels=3).state_dict()
    moved = {k for k, v in _backbone(saved).items() if not torch.equal(v, original[k])}
    assert not any("embeddings" in k or ".layer.0." in k or ".layer.1." in k for k in moved)
    assert any(".layer.2." in k for k in moved)


def test_freeze_blocks_out_of_range_is_named():
    model = _tiny_vit()
    with pytest.raises(RecipeError, match="freeze_blocks: 3 is not between 1 and the model's 2 blocks"):
        freeze_first_blocks(model, 3)


def test_head_multiplier_and_layer_decay_set_each_group_rate():
    model = _tiny_vit(num_labels=3)
    decay = {n for n, _ in model.named_parameters() if not n.endswith("bias")}
    groups = parameter_groups(model, decay, 1.0, 0.1, head_multiplier=10.0, layer_decay=0.5)
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert rate[id(params["classifier.weight"])] == 10.0
    assert rate[id(params["vit.layernorm.weight"])] == 1.0  # after the last block
    assert rate[id(params["vit.layers.1.mlp.fc2.weight"])] == 0.5
    assert rate[id(params["vit.layers.0.mlp.fc2.weight"])] == 0.25
    assert rate[id(params["vit.embeddings.cls_token"])] == 0.125
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert wd[id(params["classifier.bias"])] == 0.0 and wd[id(params["classifier.weight"])] == 0.1
    assert sum(len(g["params"]) for g in groups) == len(params)


def test_trainer_optimizer_uses_the_groups(tmp_path, tiny_checkpoint):
    from vitrecipes.config import RecipeTrainingArguments

    args = RecipeTrainingArguments(
        output_dir=str(tmp_path), learning_rate=1e-3, head_learning_rate_multiplier=5.0, use_cpu=True,
        report_to="none", eval_strategy="no", load_best_model_at_end=False,
    )  # fmt: skip
    model = AutoModelForImageClassification.from_pretrained(tiny_checkpoint)
    optimizer = RecipeTrainer(model=model, args=args).create_optimizer()
    rates = sorted({group["lr"] for group in optimizer.param_groups})
    assert rates == pytest.approx([1e-3, 5e-3])


def test_batch_mixing_gives_soft_targets_and_spares_placeholders():
    torch.manual_seed(0)
    mixing = BatchMixing(num_classes=4, mixup_alpha=0.4, cutmix_alpha=1.0)
    pixels, labels = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    mixed, targets = mixing(pixels, labels)
    assert targets.shape == (6, 4) and torch.allclose(targets.sum(1), torch.ones(6))
    assert (targets > 0).sum() > 6  # two classes per row after mixing
    _, targets = mixing(pixels, torch.tensor([0, 1, -100, 3, 0, 1]))
    assert targets[2].sum() == 0 and torch.equal(targets[0], torch.tensor([1.0, 0, 0, 0]))


def _first_step_log(tmp_path, per_device: int, accumulation: int, mixing) -> dict:
    """Loss and gradient norm of one optimiser step over the same 16 images."""
    from vitrecipes.config import RecipeTrainingArguments

    torch.manual_seed(0)
    model = _tiny_vit(num_labels=3)
    generator = torch.Generator().manual_seed(0)
    images = [{"pixel_values": torch.randn(3, 16, 16, generator=generator), "labels": i % 3} for i in range(16)]
    args = RecipeTrainingArguments(
        output_dir=str(tmp_path / f"{per_device}x{accumulation}"), per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation, max_steps=1, logging_steps=1, use_cpu=True, report_to="none",
        eval_strategy="no", save_strategy="no", load_best_model_at_end=False,
    )  # fmt: skip
    trainer = RecipeTrainer(model=model, args=args, train_dataset=images, batch_mixing=mixing)
    trainer.train()
    return trainer.state.log_history[0]


def _one_hot(pixels, labels):  # a deterministic stand-in for MixUp: the mixing path's soft targets, unmixed
    return pixels, torch.nn.functional.one_hot(labels, 3).float()


@pytest.mark.parametrize("mixing", [None, _one_hot], ids=["plain", "mixing"])
def test_accumulated_batches_give_the_loss_and_gradient_of_one_big_batch(tmp_path, mixing):
    whole, accumulated = _first_step_log(tmp_path, 16, 1, mixing), _first_step_log(tmp_path, 8, 2, mixing)
    assert accumulated["loss"] == pytest.approx(whole["loss"], rel=1e-4)
    assert accumulated["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-4)
    if mixing is not None:  # one-hot targets: the mixing loss is the plain cross-entropy
        assert whole["loss"] == pytest.approx(_first_step_log(tmp_path, 16, 1, None)["loss"], rel=1e-4)


def test_every_technique_together_trains_and_saves_the_weight_average(tmp_path, tiny_dinov2, jpeg_folder):
    out, metrics = _run(
        tmp_path, tiny_dinov2, jpeg_folder,
        "--auto_augment", "trivial", "--random_erasing", "0.25", "--mixup_alpha", "0.2", "--cutmix_alpha", "1.0",
        "--label_smoothing_factor", "0.1", "--drop_path_rate", "0.1", "--layer_decay", "0.75",
        "--head_learning_rate_multiplier", "10", "--ema_decay", "0.5", "--load_best_model_at_end", "false",
        "--save_strategy", "no", "--lr_scheduler_type", "cosine", "--warmup_steps", "0.25",
    )  # fmt: skip
    assert np.isfinite(metrics["train"]["train_loss"])
    assert AutoModelForImageClassification.from_pretrained(out).config.drop_path_rate == 0.1
    # The saved weights are the average: evaluating them again gives the reported numbers.
    _, again = _run(tmp_path, out, jpeg_folder, "--do_train", "false", name="eval")
    assert again["validation"]["accuracy"] == metrics["validation"]["accuracy"]
    assert again["validation"]["cross_entropy"] == pytest.approx(metrics["validation"]["cross_entropy"], abs=1e-5)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--adaptation", "probe"], "adaptation: invalid choice: 'probe'"),
        (["--adaptation", "freeze"], "freeze_blocks must be 1 or more"),
        (["--ema_decay", "0.99"], "Set load_best_model_at_end: false"),
        (["--layer_decay", "1.5"], "layer_decay must lie in"),
        (["--drop_path_rate", "0.1"], "vit models have no stochastic depth"),
        (["--adaptation", "lora", "--lora_target_modules", "qkv"], "lora_target_modules: ['qkv']"),
        (["--auto_augment", "autoaugment"], "auto_augment: invalid choice: 'autoaugment'"),
        (["--mixup_alpha", "-1"], "mixup_alpha must be 0"),
    ],
)
def test_bad_adaptation_settings_are_named(tmp_path, tiny_checkpoint, imagefolder, extra, message):
    with pytest.raises(RecipeError) as error:
        _run(tmp_path, tiny_checkpoint, imagefolder, *extra)
    assert message in str(error.value)


def test_image_size_makes_a_vit_checkpoint_native_at_the_new_size(tmp_path, tiny_checkpoint, jpeg_folder):
    out, metrics = _run(tmp_path, tiny_checkpoint, jpeg_folder, "--image_size", "48", "--num_train_epochs", "1")
    config = json.loads((out / "config.json").read_text())
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert config["image_size"] == 48 and processor["crop_size"] == {"height": 48, "width": 48}
    model = AutoModelForImageClassification.from_pretrained(out)
    assert model.vit.embeddings.position_embeddings.shape[1] == 1 + (48 // 8) ** 2
    model(pixel_values=torch.zeros(1, 3, 48, 48))  # no interpolate_pos_encoding flag needed
    assert metrics["validation"]["samples"] == 12


def _random_batches(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        {"pixel_values": torch.randn(6, 3, 32, 32, generator=generator), "labels": torch.tensor([0, 1, 2] * 2)}
        for _ in range(3)
    ]


def test_a_two_class_probe_gives_the_logit_difference_and_no_weight_to_unseen_classes(tiny_dinov2):
    """scikit-learn keeps one row for two classes; a class missing from train gets no probability."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    model = AutoModelForImageClassification.from_pretrained(tiny_dinov2, num_labels=3)
    batches = [{**b, "labels": torch.tensor([0, 2] * 3)} for b in _random_batches()]
    fit_linear_head(model, batches, regularization=0.5)
    features, labels = head_features(model, batches)
    scaled = StandardScaler().fit_transform(features)
    expected = LogisticRegression(C=0.5, max_iter=1000).fit(scaled, labels).decision_function(scaled)
    with torch.no_grad():
        logits = torch.cat([model(pixel_values=b["pixel_values"]).logits for b in batches])
    np.testing.assert_allclose((logits[:, 2] - logits[:, 0]).numpy(), expected, atol=1e-3)
    assert logits.softmax(-1)[:, 1].max() < 1e-6


@pytest.mark.parametrize("corruption", ["truncated", "emptied", "bit-flipped"])
def test_unreadable_feature_cache_is_named_removed_and_recomputed(tmp_path, tiny_dinov2, caplog, corruption):
    cache = tmp_path / "probe-features" / "entry.npz"
    model = AutoModelForImageClassification.from_pretrained(tiny_dinov2, num_labels=3)
    fit_linear_head(model, _random_batches(), regularization=0.5, cache_file=cache)
    fitted = model.classifier.weight.detach().clone()
    data = bytearray(cache.read_bytes())
    if corruption == "truncated":
        data = data[: len(data) // 2]
    elif corruption == "emptied":
        data = bytearray()
    else:
        data[len(data) // 2] ^= 0xFF  # inside the stored feature array: only the zip's CRC notices
    cache.write_bytes(bytes(data))

    summary = fit_linear_head(model, _random_batches(), regularization=0.5, cache_file=cache)
    assert not summary["probe_features_cached"]
    assert any(str(cache) in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert torch.allclose(model.classifier.weight, fitted)
    with np.load(cache) as stored:  # rewritten whole, so the next run reads it
        assert stored["features"].shape[0] == 18
    assert fit_linear_head(model, _random_batches(), regularization=0.5, cache_file=cache)["probe_features_cached"]
    assert [p.name for p in cache.parent.iterdir()] == ["entry.npz"]  # no temporary file left behind


def test_lp_ft_fine_tunes_from_the_fitted_probe_head(tmp_path, tiny_dinov2, jpeg_folder, monkeypatch):
    """At learning rate 0 fine-tuning moves nothing, so the saved head is the one training started from: it must
    give the decisions of a logistic regression fitted here on the features the run cached."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    monkeypatch.setenv("VITRECIPES_CACHE", str(tmp_path / "cache"))
    out, _ = _run(
        tmp_path, tiny_dinov2, jpeg_folder, "--adaptation", "lp_ft", "--learning_rate", "0", "--max_steps", "2",
        "--save_strategy", "no", "--eval_strategy", "no", "--load_best_model_at_end", "false",
    )  # fmt: skip
    (cache,) = (tmp_path / "cache" / "probe-features").glob("*.npz")
    with np.load(cache) as stored:
        features, labels = stored["features"], stored["labels"]
    scaler = StandardScaler().fit(features)
    expected = LogisticRegression(C=0.1, max_iter=1000).fit(scaler.transform(features), labels)
    expected = expected.decision_function(scaler.transform(features))
    saved = _weights(out)
    logits = features @ saved["classifier.weight"].double().numpy().T + saved["classifier.bias"].double().numpy()
    np.testing.assert_allclose(
        logits - logits.mean(1, keepdims=True), expected - expected.mean(1, keepdims=True), atol=1e-3
    )


def test_saved_model_is_the_moving_average_of_the_weights(tmp_path, tiny_dinov2, jpeg_folder, monkeypatch):
    """An average computed here, step by step with torch's EMA rule, must be what the output folder holds."""
    from transformers import TrainerCallback

    decay, average, last = 0.5, {}, {}

    class Recorder(TrainerCallback):  # runs after WeightAverage's step hook: added later
        def on_step_end(self, args, state, control, model=None, **kwargs):
            for name, value in model.named_parameters():
                value = value.detach().double().clone()
                # AveragedModel copies the weights at its first update, then lerps towards each step's.
                average[name] = value if name not in average else decay * average[name] + (1 - decay) * value
                last[name] = value

    build = run_snacks.build_trainer

    def with_recorder(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.add_callback(Recorder())
        return trainer

    monkeypatch.setattr(run_snacks, "build_trainer", with_recorder)
    out, metrics = _run(
        tmp_path, tiny_dinov2, jpeg_folder, "--ema_decay", str(decay), "--load_best_model_at_end", "false",
        "--save_strategy", "no", "--eval_strategy", "no", "--max_steps", "4",
    )  # fmt: skip
    assert metrics["train"]["global_step"] == 4
    saved = _weights(out)
    for name, value in average.items():
        torch.testing.assert_close(saved[name].double(), value, atol=1e-6, rtol=1e-5)
    assert any(not torch.allclose(saved[name].double(), last[name]) for name in last)


def test_feature_cache_key_follows_the_training_rows_and_the_eval_side():
    # The key reads datasets' private Dataset._fingerprint (checked with datasets 5.2.0): this fails if it goes
    # away or stops following the rows.
    from dataclasses import replace

    from datasets import Dataset

    from vitrecipes.adaptation import feature_cache_file
    from vitrecipes.config import DataArguments, ModelArguments
    from vitrecipes.data import rows_key
    from vitrecipes.transforms import Preprocessing

    model_args = ModelArguments(model_name_or_path="org/some-model")
    prep = Preprocessing.build(None, DataArguments(), image_size=32)
    rows = Dataset.from_dict({"label": [0, 1, 2]})
    key = feature_cache_file(Path("cache"), model_args, prep, rows_key(rows))
    assert key == feature_cache_file(Path("cache"), model_args, prep, rows_key(Dataset.from_dict({"label": [0, 1, 2]})))
    assert key != feature_cache_file(Path("cache"), model_args, prep, rows_key(rows.select([0, 1])))
    assert key != feature_cache_file(Path("cache"), model_args, replace(prep, jpeg_draft=True), rows_key(rows))
    # FixRes: the evaluation side does not change the training features the probe is fitted on.
    assert prep.at_eval_size(48, 1.0).size == (48, 48) and prep.size == (32, 32)


def test_patch_dropout_trains_on_a_random_part_of_the_patches_and_evaluates_on_all(tiny_dinov2):
    from vitrecipes.adaptation import add_patch_dropout

    model = AutoModelForImageClassification.from_pretrained(tiny_dinov2, num_labels=3)
    add_patch_dropout(model, 0.5)
    seen = []
    model.dinov2.encoder.layer[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    pixels = torch.randn(2, 3, 32, 32)  # 8 px patches: 16 patches and the class token
    model.train()(pixel_values=pixels).logits.sum().backward()
    model.eval()(pixel_values=pixels)
    assert seen == [1 + 8, 1 + 16]
    assert model.dinov2.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    torch.manual_seed(0)
    first = model.dinov2.embeddings(pixels)
    torch.manual_seed(0)
    model.train()
    kept = model.dinov2.embeddings(pixels)
    # The class token stays; each image keeps 8 of its own patches (different ones for each image).
    assert torch.equal(kept[:, 0], first[:, 0]) and kept.shape == (2, 9, first.shape[-1])
    rows = [{tuple(t.tolist()) for t in kept[i, 1:]} <= {tuple(t.tolist()) for t in first[i, 1:]} for i in range(2)]
    assert all(rows)


def test_patch_dropout_is_refused_for_a_model_without_patch_tokens():
    from transformers import ResNetConfig, ResNetForImageClassification

    from vitrecipes.adaptation import add_patch_dropout

    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], num_labels=2))
    with pytest.raises(RecipeError, match="patch_dropout: ResNetForImageClassification is not a ViT or DINOv2"):
        add_patch_dropout(model, 0.5)
