"""Never lose a run: crash and resume, bad images, NaN losses, and the output-folder rules."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import ROOT, run_cli, write_imagefolder
from PIL import Image
from transformers import TrainingArguments

import run_snacks
from vitrecipes.config import DataArguments, ModelArguments, RecipeTrainingArguments, parse_recipe
from vitrecipes.errors import BadImagesError, RecipeError, user_message
from vitrecipes.modeling import build_model
from vitrecipes.outputs import (
    _RESUMABLE_DIFFERENCES,
    is_complete_checkpoint,
    last_complete_checkpoint,
    plan_output_dir,
)

# Two epochs of 15 steps, a checkpoint (and validation) every 5 steps.
CRASH_ARGS = [
    "--max_train_samples", "480", "--num_train_epochs", "2", "--save_strategy", "steps", "--save_steps", "5",
    "--eval_strategy", "steps", "--eval_steps", "5", "--save_total_limit", "3", "--logging_steps", "5",
]  # fmt: skip


def _command(out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "run_snacks.py"), "recipes/smoke.yaml", "--output_dir", str(out), *CRASH_ARGS]


def test_sigkill_then_same_command_resumes_and_matches_an_uninterrupted_run(tmp_path):
    env = dict(os.environ)
    baseline = subprocess.run(_command(tmp_path / "baseline"), cwd=ROOT, env=env, capture_output=True, text=True)
    assert baseline.returncode == 0, baseline.stderr[-3000:]

    out = tmp_path / "crashed"
    # stderr to a file: an unread pipe fills up and stalls the run, the more so the slower the machine.
    with open(tmp_path / "crashed.log", "w") as log_file:
        process = subprocess.Popen(_command(out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log_file)
    deadline = time.time() + 600  # only a guard against a hung run, as the other subprocess timeouts are
    while not (out / "checkpoint-10").exists() or not is_complete_checkpoint(out / "checkpoint-10"):
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "metrics.json").exists()

    resumed = subprocess.run(_command(out), cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "Resuming the unfinished run" in log
    step = int(log.split("Resuming the unfinished run")[1].split("checkpoint-")[1].split(".")[0])
    assert step >= 10
    got = json.loads((out / "metrics.json").read_text())
    # The Trainer itself began at the checkpoint's step (a restart would begin at 0) and went on to the end.
    assert got["train"]["start_step"] == step and got["train"]["global_step"] == 30
    assert json.loads((tmp_path / "baseline" / "metrics.json").read_text())["train"]["start_step"] == 0
    state = json.loads((out / f"checkpoint-{30}" / "trainer_state.json").read_text())
    first_logged_losses = [e["step"] for e in state["log_history"] if "loss" in e]
    assert first_logged_losses == [5, 10, 15, 20, 25, 30]

    expected = json.loads((tmp_path / "baseline" / "metrics.json").read_text())
    # Weights, optimiser, scheduler, RNG and data order are restored, so the runs do the same arithmetic;
    # on one CPU thread layout that is bit-for-bit, and 1e-6 leaves room for summation order only.
    for split in ("validation", "test"):
        assert got[split]["accuracy"] == pytest.approx(expected[split]["accuracy"], abs=1e-6)
        assert got[split]["cross_entropy"] == pytest.approx(expected[split]["cross_entropy"], rel=1e-4)


def _fake_checkpoint(tmp_path, source: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(source, target)
    return target


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "out"
    run_snacks.main(["recipes/smoke.yaml", "--output_dir", str(out), "--max_train_samples", "64",
                     "--max_eval_samples", "32", "--num_train_epochs", "1"])  # fmt: skip
    (checkpoint,) = out.glob("checkpoint-*")
    return out, checkpoint


def test_half_written_checkpoint_is_skipped_for_the_previous_one(tmp_path, trained_checkpoint):
    _, checkpoint = trained_checkpoint
    good = _fake_checkpoint(tmp_path, checkpoint, "checkpoint-2")
    cut_weights = _fake_checkpoint(tmp_path, checkpoint, "checkpoint-4")
    data = (cut_weights / "model.safetensors").read_bytes()
    (cut_weights / "model.safetensors").write_bytes(data[: len(data) // 2])
    cut_optimizer = _fake_checkpoint(tmp_path, checkpoint, "checkpoint-6")
    (cut_optimizer / "optimizer.pt").write_bytes((cut_optimizer / "optimizer.pt").read_bytes()[:100])
    no_state = _fake_checkpoint(tmp_path, checkpoint, "checkpoint-8")
    (no_state / "trainer_state.json").unlink()
    assert is_complete_checkpoint(good)
    assert not any(map(is_complete_checkpoint, (cut_weights, cut_optimizer, no_state)))
    assert last_complete_checkpoint(tmp_path) == good


def _layout(folder: Path, source: Path, weights: dict[str, bytes], optimizer: dict[str, bytes]) -> Path:
    """A checkpoint folder as Trainer writes it in another mode: the state, and the given files."""
    folder.mkdir(parents=True)
    shutil.copy(source / "trainer_state.json", folder)
    for name, data in {**weights, **optimizer}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def test_every_checkpoint_format_trainer_writes_is_resumable(tmp_path, trained_checkpoint):
    """FSDP (full or sharded state dict), sharded safetensors and save_only_model checkpoints are complete;
    before, only `model.safetensors` + `optimizer.pt` counted, so a crashed FSDP run restarted from step 0."""
    import torch
    from safetensors.torch import load_file, save_file

    _, checkpoint = trained_checkpoint
    tensors = load_file(checkpoint / "model.safetensors")
    names = sorted(tensors)
    save_file({k: tensors[k] for k in names[:3]}, tmp_path / "a.safetensors")
    save_file({k: tensors[k] for k in names[3:]}, tmp_path / "b.safetensors")
    shard_names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = json.dumps({"weight_map": {k: shard_names[i >= 3] for i, k in enumerate(names)}}).encode()
    shards = {name: (tmp_path / f"{part}.safetensors").read_bytes() for name, part in zip(shard_names, "ab")}
    shards["model.safetensors.index.json"] = index
    torch.save({"state": {}}, tmp_path / "optimizer.bin")
    optimizer_bin = (tmp_path / "optimizer.bin").read_bytes()
    layouts = {
        "fsdp-full": ({"pytorch_model_fsdp.bin": b"x" * 64}, {"optimizer.bin": optimizer_bin}),
        "fsdp-sharded": ({"pytorch_model_fsdp_0/.metadata": b"m", "pytorch_model_fsdp_0/__0_0.distcp": b"x"},
                         {"optimizer_0/.metadata": b"m", "optimizer_0/__0_0.distcp": b"x"}),
        "sharded-safetensors": (shards, {"optimizer.pt": (checkpoint / "optimizer.pt").read_bytes()}),
        "save-only-model": ({"model.safetensors": (checkpoint / "model.safetensors").read_bytes()}, {}),
    }  # fmt: skip
    for step, (name, (weights, optimizer)) in enumerate(layouts.items(), start=1):
        folder = _layout(tmp_path / name / f"checkpoint-{step}", checkpoint, weights, optimizer)
        assert is_complete_checkpoint(folder), name
        assert last_complete_checkpoint(folder.parent) == folder
    missing_shard = _layout(tmp_path / "missing" / "checkpoint-9", checkpoint, dict(list(shards.items())[1:]), {})
    assert not is_complete_checkpoint(missing_shard)
    # The planner resumes a crashed FSDP run from its last checkpoint instead of starting again.
    run = tmp_path / "fsdp-run"
    shutil.copytree(tmp_path / "fsdp-sharded", run)
    args = parse_recipe(["recipes/smoke.yaml", "--output_dir", str(run)])[2]
    assert plan_output_dir(args, {}) == str(run / "checkpoint-2")


def test_finished_run_is_not_overwritten_without_the_flag(trained_checkpoint):
    out, _ = trained_checkpoint
    before = (out / "metrics.json").read_text()
    with pytest.raises(RecipeError, match=r"already holds a finished run.*--overwrite_output_dir true"):
        run_snacks.main(["recipes/smoke.yaml", "--output_dir", str(out), "--num_train_epochs", "1"])
    assert (out / "metrics.json").read_text() == before


def test_checkpoints_of_another_recipe_are_not_resumed(tmp_path, trained_checkpoint):
    out, _ = trained_checkpoint
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "metrics.json").unlink()  # now it looks like a crashed run...
    with pytest.raises(RecipeError, match=r"different recipe \(keys that differ: learning_rate"):
        run_snacks.main(["recipes/smoke.yaml", "--output_dir", str(copy), "--max_train_samples", "64",
                         "--max_eval_samples", "32", "--num_train_epochs", "1", "--learning_rate", "0.1"])  # fmt: skip


def test_overwrite_starts_afresh(tmp_path, trained_checkpoint):
    out, _ = trained_checkpoint
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    args = ["recipes/smoke.yaml", "--output_dir", str(copy), "--max_train_samples", "64", "--max_eval_samples", "32"]
    metrics = run_snacks.main([*args, "--num_train_epochs", "1", "--overwrite_output_dir"])
    assert metrics["train"]["epoch"] == pytest.approx(1.0)
    assert metrics["train"]["start_step"] == 0  # not a resume of the old run's checkpoint


def test_overwrite_removes_the_old_runs_results_so_a_crash_is_not_taken_for_it(tmp_path, trained_checkpoint):
    out, _ = trained_checkpoint
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert (copy / "metrics.json").exists() and (copy / "eval_validation").is_dir() and (copy / "README.md").exists()
    args = parse_recipe(["recipes/smoke.yaml", "--output_dir", str(copy), "--overwrite_output_dir"])[2]
    assert plan_output_dir(args, {}) is None  # ... and then the new run crashes before writing anything
    leftovers = {p.name for p in copy.iterdir()}
    assert not leftovers & {"metrics.json", "eval_validation", "eval_test", "README.md", "bad_images.jsonl"}
    assert not any(name.startswith("checkpoint-") for name in leftovers)
    # The same command without the flag now simply starts: the folder holds no finished run.
    assert plan_output_dir(parse_recipe(["recipes/smoke.yaml", "--output_dir", str(copy)])[2], {}) is None


def test_evaluation_only_reports_its_own_bad_images_and_keeps_the_runs(tmp_path, trained_checkpoint):
    out, _ = trained_checkpoint
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    entry = json.dumps({"split": "train", "file": "/data/old/broken.jpg", "error": "OSError: cut"}) + "\n"
    (copy / "bad_images.jsonl").write_text(entry)
    metrics = run_snacks.main(["recipes/smoke.yaml", "--output_dir", str(copy), "--do_train", "false",
                               "--max_eval_samples", "32"])  # fmt: skip
    assert metrics["bad_images"] == {}
    assert (copy / "bad_images.jsonl").read_text() == entry  # the training run's list is untouched
    assert json.loads((copy / "eval_only_metrics.json").read_text())["bad_images"] == {}


def test_a_failed_push_exits_3_with_the_later_command_and_keeps_the_run(tmp_path):
    out = tmp_path / "out"
    result = run_cli("recipes/smoke.yaml", "--output_dir", out, "--max_train_samples", "64", "--max_eval_samples",
                     "16", "--num_train_epochs", "1", "--push_to_hub", "true", "--hub_model_id", "someone/smoke",
                     "--hub_token", "hf_NotARealToken123456")  # fmt: skip
    # Offline here (conftest): the push fails after training, so scripts and CI must notice.
    assert result.returncode == 3, result.stderr[-3000:]
    assert "Could not push" in result.stderr and "Exit status 3" in result.stderr
    assert f"python push_to_hub.py {out} --hub_model_id someone/smoke" in result.stderr
    assert {"metrics.json", "model.safetensors", "README.md", "eval_validation"} <= {p.name for p in out.iterdir()}
    recipe = yaml.safe_load((out / "resolved_recipe.yaml").read_text())
    assert recipe["push_to_hub"] is True and recipe["hub_model_id"] == "someone/smoke"
    assert "hub_token" not in recipe and "hf_NotARealToken123456" not in (out / "resolved_recipe.yaml").read_text()
    assert "hf_NotARealToken123456" not in result.stdout + result.stderr


def _bad_image_dataset(root: Path) -> tuple[Path, dict[str, str]]:
    """A small imagefolder in which the train split holds one file of every awkward kind."""
    write_imagefolder(root, {"train": 6, "validation": 3})
    red = root / "train" / "red"
    good = Image.new("RGB", (40, 30), (220, 30, 30))
    good.save(red / "ok_template.jpg", quality=90)
    jpeg = (red / "ok_template.jpg").read_bytes()
    (red / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (red / "empty.jpg").write_bytes(b"")
    (red / "not_an_image.jpg").write_text("<html>404 Not Found</html>")
    bomb = Image.new("1", (10_000, 10_000))  # 100 M pixels: over Pillow's 89 M bomb limit, tiny as PNG
    bomb.save(red / "bomb.png")
    # Awkward but readable: these must train normally.
    palette = good.convert("P")
    palette.info["transparency"] = 0
    palette.save(red / "palette_transparent.png")
    Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16)).save(red / "sixteen_bit.png")
    good.convert("CMYK").save(red / "cmyk.jpg")
    rotated = good.copy()
    exif = rotated.getexif()
    exif[0x0112] = 8
    rotated.save(red / "exif_rotated.jpg", exif=exif.tobytes())
    Image.new("RGB", (1, 1), (220, 30, 30)).save(red / "one_pixel.png")
    frames = [Image.new("RGB", (40, 30), c) for c in ((220, 30, 30), (0, 0, 0))]
    frames[0].save(red / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    bad = {"truncated.jpg": "OSError", "empty.jpg": "", "not_an_image.jpg": "", "bomb.png": "DecompressionBomb"}
    return root, bad


def _tiny_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "recipes/smoke.yaml", "--dataset_name", str(data), "--output_dir", str(out), "--num_train_epochs", "1",
        "--per_device_train_batch_size", "8", "--train_augmentation", "random_resized_crop", *extra,
    ]  # fmt: skip


def test_bad_images_are_left_out_counted_and_named(tmp_path):
    data, bad = _bad_image_dataset(tmp_path / "data")
    metrics = run_snacks.main(_tiny_args(data, tmp_path / "out", "--max_bad_images", "10"))
    named = {Path(f).name for f in metrics["bad_images"]["train"]}
    assert named == set(bad)
    # metrics.json is uploaded with the model: files are named inside the dataset, not by machine path.
    assert sorted(metrics["bad_images"]["train"]) == sorted(f"train/red/{name}" for name in bad)
    assert metrics["validation"]["samples"] == 9
    log = [json.loads(line) for line in (tmp_path / "out" / "bad_images.jsonl").read_text().splitlines()]
    assert {Path(e["file"]).name for e in log} == set(bad)
    assert any("DecompressionBomb" in e["error"] for e in log if e["file"].endswith("bomb.png"))


def test_too_many_bad_images_stop_the_run_with_a_clear_message(tmp_path):
    data, _ = _bad_image_dataset(tmp_path / "data")
    result = run_cli(*_tiny_args(data, tmp_path / "out", "--max_bad_images", "2"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "Too many unreadable images in the train split" in result.stderr
    assert "--verify_images true" in result.stderr
    assert (tmp_path / "out" / "resolved_recipe.yaml").exists()  # what was written stays


def test_verify_images_lists_and_leaves_out_bad_files_before_training(tmp_path, caplog):
    data, bad = _bad_image_dataset(tmp_path / "data")
    metrics = run_snacks.main(_tiny_args(data, tmp_path / "out", "--verify_images", "--max_bad_images", "0"))
    assert "verify_images: 4 unreadable image(s) left out of train" in caplog.text
    for name in bad:
        assert name in caplog.text
    assert metrics["train"]["samples"] == 3 * 6 + 11 - 4  # generated + the 11 written here - the 4 bad ones


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "out"
    # Warm-up from 0 to an absurd learning rate: the first steps are fine, then the weights blow up.
    result = run_cli(
        "recipes/smoke.yaml", "--output_dir", out, "--learning_rate", "1e12", "--warmup_steps", "30",
        "--lr_scheduler_type", "linear", "--save_strategy", "steps", "--save_steps", "1", "--eval_strategy", "no",
        "--load_best_model_at_end", "false", "--save_total_limit", "2", "--max_train_samples", "640",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "The training loss became nan" in result.stderr or "The training loss became inf" in result.stderr
    assert "at step" in result.stderr and "learning rate" in result.stderr
    kept = sorted(out.glob("checkpoint-*"))
    assert kept and all(is_complete_checkpoint(p) for p in kept)
    assert str(kept[-1]) in result.stderr


def test_unpickled_weights_are_refused(tmp_path, tiny_checkpoint):
    import torch

    folder = tmp_path / "bin-only"
    shutil.copytree(tiny_checkpoint, folder)
    from safetensors.torch import load_file

    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(RecipeError, match=r"holds no model.safetensors.*pickled weights"):
        build_model(ModelArguments(model_name_or_path=str(folder)), ["a", "b"])


def test_a_folder_without_weights_is_refused_the_same_way_everywhere(tmp_path, capsys):
    import predict as predict_script

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "num_labels": 2}))
    refusal = r"holds no model weights \(model.safetensors\)"
    with pytest.raises(RecipeError, match=refusal):
        build_model(ModelArguments(model_name_or_path=str(tmp_path)), ["a", "b"])
    # Evaluating it is refused while the recipe is read, before any data loads.
    with pytest.raises(RecipeError, match=refusal):
        parse_recipe(["recipes/smoke.yaml", "--do_train", "false", "--output_dir", str(tmp_path)])
    assert predict_script.main(["--model", str(tmp_path), "x.png"]) == 2
    assert f"--model: {tmp_path} holds no model weights" in capsys.readouterr().err


def test_yaml_is_read_with_the_safe_loader(tmp_path):
    recipe = tmp_path / "evil.yaml"
    recipe.write_text("seed: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        parse_recipe([str(recipe)])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset_name", "/no/such/folder"], r"the folder /no/such/folder does not exist"),
        (["--dataset_name", "nobody/offline-dataset"], r"HF_HUB_OFFLINE is set.*local copy"),
        (["--label_column_name", "category"], r"label_column_name: column 'category'.*Its columns are: image, label"),
        (["--validation_split", "dev", "--train_split", "training"], r"no split 'training'"),
        (
            ["--model_name_or_path", "/no/such/model", "--model_type", "null", "--config_overrides", "null"],
            r"the folder /no/such/model",
        ),
        (["--per_device_train_batch_size", "eight"], r"per_device_train_batch_size: expected a whole number"),
        (["--do_train", "false"], r"--do_train false evaluates the model saved in output_dir: .* does not exist"),
    ],
)
def test_data_and_model_mistakes_are_one_paragraph(tmp_path, args, message):
    with pytest.raises(RecipeError, match=message) as raised:
        run_snacks.main(["recipes/smoke.yaml", "--output_dir", str(tmp_path / "out"), *args])
    assert "\n" not in str(raised.value)
    yaml.safe_load("a: 1")


def test_unreadable_images_in_validation_and_test_count_for_nothing(tmp_path):
    data = write_imagefolder(tmp_path / "data", {"train": 8, "validation": 3, "test": 3})
    red = data / "validation" / "red"
    (red / "truncated.png").write_bytes((red / "0.png").read_bytes()[:60])
    (data / "test" / "green" / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    result = run_cli(*_tiny_args(data, out, "--max_bad_images", "1"))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["bad_images"] == {"validation": ["validation/red/truncated.png"], "test": ["test/green/empty.png"]}
    for split in ("validation", "test"):  # 3 readable images of each class, and the unreadable one
        assert (metrics[split]["samples"], metrics[split]["unreadable_images"]) == (9, 1)
        stored = np.load(out / f"eval_{split}" / "predictions.npz")
        assert np.bincount(stored["labels"]).tolist() == [3, 3, 3] and len(stored["logits"]) == 9
        recomputed = float((stored["logits"].argmax(1) == stored["labels"]).mean())
        assert recomputed > 0  # so a placeholder counted as a wrong answer would lower the reported accuracy
        assert metrics[split]["accuracy"] == pytest.approx(recomputed)


class _Unreadable(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):
        raise BadImagesError("Too many unreadable images: fix them.\nSecond line of the paragraph.")


def test_an_error_raised_in_a_dataloader_worker_is_shown_as_its_own_message():
    # torch (checked: 2.14.1) re-raises a worker's error as its type, the message wrapped in the worker's traceback.
    with pytest.raises(BadImagesError) as error:
        next(iter(torch.utils.data.DataLoader(_Unreadable(), num_workers=1)))
    assert "Original Traceback" in str(error.value)
    assert user_message(error.value) == "Too many unreadable images: fix them.\nSecond line of the paragraph."


# Every TrainingArguments field as of transformers 5.24.0, each reviewed for resuming: those in
# outputs._RESUMABLE_DIFFERENCES may differ between a crashed run and its resumption, the others change the training.
REVIEWED_TRAINING_FIELDS = {
    "output_dir", "per_device_train_batch_size", "num_train_epochs", "max_steps", "learning_rate", "lr_scheduler_type",
    "lr_scheduler_kwargs", "warmup_steps", "optim", "optim_args", "weight_decay", "adam_beta1", "adam_beta2",
    "adam_epsilon", "optim_target_modules", "gradient_accumulation_steps", "average_tokens_across_devices",
    "max_grad_norm", "label_smoothing_factor", "bf16", "fp16", "bf16_full_eval", "fp16_full_eval", "tf32",
    "activation_checkpointing", "activation_checkpointing_kwargs", "gradient_checkpointing",
    "gradient_checkpointing_kwargs", "torch_compile", "torch_compile_backend", "torch_compile_mode", "use_liger_kernel",
    "liger_kernel_config", "use_cache", "neftune_noise_alpha", "torch_empty_cache_steps", "auto_find_batch_size",
    "logging_strategy", "logging_steps", "logging_first_step", "log_on_each_node", "logging_nan_inf_filter",
    "include_num_input_tokens_seen", "log_level", "log_level_replica", "disable_tqdm", "report_to", "run_name",
    "project", "trackio_space_id", "trackio_bucket_id", "trackio_static_space_id", "eval_strategy", "eval_steps",
    "eval_delay", "per_device_eval_batch_size", "prediction_loss_only", "eval_on_start", "eval_do_concat_batches",
    "eval_use_gather_object", "eval_accumulation_steps", "include_for_metrics", "batch_eval_metrics",
    "save_only_model", "save_strategy", "save_steps", "save_on_each_node", "save_total_limit", "enable_jit_checkpoint",
    "push_to_hub", "hub_token", "hub_private_repo", "hub_model_id", "hub_strategy", "hub_always_push", "hub_revision",
    "load_best_model_at_end", "metric_for_best_model", "greater_is_better", "ignore_data_skip",
    "restore_callback_states_from_checkpoint", "full_determinism", "seed", "data_seed", "use_cpu",
    "accelerator_config", "parallelism_config", "dataloader_drop_last", "dataloader_num_workers",
    "dataloader_pin_memory", "dataloader_persistent_workers", "dataloader_prefetch_factor",
    "dataloader_multiprocessing_context", "dataloader_in_order", "remove_unused_columns", "label_names",
    "train_sampling_strategy", "length_column_name", "ddp_find_unused_parameters", "ddp_bucket_cap_mb",
    "ddp_broadcast_buffers", "ddp_static_graph", "ddp_backend", "ddp_timeout", "fsdp", "fsdp_config", "deepspeed",
    "debug", "skip_memory_metrics", "do_train", "do_eval", "do_predict", "resume_from_checkpoint", "local_rank",
}  # fmt: skip


def test_every_training_arguments_field_is_classified_for_resuming():
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    new = sorted(fields - REVIEWED_TRAINING_FIELDS)
    assert not new, f"Decide for {new}: add the ones that leave the training as it is to _RESUMABLE_DIFFERENCES."
    ours = {f.name for cls in (ModelArguments, DataArguments, RecipeTrainingArguments) for f in dataclasses.fields(cls)}
    assert _RESUMABLE_DIFFERENCES <= ours  # no stale entry
