import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, run_cli

from vitrecipes.config import (
    RESOLVED_RECIPE_NAME,
    parse_overrides,
    parse_recipe,
    resolved_recipe,
    save_resolved_recipe,
)
from vitrecipes.errors import RecipeError

SHIPPED = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate_configs" not in p.parts)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_values_and_command_line_overrides(tmp_path):
    recipe = write(tmp_path, "learning_rate: 1.0e-4\nnum_train_epochs: 10\ndataset_name: some/data\n")
    model, data, training, path = parse_recipe(
        [recipe, "--learning_rate", "3.0e-4", "--num_train_epochs=8", "--use_cpu", "--max_train_samples", "50"]
    )
    assert training.learning_rate == pytest.approx(3e-4)
    assert training.num_train_epochs == 8
    assert training.use_cpu is True
    assert data.max_train_samples == 50
    assert data.dataset_name == "some/data"
    assert str(path) == recipe


def test_output_dir_defaults_to_recipe_name(tmp_path):
    _, _, training, _ = parse_recipe([write(tmp_path, "seed: 1\n")])
    assert Path(training.output_dir) == Path("outputs/recipe")


def test_floats_written_the_pyyaml_way_are_coerced(tmp_path):
    # PyYAML reads `1e-4` (no dot) as a string; the loader must still give a float.
    _, data, training, _ = parse_recipe(
        [write(tmp_path, "learning_rate: 1e-4\nweight_decay: '0.05'\nvalidation_split_size: 2e-1\n")]
    )
    assert isinstance(training.learning_rate, float) and training.learning_rate == pytest.approx(1e-4)
    assert training.weight_decay == pytest.approx(0.05)
    assert data.validation_split_size == pytest.approx(0.2)


def test_unknown_key_names_it_and_suggests_the_closest(tmp_path):
    with pytest.raises(RecipeError, match=r"Unknown key 'learnig_rate'.*Did you mean 'learning_rate'"):
        parse_recipe([write(tmp_path, "learnig_rate: 1.0e-4\n")])
    with pytest.raises(RecipeError, match=r"Unknown key 'datset_name'.*'dataset_name'"):
        parse_recipe([write(tmp_path, "seed: 1\n"), "--datset_name", "x"])


def test_transformers4_key_points_to_its_new_name(tmp_path):
    with pytest.raises(RecipeError, match=r"warmup_ratio.*warmup_steps"):
        parse_recipe([write(tmp_path, "warmup_ratio: 0.1\n")])


@pytest.mark.parametrize(
    "text, message",
    [
        ("num_train_epochs: many\n", r"num_train_epochs: expected a number"),
        ("per_device_train_batch_size: 2.5\n", r"per_device_train_batch_size: expected a whole number"),
        ("bf16: maybe\n", r"bf16: expected true or false"),
        ("train_augmentation: mixup\n", r"train_augmentation: 'mixup' is not known"),
        ("lr_scheduler_type: sometimes\n", r"Invalid value.*sometimes"),
    ],
)
def test_wrong_types_name_the_key(tmp_path, text, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe([write(tmp_path, text)])


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "seed: 1\nlearning_rate: [1, 2\nbf16: true\n")
    with pytest.raises(RecipeError, match=r"recipe\.yaml is not valid YAML at line \d+"):
        parse_recipe([path])


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match=r"does not exist"):
        parse_recipe([str(tmp_path / "nope.yaml")])


def test_yaml_booleans_become_text_for_text_keys(tmp_path):
    _, _, training, _ = parse_recipe([write(tmp_path, "eval_strategy: no\nload_best_model_at_end: false\n")])
    assert training.eval_strategy == "no"
    _, _, training, _ = parse_recipe(
        [write(tmp_path, "seed: 1\n"), "--eval_strategy", "no", "--load_best_model_at_end", "false"]
    )
    assert training.eval_strategy == "no"


def test_dotted_override_merges_into_a_mapping(tmp_path):
    recipe = write(
        tmp_path, "model_name_or_path: null\nmodel_type: vit\nconfig_overrides:\n  hidden_size: 64\n  image_size: 32\n"
    )
    model, _, _, _ = parse_recipe([recipe, "--config_overrides.hidden_size", "32"])
    assert model.config_overrides == {"hidden_size": 32, "image_size": 32}


def test_parse_overrides_forms():
    assert parse_overrides(["--a", "1", "--b=x y", "--flag", "--c", "null"]) == {
        "a": 1,
        "b": "x y",
        "flag": True,
        "c": None,
    }
    with pytest.raises(RecipeError, match="Unexpected command-line argument 'stray'"):
        parse_overrides(["stray"])


def test_remove_unused_columns_is_forced_off(tmp_path):
    _, _, training, _ = parse_recipe([write(tmp_path, "remove_unused_columns: true\n")])
    assert training.remove_unused_columns is False


def test_model_choice_must_be_unambiguous(tmp_path):
    with pytest.raises(RecipeError, match="Both model_name_or_path and model_type"):
        parse_recipe([write(tmp_path, "model_type: vit\n")])
    with pytest.raises(RecipeError, match="must name a model"):
        parse_recipe([write(tmp_path, "model_name_or_path: null\n")])


def test_resolved_recipe_round_trips_without_secrets(tmp_path):
    recipe = write(tmp_path, "learning_rate: 3.0e-4\nhub_token: hf_secret_value_123\nmax_eval_samples: 7\n")
    args = parse_recipe([recipe, "--output_dir", str(tmp_path / "out")])[:3]
    saved = save_resolved_recipe(tmp_path / "out", *args)
    assert saved.name == RESOLVED_RECIPE_NAME
    text = saved.read_text()
    assert "hf_secret_value_123" not in text and "hub_token" not in text
    again = parse_recipe([str(saved)])[:3]
    assert resolved_recipe(*again) == resolved_recipe(*args)
    assert yaml.safe_load(text)["learning_rate"] == pytest.approx(3e-4)


@pytest.mark.parametrize("recipe", SHIPPED, ids=[str(p.relative_to(ROOT)) for p in SHIPPED])
def test_every_shipped_recipe_parses(recipe):
    # Unchanged, on this GPU-less machine too: GPU-only settings are switched off, not errors.
    model, data, training, _ = parse_recipe([str(recipe)])
    assert training.output_dir
    assert model.attn_implementation == ("sdpa" if "config_tuned" in recipe.name else None)


def test_gpu_settings_are_switched_off_without_a_gpu_and_recorded(tmp_path):
    recipe = write(tmp_path, "bf16: true\ntf32: true\ntorch_compile: true\noptim: adamw_torch_fused\nuse_cpu: true\n")
    args = parse_recipe([recipe, "--output_dir", str(tmp_path / "out")])[:3]
    training = args[2]
    assert (training.bf16, training.tf32, training.torch_compile) == (False, None, False)
    assert training.optim == "adamw_torch_fused"  # PyTorch has a fused AdamW for CPUs too: kept
    notes = training.gpu_settings_switched_off
    assert [n.split(":")[0] for n in notes] == ["bf16", "tf32", "torch_compile"]
    saved = save_resolved_recipe(tmp_path / "out", *args).read_text()
    assert "# bf16: switched off, no CUDA GPU here" in saved
    assert yaml.safe_load(saved)["bf16"] is False
    # A compile mode alone implies torch_compile, so it is switched off as well.
    training = parse_recipe([recipe, "--torch_compile", "false", "--torch_compile_mode", "max-autotune"])[2]
    assert training.torch_compile is False and training.torch_compile_mode is None


def test_cache_budget_must_not_be_negative(tmp_path):
    with pytest.raises(RecipeError, match="decoded_image_cache_mib must be 0 \\(off\\) or more, got -1"):
        parse_recipe([write(tmp_path, "decoded_image_cache_mib: -1\n")])


def test_attention_kernel_is_checked(tmp_path):
    with pytest.raises(RecipeError, match="attn_implementation: 'fastest' is not known; use one of sdpa"):
        parse_recipe([write(tmp_path, "attn_implementation: fastest\n")])
    if not torch.cuda.is_available():
        with pytest.raises(RecipeError, match="flash_attention_2 needs a CUDA GPU.*Use attn_implementation: sdpa"):
            parse_recipe([write(tmp_path, "attn_implementation: flash_attention_2\n")])


def test_help_lists_every_key_with_its_help():
    result = run_cli("--help")
    assert result.returncode == 0
    for key in ("dataset_name", "model_name_or_path", "learning_rate", "train_augmentation", "config_overrides"):
        assert f"--{key}" in result.stdout
    assert "Matthijs/snacks" in result.stdout


def test_cli_error_is_one_paragraph_without_traceback(tmp_path):
    result = run_cli(write(tmp_path, "learnig_rate: 1.0e-4\n"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "Unknown key 'learnig_rate'" in result.stderr and "learning_rate" in result.stderr


FAULTS_PER_STEP = """
import resource, sys
import torch
from transformers import ViTConfig, ViTForImageClassification
from vitrecipes.hardware import reuse_freed_memory
took = reuse_freed_memory() if sys.argv[1] == "reuse" else None
torch.manual_seed(0)
config = ViTConfig(image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=128, num_labels=10)
model = ViTForImageClassification(config)
optimizer = torch.optim.AdamW(model.parameters())
def step():
    # Like the JPEG path, each step also allocates and frees megabytes of image buffers besides the
    # model's own activations; how glibc's default thresholds adapt to the activations alone varies.
    buffers = [torch.ones(6 * 2**20, dtype=torch.uint8) for _ in range(4)]
    pixels = torch.stack([b[: 3 * 32 * 32].view(3, 32, 32).float() for b in buffers] * 8)
    del buffers
    loss = model(pixel_values=pixels, labels=torch.randint(0, 10, (32,))).loss
    loss.backward(); optimizer.step(); optimizer.zero_grad()
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(took, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's thresholds are glibc's")
def test_reuse_freed_memory_stops_the_page_faults_of_each_step():
    """A training step re-faults the buffers it freed the step before unless glibc keeps them (counts, not timing)."""

    def faults(mode):
        result = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP, mode], cwd=ROOT, capture_output=True,
                                text=True, timeout=300, check=True)  # fmt: skip
        took, per_step = result.stdout.split()
        return took, float(per_step)

    default_took, default_faults = faults("default")
    reuse_took, reuse_faults = faults("reuse")
    assert reuse_took == "True"
    assert reuse_faults < default_faults / 4, (default_faults, reuse_faults)
