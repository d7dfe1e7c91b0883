"""Pushing a run's output folder to the Hugging Face Hub, and keeping the token secret.

A push that fails never loses the run: everything stays on disk and the error names the command
that pushes it later. Tokens (argument, HF_TOKEN or a cached login) are passed to huggingface_hub
only; they are scrubbed from every message and never written to the card (see card.py).
"""

from __future__ import annotations

import copy
import logging
import re
import shlex
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .errors import PushError, cause, hub_unreachable
from .outputs import CARD_NAME, METRICS_FILE, RESOLVED_RECIPE_NAME

logger = logging.getLogger(__name__)

# Only what someone using the model needs. An allow-list, so that stray files (notes, logs, an
# eval-only run's metrics) never leave the machine by accident.
UPLOAD_PATTERNS = [
    CARD_NAME,
    "config.json",
    "preprocessor_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    METRICS_FILE,
    RESOLVED_RECIPE_NAME,
]
# Belt and braces behind the allow-list: training state that is large, pickled, or may hold secrets.
NEVER_UPLOAD = ["checkpoint-*", "checkpoint-*/**", "training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state*"]
_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{8,}")
_HIDDEN = "***"


def is_hub_id(name: Any) -> bool:
    """Is `name` a Hub repository id (`owner/name`) rather than a local path? A path that exists wins."""
    if not isinstance(name, str) or name.count("/") != 1:
        return False
    try:
        validate_repo_id(name)  # no leading '.', '/' or '~', no '..', only the characters the Hub allows
    except HFValidationError:
        return False
    return not Path(name).exists()


# --- secrets ----------------------------------------------------------------------------------


def resolve_token(token: str | None = None) -> str | None:
    """The token huggingface_hub would use: the argument, else HF_TOKEN, else the cached login."""
    if token:
        return token
    try:
        return get_token()
    except Exception:  # noqa: BLE001 - an unusable login is the same as none; the push will say so
        return None


def scrub(text: str, *secrets: str | None) -> str:
    """`text` with the given secrets, and anything shaped like a Hub token, replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, _HIDDEN)
    return _TOKEN_PATTERN.sub(_HIDDEN, text)


# --- push -------------------------------------------------------------------------------------


def later_push_command(output_dir: str | Path, repo_id: str, private: bool = False) -> str:
    parts = ["python", "push_to_hub.py", str(output_dir), "--hub_model_id", repo_id]
    return shlex.join(parts + (["--private"] if private else []))


def _push_failure(output_dir: Path, repo_id: str, private: bool, error: Exception, token: str | None) -> PushError:
    hint = hub_unreachable(
        "Check the network and that your token may write to this repository (`hf auth login`, or the "
        "HF_TOKEN environment variable)"
    )
    return PushError(
        f"Could not push to the Hugging Face Hub repository {repo_id} ({scrub(cause(error), token)}). Nothing "
        "is lost: the model, its image processor, metrics and model card are safe on disk at "
        f"{output_dir.resolve()}. {hint}. "
        f"Push them later with: {later_push_command(output_dir, repo_id, private)}"
    )


def push_output_dir(
    output_dir: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload model, image processor, metrics and recipe",
) -> str:
    """Upload an output folder's model files to `repo_id` (created if needed); return the repository URL.

    Writes the model card first if the folder has none. Raises PushError, without the token, on failure.
    """
    from .card import RunFiles, write_model_card  # card.py uses this module's secrets

    output_dir = Path(output_dir)
    if not (output_dir / CARD_NAME).is_file():
        write_model_card(output_dir, repo_id=repo_id, token=token)
    RunFiles.read(output_dir)  # refuse a folder without a model before touching the network
    token = resolve_token(token)
    api = HfApi()
    failure = None
    try:
        repo = api.create_repo(repo_id, token=token, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo.repo_id,
            folder_path=str(output_dir),
            commit_message=commit_message,
            token=token,
            # Copies: upload_folder extends ignore_patterns in place.
            allow_patterns=list(UPLOAD_PATTERNS),
            ignore_patterns=list(NEVER_UPLOAD),
        )
    except Exception as error:  # noqa: BLE001 - network, auth and Hub errors all get the same advice
        failure = _push_failure(output_dir, repo_id, private, error, token)
    # Raised outside the except block so the original exception (which may quote the token) is not chained.
    if failure is not None:
        raise failure
    url = str(repo)
    logger.info("Pushed %s to %s", output_dir, url)
    return url


# --- end of training --------------------------------------------------------------------------


def take_hub_settings(training_args):
    """Move the Hub settings out of `training_args`, so that Trainer neither pushes nor pickles the token;
    return a copy that keeps them (its repr hides the token, as TrainingArguments' does).

    Trainer would create the repository before training (failing the run when offline), overwrite
    README.md with its own card, and save `hub_token` in training_args.bin.
    """
    settings = copy.copy(training_args)
    training_args.push_to_hub = False
    training_args.hub_token = None
    return settings


def finish_for_hub(
    output_dir: str | Path,
    settings,
    metrics: dict | None = None,
    recipe_path: str | Path | None = None,
    argv: list[str] | None = None,
) -> str | None:
    """Write the model card; push when `settings.push_to_hub`. Returns the repository URL, or None.

    `settings`: the run's TrainingArguments, or what `take_hub_settings` kept of them. A failed push raises
    PushError, which names the command that pushes later; the card and the run's files stay on disk.
    """
    from .card import write_model_card

    # The card is scrubbed of the token, so a --hub_token value on the command line shows as ***.
    command = shlex.join(["python", "run_snacks.py", *argv]) if argv is not None else None
    token = settings.hub_token
    card = write_model_card(
        output_dir,
        repo_id=settings.hub_model_id,
        command=command,
        recipe_path=recipe_path,
        metrics=metrics,
        token=token,
    )
    logger.info("Model card: %s", card)
    if not settings.push_to_hub:
        return None
    repo_id = settings.hub_model_id or Path(output_dir).resolve().name  # Trainer's default repository name
    return push_output_dir(output_dir, repo_id, private=bool(settings.hub_private_repo), token=token)
