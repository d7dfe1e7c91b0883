"""Trainer set-up (NaN guard, safe checkpoint reloads, parameter groups, batch mixing, weight EMA), training as the
adaptation mode says, and the final evaluation of every split."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import extract_model_from_parallel
from datasets import DatasetDict
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torchvision.transforms import v2
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, sort_checkpoints

from .adaptation import parameter_groups
from .bad_images import IGNORE_INDEX
from .console import CompactProgress, compact_progress, keep_library_messages
from .data import size
from .errors import RecipeError
from .metrics import compute_metrics
from .report import SplitPredictions
from .streaming import STREAM_STATE, ShardStream, StreamLoader, StreamPosition

logger = logging.getLogger(__name__)


def effective_batch_size(args: TrainingArguments) -> int:
    return args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps


def load_weights(model, checkpoint_dir: str) -> None:
    """A checkpoint's weights into `model` via `from_pretrained` (it renames legacy names); strict: no quiet loss."""
    reference = type(model).from_pretrained(checkpoint_dir, config=model.config)
    model.load_state_dict(reference.state_dict(), strict=True)


class NonFiniteLossError(RecipeError):
    """The training loss became NaN or infinite."""


class RecipeTrainer(Trainer):
    """Reloads checkpoints whole, stops on a NaN loss, sets head and block learning rates, mixes batches."""

    def __init__(self, *args, batch_mixing=None, **kwargs):
        if batch_mixing is not None:  # through Trainer's own loss hook, which scales it for accumulation
            kwargs["compute_loss_func"] = self._soft_target_loss
        super().__init__(*args, **kwargs)
        self.batch_mixing = batch_mixing
        self.start_step = None  # the step training began from: 0, or a resumed checkpoint's
        self.add_callback(_TrainerHooks(self))
        self._resume_checkpoint, self._stream_resume = None, None
        if isinstance(self.train_dataset, ShardStream):
            self.add_callback(StreamCheckpoints(self))

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        # Noted for StreamCheckpoints, which reads the stream's position there; True resolves as in Trainer.train.
        resume = resume_from_checkpoint
        self._resume_checkpoint = get_last_checkpoint(self.args.output_dir) if resume is True else resume or None
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def get_train_dataloader(self):
        """A ShardStream's own StreamLoader, not prepared by accelerate: that would send every batch from rank 0
        (dispatch_batches) or have each process read all the data and keep a slice (IterableDatasetShard), while the
        stream already is this process's share. Trainer moves the batches to the device (_prepare_inputs)."""
        stream, args = self.train_dataset, self.args
        if not isinstance(stream, ShardStream):
            return super().get_train_dataloader()
        built = {"batch_size": stream.batch_size, "rank": stream.rank, "world_size": stream.world_size,
                 "num_workers": stream.num_workers}  # fmt: skip
        wanted = {"batch_size": self._train_batch_size, "rank": args.process_index, "world_size": args.world_size,
                  "num_workers": args.dataloader_num_workers}  # fmt: skip
        if built != wanted:
            raise RecipeError(f"The train stream was built for {built}, but this run has {wanted}: "
                              "build the ShardStream from per_device_train_batch_size, the process "
                              "index, the world size and dataloader_num_workers.")  # fmt: skip
        return self._stream_loader(stream)

    def get_resumed_dataloader(self, dataloader, num_batches: int):
        """Trainer's hook for a resumed epoch: the stream restarts at its saved position (the skipped records are
        read but never decoded) instead of accelerate's skip_first_batches, which decodes every skipped batch."""
        if not isinstance(dataloader, StreamLoader):
            return super().get_resumed_dataloader(dataloader, num_batches)
        stream, accumulation = dataloader.dataset, self.args.gradient_accumulation_steps
        saved = self._stream_resume or stream.position_after(self.state.global_step, accumulation)
        return self._stream_loader(stream.resumed(saved))

    def _stream_loader(self, stream: ShardStream) -> StreamLoader:
        args = self.args
        return StreamLoader(stream, collate_fn=self.data_collator, pin_memory=args.dataloader_pin_memory,
                            multiprocessing_context=args.dataloader_multiprocessing_context,
                            prefetch_factor=args.dataloader_prefetch_factor)  # fmt: skip

    def log(self, logs: dict, start_time=None):
        if "loss" in logs:  # a training log line: add the speed since the previous one, for the trackers
            now, step = time.perf_counter(), self.state.global_step
            last_time, last_step = self._last_train_log
            if step > last_step:
                speed = (step - last_step) * effective_batch_size(self.args) / (now - last_time)
                logs["images_per_second"] = round(speed, 2)
            self._last_train_log = (now, step)
            if "learning_rate" in logs and self.lr_scheduler is not None and self.lr_scheduler.base_lrs[0] > 0:
                # Trainer logs its first parameter group's rate: under layer decay, the embeddings'. The recipe's
                # learning_rate where the schedule stands (the top of the network's rate), and the head's.
                schedule = self.lr_scheduler.get_last_lr()[0] / self.lr_scheduler.base_lrs[0]
                logs["learning_rate"] = self.args.learning_rate * schedule
                if (head := getattr(self.args, "head_learning_rate_multiplier", 1.0)) != 1.0:
                    logs["head_learning_rate"] = logs["learning_rate"] * head
        super().log(logs, start_time)

    def create_optimizer(self, model=None):
        args = self.args
        head, layer_decay = getattr(args, "head_learning_rate_multiplier", 1.0), getattr(args, "layer_decay", 1.0)
        if self.optimizer is None and (head != 1.0 or layer_decay != 1.0):
            model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(model))
            groups = parameter_groups(model, decay, args.learning_rate, args.weight_decay, head, layer_decay)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(args, model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return super().create_optimizer(model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.batch_mixing is not None and model.training:
            pixels, targets = self.batch_mixing(inputs["pixel_values"], inputs["labels"])
            inputs = {**inputs, "pixel_values": pixels, "labels": targets}
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _soft_target_loss(self, outputs, labels, num_items_in_batch=None):
        """Cross-entropy on class indices or soft targets; with `num_items_in_batch` (the readable images of
        the whole accumulated batch) summed and divided by it, as Trainer expects of this hook."""
        reduction = "mean" if num_items_in_batch is None else "sum"
        loss = torch.nn.functional.cross_entropy(outputs.logits.float(), labels, reduction=reduction,
                                                 label_smoothing=self.args.label_smoothing_factor)  # fmt: skip
        return loss if num_items_in_batch is None else loss / num_items_in_batch

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # Noted on the device, without waiting for it; read only where Trainer logs, evaluates or saves.
        value = loss.detach().float().to(self._nonfinite.device)
        first = ~torch.isfinite(value) & (self._nonfinite[0] == 0)
        found = torch.stack([torch.full_like(value, self.state.global_step + 1), value])
        self._nonfinite = torch.where(first, found, self._nonfinite)  # (step, loss) of the first non-finite loss
        return loss

    def stop_if_nonfinite(self) -> None:
        """Raise NonFiniteLossError, on every process together, if a loss so far was NaN or infinite."""
        steps = self.accelerator.gather(self._nonfinite[:1])
        if not steps.any():
            return
        step = int(steps[steps > 0].min())
        here_step, here_loss = self._nonfinite.tolist()
        value = here_loss if here_step == step else "NaN or infinite on another process"
        saved = sort_checkpoints(self.args.output_dir)
        kept = self.state.best_model_checkpoint or (str(saved[-1]) if saved else None)
        last = f"the last good checkpoint is {kept}." if kept else "no checkpoint had been saved yet."
        raise NonFiniteLossError(f"The training loss became {value} at step {step}. Likely causes: a "
                                 "learning rate too high for this model and batch "
                                 f"({self.args.learning_rate:g}; try 3-10x lower or a longer warm-up), fp16 "
                                 "overflow (use bf16 on GPUs that support it), or a corrupt batch. The run "
                                 f"stopped before saving anything from that step on; {last}")  # fmt: skip

    def _plain_reload(self) -> bool:
        # Trainer's own reload is right for these (a LoRA checkpoint holds only the adapters and the head).
        return not (self.is_fsdp_enabled or self.is_deepspeed_enabled or hasattr(self.model, "peft_config"))

    # Private Trainer methods: transformers >=5.0 (checked: 5.24.0) saves ViT under legacy names and its reloads
    # (load_state_dict strict=False) skip them, keeping the encoder as it was (huggingface/transformers#43701).
    # Pinned by test_trainer_reloads_of_a_vit_checkpoint_keep_the_encoder: when plain Trainer passes, remove both.
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self._plain_reload():
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        logger.info("Loading model weights from %s", resume_from_checkpoint)
        load_weights(model if model is not None else self.model, resume_from_checkpoint)

    def _load_best_model(self):
        if not self._plain_reload():
            return super()._load_best_model()
        logger.info("Loading the best model from %s", self.state.best_model_checkpoint)
        load_weights(self.model, self.state.best_model_checkpoint)


class _TrainerHooks(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.start_step = state.global_step  # restored from the checkpoint by now, when resuming
        self.trainer._last_train_log = (time.perf_counter(), state.global_step)
        self.trainer._nonfinite = torch.zeros(2, device=args.device)

    def on_step_end(self, args, state, control, **kwargs):
        # After Trainer's flow callback has decided; the same steps on every process, so the gather matches.
        if control.should_log or control.should_evaluate or control.should_save or control.should_training_stop:
            self.trainer.stop_if_nonfinite()

    on_epoch_end = on_step_end


class StreamCheckpoints(TrainerCallback):
    """Writes a ShardStream's position into each checkpoint (checkpoint-N/stream_state.json) and, on resume, refuses
    a checkpoint whose stream had other settings or stood elsewhere. RecipeTrainer adds it for a ShardStream."""

    def __init__(self, trainer):
        self.trainer = trainer

    def _position(self, args, state) -> StreamPosition:
        return self.trainer.train_dataset.position_after(state.global_step, args.gradient_accumulation_steps)

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._stream_resume = None
        if self.trainer._resume_checkpoint is None:
            return
        path = Path(self.trainer._resume_checkpoint) / STREAM_STATE
        if not path.exists():
            raise RecipeError(f"{path} is missing: the checkpoint was not saved by a run that "
                              "trained from shards (or the run stopped while saving it). Resume "
                              "from another checkpoint, or start a new output_dir.")  # fmt: skip
        saved, now = StreamPosition.load(path), self._position(args, state)
        self.trainer.train_dataset.check(saved, str(path))
        if (saved.epoch, saved.batches) != (now.epoch, now.batches):
            raise RecipeError(f"{path}: the stream stood at epoch {saved.epoch}, batch {saved.batches}, but "
                              f"the checkpoint's step {state.global_step} means epoch {now.epoch}, batch "
                              f"{now.batches} (gradient_accumulation_steps changed?). Resume with the "
                              "settings the run was saved with, or start a new output_dir.")  # fmt: skip
        self.trainer._stream_resume = saved

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:  # the processes that write checkpoints
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            self._position(args, state).save(folder / STREAM_STATE)


class BatchMixing:
    """MixUp and/or CutMix (torchvision v2) on a batch; labels become soft targets. A batch holding an unreadable
    image's placeholder (IGNORE_INDEX) is left unmixed, its placeholder rows zero, so it still counts for nothing."""

    def __init__(self, num_classes: int, mixup_alpha: float, cutmix_alpha: float):
        choices = [v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)] if mixup_alpha > 0 else []
        choices += [v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)] if cutmix_alpha > 0 else []
        self.num_classes = num_classes
        self.mix = choices[0] if len(choices) == 1 else v2.RandomChoice(choices)

    def __call__(self, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        readable = labels != IGNORE_INDEX
        if readable.all():
            return self.mix(pixels, labels)
        targets = torch.nn.functional.one_hot(labels.clamp(min=0), self.num_classes).to(pixels.dtype)
        return pixels, targets * readable.unsqueeze(1)


class WeightAverage(TrainerCallback):
    """A moving average of the trainable weights (torch's EMA update), copied into the model at the end, so
    validation during training sees the raw weights. Not an `AveragedModel`: FSDP refuses its deep copy."""

    def __init__(self, decay: float):
        self.decay, self.average = decay, None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        current = [p.detach() for p in model.parameters() if p.requires_grad]
        if self.average is None:
            self.average = [p.clone() for p in current]
        else:
            get_ema_multi_avg_fn(self.decay)(self.average, current, None)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.average is not None:
            with torch.no_grad():
                for parameter, average in zip([p for p in model.parameters() if p.requires_grad], self.average):
                    parameter.copy_(average)
            logger.info("The final model holds the moving average of the weights (ema_decay %g).", self.decay)


def build_trainer(model, processor, args, splits: DatasetDict, prep, data_args=None) -> RecipeTrainer:
    mixing = None
    if data_args is not None and (data_args.mixup_alpha > 0 or data_args.cutmix_alpha > 0):
        mixing = BatchMixing(model.config.num_labels, data_args.mixup_alpha, data_args.cutmix_alpha)
    trainer = RecipeTrainer(model=model, args=args, train_dataset=splits["train"] if args.do_train else None,
                            eval_dataset=splits["validation"], data_collator=prep.collate, processing_class=processor,
                            callbacks=[WeightAverage(args.ema_decay)] if getattr(args, "ema_decay", 0.0) else None,
                            compute_metrics=compute_metrics, batch_mixing=mixing)  # fmt: skip
    compact_progress(trainer)
    keep_library_messages()  # Trainer set the libraries' level from log_level; the log file wants their INFO
    return trainer


def train(trainer: RecipeTrainer, mode, resume_from: str | None, probe: dict | None) -> dict:
    """Train as the adaptation `mode` says (the Trainer loop, or nothing past the probe), finish the model (e.g. merge
    LoRA adapters) and save it; returns the training figures."""
    if mode.trainer_loop:
        result = trainer.train(resume_from_checkpoint=resume_from)
        figures = dict(result.metrics, global_step=result.global_step, start_step=trainer.start_step)
    else:
        figures = {"train_runtime": probe["probe_feature_seconds"] + probe["probe_fit_seconds"]}
    trainer.model = trainer.model_wrapped = mode.finish(trainer.model)
    trainer.save_model()
    return {**figures, "samples": size(trainer.train_dataset)}


def evaluate_splits(trainer: Trainer, splits: DatasetDict) -> tuple[dict[str, dict], dict[str, SplitPredictions]]:
    """Validation and test metrics keyed by split (prefixes removed), and the raw predictions."""
    if trainer.args.bf16 and trainer.args.device.type == "cpu":
        # bf16 on a CPU (hardware.native_cpu_bf16) speeds training; the figures are the saved fp32 weights', as
        # pipeline() runs them. A model trained here loses accelerate's autocast wrapper (public API); one not yet
        # prepared (a linear probe) gets none: `native_amp` is what prepare_model reads (accelerate 1.15.0,
        # test_bf16_on_a_cpu_*).
        extract_model_from_parallel(trainer.model, keep_fp32_wrapper=False)
        trainer.accelerator.native_amp = False
    results, predictions = {}, {}
    for name, dataset in splits.items():
        if name == "train":
            continue
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, CompactProgress):
                callback.split = name  # its progress bar's name
        output = trainer.predict(dataset, metric_key_prefix=name)
        results[name] = {k.removeprefix(f"{name}_"): v for k, v in output.metrics.items()}
        logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        labels = np.asarray(output.label_ids)
        readable = labels != IGNORE_INDEX  # unreadable images are left out of every number
        results[name]["samples"] = int(readable.sum())
        if not readable.all():
            results[name]["unreadable_images"] = int((~readable).sum())
            dataset = dataset.select(np.flatnonzero(readable))
        predictions[name] = SplitPredictions(name, np.asarray(logits)[readable], labels[readable], dataset)
    return results, predictions
