"""The one exception type that users see as a clear paragraph instead of a traceback."""


class RecipeError(Exception):
    """A mistake in a recipe, a dataset or a checkpoint that the user can fix.

    The message is a single paragraph that names the offending file, key or column and says
    what to do. `run_snacks.py` prints it without a traceback and exits with status 2.
    """
