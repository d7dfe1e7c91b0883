"""The one exception type that users see as a clear paragraph instead of a traceback."""


class RecipeError(Exception):
    """A mistake in a recipe, a dataset or a checkpoint that the user can fix.

    The message is a single paragraph that names the offending file, key or column and says
    what to do. `run_snacks.py` prints it without a traceback and exits with status 2.
    """


class BadImagesError(RecipeError):
    """Too many unreadable images in one split."""


class PushError(RecipeError):
    """The Hub push failed; the run's files are safe on disk. `run_snacks.py` exits with status 3 for it."""


def user_message(error: BaseException) -> str:
    """The paragraph to show for an error, without the traceback text a DataLoader worker wraps it in."""
    text = str(error)
    if "Original Traceback" in text:
        for line in reversed(text.strip().splitlines()):
            if "Error: " in line:
                return line.split("Error: ", 1)[1]
    return text


def cause(error: BaseException) -> str:
    """`Type: first line of the message`: how a one-paragraph error quotes the library error behind it."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def hub_unreachable(otherwise: str) -> str:
    """Why a Hub call failed: HF_HUB_OFFLINE when it is set, else `otherwise`."""
    from huggingface_hub import constants

    return "HF_HUB_OFFLINE is set, so the Hub cannot be reached" if constants.HF_HUB_OFFLINE else otherwise
