"""Real runs: the smoke recipe as a user runs it, fine-tuning a checkpoint, evaluation only, real snacks."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import SNACKS, class_image, evaluate_only, run_cli, write_imagefolder
from transformers import AutoModelForImageClassification, pipeline

import run_snacks
from vitrecipes.config import DataArguments
from vitrecipes.data import DIGIT_NAMES, class_names, load_splits


def test_smoke_recipe_trains_far_above_chance(smoke_run):
    out, result = smoke_run
    metrics = json.loads((out / "metrics.json").read_text())
    # 10 classes: chance is 0.10. A pipeline that does not really train stays near it.
    assert metrics["validation"]["accuracy"] > 0.6
    assert metrics["test"]["accuracy"] > 0.6
    assert metrics["validation"]["samples"] == 300 and metrics["test"]["samples"] == 300
    assert metrics["train"]["samples"] == 1197 and metrics["train"]["train_loss"] > 0
    assert metrics["effective_batch_size"] == 32



def test_a_run_records_the_data_it_used_and_older_runs_are_read_alike(smoke_run, tmp_path):
    from vitrecipes.experiments import run_data

    out, _ = smoke_run
    metrics = json.loads((out / "metrics.json").read_text())
    splits = {"train": 1197, "validation": 300, "test": 300}
    assert metrics["data"] == {"dataset": "builtin:digits", "splits": splits, "classes": sorted(DIGIT_NAMES)}
    # A run from before the record: its resolved recipe, sample counts and config.json say the same.
    for name in ("resolved_recipe.yaml", "config.json"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    (tmp_path / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if k != "data"}))
    assert run_data(tmp_path) == run_data(out) == metrics["data"]


def test_best_checkpoint_is_the_saved_model(smoke_run):
    out, _ = smoke_run
    (checkpoint,) = list(out.glob("checkpoint-*"))  # save_total_limit: 1 keeps only the best
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    best = max(e["eval_accuracy"] for e in state["log_history"] if "eval_accuracy" in e)
    assert json.loads((out / "metrics.json").read_text())["validation"]["accuracy"] == pytest.approx(best)


def test_outputs_are_safetensors_with_processor_and_resolved_recipe(smoke_run):
    out, _ = smoke_run
    assert (out / "model.safetensors").exists()
    assert [p.name for p in out.glob("*.bin")] == ["training_args.bin"]  # no pickled weights
    assert (out / "preprocessor_config.json").exists()
    recipe = yaml.safe_load((out / "resolved_recipe.yaml").read_text())
    assert recipe["dataset_name"] == "builtin:digits" and recipe["learning_rate"] == pytest.approx(2e-3)
    assert recipe["remove_unused_columns"] is False


def test_label_names_round_trip(smoke_run):
    out, _ = smoke_run
    args = DataArguments(dataset_name="builtin:digits")
    names = class_names(load_splits(args), args)
    model = AutoModelForImageClassification.from_pretrained(out)
    assert [model.config.id2label[i] for i in range(len(names))] == names
    assert sorted(names) == sorted(DIGIT_NAMES)


def test_pipeline_reloads_the_output_folder_and_names_the_classes(smoke_run, digits_validation):
    out, _ = smoke_run
    classifier = pipeline("image-classification", model=str(out))
    images = sorted(digits_validation.glob("*/*.png"))[::30]
    correct = 0
    for path in images:
        top = classifier(str(path), top_k=1)[0]
        assert top["label"] in DIGIT_NAMES
        correct += top["label"] == path.parent.name
    assert correct / len(images) > 0.6


def test_evaluation_only_reproduces_the_metrics_without_touching_the_run(smoke_run):
    out, _ = smoke_run
    before = (out / "metrics.json").read_text(), (out / "resolved_recipe.yaml").read_text()
    weights = (out / "model.safetensors").read_bytes()
    reports = {p: p.read_bytes() for p in out.glob("eval_*/*") if p.is_file()}
    result = evaluate_only(out)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((out / "eval_only_metrics.json").read_text())
    trained = json.loads(before[0])
    for split in ("validation", "test"):
        assert evaluated[split]["accuracy"] == pytest.approx(trained[split]["accuracy"])
    assert evaluated["data"] == trained["data"] and "calibration" not in evaluated  # trained without a temperature
    assert ((out / "metrics.json").read_text(), (out / "resolved_recipe.yaml").read_text()) == before
    assert (out / "model.safetensors").read_bytes() == weights
    assert {p: p.read_bytes() for p in reports} == reports  # its own reports go to eval_only_<split>/
    report = json.loads((out / "eval_only_test" / "metrics.json").read_text())
    assert report["accuracy"] == evaluated["test"]["accuracy"]


def test_fine_tunes_a_checkpoint_with_a_new_head_and_no_test_split(tmp_path, tiny_checkpoint, caplog, monkeypatch):

    from vitrecipes import hardware

    monkeypatch.setattr(hardware, "native_cpu_bf16", lambda: False)  # a CPU without AMX / AVX512-BF16

    data = write_imagefolder(tmp_path / "data", {"train": 12, "validation": 4})
    out = tmp_path / "out"
    metrics = run_snacks.main(
        [
            "--model_name_or_path",
            str(tiny_checkpoint),
            "--dataset_name",
            str(data),
            "--output_dir",
            str(out),
            "--num_train_epochs",
            "2",
            "--per_device_train_batch_size",
            "8",
            "--learning_rate",
            "5e-3",
            "--use_cpu",
            "--eval_crop_pct",
            "0.875",
            # The GPU recipes' speed settings run unchanged here: fused AdamW and an explicit attention
            # kernel work on a CPU, bf16 and tf32 are switched off with a warning.
            "--bf16",
            "--tf32",
            "--optim",
            "adamw_torch_fused",
            "--attn_implementation",
            "eager",
        ]
    )
    assert "test" not in metrics and "validation" in metrics
    assert "test step will be skipped" in caplog.text
    assert "bf16: switched off, no CUDA GPU here" in caplog.text and "tf32: switched off" in caplog.text
    resolved = yaml.safe_load((out / "resolved_recipe.yaml").read_text())
    assert (resolved["bf16"], resolved["optim"], resolved["attn_implementation"]) == (
        False,
        "adamw_torch_fused",
        "eager",
    )
    model = AutoModelForImageClassification.from_pretrained(out)
    assert model.config.num_labels == 3 and model.config.id2label[2] == "red"


@pytest.mark.skipif(not SNACKS.is_dir(), reason="the snacks copy lies in ../shared/data/snacks, absent here")
def test_tiny_vit_on_the_real_snacks_photos(tmp_path):
    out = tmp_path / "snacks"
    result = run_cli(
        "recipes/vit-tiny-scratch/snacks/config_cpu.yaml",
        "--dataset_name",
        SNACKS,
        "--output_dir",
        out,
        "--num_train_epochs",
        "1",
        "--max_train_samples",
        "160",
        "--max_eval_samples",
        "60",
        "--per_device_train_batch_size",
        "16",
        "--config_overrides.num_hidden_layers",
        "2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation"]["samples"] == 60 and metrics["test"]["samples"] == 60
    # The reported accuracy is the one of the stored predictions, over the real photos' labels.
    stored = np.load(out / "eval_test" / "predictions.npz")
    assert len(stored["labels"]) == 60 and set(stored["labels"]) <= set(range(20))
    assert metrics["test"]["accuracy"] == pytest.approx(float((stored["logits"].argmax(1) == stored["labels"]).mean()))
    assert np.isfinite(metrics["test"]["loss"]) and metrics["train"]["global_step"] == 10  # 160 photos / 16
    config = json.loads(Path(out / "config.json").read_text())
    assert len(config["id2label"]) == 20 and config["id2label"]["8"] == "hot dog"


def test_class_order_of_the_dataset_is_the_models(tmp_path):
    import datasets

    colours = {"banana": (230, 210, 40), "apple": (220, 30, 30), "hot dog": (30, 40, 220)}  # not sorted
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(colours))})

    def split(per_class, seed):
        ids = [k for _ in range(per_class) for k in range(len(colours))]
        images = [class_image(list(colours.values())[k], seed + i) for i, k in enumerate(ids)]
        return datasets.Dataset.from_dict({"image": images, "label": ids}, features)

    datasets.DatasetDict({"train": split(8, 0), "validation": split(2, 500)}).save_to_disk(tmp_path / "fruit")
    out = tmp_path / "out"
    run_snacks.main(
        ["recipes/smoke.yaml", "--dataset_name", str(tmp_path / "fruit"), "--output_dir", str(out),
         "--num_train_epochs", "2", "--per_device_train_batch_size", "8"]
    )  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "banana", "1": "apple", "2": "hot dog"}
    assert config["label2id"] == {"banana": 0, "apple": 1, "hot dog": 2}
    classifier = pipeline("image-classification", model=str(out))
    for name, colour in colours.items():  # a new image of each class is named as that class
        assert classifier(class_image(colour, 999), top_k=1)[0]["label"] == name


@pytest.mark.parametrize("adaptation", ["lp_ft", "linear_probe"])
def test_bf16_on_a_cpu_trains_and_extracts_probe_features_in_bf16_and_evaluates_in_fp32(
    tmp_path, tiny_checkpoint, caplog, monkeypatch, adaptation
):
    import torch

    from vitrecipes import hardware

    monkeypatch.setattr(hardware, "native_cpu_bf16", lambda: True)  # autocast runs on any CPU, only slower
    data = write_imagefolder(tmp_path / "data", {"train": 12, "validation": 4, "test": 4})
    out = tmp_path / "out"
    seen = []  # (training?, dtype) of every classifier output, in order

    def record(module, _inputs, output):
        if isinstance(module, torch.nn.Linear) and module.out_features == 3:
            seen.append((module.training, output.dtype))

    loop = ["--max_steps", "3", "--per_device_train_batch_size", "4", "--eval_strategy", "no", "--save_strategy", "no",
            "--load_best_model_at_end", "false"] if adaptation == "lp_ft" else []  # a probe has no Trainer loop
    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        metrics = run_snacks.main(
            ["--model_name_or_path", str(tiny_checkpoint), "--dataset_name", str(data), "--output_dir", str(out),
             "--adaptation", adaptation, "--use_cpu", "--bf16", *loop]
        )  # fmt: skip
    finally:
        hook.remove()
    assert "bf16: kept, this CPU computes bf16 natively" in caplog.text
    phases = [step for i, step in enumerate(seen) if i == 0 or step != seen[i - 1]]  # runs of one (mode, dtype)
    expected = [
        (False, torch.float32),  # one blank image through the model (adaptation.freeze_unused)
        (False, torch.bfloat16),  # the probe's features
        *([(True, torch.bfloat16)] if adaptation == "lp_ft" else []),  # the training steps
        (False, torch.float32),  # validation and test
    ]
    assert phases == expected
    if adaptation == "linear_probe":
        return
    # The reported figures are those of the saved fp32 weights: an evaluation-only run (fp32) repeats them.
    result = evaluate_only(out)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((out / "eval_only_metrics.json").read_text())
    for split in ("validation", "test"):
        assert evaluated[split]["accuracy"] == pytest.approx(metrics[split]["accuracy"])
        assert evaluated[split]["cross_entropy"] == pytest.approx(metrics[split]["cross_entropy"], abs=1e-6)
