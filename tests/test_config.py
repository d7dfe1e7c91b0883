import sys
import typing
from pathlib import Path

import pytest
import torch
import yaml
from helpers import ROOT, run_cli

from vitrecipes.artifacts import RESOLVED_RECIPE_NAME
from vitrecipes.config import parse_recipe
from vitrecipes.errors import RecipeError
from vitrecipes.outputs import resolved_recipe, save_resolved_recipe

SHIPPED = sorted(
    p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate_configs" not in p.parts and "sweep" not in p.name
)


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
        ("train_augmentation: mixup\n", r"train_augmentation: invalid choice: 'mixup'"),
        ("lr_scheduler_type: sometimes\n", r"lr_scheduler_type: invalid choice: 'sometimes'"),
        ("config_overrides: 3\n", r"config_overrides: expected a mapping"),
    ],
)
def test_wrong_types_name_the_key(tmp_path, text, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe([write(tmp_path, text)])


def test_command_line_words_are_typed_like_recipe_values_and_the_last_wins(tmp_path):
    recipe = write(tmp_path, "seeds: [1, 2]\nhorizontal_flip: true\n")
    for args, message in ((["--num_train_epochs", "many"], "num_train_epochs: expected a number, got 'many'"),
                          (["--seed", "1", "2"], "seed: expected a whole number"),
                          (["--dataset_name", "null"], "dataset_name: expected text, got null")):  # fmt: skip
        with pytest.raises(RecipeError, match=message):
            parse_recipe([recipe, *args])
    args = ["--seeds", "3", "--seeds", "null", "--no_horizontal_flip", "--horizontal_flip=true", "--tf32"]
    _, data, training, _ = parse_recipe([recipe, *args, "--report_to", "tensorboard", "azure_ml"])
    assert (training.seeds, data.horizontal_flip, training.report_to) == (None, True, ["tensorboard", "azure_ml"])


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "seed: 1\nlearning_rate: [1, 2\nbf16: true\n")
    with pytest.raises(RecipeError, match=r"recipe\.yaml is not valid YAML at line 3, column 5"):  # 1-based
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


def test_command_line_forms_and_null(tmp_path):
    recipe = write(tmp_path, "max_train_samples: 5\nrun_name: a\n")
    _, data, training, _ = parse_recipe(
        [recipe, "--run_name=x y", "--use_cpu", "--max_train_samples", "null", "--test_split", "~"]
    )
    assert (training.run_name, training.use_cpu, data.max_train_samples, data.test_split) == ("x y", True, None, None)
    _, data, _, _ = parse_recipe([recipe, "--random_resized_crop_scale", "0.5", "1.0"])
    assert data.random_resized_crop_scale == [0.5, 1.0]
    with pytest.raises(RecipeError, match="unrecognized arguments: stray.*'--learning_rate 3.0e-4'"):
        parse_recipe([recipe, "stray"])


@pytest.mark.parametrize("word", ["true", "false", "on", "no", "yes"])
def test_text_keys_keep_the_words_the_user_wrote(tmp_path, word):
    """resume_from_checkpoint and output_dir are text: `true` must not become a boolean, nor `on` "yes"."""
    recipe = write(tmp_path, f"resume_from_checkpoint: {word}\nrun_name: {word}\n")
    _, _, training, _ = parse_recipe([recipe])
    assert (training.resume_from_checkpoint, training.run_name) == (word, word)
    _, _, training, _ = parse_recipe([write(tmp_path, "seed: 1\n"), "--resume_from_checkpoint", word,
                                      "--output_dir", word])  # fmt: skip
    assert (training.resume_from_checkpoint, training.output_dir) == (word, word)


def test_keys_removed_from_the_project_say_so(tmp_path):
    with pytest.raises(RecipeError, match="reuse_freed_memory.*removed.*delete the key"):
        parse_recipe([write(tmp_path, "reuse_freed_memory: true\n")])


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
    # On this GPU-less machine too: GPU-only settings are switched off, not errors; every other key arrives as written.
    from vitrecipes.config import _coerce

    args = parse_recipe([str(recipe)])[:3]
    values = {k: v for group in resolved_recipe(*args).values() for k, v in group.items()}
    switched = {note.split(":")[0] for note in args[2].gpu_settings_switched_off}
    for key, written in yaml.safe_load(recipe.read_text()).items():
        if key not in switched:
            expected = _coerce(key, written, "test")
            expected = [] if key == "report_to" and expected == "none" else getattr(expected, "value", expected)
            assert values[key] == expected, key


def test_gpu_settings_are_switched_off_without_a_gpu_and_recorded(tmp_path, monkeypatch):
    from vitrecipes import hardware

    monkeypatch.setattr(hardware, "native_cpu_bf16", lambda: False)  # a CPU without AMX / AVX512-BF16
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


def test_tf32_is_switched_off_on_a_gpu_older_than_ampere(monkeypatch):
    from vitrecipes.hardware import switch_off_gpu_only_settings

    # No such GPU here: the two queries the check makes stand in for a V100 (compute capability 7.0).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    values = {"tf32": True, "bf16": False}
    notes = switch_off_gpu_only_settings(values)
    assert values["tf32"] is None and len(notes) == 1
    assert notes[0].startswith("tf32: switched off") and "Ampere" in notes[0]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    values = {"tf32": True}
    assert switch_off_gpu_only_settings(values) == [] and values["tf32"] is True


def test_removed_speed_ups_name_themselves(tmp_path):
    for key in ("decoded_image_cache_mib: 512", "decode_ahead: false"):
        with pytest.raises(RecipeError, match=f"'{key.split(':')[0]}'.*removed.*delete the key"):
            parse_recipe([write(tmp_path, key + "\n")])


def test_attention_kernel_is_checked(tmp_path):
    with pytest.raises(
        RecipeError, match=r"attn_implementation: invalid choice: 'fastest' \(choose from 'sdpa', .*, null\)"
    ):
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
    assert "Use at most this many train images." in " ".join(result.stdout.split())  # a key's own help line


def test_cli_error_is_one_paragraph_without_traceback(tmp_path):
    result = run_cli(write(tmp_path, "learnig_rate: 1.0e-4\n"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "Unknown key 'learnig_rate'" in result.stderr and "learning_rate" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one paragraph


def test_the_readme_main_command_names_the_repository_accelerate_config():
    """Without --config_file, `accelerate launch` ignores accelerate_config.yaml and guesses defaults."""
    from accelerate.commands.config.config_args import load_config_from_file

    readme = (ROOT / "README.md").read_text()
    main_command = next(line for line in readme.splitlines() if line.endswith("# the main job"))
    assert main_command.startswith("accelerate launch --config_file accelerate_config.yaml run_snacks.py recipes/")
    config = load_config_from_file(str(ROOT / "accelerate_config.yaml"))
    assert config.num_processes == 1 and config.mixed_precision == "bf16"


def test_too_old_libraries_stop_the_run_at_start_up(monkeypatch):
    from vitrecipes import hardware

    monkeypatch.setattr(hardware, "REQUIREMENTS", ("transformers>=99.0",))
    with pytest.raises(RecipeError, match=r"transformers>=99.0.*pip install -r requirements.txt"):
        hardware.check_requirements()
    # The start-up check and requirements.txt state the same lower bounds.
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    pinned = {line.split("#")[0].strip() for line in lines}
    monkeypatch.undo()
    assert set(hardware.REQUIREMENTS) <= pinned
    hardware.check_requirements()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--adaptation", "linear_probe", "--mixup_alpha", "0.2"], r"mixup_alpha: .*adaptation linear_probe"),
        (["--adaptation", "linear_probe", "--ema_decay", "0.9"], "ema_decay: "),
        (["--adaptation", "linear_probe", "--layer_decay", "0.8"], "layer_decay: .*no Trainer loop"),
        (["--adaptation", "linear_probe", "--drop_path_rate", "0.1"], "drop_path_rate: .*no Trainer loop"),
        (["--adaptation", "linear_probe", "--learning_rate", "0.1"], "learning_rate: .*no Trainer loop"),
        (["--adaptation", "linear_probe", "--num_train_epochs", "0"], "num_train_epochs: 0.0 cannot act"),
        (["--num_train_epochs", "0"], r"num_train_epochs: 0 .*trains 0 steps"),
        (["--adaptation", "lp_ft", "--num_train_epochs", "0", "--max_steps", "0"], "num_train_epochs: 0"),
        (["--freeze_blocks", "2"], r"freeze_blocks: .*only with adaptation freeze \(this run: full\)"),
        (["--adaptation", "lora", "--freeze_blocks", "2"], "freeze_blocks: .*this run: lora"),
        (["--lora_rank", "8"], "lora_rank: .*only with adaptation lora"),
        (["--lora_target_modules", "query"], "lora_target_modules: .*only with adaptation lora"),
        (["--adaptation", "freeze", "--freeze_blocks", "1", "--probe_regularization", "0.01"],
         "probe_regularization: .*only with adaptation linear_probe or lp_ft"),
        (["--adaptation", "freeze", "--freeze_blocks", "-1"],
         r"freeze_blocks must be 1 or more, up to the model's number of encoder blocks .*got -1"),
        (["--adaptation", "lora", "--lora_rank", "0"], "lora_rank must be 1 or more, got 0"),
        (["--adaptation", "lora", "--lora_alpha", "0"], "lora_alpha must be positive"),
        (["--adaptation", "lora", "--lora_dropout", "1"], r"lora_dropout must lie in \[0, 1\)"),
        (["--drop_path_rate", "1.5"], r"drop_path_rate must lie in \[0, 1\)"),
        (["--model_name_or_path", "null", "--model_type", "vit", "--image_size", "64"],
         "image_size: 64 cannot act .*from-scratch model takes its sizes from config_overrides"),
    ],
)  # fmt: skip
def test_keys_that_cannot_act_are_refused_at_parse_time(tmp_path, args, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe([write(tmp_path, "seed: 1\n"), *args])


def test_keys_that_act_and_unset_ones_are_accepted(tmp_path):
    recipe = write(tmp_path, "seed: 1\n")
    # Default values of another adaptation's keys are not "set"; a probe needs no Trainer steps.
    parse_recipe([recipe, "--adaptation", "linear_probe", "--probe_regularization", "1"])
    parse_recipe([recipe, "--adaptation", "lora", "--lora_rank", "4", "--lora_dropout", "0.1", "--max_steps", "5",
                  "--num_train_epochs", "0"])  # fmt: skip
    parse_recipe([recipe, "--adaptation", "lp_ft", "--mixup_alpha", "0.2", "--probe_feature_cache", "false"])


def test_switching_the_mode_on_the_command_line_leaves_the_recipes_other_keys_out(tmp_path, caplog):
    recipe = str(ROOT / "recipes/dinov2-small/snacks/config_cpu.yaml")  # lp_ft, with a probe key and loop keys
    model_args, data_args, training_args, _ = parse_recipe([recipe, "--adaptation", "freeze", "--freeze_blocks", "8"])
    assert model_args.probe_regularization == 0.1  # the recipe's 0.01 left out, back at its default
    (note,) = [n for n in training_args.gpu_settings_switched_off if "left out" in n]
    assert note.startswith("probe_regularization: the recipe's values are left out")
    groups = resolved_recipe(model_args, data_args, training_args)
    assert "probe_regularization" not in groups["model"] and groups["model"]["freeze_blocks"] == 8
    assert "lora_rank" not in groups["model"] and groups["training"]["max_steps"] == 190  # what acted stays
    # A probe runs no Trainer loop: the recipe's loop keys are left out of what it records, and named once.
    args = parse_recipe([recipe, "--adaptation", "linear_probe"])
    (note,) = [n for n in args[2].gpu_settings_switched_off if "left out" in n]
    for key in ("learning_rate", "max_steps", "layer_decay", "warmup_steps", "per_device_train_batch_size"):
        assert key in note and key not in resolved_recipe(*args[:3])["training"]
    assert args[0].probe_regularization == 0.01  # a probe key acts in a probe
    # The same key given on the command line with that mode is an error, as a key of the recipe file's own mode is.
    with pytest.raises(RecipeError, match=r"probe_regularization: 0.01 cannot act .*this run: freeze"):
        parse_recipe([recipe, "--adaptation", "freeze", "--freeze_blocks", "8", "--probe_regularization", "0.01"])
    with pytest.raises(RecipeError, match=r"freeze_blocks: 3 cannot act"):
        parse_recipe([write(tmp_path, "adaptation: lp_ft\nfreeze_blocks: 3\n"), "--seed", "2"])


def test_lora_under_fsdp_is_refused_before_loading(tmp_path, monkeypatch):
    # Folding adapters into FSDP2-sharded weights left the final evaluation failing on mixed Tensor/DTensor.
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for an FSDP config
    with pytest.raises(RecipeError, match=r"adaptation: lora .*accelerate_configs/ddp\.yaml"):
        parse_recipe([write(tmp_path, "adaptation: lora\nuse_cpu: true\n")])


def test_a_tracker_that_is_missing_or_broken_is_named_with_its_pip_line(tmp_path, monkeypatch):
    recipe = write(tmp_path, "seed: 1\n")
    monkeypatch.setitem(sys.modules, "wandb", None)  # absent, whatever this machine has installed
    with pytest.raises(RecipeError, match=r"report_to: wandb is not installed.*pip install wandb"):
        parse_recipe([recipe, "--report_to", "wandb"])
    monkeypatch.undo()
    # Installed but broken: found on the path, fails when imported (as Trainer would import it).
    (tmp_path / "site" / "trackio").mkdir(parents=True)
    (tmp_path / "site" / "trackio" / "__init__.py").write_text("raise ImportError('libfoo.so: cannot open')\n")
    monkeypatch.syspath_prepend(tmp_path / "site")
    for value in ("trackio", "all"):  # "all": every tracker found installed, so the broken one too
        with pytest.raises(RecipeError, match=r"report_to: trackio fails to import.*libfoo.*pip install trackio"):
            parse_recipe([recipe, "--report_to", value])
    assert parse_recipe([recipe, "--report_to", "tensorboard"])[2].report_to == ["tensorboard"]


def test_duplicate_keys_name_the_key_the_file_and_both_lines(tmp_path):
    recipe = write(tmp_path, "learning_rate: 1.0e-4\nseed: 1\nlearning_rate: 3.0e-4\n")
    with pytest.raises(RecipeError, match=rf"{recipe} sets 'learning_rate' twice \(lines 1 and 3\)"):
        parse_recipe([recipe])
    nested = write(tmp_path, "config_overrides:\n  hidden_size: 64\n  hidden_size: 32\n")
    with pytest.raises(RecipeError, match=r"sets 'hidden_size' twice \(lines 2 and 3\)"):
        parse_recipe([nested])
    # Search-space files are read the same way.
    from vitrecipes.config import load_search_space

    space = tmp_path / "space.yaml"
    space.write_text("n_trials: 2\nparams:\n  learning_rate: {low: 1.0e-5, high: 1.0e-3}\n  learning_rate: {low: 1}\n")
    with pytest.raises(RecipeError, match=rf"{space} sets 'learning_rate' twice \(lines 3 and 4\)"):
        load_search_space(space)


def test_an_empty_output_dir_is_refused(tmp_path):
    with pytest.raises(RecipeError, match=r"output_dir is empty"):
        parse_recipe([write(tmp_path, "seed: 1\n"), "--output_dir", ""])
    with pytest.raises(RecipeError, match=r"output_dir is empty"):
        parse_recipe([write(tmp_path, "output_dir: ''\n")])


def test_bf16_is_kept_on_a_cpu_with_native_bf16_but_not_for_evaluation_only(tmp_path, monkeypatch):
    from vitrecipes import hardware

    monkeypatch.setattr(hardware, "native_cpu_bf16", lambda: True)  # e.g. a Sapphire Rapids Xeon (AMX)
    recipe = write(tmp_path, "bf16: true\nuse_cpu: true\n")
    training = parse_recipe([recipe, "--output_dir", str(tmp_path / "out")])[2]
    assert training.bf16 is True
    assert training.gpu_settings_switched_off == [
        "bf16: kept, this CPU computes bf16 natively (AMX or AVX512-BF16: DINOv2-S trains about 1.4x and infers "
        "about 2.7x faster than in fp32); training runs in bf16, the final evaluation in fp32."
    ]
    # Evaluation only has nothing to speed up in bf16: it runs the saved weights in fp32, as pipeline() does.
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    training = parse_recipe([recipe, "--do_train", "false", "--model_name_or_path", str(tmp_path / "model")])[2]
    assert training.bf16 is False
    assert training.gpu_settings_switched_off == [
        "bf16: switched off, no CUDA GPU here (an evaluation-only run evaluates in fp32)."
    ]
    # A GPU recipe (no use_cpu) on this CPU: off, as TrainingArguments wants, with the key that keeps it.
    training = parse_recipe([recipe, "--use_cpu", "false", "--output_dir", str(tmp_path / "out")])[2]
    assert training.bf16 is False and "use_cpu: true would keep it" in training.gpu_settings_switched_off[0]


def test_native_cpu_bf16_reads_the_flags_torch_sees():
    from vitrecipes.hardware import native_cpu_bf16

    # Private torch probes (torch 2.14.1), used here only to check the public /proc/cpuinfo reading against.
    expected = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert native_cpu_bf16() is bool(expected)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--learning_rate", "-0.001"], r"learning_rate must be 0 or more .*, got -0\.001"),
        (["--learning_rate", "nan"], r"learning_rate must be a finite number \(not nan or inf\), got nan"),
        (["--weight_decay", "-inf"], r"weight_decay must be a finite number"),
        (["--num_train_epochs", "1e308"], r"num_train_epochs must lie from 0 to 10\*\*6, got 1e\+308"),
        (["--per_device_train_batch_size", "1e20"], r"per_device_train_batch_size must be a whole number from 1 to "
                                                    r"65536, got 100000000000000000000"),
        (["--per_device_eval_batch_size", "0"], "per_device_eval_batch_size must be a whole number from 1"),
        (["--per_device_train_batch_size", "1e400"], r"per_device_train_batch_size: expected a whole number"),
        (["--weight_decay", "-5"], r"weight_decay must be 0 \(off\) or more, got -5\.0"),
        (["--max_steps", "-2"], r"max_steps must be -1 or 0 \(num_train_epochs counts\)"),
        (["--max_steps", "1e12"], "max_steps must be -1"),
        (["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps must be a whole number from 1"),
        (["--warmup_steps", "-1"], "warmup_steps must lie from 0"),
        (["--label_smoothing_factor", "1"], r"label_smoothing_factor must lie in \[0, 1\)"),
        (["--max_grad_norm", "-1"], "max_grad_norm must be 0"),
        (["--adam_beta1", "1.5"], "adam_beta1 must lie in"),
        (["--adam_beta2", "-0.1"], "adam_beta2 must lie in"),
        (["--adam_epsilon", "0"], "adam_epsilon must be positive"),
        (["--logging_steps", "0"], "logging_steps must be positive"),
        (["--save_steps", "-5"], "save_steps must be positive"),
        (["--eval_steps", "1e10"], "eval_steps must be positive: a number of steps up to 10"),
        (["--save_total_limit", "0"], "save_total_limit must be a whole number from 1"),
        (["--dataloader_num_workers", "-1"], "dataloader_num_workers must be a whole number from 0"),
        (["--max_eval_samples", "0"], "max_eval_samples must be a whole number from 1"),
        (["--image_std", "0.5", "0", "0.5"], "image_std must be positive"),
        (["--image_mean", "0.5", "nan", "0.5"], "image_mean must be a finite number"),
        (["--random_resized_crop_scale", "0", "1"], r"random_resized_crop_scale must lie in \(0, 1\]"),
        (["--ddp_timeout", "1e20"], "ddp_timeout must be a whole number from 1"),
        (["--local_rank", "1e20"], "local_rank must fit in 64 bits"),  # a key without its own range
    ],
)  # fmt: skip
def test_numbers_out_of_range_are_refused_at_parse_time_naming_the_key(tmp_path, args, message):
    with pytest.raises(RecipeError, match=message) as raised:
        parse_recipe([write(tmp_path, "seed: 1\n"), *args])
    assert "\n" not in str(raised.value)


def test_numbers_at_the_edges_of_their_ranges_are_accepted(tmp_path):
    edges = {"learning_rate": 1e-12, "weight_decay": 0, "num_train_epochs": 10**6, "max_steps": -1,
             "per_device_train_batch_size": 65536, "per_device_eval_batch_size": 1, "gradient_accumulation_steps": 1,
             "warmup_steps": 0, "label_smoothing_factor": 0, "adam_beta1": 0, "adam_beta2": 0.999999,
             "max_grad_norm": 0, "logging_steps": 1e-3, "save_steps": 10**9, "save_total_limit": 1,
             "dataloader_num_workers": 0, "eval_delay": 0, "max_eval_samples": 1, "eval_crop_pct": 1,
             "random_resized_crop_scale": [1e-3, 1], "seed": 0, "data_seed": 2**32 - 1}  # fmt: skip
    _, data, training, _ = parse_recipe([write(tmp_path, yaml.safe_dump(edges))])
    assert {k: getattr(training, k, None) if hasattr(training, k) else getattr(data, k) for k in edges} == edges
    assert parse_recipe([write(tmp_path, "max_steps: 1\nnum_train_epochs: 0\n")])[2].max_steps == 1


def test_every_number_key_is_checked_for_nan_inf_and_huge_values(tmp_path):
    """Whatever a number key is given, the answer is the key's value or a RecipeError naming it, never a raw error;
    nan and inf are never accepted (a float key would otherwise take them)."""
    from vitrecipes.config import _OPTIONS

    recipe = write(tmp_path, "seed: 1\n")
    numbers = [k for k, o in _OPTIONS.items() if {int, float} & {typing.get_args(x)[0] if typing.get_args(x) else x
                                                                  for x in o}]  # fmt: skip
    assert len(numbers) > 40 and "learning_rate" in numbers and "seeds" in numbers
    for key in numbers:
        for value in ("nan", "inf", "-inf", "1e20", "-1e20", "1" + "0" * 400):
            try:
                parse_recipe([recipe, f"--{key}", value])
            except RecipeError as error:
                assert str(error).startswith(key), (key, value, error)
            else:
                assert value in ("1e20", "1" + "0" * 400), (key, value)  # a huge value only where a key allows it
    # Written in the recipe, as YAML types them: the same answers.
    for text in ("learning_rate: .nan\n", "learning_rate: .inf\n", f"learning_rate: 1{'0' * 400}\n"):
        with pytest.raises(RecipeError, match="^learning_rate"):
            parse_recipe([write(tmp_path, text)])


def test_eval_image_size_of_a_model_that_runs_at_one_size_is_refused_before_any_data_loads(tmp_path, tiny_checkpoint):
    from vitrecipes.config import ModelArguments
    from vitrecipes.modeling import build_model

    # recipes/smoke.yaml: a ViT from scratch at 32 px (config_overrides); it once trained an epoch, then failed.
    with pytest.raises(RecipeError, match=r"eval_image_size: a from-scratch vit model runs at one input size \(32 px"):
        parse_recipe(["recipes/smoke.yaml", "--eval_image_size", "48", "--output_dir", str(tmp_path / "out")])
    with pytest.raises(RecipeError, match=r"eval_image_size: ViTForImageClassification runs at one input size \(32"):
        parse_recipe(["recipes/smoke.yaml", "--model_name_or_path", str(tiny_checkpoint), "--model_type", "null",
                      "--config_overrides", "null", "--eval_image_size", "48"])  # fmt: skip
    assert parse_recipe(["recipes/smoke.yaml", "--eval_image_size", "32"])[0].eval_image_size == 32
    # An evaluation-only run reads the trained model's config.json.
    with pytest.raises(RecipeError, match=r"eval_image_size: ViTForImageClassification runs at one input size"):
        parse_recipe(["recipes/smoke.yaml", "--do_train", "false", "--output_dir", str(tiny_checkpoint),
                      "--eval_image_size", "64"])  # fmt: skip
    # build_model checks a model from scratch too (a Hub checkpoint is only checked there).
    overrides = {"image_size": 32, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1,
                 "num_attention_heads": 2, "intermediate_size": 16}  # fmt: skip
    model = ModelArguments(model_name_or_path=None, model_type="vit", config_overrides=overrides, eval_image_size=48)
    with pytest.raises(RecipeError, match=r"eval_image_size: ViTForImageClassification runs at one input size"):
        build_model(model, ["a", "b"])
    assert not (tmp_path / "out").exists()


def test_an_output_dir_that_is_a_file_or_inside_the_dataset_is_refused_at_parse_time(tmp_path, imagefolder):
    (tmp_path / "notes.txt").write_text("keep me")
    for output_dir in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "run"):
        with pytest.raises(RecipeError, match=rf"output_dir: {tmp_path / 'notes.txt'} is a file, so {output_dir} "):
            parse_recipe(["recipes/smoke.yaml", "--output_dir", str(output_dir)])
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    # Inside the imagefolder trained on, its reports would become classes of the next run on that folder.
    for output_dir in (imagefolder / "out", imagefolder, imagefolder / "train" / ".." / "run"):
        with pytest.raises(RecipeError, match=rf"output_dir {output_dir} is inside the dataset folder {imagefolder}"):
            parse_recipe(["recipes/smoke.yaml", "--dataset_name", str(imagefolder), "--output_dir", str(output_dir)])
    assert sorted(p.name for p in imagefolder.iterdir()) == ["test", "train", "validation"]
    parse_recipe(["recipes/smoke.yaml", "--dataset_name", str(imagefolder), "--output_dir", str(tmp_path / "out")])
    result = run_cli("recipes/smoke.yaml", "--output_dir", tmp_path / "notes.txt")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "is a file" in result.stderr
