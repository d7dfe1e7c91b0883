"""Uploading a run's output folder to the Hugging Face Hub (a leaf: it imports only errors and outputs). A failed
push loses nothing and names the command that pushes later; tokens are scrubbed from every message (and the card).
A stale ONNX export is never pushed."""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .artifacts import UPLOADED, require_fresh_exports
from .errors import PushError, RecipeError, cause, hub_unreachable

logger = logging.getLogger(__name__)

# Only what someone using the model needs (artifacts.ARTIFACTS marks it). An allow-list, so that stray files (notes,
# logs, an eval-only run's metrics) never leave the machine by accident.
UPLOAD_PATTERNS = UPLOADED
# Belt and braces behind the allow-list: training state that is large, pickled, or may hold secrets.
NEVER_UPLOAD = ["checkpoint-*", "checkpoint-*/**", "training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state*"]
# The Hub's Parquet export of a dataset: loaded when main does not load (a loading script), and what streams by default.
PARQUET_REVISION = "refs/convert/parquet"
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


def scrub(text: str, *secrets: str | None) -> str:
    """`text` with `secrets`, huggingface_hub's token (HF_TOKEN or the login) and Hub-token shapes replaced by ***."""
    with contextlib.suppress(Exception):  # an unusable login (a failed refresh, say) is the same as none
        secrets += (get_token(),)
    for secret in secrets:
        if secret:
            text = text.replace(secret, _HIDDEN)
    return _TOKEN_PATTERN.sub(_HIDDEN, text)


def push_output_dir(output_dir: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload an output folder's model files to `repo_id` (created if needed); return its URL, or raise PushError."""
    api, failure = HfApi(), None
    later = shlex.join(["python", "push_to_hub.py", str(output_dir), "--hub_model_id", repo_id])
    later += " --private" if private else ""
    try:  # before the network: the Hub would serve a stale onnx/ beside the new model
        require_fresh_exports(Path(output_dir), then=f" (or delete it), then push: {later}")
    except RecipeError as error:
        raise PushError(f"Nothing was pushed. {error}") from None
    try:
        repo = api.create_repo(repo_id, token=token, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo.repo_id, folder_path=str(output_dir), token=token,
            commit_message="Upload model, image processor, metrics and recipe",
            # Copies: upload_folder extends ignore_patterns in place.
            allow_patterns=list(UPLOAD_PATTERNS), ignore_patterns=list(NEVER_UPLOAD),
        )  # fmt: skip
    except Exception as error:  # noqa: BLE001 - network, auth and Hub errors all get the same advice
        hint = hub_unreachable("Check the network and that your token may write to this repository "
                               "(`hf auth login`, or the HF_TOKEN environment variable)")  # fmt: skip
        failure = PushError(f"Could not push to the Hugging Face Hub repository {repo_id} "
                            f"({scrub(cause(error), token)}). Nothing is lost: the model, its image processor, "
                            f"metrics and model card are safe on disk at {Path(output_dir).resolve()}. {hint}. "
                            f"Push them later with: {later}")  # fmt: skip
    # Raised outside the except block so the original exception (which may quote the token) is not chained.
    if failure is not None:
        raise failure
    logger.info("Pushed %s to %s", output_dir, repo)
    return str(repo)
