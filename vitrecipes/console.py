"""What a user sees while a command runs (docs/outputs.md#the-console): a header, a progress bar for each long stage,
one compact line per logging step and a closing table, from the main process only. Warnings and errors stay on the
console; every message at INFO, the libraries' included, goes to the log file in the output folder as well, and to the
console too with `--log_level info`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import datasets
import transformers
from tqdm.auto import tqdm
from transformers import PrinterCallback, ProgressCallback

_SHOWN = logging.getLogger("vitrecipes.console")  # what show() prints, for the log file only
_handlers: dict[str, logging.Handler] = {}
_main = {"process": True}  # whether this is the process that shows things (setup says)


class _ForTheConsole(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # show() has printed it already. transformers' LOAD REPORT of a new head is replaced by one line of
        # modeling.py's, which repeats any other missing or unexpected weight (the function name: transformers
        # 5.25.0, test_the_console_of_a_smoke_run_*).
        return record.name != _SHOWN.name and record.funcName != "log_state_dict_report"


def setup(level: str = "warning", main_process: bool = True) -> None:
    """Route every library's messages through the root logger: the console at `level` (log_level on the main
    process, log_level_replica on the others, which show nothing else), the log file (`log_to`) at INFO. Called
    again, it replaces its own handlers."""
    _main["process"] = main_process
    root = logging.getLogger()
    for handler in _handlers.values():
        root.removeHandler(handler)
    _handlers.clear()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.getLevelName(level.upper()) if level != "passive" else logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    console.addFilter(_ForTheConsole())
    root.addHandler(_handlers.setdefault("console", console))
    root.setLevel(min(console.level, logging.INFO))
    transformers.utils.logging.disable_default_handler()
    logging.getLogger("datasets").handlers.clear()  # datasets' own stderr handler (datasets 5.2.0): ours print it
    transformers.utils.logging.disable_progress_bar()  # loading and saving weights: seconds, not stages
    keep_library_messages()
    logging.captureWarnings(True)  # warnings.warn too: on the console, and in the file


def keep_library_messages() -> None:
    """transformers and datasets pass their messages to the root logger at its level (INFO: for the log file)."""
    for library in (transformers.utils.logging, datasets.utils.logging):
        library.enable_propagation()
        library.set_verbosity(logging.getLogger().level)


def log_to(path: Path) -> Path:
    """Append every message at INFO to `path` (the run's log file), from now on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    close_log()
    logging.getLogger().addHandler(_handlers.setdefault("file", handler))
    return path


def close_log() -> None:
    """Stop writing to the run's log file (the next run, in this process, writes its own)."""
    if handler := _handlers.pop("file", None):
        logging.getLogger().removeHandler(handler)
        handler.close()


def show(*lines: str) -> None:
    """Print lines for the user (above any progress bar), and keep them in the log file; on the main process only."""
    for line in lines if _main["process"] else ():
        tqdm.write(line, file=sys.stdout)
        _SHOWN.info(line)


def progress(iterable, description: str, total: int | None = None, enabled: bool = True):
    """A progress bar over `iterable` on stderr, which disappears when done."""
    return tqdm(iterable, desc=description, total=total, disable=not enabled, leave=False, dynamic_ncols=True)


def table(rows: list[list], header: list[str]) -> list[str]:
    """Aligned text columns: text left, numbers right."""
    cells = [[f"{c:.4f}" if isinstance(c, float) else str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]


def header(recipe_path, model_args, data_args, training_args, data, prep, eval_prep) -> list[str]:
    """What the run is about to do: recipe and output folder, data, model and adaptation, device, precision, batch."""
    args = training_args
    sizes = ", ".join(f"{name} {n}" for name, n in data.record(data_args)["splits"].items())
    model = model_args.model_name_or_path or f"{model_args.model_type} from scratch"
    sides = f"{prep.size[0]} px" + (f", evaluated at {eval_prep.size[0]} px" if eval_prep.size != prep.size else "")
    notes = getattr(args, "gpu_settings_switched_off", [])
    precision = f"bf16 training, {'bf16' if args.bf16_full_eval else 'fp32'} evaluation" if args.bf16 else (
        "fp16" if args.fp16 else "fp32")  # fmt: skip
    if any(note.startswith(("bf16: kept", "bf16_full_eval: kept")) for note in notes):
        precision += " (this CPU computes bf16 natively)"
    precision += "".join(f" ({note.rstrip('.')})" for note in notes if note.startswith("bf16") and "switched" in note)
    processes = f"{args.world_size} process{'es' if args.world_size > 1 else ''}"
    epochs = f"{args.num_train_epochs:g} epoch{'s' if args.num_train_epochs != 1 else ''}"
    length = f"{args.max_steps} steps" if args.max_steps > 0 else epochs
    batch = (f"{args.per_device_train_batch_size} per device x {processes} x {args.gradient_accumulation_steps} "
             f"accumulation = {args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps}"
             f"; {length}")  # fmt: skip
    rows = [["Recipe", f"{recipe_path or '(command line)'} -> {args.output_dir}"],
            ["Data", f"{data_args.dataset_name}: {len(data.names)} classes; {sizes}"],
            ["Model", f"{model}, adaptation {model_args.adaptation}; {sides}"],
            ["Device", f"{args.device}, {processes}; {precision}"]]  # fmt: skip
    if args.do_train:
        loop = "learning_rate" not in getattr(args, "inactive_keys", ())
        rows.append(["Batch", batch if loop else "none: no Trainer loop"])
    return [f"{name:<7} {text}" for name, text in rows]


class CompactProgress(ProgressCallback):
    """Trainer's progress bars (training, and each evaluation split under its name), with one short line per logging
    step instead of the logged dict: step, loss, the recipe's learning rate, grad norm, images/s; and the accuracy of
    each evaluation during training."""

    def __init__(self, bars: bool = True):
        super().__init__()
        self.bars, self.split = bars, None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.bars:
            super().on_train_begin(args, state, control, **kwargs)
        self.current_step = 0

    def on_step_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            super().on_step_end(args, state, control, **kwargs)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self.bars and self.prediction_bar is None and state.is_world_process_zero and eval_dataloader is not None:
            self.prediction_bar = progress(None, self.split or "validation", total=len(eval_dataloader))
        if self.prediction_bar is not None:
            self.prediction_bar.update(1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        step = f"step {state.global_step}/{state.max_steps}"
        if "loss" in logs:
            parts = [step, f"loss {logs['loss']:.4f}", f"lr {logs.get('learning_rate', 0):.2e}"]
            if "head_learning_rate" in logs:
                parts[-1] += f" (head {logs['head_learning_rate']:.2e})"
            parts += [f"grad norm {logs['grad_norm']:.3f}"] if "grad_norm" in logs else []
            parts += [f"{logs['images_per_second']:.1f} images/s"] if "images_per_second" in logs else []
            show("  ".join(parts))
        elif "eval_accuracy" in logs:
            show(f"{step}  validation accuracy {logs['eval_accuracy']:.4f}  loss {logs['eval_loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            super().on_train_end(args, state, control, **kwargs)


def compact_progress(trainer) -> CompactProgress:
    """Replace Trainer's own progress callback (bars and dict lines) with CompactProgress; returns it."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    callback = CompactProgress(bars=not trainer.args.disable_tqdm)
    trainer.add_callback(callback)
    return callback
