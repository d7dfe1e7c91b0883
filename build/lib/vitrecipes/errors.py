"""The one exception type that users see as a clear paragraph instead of a traceback."""


class RecipeError(Exception):
    """A mistake the user can fix, in one paragraph; `run_snacks.py` prints it without a traceback and exits 2."""


class BadImagesError(RecipeError):
    """Too many unreadable images in one split."""


class PushError(RecipeError):
    """The Hub push failed; the run's files are safe on disk. `run_snacks.py` exits with status 3 for it."""


def user_message(error: BaseException) -> str:
    """The paragraph to show for an error, without the traceback text a DataLoader worker wraps it in."""
    # Message text: torch >=2.4 (checked: 2.14.1) re-raises a worker's error as its type, with the worker's traceback
    # ("Original Traceback ...") ending in "module.Type: message". Pinned by test_an_error_raised_in_a_dataloader_*.
    text, end = str(error), f"{type(error).__module__}.{type(error).__qualname__}: "
    return text.rsplit(end, 1)[-1].strip() if "Original Traceback" in text else text


def cause(error: BaseException) -> str:
    """`Type: first line of the message`: how a one-paragraph error quotes the library error behind it."""
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"


def hub_unreachable(otherwise: str) -> str:
    """Why a Hub call failed: HF_HUB_OFFLINE when it is set, else `otherwise`."""
    from huggingface_hub import constants

    return "HF_HUB_OFFLINE is set, so the Hub cannot be reached" if constants.HF_HUB_OFFLINE else otherwise
