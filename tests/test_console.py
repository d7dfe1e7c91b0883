"""What a user sees while a run goes: a short console (header, progress, one line per logging step, a closing table),
and the libraries' messages in the run's log file."""

import json
import re

from helpers import run_cli

import run_snacks

TINY = ["--max_train_samples", "64", "--max_eval_samples", "32", "--num_train_epochs", "1"]


def _lines(text: str) -> list[str]:
    """The console as a person reads it at the end: progress-bar refreshes (carriage returns, cursor moves) removed."""
    kept = []
    for line in re.sub(r"\x1b\[A", "", text).split("\n"):
        last = line.split("\r")[-1].strip()  # a bar redraws its line after each \r; what stays is the last draw
        if last and not re.search(r"\d+/\d+ \[[\d:]+<", last):  # a bar left standing
            kept.append(last)
    return kept


def test_the_console_of_a_smoke_run_is_a_header_a_line_per_logging_step_and_a_closing_table(smoke_run):
    out, result = smoke_run
    lines = _lines(result.stdout) + _lines(result.stderr)
    assert len(lines) <= 40, "\n".join(lines)
    assert lines[:5] == [
        f"Recipe  recipes/smoke.yaml -> {out}",
        "Data    builtin:digits: 10 classes; train 1197, validation 300, test 300",
        "Model   vit from scratch, adaptation full; 32 px",
        "Device  cpu, 1 process; fp32",
        "Batch   32 per device x 1 process x 1 accumulation = 32; 8 epochs",
    ]
    assert sum(line.startswith("step ") and " loss " in line and " lr " in line for line in lines) == 15  # 304 / 20
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("validation", "test"):
        report = json.loads((out / f"eval_{split}" / "metrics.json").read_text())
        row = f"{split:<10}  {metrics[split]['accuracy']:8.4f}  {report['top_k_accuracy']:.4f}  {report['ece']:.4f}"
        assert any(line.startswith(row) and line.endswith(" 300") for line in lines), (row, lines)
    assert any(line.startswith("Wall time ") and "unreadable images left out: none" in line for line in lines)
    log = (out / "run.log").read_text()  # the libraries' INFO messages, in full, in the output folder
    assert "transformers.trainer: ***** Running training *****" in log and "Model weights saved in" in log
    assert "INFO" not in result.stderr and "{'loss'" not in result.stdout  # neither on the console nor dicts


def test_log_level_info_shows_the_libraries_messages_on_the_console_too(tmp_path):
    result = run_cli("recipes/smoke.yaml", "--output_dir", tmp_path / "out", "--log_level", "info", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "INFO transformers.trainer: ***** Running training *****" in result.stderr
    assert "transformers.trainer: ***** Running training *****" in (tmp_path / "out" / "run.log").read_text()


def test_the_logged_learning_rate_is_the_recipes_at_the_end_of_warm_up(tmp_path, tiny_dinov2, jpeg_folder, capsys):
    argv = ["--model_name_or_path", str(tiny_dinov2), "--dataset_name", str(jpeg_folder), "--output_dir",
            str(tmp_path / "out"), "--use_cpu", "--report_to", "none", "--per_device_train_batch_size", "10",
            "--learning_rate", "1.0e-3", "--layer_decay", "0.5", "--head_learning_rate_multiplier", "4",
            "--warmup_steps", "2", "--max_steps", "4", "--lr_scheduler_type", "linear", "--logging_steps", "1",
            "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false"]  # fmt: skip
    run_snacks.main(argv)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert lines[1].startswith("step 2/4  loss ") and "  lr 1.00e-03 (head 4.00e-03)  " in lines[1], lines
    assert "  lr 5.00e-04 (head 2.00e-03)  " in lines[0] and "  lr 5.00e-04 " in lines[2]  # warm-up, then decay


def test_the_probe_shows_its_progress_and_says_when_features_come_from_the_cache(tmp_path, tiny_dinov2, jpeg_folder,
                                                                                 capfd, monkeypatch):  # fmt: skip
    monkeypatch.setenv("VITRECIPES_CACHE", str(tmp_path / "cache"))
    argv = ["--model_name_or_path", str(tiny_dinov2), "--dataset_name", str(jpeg_folder), "--use_cpu",
            "--report_to", "none", "--adaptation", "linear_probe", "--per_device_eval_batch_size", "8"]  # fmt: skip
    run_snacks.main([*argv, "--output_dir", str(tmp_path / "first")])
    first = capfd.readouterr()
    assert re.search(r"probe features:\s+0%\|\s+\| 0/4 ", first.err), first.err  # 30 images, 8 a batch
    assert "read from the cache" not in first.out
    assert "Found cached dataset" not in first.err + first.out  # datasets' INFO lines: the log file only
    run_snacks.main([*argv, "--output_dir", str(tmp_path / "second")])
    second = capfd.readouterr()
    assert "Found cached dataset" not in second.err + second.out
    assert "probe features: read from the cache" in second.out and "probe features:" not in second.err
    assert "Batch   none: no Trainer loop" in second.out


def test_the_new_head_is_one_line_and_other_new_weights_stay_loud(tmp_path, tiny_dinov2, capsys, caplog):
    from transformers import AutoModelForImageClassification

    from vitrecipes.config import ModelArguments
    from vitrecipes.modeling import build_model

    build_model(ModelArguments(model_name_or_path=str(tiny_dinov2)), ["a", "b", "c"])
    assert capsys.readouterr().out == "A new 3-class head (expected for fine-tuning).\n"
    assert not [r for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("vitrecipes")]
    # A checkpoint that lacks more than the head: those weights are named in a warning.
    model = AutoModelForImageClassification.from_pretrained(tiny_dinov2, num_labels=3)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("dinov2.layernorm")}
    model.save_pretrained(tmp_path / "partial", state_dict=state)
    build_model(ModelArguments(model_name_or_path=str(tmp_path / "partial")), ["a", "b", "c"])
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("vitre")]
    assert warning.startswith("2 weights are not in the checkpoint") and "dinov2.layernorm.weight" in warning
    assert "head" not in capsys.readouterr().out  # the checkpoint's own 3-class head was loaded
