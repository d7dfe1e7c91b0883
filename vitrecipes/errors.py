"""The one exception type that users see as a clear paragraph instead of a traceback."""


class RecipeError(Exception):
    """A mistake in a recipe, a dataset or a checkpoint that the user can fix.

    The message is a single paragraph that names the offending file, key or column and says
    what to do. `run_snacks.py` prints it without a traceback and exits with status 2.
    """


class BadImagesError(RecipeError):
    """Too many unreadable images in one split."""


def user_message(error: BaseException) -> str:
    """The paragraph to show for an error, without the traceback text a DataLoader worker wraps it in."""
    text = str(error)
    if "Original Traceback" in text:
        for line in reversed(text.strip().splitlines()):
            if "Error: " in line:
                return line.split("Error: ", 1)[1]
    return text
