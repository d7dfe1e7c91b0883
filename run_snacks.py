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

import transformers
from torch.utils.data import DataLoader
from transformers import set_seed

from vitrecipes.adaptation import feature_cache_file, fit_linear_head, freeze_unused, merge_lora, prepare_for_adaptation
from vitrecipes.bad_images import BadImageLog, shareable_names
from vitrecipes.calibration import calibrate, folded_calibration
from vitrecipes.card import finish_for_hub, take_hub_settings
from vitrecipes.config import parse_recipe
from vitrecipes.data import cache_root, class_names, data_record, drop_unreadable, load_splits
from vitrecipes.errors import PushError, RecipeError, user_message
from vitrecipes.experiments import finished_run, run_seeds, run_sweep
from vitrecipes.hardware import check_requirements
from vitrecipes.modeling import build_image_processor, build_model
from vitrecipes.onnx_export import export_folder, require_serving
from vitrecipes.outputs import (
    REPORT_DIR,
    bad_images_path,
    plan_output_dir,
    resolved_recipe,
    save_resolved_recipe,
    write_metrics,
)
from vitrecipes.report import write_report
from vitrecipes.training import (
    attach_transforms,
    build_trainer,
    effective_batch_size,
    evaluate_splits,
    log_report_images,
    with_preprocessing,
)
from vitrecipes.transforms import Preprocessing

logger = logging.getLogger("run_snacks")


def main(argv: list[str] | None = None) -> dict:
    started = time.perf_counter()
    check_requirements()
    argv = list(sys.argv[1:] if argv is None else argv)
    model_args, data_args, training_args, recipe_path = parse_recipe(argv)
    if training_args.seeds:
        return run_seeds(main, argv, training_args)
    if training_args.export_onnx:
        require_serving("onnx", "onnxruntime")  # now, not after training
    _setup_logging(training_args)
    set_seed(training_args.seed)
    for note in training_args.gpu_settings_switched_off:
        logger.warning(note)
    logger.info("Recipe %s -> %s", recipe_path or "(command line)", training_args.output_dir)

    resume_from = None
    with training_args.main_process_first(desc="checking the output folder"):
        if training_args.do_train:
            current = resolved_recipe(model_args, data_args, training_args)
            resume_from = plan_output_dir(training_args, current)
        bad_images = BadImageLog(bad_images_path(training_args.output_dir, training_args.do_train))
        if training_args.process_index == 0:
            if not training_args.do_train:
                bad_images.path.unlink(missing_ok=True)  # an evaluation-only run lists its own, from empty
            # Before the Hub settings are taken out of training_args, so that it records them.
            path = save_resolved_recipe(training_args.output_dir, model_args, data_args, training_args)
            logger.info("Wrote %s", path)

    # The main process loads (and, with verify_images, decodes) first; the others reuse its work. With
    # verify_images, the main process of all machines (local=False): each machine's own would read the
    # bad-image log before machine 0 had written it, and machines would train on different images.
    with training_args.main_process_first(local=not data_args.verify_images, desc="loading and checking the data"):
        splits = load_splits(data_args, seed=training_args.seed)
        if data_args.verify_images:
            splits = drop_unreadable(splits, data_args, bad_images, fresh=training_args.process_index == 0)
    names = class_names(splits, data_args)
    sizes = ", ".join(f"{name} {len(ds)}" for name, ds in splits.items())
    logger.info("Data: %s, %d classes; %s", data_args.dataset_name, len(names), sizes)

    prep = Preprocessing.build(
        build_image_processor(model_args),
        data_args,
        mean=model_args.image_mean,
        std=model_args.image_std,
        image_size=model_args.image_size,
    )
    untransformed_train = splits["train"]
    eval_prep = prep.at_eval_size(model_args.eval_image_size, data_args.eval_crop_pct)  # probe features: training side
    splits = attach_transforms(splits, prep, data_args, bad_images, eval_prep)
    metrics: dict = {"effective_batch_size": effective_batch_size(training_args)}
    metrics["data"] = data_record(splits, data_args)  # what it trained and evaluated on: compare_runs checks it

    def make_model(trial=None):
        """The classifier, adapted as the recipe says (for a sweep: again for every trial)."""
        model = build_model(model_args, names)
        if not training_args.do_train:
            return model
        model = prepare_for_adaptation(model, model_args)
        freeze_unused(model, prep.size)  # so that DDP keeps its fast path (no find_unused_parameters)
        if model_args.adaptation in ("linear_probe", "lp_ft") and resume_from is None:
            # The probe fits on the training images through the evaluation transform (no augmentation).
            # Every process fits the same head on all the images (not on its shard), so replicas agree;
            # with the feature cache on, the main process computes the features and the others read them.
            # On the accelerator: the model is still on the CPU here, where accelerate launch allows one thread.
            probe_images = DataLoader(
                with_preprocessing(untransformed_train, "train", False, prep, data_args, bad_images),
                batch_size=training_args.per_device_eval_batch_size,
                collate_fn=prep.collate,
                num_workers=training_args.dataloader_num_workers,
            )
            cache = feature_cache_file(cache_root(), model_args, prep, untransformed_train, training_args.bf16)
            with training_args.main_process_first(desc="linear probe"):
                metrics["probe"] = fit_linear_head(
                    model,
                    probe_images,
                    model_args.probe_regularization,
                    cache if model_args.probe_feature_cache else None,
                    device=training_args.device,
                    bf16=training_args.bf16,
                )
        return model

    hub = take_hub_settings(training_args)  # we push once at the end; Trainer must not push or pickle the token
    # The saved processor applies the evaluation transform, so pipeline() sees what evaluation saw.
    processor = eval_prep.serving_processor()
    if training_args.sweep:
        trainer = build_trainer(None, processor, training_args, splits, prep, data_args, model_init=make_model)
        best_recipe = run_sweep(trainer, model_args, data_args, training_args, hub, training_args.sweep)
        kept = finished_run([str(best_recipe)])
        if kept is not None:
            return kept
        logger.info("Sweep done; training its best recipe, %s, which also evaluates test once.", best_recipe)
        return main([str(best_recipe)])
    trainer = build_trainer(make_model(), processor, training_args, splits, prep, data_args)
    logger.info(
        "Effective batch size %d = %d per device x %d processes x %d accumulation steps",
        metrics["effective_batch_size"], training_args.per_device_train_batch_size, training_args.world_size,
        training_args.gradient_accumulation_steps,
    )  # fmt: skip
    if training_args.do_train:
        if model_args.adaptation == "linear_probe":
            probe = metrics["probe"]
            metrics["train"] = {"train_runtime": probe["probe_feature_seconds"] + probe["probe_fit_seconds"]}
        else:
            result = trainer.train(resume_from_checkpoint=resume_from)
            metrics["train"] = dict(result.metrics, global_step=result.global_step, start_step=trainer.start_step)
        metrics["train"]["samples"] = len(splits["train"])
        trainer.model = trainer.model_wrapped = merge_lora(trainer.model)
        trainer.save_model()

    split_metrics, predictions = evaluate_splits(trainer, splits)
    if training_args.do_train and training_args.calibrate_temperature:
        # Here: after merge_lora and the weight average (on_train_end), so the head folded is the one saved.
        metrics["calibration"] = calibrate(trainer.model, predictions, split_metrics)
        trainer.save_model()
    elif not training_args.do_train and (folded := folded_calibration(model_args.model_name_or_path, predictions)):
        metrics["calibration"] = folded  # the T training folded in: the reports keep saying so
    metrics.update(split_metrics)
    metrics["bad_images"] = shareable_names(bad_images.read(), data_args.dataset_name)
    metrics["wall_seconds"] = round(time.perf_counter() - started, 1)
    if trainer.is_world_process_zero():
        checkpoint = training_args.output_dir if training_args.do_train else model_args.model_name_or_path
        reports = {}
        for name, split_predictions in predictions.items():
            reports[name] = write_report(
                Path(training_args.output_dir) / REPORT_DIR.format(split=name),
                split_predictions,
                names,
                data_args.image_column_name,
                checkpoint=str(checkpoint),
                log_history=trainer.state.log_history if training_args.do_train else None,
                final_validation=split_metrics.get("validation"),
                calibration=metrics.get("calibration", {}).get(name),
            )
            metrics[name]["report"] = str(reports[name].relative_to(training_args.output_dir))
        if training_args.do_train:
            log_report_images(trainer, reports)
        metrics_path = write_metrics(training_args.output_dir, metrics, trained=training_args.do_train)
        logger.info("Wrote %s", metrics_path)
        for split in ("train", "validation", "test"):
            if split in metrics:
                trainer.log_metrics(split, metrics[split])
        bad = {split: len(files) for split, files in metrics["bad_images"].items() if files}
        if bad:
            print(f"Unreadable images left out: {bad} (listed in {metrics_path})", flush=True)
        if training_args.do_train and training_args.export_onnx:  # reads the saved folder: after any change to it
            export_folder(training_args.output_dir, log=logger.info)
        if training_args.do_train:  # last: a failed push raises, with everything else written and reported
            finish_for_hub(training_args.output_dir, hub, recipe_path, argv)
        print(f"Metrics: {metrics_path}; model, processor, card and recipe: {training_args.output_dir}", flush=True)
    return metrics


def _setup_logging(training_args) -> None:
    level = training_args.get_process_log_level()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level)
    logging.getLogger("vitrecipes").setLevel(level)
    transformers.utils.logging.set_verbosity(level)


if __name__ == "__main__":
    try:
        main()
    except PushError as error:
        print(f"\nError: {error} (Exit status 3: the run finished; only the push failed.)\n", file=sys.stderr)
        sys.exit(3)
    except RecipeError as error:
        print(f"\nError: {user_message(error)}\n", file=sys.stderr)
        sys.exit(2)
