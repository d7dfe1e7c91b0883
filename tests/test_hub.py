"""Model card and Hub push of a real smoke run; the Hub itself is intercepted at the HfApi boundary."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import ROOT
from huggingface_hub import HfApi, ModelCard, RepoUrl, metadata_load
from huggingface_hub.hf_api import DEFAULT_IGNORE_PATTERNS
from huggingface_hub.utils import filter_repo_objects

import export as export_script
import push_to_hub as push_script
from vitrecipes.card import BASE_TAGS, build_model_card, finish_for_hub, take_hub_settings, write_model_card
from vitrecipes.config import RecipeTrainingArguments
from vitrecipes.errors import PushError, RecipeError
from vitrecipes.hub import NEVER_UPLOAD, UPLOAD_PATTERNS, is_hub_id, push_output_dir
from vitrecipes.onnx_export import export_folder

FAKE_TOKEN = "hf_FAKEtoken1234567890"
MODEL_FILES = {
    "README.md",
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "metrics.json",
    "resolved_recipe.yaml",
}


@pytest.fixture
def run_dir(smoke_run, tmp_path) -> Path:
    """A private copy of the smoke output folder (checkpoint included), so tests may write into it."""
    return Path(shutil.copytree(smoke_run[0], tmp_path / "smoke"))


@pytest.fixture
def hub_calls(monkeypatch) -> list[tuple[str, dict]]:
    """Record create_repo / upload_folder instead of reaching the Hub."""
    calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", kwargs))
        return None

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def _failing_upload(monkeypatch):
    def upload_folder(self, **kwargs):
        raise RuntimeError(f"401 Client Error: Unauthorized. Authorization: Bearer {kwargs.get('token')}")

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: RepoUrl(f"https://hf.co/{repo_id}"))
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def _files_holding(folder: Path, secret: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def _uploaded_files(call: dict) -> set[str]:
    """What upload_folder would send, filtered by huggingface_hub's own pattern matching."""
    folder = Path(call["folder_path"])
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    ignore = call["ignore_patterns"] + DEFAULT_IGNORE_PATTERNS
    return set(filter_repo_objects(files, allow_patterns=call["allow_patterns"], ignore_patterns=ignore))


def _output_folder(folder: Path, **recipe) -> Path:
    """A small output folder as a run leaves it (config.json, metrics.json, resolved_recipe.yaml), no weights."""
    folder.mkdir(parents=True)
    config = {"model_type": "vit", "image_size": 32, "id2label": {"0": "apple", "1": "banana"}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.json").write_text(json.dumps({"validation": {"accuracy": 0.75, "loss": 0.5, "samples": 8}}))
    (folder / "resolved_recipe.yaml").write_text(yaml.safe_dump({"learning_rate": 0.001, **recipe}))
    return folder


def test_model_card_metadata_matches_metrics(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    path = write_model_card(
        run_dir,
        repo_id="someone/vit-digits",
        command="python run_snacks.py recipes/smoke.yaml",
        recipe_path=ROOT / "recipes" / "smoke.yaml",
    )
    meta = metadata_load(path)
    assert meta["pipeline_tag"] == "image-classification" and meta["license"] == "apache-2.0"
    assert meta["library_name"] == "transformers" and set(BASE_TAGS) <= set(meta["tags"])
    assert "base_model" not in meta  # trained from scratch
    assert "datasets" not in meta  # builtin:digits is not a Hub dataset
    (entry,) = meta["model-index"]
    assert entry["name"] == "vit-digits"
    assert {r["dataset"]["name"] for r in entry["results"]} == {"digits"}  # builtin:digits, as a user calls it
    by_split = {r["dataset"]["split"]: r["metrics"][0] for r in entry["results"]}
    assert by_split["validation"]["value"] == metrics["validation"]["accuracy"]
    assert by_split["test"]["value"] == metrics["test"]["accuracy"]
    assert {m["type"] for m in by_split.values()} == {"accuracy"}

    card = ModelCard.load(path)
    assert {r.dataset_split: r.metric_value for r in card.data.eval_results} == {
        "validation": metrics["validation"]["accuracy"],
        "test": metrics["test"]["accuracy"],
    }
    body = card.text
    assert f"| validation | {metrics['validation']['accuracy']:.4f} |" in body
    assert f"| test | {metrics['test']['accuracy']:.4f} |" in body
    assert "| learning_rate | 0.002 |" in body and "| effective batch size | 32 |" in body
    # Optional keys get a row only where the run changed them: the smoke recipe turns flips off, no MixUp.
    assert "| horizontal_flip | False |" in body and "mixup_alpha" not in body and "lora_rank" not in body
    labels = json.loads((run_dir / "config.json").read_text())["id2label"]
    assert all(f"`{i}` {name}" in body for i, name in labels.items())
    assert 'pipeline("image-classification", model="someone/vit-digits")' in body
    assert "python predict.py --model someone/vit-digits" in body
    assert "python run_snacks.py recipes/smoke.yaml" in body and "dataset_name: builtin:digits" in body
    assert "on `digits`" in body


def test_card_for_a_fine_tuned_model_without_test_split(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    del metrics["test"]
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    recipe = (run_dir / "resolved_recipe.yaml").read_text()
    recipe = recipe.replace("model_name_or_path: null", "model_name_or_path: google/vit-base-patch16-224-in21k")
    recipe = recipe.replace("dataset_name: builtin:digits", "dataset_name: Matthijs/snacks")
    (run_dir / "resolved_recipe.yaml").write_text(recipe)

    meta = metadata_load(write_model_card(run_dir, license="mit"))
    assert meta["base_model"] == "google/vit-base-patch16-224-in21k"
    assert meta["datasets"] == ["Matthijs/snacks"] and meta["license"] == "mit"
    (result,) = meta["model-index"][0]["results"]
    assert result["dataset"] == {"name": "Matthijs/snacks", "type": "Matthijs/snacks", "split": "validation"}
    assert "no test split" in (run_dir / "README.md").read_text()


def test_card_names_local_dataset_and_checkpoint_by_folder_never_by_machine_path(tmp_path):
    """A run on a local dataset from a local checkpoint: the card, public once pushed, names both as a
    user would, and quotes no absolute path of the training machine, in the metadata or the text."""
    dataset, checkpoint = tmp_path / "data" / "snacks", tmp_path / "models" / "dinov2-small"
    dataset.mkdir(parents=True)
    checkpoint.mkdir(parents=True)
    run = _output_folder(tmp_path / "outputs" / "run", dataset_name=str(dataset), model_name_or_path=str(checkpoint))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"dataset_name: {dataset}\nmodel_name_or_path: {checkpoint}\n")
    command = f"python run_snacks.py {recipe} --output_dir {run}"

    card = ModelCard.load(write_model_card(run, command=command, recipe_path=recipe))
    assert str(tmp_path) not in str(card)  # no path of the dataset, the checkpoint, the output folder or the recipe
    (result,) = card.data.eval_results
    assert (result.dataset_name, result.dataset_type) == ("snacks", "imagefolder")
    assert card.data.datasets is None and card.data.base_model is None  # neither is on the Hub
    assert "fine-tuned from the local checkpoint `dinov2-small` on `snacks`," in card.text
    assert "python run_snacks.py recipe.yaml --output_dir run" in card.text and "dataset_name: snacks" in card.text

    # The recipe's dataset_name_for_card wins, in the model-index and in the text.
    resolved = yaml.safe_load((run / "resolved_recipe.yaml").read_text())
    for name, hub_datasets in [("Snacks (local copy)", None), ("Matthijs/snacks", ["Matthijs/snacks"])]:
        (run / "resolved_recipe.yaml").write_text(yaml.safe_dump({**resolved, "dataset_name_for_card": name}))
        card = build_model_card(run)
        assert str(tmp_path) not in str(card)
        assert card.data.eval_results[0].dataset_name == name and card.data.datasets == hub_datasets
        assert f"on `{name}`," in card.text or f"on [{name}](https://huggingface.co/datasets/{name})," in card.text


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Matthijs/snacks", True),
        ("google/vit-base-patch16-224-in21k", True),
        ("outputs/smoke", False),  # a folder that exists here
        ("./snacks", False),
        ("/data/snacks", False),
        ("~/snacks", False),
        ("data/snacks/train", False),
        ("builtin:digits", False),
        ("snacks", False),
        (None, False),
    ],
)
def test_is_hub_id(name, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "smoke").mkdir(parents=True)
    assert is_hub_id(name) is expected


def test_push_uploads_the_model_files_only(run_dir, hub_calls, capsys):
    # Files a careless upload would take along: notes, an eval-only run's results, optimiser state.
    for name in ("notes.txt", "eval_only_metrics.json", "optimizer.pt", "rng_state.pth"):
        (run_dir / name).write_text("local only")
    (run_dir / "README.md").unlink()

    argv = [str(run_dir), "--hub_model_id", "someone/vit-digits", "--private", "--token", FAKE_TOKEN]
    assert push_script.main(argv) == 0

    assert "https://huggingface.co/someone/vit-digits" in capsys.readouterr().out
    (create_name, create), (upload_name, upload) = hub_calls
    assert create_name == "create_repo" and upload_name == "upload_folder"
    assert create == {"repo_id": "someone/vit-digits", "token": FAKE_TOKEN, "private": True, "exist_ok": True}
    assert upload["repo_id"] == "someone/vit-digits" and Path(upload["folder_path"]) == run_dir
    assert upload["allow_patterns"] == UPLOAD_PATTERNS and upload["ignore_patterns"] == NEVER_UPLOAD
    assert upload["token"] == FAKE_TOKEN
    assert _uploaded_files(upload) == MODEL_FILES
    assert (run_dir / "README.md").is_file()  # the card was written because the folder had none
    assert any(p.name.startswith("checkpoint-") for p in run_dir.iterdir())  # not uploaded, still on disk


def test_failed_push_keeps_everything_and_hides_the_token(run_dir, monkeypatch):
    _failing_upload(monkeypatch)
    before = {p.relative_to(run_dir) for p in run_dir.rglob("*")}

    with pytest.raises(RecipeError) as error_info:
        push_output_dir(run_dir, "someone/vit-digits", token=FAKE_TOKEN)

    message = str(error_info.value)
    assert FAKE_TOKEN not in message and "401 Client Error" in message
    assert f"python push_to_hub.py {run_dir} --hub_model_id someone/vit-digits" in message
    assert str(run_dir.resolve()) in message
    # Not chained to the original exception, whose message quotes the token.
    assert error_info.value.__cause__ is None and error_info.value.__context__ is None
    assert before <= {p.relative_to(run_dir) for p in run_dir.rglob("*")}


def test_end_of_training_push_never_writes_or_logs_the_token(run_dir, tmp_path, monkeypatch, caplog, capsys):
    """The run_snacks.py path: token in the recipe, on the command line and in HF_TOKEN; the push fails."""
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    _failing_upload(monkeypatch)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"dataset_name: builtin:digits\nhub_token: {FAKE_TOKEN}\npush_to_hub: true\n")
    argv = [str(recipe), "--hub_token", FAKE_TOKEN, f"--hub_token={FAKE_TOKEN}", "--hub_model_id", "someone/digits"]
    args = RecipeTrainingArguments(
        output_dir=str(run_dir), push_to_hub=True, hub_model_id="someone/digits", hub_token=FAKE_TOKEN, use_cpu=True
    )

    settings = take_hub_settings(args)
    assert not args.push_to_hub and args.hub_token is None  # Trainer will neither push nor pickle the token
    torch.save(args, run_dir / "training_args.bin")  # what Trainer.save_model writes
    logging.getLogger("vitrecipes").info("settings: %s %r", settings, settings)
    with caplog.at_level(logging.INFO), pytest.raises(PushError) as error_info:
        finish_for_hub(run_dir, settings, recipe_path=recipe, argv=argv)

    assert f"python push_to_hub.py {run_dir} --hub_model_id someone/digits" in str(error_info.value)
    assert FAKE_TOKEN not in str(error_info.value)
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "README.md").is_file()
    card = (run_dir / "README.md").read_text()
    assert "--hub_token *** --hub_token=*** --hub_model_id someone/digits" in card
    assert str(tmp_path) not in card  # the recipe is quoted by its name, not its path
    captured = capsys.readouterr()
    assert FAKE_TOKEN not in caplog.text + captured.out + captured.err
    assert _files_holding(run_dir, FAKE_TOKEN) == []


OTHER_TOKEN = "ci-secret-7Xq2Lm9Pz4"  # not shaped hf_...: only its exact value can hide it
STRAY_TOKEN = "hf_STRAYoldToken0987654321"  # shaped like a Hub token, but not the one this run uses


def _finish_with_failed_push(tmp_path, monkeypatch, recipe_text, hub_token, argv_extra=()):
    """finish_for_hub as run_snacks.py calls it at the end of training, with a push that fails; the card and
    the PushError's message."""
    run_dir = _output_folder(tmp_path / "run", dataset_name="builtin:digits")
    _failing_upload(monkeypatch)  # its error quotes the token it was given, as some servers' do
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text)
    argv = [str(recipe), "--push_to_hub", "true", "--hub_model_id", "someone/digits", *argv_extra]
    args = RecipeTrainingArguments(
        output_dir=str(run_dir), push_to_hub=True, hub_model_id="someone/digits", hub_token=hub_token, use_cpu=True
    )
    settings = take_hub_settings(args)
    torch.save(args, run_dir / "training_args.bin")  # what Trainer.save_model writes
    with pytest.raises(PushError) as error_info:
        finish_for_hub(run_dir, settings, recipe_path=recipe, argv=argv)
    return run_dir, (run_dir / "README.md").read_text(), str(error_info.value)


@pytest.mark.parametrize("source", ["--hub_token", "HF_TOKEN"])
def test_a_token_not_shaped_like_a_hub_token_is_scrubbed_too(source, tmp_path, monkeypatch, caplog, capsys):
    """No `hf_` pattern matches it: only replacing the run's own token (argument or HF_TOKEN) hides it."""
    if source == "HF_TOKEN":
        monkeypatch.setenv("HF_TOKEN", OTHER_TOKEN)
    hub_token, argv_extra = (OTHER_TOKEN, ["--hub_token", OTHER_TOKEN]) if source == "--hub_token" else (None, [])
    # A comment quoting the token: its key holds no "token", so the card shows the line.
    recipe_text = f"dataset_name: builtin:digits\n# pushed with HF_TOKEN={OTHER_TOKEN}\n"
    with caplog.at_level(logging.INFO):
        run_dir, card, message = _finish_with_failed_push(tmp_path, monkeypatch, recipe_text, hub_token, argv_extra)
    assert "# pushed with HF_TOKEN=***" in card
    if source == "--hub_token":
        assert "--hub_model_id someone/digits --hub_token ***" in card
    assert "python push_to_hub.py" in message  # the push failed, with the error quoting the token
    captured = capsys.readouterr()
    assert OTHER_TOKEN not in card + message + caplog.text + captured.out + captured.err
    assert _files_holding(run_dir, OTHER_TOKEN) == []


def test_a_stray_hub_token_that_is_not_the_active_one_is_scrubbed(tmp_path, monkeypatch, caplog, capsys):
    """An old `hf_...` token pasted into a recipe is hidden by its shape, whatever token the run uses."""
    recipe_text = f"dataset_name: builtin:digits  # copied from a notebook that used {STRAY_TOKEN}\n"
    with caplog.at_level(logging.INFO):
        run_dir, card, message = _finish_with_failed_push(
            tmp_path, monkeypatch, recipe_text, OTHER_TOKEN, ["--hub_token", OTHER_TOKEN]
        )
    assert "dataset_name: builtin:digits  # copied from a notebook that used ***" in card
    captured = capsys.readouterr()
    assert STRAY_TOKEN not in card + message + caplog.text + captured.out + captured.err
    assert _files_holding(run_dir, STRAY_TOKEN) == [] and _files_holding(run_dir, OTHER_TOKEN) == []


def test_finish_without_push_writes_the_card_only(run_dir, hub_calls):
    args = RecipeTrainingArguments(output_dir=str(run_dir), use_cpu=True)
    assert finish_for_hub(run_dir, args, argv=["recipes/smoke.yaml"]) is None
    assert hub_calls == []
    assert "python run_snacks.py recipes/smoke.yaml" in (run_dir / "README.md").read_text()


def test_push_to_hub_script_offline_names_the_later_command(run_dir, monkeypatch, caplog, capsys):
    """A real failure, no interception: the test session runs with HF_HUB_OFFLINE=1 (conftest), so
    huggingface_hub itself refuses to connect."""
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    with caplog.at_level(logging.DEBUG):
        status = push_script.main([str(run_dir), "--hub_model_id", "someone/vit-digits", "--token", FAKE_TOKEN])
    assert status == 2
    captured = capsys.readouterr()
    assert f"python push_to_hub.py {run_dir} --hub_model_id someone/vit-digits" in captured.err
    assert "HF_HUB_OFFLINE" in captured.err and "Traceback" not in captured.err
    assert FAKE_TOKEN not in captured.out + captured.err + caplog.text
    assert (run_dir / "README.md").is_file() and _files_holding(run_dir, FAKE_TOKEN) == []


def test_push_to_hub_script_rejects_a_folder_without_a_model(tmp_path, capsys, hub_calls):
    assert push_script.main([str(tmp_path / "missing"), "--hub_model_id", "someone/x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "README.md").write_text("# notes\n")  # a card is not a model: nothing is uploaded
    assert push_script.main([str(tmp_path), "--hub_model_id", "someone/x"]) == 2
    assert "holds no saved model (config.json)" in capsys.readouterr().err and hub_calls == []


@pytest.fixture
def images(digits_validation) -> list[str]:
    return [str(p) for p in sorted(digits_validation.rglob("*.png"))[::100]]


def _push(run_dir: Path) -> int:
    return push_script.main([str(run_dir), "--hub_model_id", "someone/vit-digits", "--token", FAKE_TOKEN])


def test_push_uploads_a_current_onnx_export_and_refuses_a_stale_one(run_dir, images, hub_calls, capsys):
    assert export_script.main([str(run_dir), "--images", *images]) == 0
    (run_dir / "onnx" / "model.partial").write_text("{}")  # an unfinished export's file: never uploaded
    assert _push(run_dir) == 0
    onnx = {"onnx/model.onnx", "onnx/model_quantized.onnx", "onnx/parity.json"}
    assert _uploaded_files(hub_calls[1][1]) == MODEL_FILES | onnx
    hub_calls.clear()
    # The label names changed after the export: that export would answer with the old ones.
    config = json.loads((run_dir / "config.json").read_text())
    config["id2label"]["0"] = "nil"
    (run_dir / "config.json").write_text(json.dumps(config))
    assert _push(run_dir) == 2
    err = capsys.readouterr().err
    assert f"Nothing was pushed. The ONNX export in {run_dir / 'onnx'} is stale: config.json changed since" in err
    later = f"python push_to_hub.py {run_dir} --hub_model_id someone/vit-digits"
    assert f"python export.py {run_dir} --overwrite (or delete it), then push: {later}." in err
    assert hub_calls == [] and "Traceback" not in err
    assert "## ONNX" not in (run_dir / "README.md").read_text()  # the card no longer describes it either


def _outside_the_onnx_section(card: str) -> str:
    return re.sub(r"<!-- onnx section.*?<!-- end of the onnx section -->", "", card, flags=re.S)


def test_an_export_after_the_card_brings_its_onnx_section_up_to_date(run_dir, images, hub_calls, capsys):
    """The card written at the end of training quotes the command and recipe, which the folder does not keep: an
    export made later rewrites its ONNX section only (export.py, or push_to_hub.py before it uploads)."""
    options = dict(repo_id="someone/vit-digits", command="python run_snacks.py recipes/smoke.yaml --seed 7",
                   recipe_path=ROOT / "recipes" / "smoke.yaml")  # fmt: skip
    before = write_model_card(run_dir, **options).read_text()
    assert "## ONNX" not in before
    assert export_script.main([str(run_dir), "--images", *images]) == 0
    assert f"Brought the ONNX section of {run_dir / 'README.md'} up to date" in capsys.readouterr().out
    after = (run_dir / "README.md").read_text()
    assert after == str(build_model_card(run_dir, **options))  # as if the card had been written after the export
    assert _outside_the_onnx_section(after) == _outside_the_onnx_section(before)
    assert "--seed 7" in after and "dataset_name: builtin:digits" in after
    assert 'snapshot_download("someone/vit-digits")' in after and "on 3 images (3 given images)" in after
    assert export_script.main([str(run_dir), "--images", *images]) == 0  # kept: the card stays as it is
    assert "Brought" not in capsys.readouterr().out and (run_dir / "README.md").read_text() == after

    # A card written while onnx/ was stale, then an export through the library (which leaves cards alone).
    processor = json.loads((run_dir / "preprocessor_config.json").read_text())
    (run_dir / "preprocessor_config.json").write_text(json.dumps({**processor, "image_mean": [0.4, 0.4, 0.4]}))
    write_model_card(run_dir)
    export_folder(run_dir, images=images)
    assert "## ONNX" not in (run_dir / "README.md").read_text()
    assert _push(run_dir) == 0
    card = (run_dir / "README.md").read_text()
    assert "## ONNX" in card and "snapshot_download" not in card  # a local card: the folder, not the Hub
    assert "README.md" in _uploaded_files(hub_calls[1][1])

    (run_dir / "README.md").write_text("# My own notes\n")  # a card without the section's markers: left alone
    assert export_script.main([str(run_dir), "--images", *images]) == 0
    assert "has no ONNX section to bring up to date" in capsys.readouterr().out
    assert (run_dir / "README.md").read_text() == "# My own notes\n"
