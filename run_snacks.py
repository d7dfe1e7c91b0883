#!/usr/bin/env python
"""Fine-tune an image classifier from a YAML recipe.

    python run_snacks.py recipes/smoke.yaml
    accelerate launch --config_file accelerate_config.yaml run_snacks.py \
        recipes/vit-base-patch16-224-in21k/snacks/config_tuned.yaml --learning_rate 3.0e-4
    python run_snacks.py RECIPE.yaml --seeds 42 43 44        # or --sweep SPACE.yaml (vitrecipes/experiments.py)

Exit status: 0 done, 2 a mistake in the recipe, data or checkpoint (one paragraph, no traceback), 3 the
run finished and is saved but push_to_hub failed (the message gives the command that pushes later).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from transformers import set_seed

from vitrecipes import console
from vitrecipes.adaptation import MODES, adapt
from vitrecipes.artifacts import EXPORTS, LOG_FILE
from vitrecipes.bad_images import shareable_names
from vitrecipes.calibration import calibrate, folded_calibration
from vitrecipes.card import take_hub_settings
from vitrecipes.config import parse_recipe
from vitrecipes.data import load_data
from vitrecipes.errors import PushError, RecipeError, user_message
from vitrecipes.experiments import run_recipe
from vitrecipes.hardware import check_requirements
from vitrecipes.modeling import build_model
from vitrecipes.outputs import finish_run, prepare_output_dir
from vitrecipes.training import build_trainer, effective_batch_size, evaluate_splits, train
from vitrecipes.transforms import build_preprocessing

logger = logging.getLogger("run_snacks")


def main(argv: list[str] | None = None) -> dict:
    """One run of one recipe: parse → data → model → train → evaluate → save → share. `run()` wraps it for --seeds
    and --sweep."""
    started = time.perf_counter()
    check_requirements()
    model_args, data_args, training_args, recipe_path = parse_recipe(argv)
    for name in training_args.export:
        EXPORTS[name].check_installed()  # now, not after training
    main_process = training_args.process_index == 0
    console.setup(training_args.log_level if main_process else training_args.log_level_replica, main_process)
    set_seed(training_args.seed)
    for note in training_args.gpu_settings_switched_off:
        logger.info(note) if note.startswith(("bf16", "fp16")) else logger.warning(note)  # the header shows bf16
    resume_from, bad_images = prepare_output_dir(model_args, data_args, training_args)
    if main_process:
        console.log_to(Path(training_args.output_dir) / LOG_FILE)
    hub = take_hub_settings(training_args)  # we push once at the end; Trainer must not push or pickle the token

    prep, eval_prep = build_preprocessing(model_args, data_args)
    data = load_data(data_args, training_args, prep, eval_prep, bad_images)

    console.show(*console.header(recipe_path, model_args, data_args, training_args, data, prep, eval_prep))
    model, mode, metrics = build_model(model_args, data.names), MODES[model_args.adaptation], {}
    if training_args.do_train:
        model, metrics["probe"] = adapt(model, model_args, training_args, prep, data, resume_from)
    # The saved processor applies the evaluation transform, so pipeline() sees what evaluation saw.
    trainer = build_trainer(model, eval_prep.serving_processor(), training_args, data.splits, prep, data_args)
    metrics["data"] = data.record(data_args)  # what it trained and evaluated on: compare_runs checks it
    if mode.trainer_loop:
        metrics["effective_batch_size"] = effective_batch_size(training_args)
    if training_args.do_train:
        metrics["train"] = train(trainer, mode, resume_from, metrics["probe"])

    split_metrics, predictions = evaluate_splits(trainer, data.splits)
    if training_args.do_train and training_args.calibrate_temperature:
        # Here: after the mode's finish (merge_lora) and the weight average (on_train_end), so the head folded is saved.
        metrics["calibration"] = calibrate(trainer.model, predictions, split_metrics)
    if training_args.do_train and (training_args.calibrate_temperature or training_args.bf16_full_eval):
        trainer.save_model()  # the model as evaluated: under bf16_full_eval in bf16, which pipeline() then runs
    elif not training_args.do_train and (folded := folded_calibration(model_args.model_name_or_path, predictions)):
        metrics["calibration"] = folded  # the T training folded in: the reports keep saying so
    metrics.update(split_metrics, bad_images=shareable_names(bad_images.read(), data_args.dataset_name))
    metrics["wall_seconds"] = round(time.perf_counter() - started, 1)
    if trainer.is_world_process_zero():
        finish_run(trainer, metrics, predictions, data.names, model_args, data_args, hub, recipe_path, argv)
    console.close_log()
    return metrics


def run(argv: list[str] | None = None) -> dict:
    """The command: main() once, or once per seed (--seeds) or per sweep trial (--sweep)."""
    return run_recipe(main, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    try:
        run()
    except PushError as error:
        print(f"\nError: {error} (Exit status 3: the run finished; only the push failed.)\n", file=sys.stderr)
        sys.exit(3)
    except RecipeError as error:
        print(f"\nError: {user_message(error)}\n", file=sys.stderr)
        sys.exit(2)
