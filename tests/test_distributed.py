"""Two processes under `accelerate launch` (gloo on CPU): the numbers mean what they mean in one process."""

import json
from pathlib import Path

import pytest
import torch
from helpers import evaluate_only, launch, write_imagefolder

EVAL_SAMPLES = 299  # odd: the distributed sampler must pad one split, and the padding must not be counted


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "out"
    result = launch("run_snacks.py", "recipes/smoke.yaml", "--output_dir", out, "--num_train_epochs", "3",
                    "--max_eval_samples", EVAL_SAMPLES)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return out, result


def test_training_completes_with_full_sample_counts(two_process_run):
    out, _ = two_process_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation"]["samples"] == EVAL_SAMPLES
    assert metrics["test"]["samples"] == EVAL_SAMPLES
    assert metrics["effective_batch_size"] == 64  # 32 per device x 2 processes x 1 accumulation step
    assert metrics["train"]["epoch"] == pytest.approx(3.0)


def test_accuracy_equals_a_single_process_evaluation(two_process_run):
    out, _ = two_process_run
    distributed = json.loads((out / "metrics.json").read_text())
    result = evaluate_only(out)
    assert result.returncode == 0, result.stderr[-3000:]
    single = json.loads((out / "eval_only_metrics.json").read_text())
    for split in ("validation", "test"):
        assert single[split]["samples"] == distributed[split]["samples"] == EVAL_SAMPLES
        # Same images, same weights: a padded duplicate counted twice would shift accuracy by 1/299.
        assert single[split]["accuracy"] == pytest.approx(distributed[split]["accuracy"], abs=1e-9)
        assert single[split]["cross_entropy"] == pytest.approx(distributed[split]["cross_entropy"], rel=1e-6)


def test_files_and_logs_come_from_the_main_process_only(two_process_run):
    out, result = two_process_run
    combined = result.stdout + result.stderr
    # The header, the training lines and the closing table come from the main process, once.
    assert combined.count("Batch   32 per device x 2 processes x 1 accumulation = 64") == 1
    assert combined.count("validation accuracy") == 3 and result.stdout.count("\ntest ") == 1
    assert "INFO" not in combined  # the other process shows warnings and errors only, the main one too by default
    written = sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith("eval_only"))
    assert written == [
        "README.md", "config.json", "metrics.json", "model.safetensors", "preprocessor_config.json",
        "resolved_recipe.yaml", "run.log", "training_args.bin",
    ]  # fmt: skip
    assert (out / "run.log").read_text().count("***** Running training *****") == 1  # the main process's log


def test_images_are_verified_once_by_the_main_process_and_left_out_by_both(tmp_path):
    data = write_imagefolder(tmp_path / "data", {"train": 8, "validation": 3})
    (data / "train" / "red" / "cut.png").write_bytes((data / "train" / "red" / "0.png").read_bytes()[:60])
    (data / "train" / "blue" / "html.png").write_text("<html>404</html>")
    out = tmp_path / "out"
    result = launch("run_snacks.py", "recipes/smoke.yaml", "--dataset_name", data, "--output_dir", out,
                     "--verify_images", "--max_bad_images", "0", "--num_train_epochs", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    logged = [json.loads(line) for line in (out / "bad_images.jsonl").read_text().splitlines()]
    # Decoded and recorded once (by the main process), not once per process.
    assert sorted(Path(e["file"]).name for e in logged) == ["cut.png", "html.png"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["samples"] == 3 * 8  # both processes trained without the two bad files
    assert sorted(metrics["bad_images"]["train"]) == ["train/blue/html.png", "train/red/cut.png"]


def test_two_machines_agree_on_the_images_verify_images_leaves_out(tmp_path):
    # Two one-process "machines" on localhost: each has its own local main process, which loaded the data
    # at the same time as machine 0's and read the bad-image log before machine 0 had written it.
    import socket

    data = write_imagefolder(tmp_path / "data", {"train": 8, "validation": 3})
    (data / "train" / "red" / "cut.png").write_bytes((data / "train" / "red" / "0.png").read_bytes()[:60])
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]

    def machine(rank):
        options = ["--multi_gpu", "--num_processes", "2", "--num_machines", "2", "--machine_rank", str(rank),
                   "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--mixed_precision", "no",
                   "--dynamo_backend", "no"]  # fmt: skip
        return launch("run_snacks.py", "recipes/smoke.yaml", "--dataset_name", data, "--output_dir", out,
                      "--verify_images", "--max_bad_images", "0", "--num_train_epochs", "1", "--log_level", "info",
                      "--log_level_replica", "info", options=options, popen=True)  # fmt: skip

    out = tmp_path / "out"
    machines = [machine(0), machine(1)]
    results = [machine.communicate(timeout=600) for machine in machines]
    assert [machine.returncode for machine in machines] == [0, 0], results[1][1][-3000:]
    for _, stderr in results:
        loaded = [line.split("Data: ")[1] for line in stderr.splitlines() if "vitrecipes.data: Data: " in line]
        assert loaded and all(line.endswith("; train 24, validation 9") for line in loaded), loaded
    assert json.loads((out / "metrics.json").read_text())["train"]["samples"] == 24


NAN_ON_ONE_PROCESS = """
import os, sys
import torch
from transformers import TrainingArguments, ViTConfig, ViTForImageClassification
from vitrecipes.training import RecipeTrainer

class Images(torch.utils.data.Dataset):
    def __len__(self):
        return 256
    def __getitem__(self, i):
        return {"pixel_values": torch.full((3, 32, 32), (i % 7) / 7.0), "labels": i % 2}

def collate(rows, calls=[0]):
    calls[0] += 1
    pixels = torch.stack([r["pixel_values"] for r in rows])
    if os.environ["RANK"] == "1" and calls[0] == 3:  # one process, one batch
        pixels[:] = float("nan")
    return {"pixel_values": pixels, "labels": torch.tensor([r["labels"] for r in rows])}

config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=64, num_labels=2)
args = TrainingArguments(output_dir=sys.argv[1], per_device_train_batch_size=8, max_steps=20, report_to="none",
                         save_strategy="no", eval_strategy="no", use_cpu=True, ddp_find_unused_parameters=False)
RecipeTrainer(model=ViTForImageClassification(config), args=args, train_dataset=Images(), data_collator=collate).train()
"""


def test_a_nan_on_one_process_stops_every_process_with_the_message(tmp_path):
    script = tmp_path / "nan_on_one_process.py"
    script.write_text(NAN_ON_ONE_PROCESS)
    result = launch(script, tmp_path / "out")
    assert result.returncode != 0
    # Both processes raise the error themselves (before, only rank 1 did and rank 0 was killed or hung).
    assert result.stderr.count("NonFiniteLossError: The training loss became nan at step 3") == 1, result.stderr[-4000:]
    assert result.stderr.count("NonFiniteLossError: The training loss became NaN or infinite on another process") == 1


@pytest.mark.parametrize("adaptation", ["full", "lp_ft", "freeze", "lora"])
def test_the_pretrained_recipe_trains_on_two_processes(tmp_path, tiny_dinov2, adaptation):
    # DINOv2's embeddings.mask_token is trainable but unused by classification: DDP failed at step 2 on it.
    data = write_imagefolder(tmp_path / "data", {"train": 8, "validation": 3, "test": 3})  # 9: odd, so padded
    out = tmp_path / "out"
    # Switching the mode leaves the recipe's other-mode keys out (probe_regularization); freeze needs its own.
    result = launch("run_snacks.py", "recipes/dinov2-small/snacks/config_cpu.yaml",
                     "--model_name_or_path", tiny_dinov2, "--dataset_name", data, "--output_dir", out,
                     "--adaptation", adaptation, "--image_size", 32, "--max_steps", 3,
                     "--per_device_train_batch_size", 4, "--save_strategy", "no",
                     *(["--freeze_blocks", 1] if adaptation == "freeze" else []))  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 3
    assert metrics["validation"]["samples"] == metrics["test"]["samples"] == 9
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(out)
    assert model.config.num_labels == 3 and not hasattr(model, "peft_config")


FSDP = ("--config_file", "recipes/accelerate_configs/fsdp.yaml", "--num_processes", "2", "--mixed_precision", "no",
        "--fsdp_transformer_layer_cls_to_wrap", "Dinov2Layer")  # fmt: skip


def test_fsdp_loading_on_cpu_with_a_new_head(tmp_path, tiny_dinov2):
    # fsdp.yaml loads the weights on process 0 only (fsdp_cpu_ram_efficient_loading): transformers left the new
    # head on the meta device of process 1, where the probe (cache off) ran it. On CPU, accelerate then trains
    # with plain data parallel: the sharding itself is checked by the fully_shard test below.
    data = write_imagefolder(tmp_path / "data", {"train": 8, "validation": 3, "test": 3})
    out = tmp_path / "out"
    result = launch("run_snacks.py", "recipes/dinov2-small/snacks/config_cpu.yaml", "--use_cpu", "true",
                   "--model_name_or_path", tiny_dinov2, "--dataset_name", data, "--output_dir", out, "--image_size", 32,
                   "--max_steps", 3, "--per_device_train_batch_size", 4, "--save_strategy", "no",
                   "--adaptation", "lp_ft", "--probe_feature_cache", "false", "--ema_decay", 0.9,
                   options=FSDP)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 3
    assert metrics["validation"]["samples"] == metrics["test"]["samples"] == 9
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(out)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    result = evaluate_only(out)  # the saved model gives, in one process, the numbers the two processes reported
    assert result.returncode == 0, result.stderr[-3000:]
    single = json.loads((out / "eval_only_metrics.json").read_text())
    assert single["test"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-9)


EMA_UNDER_FSDP2 = """
import os, sys
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import Dinov2Config, Dinov2ForImageClassification
from vitrecipes.training import WeightAverage

dist.init_process_group("gloo")
mesh = init_device_mesh("cpu", (dist.get_world_size(),))
torch.manual_seed(0)
model = Dinov2ForImageClassification(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                  mlp_ratio=2, patch_size=8, image_size=32, num_labels=3))
expected = {n: p.detach() + 0.5 for n, p in model.named_parameters()}
for layer in model.dinov2.encoder.layer:
    fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)  # as accelerate shards it
average = WeightAverage(0.5)
average.on_step_end(None, None, None, model=model)
with torch.no_grad():
    for p in model.parameters():
        p.add_(1.0)  # a step that moves every weight by 1: the average of decay 0.5 moves by 0.5
average.on_step_end(None, None, None, model=model)
average.on_train_end(None, None, None, model=model)
wrong = [n for n, p in model.named_parameters() if not torch.allclose(p.full_tensor(), expected[n])]
assert not wrong, wrong
print("averaged", len(expected), "sharded parameters")
"""


def test_the_weight_average_works_on_fsdp2_sharded_parameters(tmp_path):
    # AveragedModel deep-copied the model, which FSDP refuses ("FSDP does not support deepcopy").
    script = tmp_path / "ema_under_fsdp2.py"
    script.write_text(EMA_UNDER_FSDP2)
    result = launch(script, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("averaged") == 2
