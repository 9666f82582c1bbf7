"""User-facing errors.

Every error a user can cause (bad config key, bad task name, missing data, broken checkpoint, ...) is raised as a
``MuloError``. The CLI prints its message as one line on stderr and exits with ``exit_code``; no traceback.
"""


class MuloError(Exception):
    """An error caused by user input or the environment, reported as one line."""

    exit_code = 2


class ConfigError(MuloError):
    """Unknown config key, wrong type or bad value."""


class TaskError(MuloError):
    """Bad task name, width, depth or dataset."""


class DataError(MuloError):
    """A dataset is missing or malformed."""


class CheckpointError(MuloError):
    """A checkpoint is missing, corrupt or does not match the run."""


class NotImplementedYet(MuloError):
    """A subcommand whose implementation has not landed yet."""


def one_line(exc: BaseException | str, limit: int | None = 300) -> str:
    """An exception's message (or a text) as one line for an error line: every run of whitespace (newlines of a
    library's multi-line message among them) becomes one space, and a text longer than ``limit`` characters is cut
    there, with "..." (``limit=None``: not cut)."""
    text = " ".join(str(exc).split())
    return text if limit is None or len(text) <= limit else text[:limit] + "..."
