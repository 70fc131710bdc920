"""Errors a user can cause. The CLI prints their message on one line and exits non-zero.

A message names the file (and line, where there is one), the problem and, where obvious, the fix.
"""


class FoundryError(Exception):
    """Base class for every user-facing error."""


class ConfigError(FoundryError):
    """A recipe or command-line option is wrong (unknown key, wrong type, bad value)."""


class DataError(FoundryError):
    """An input data file is missing, empty, malformed or not decodable."""


class CheckpointError(FoundryError):
    """A checkpoint is missing, corrupt, or does not fit the model or tokenizer."""


class TrainingError(FoundryError):
    """Training cannot go on (for example, repeated non-finite losses after rollback)."""


def where(path, line: int | None = None) -> str:
    """`path:line` prefix for messages; line numbers are 1-based."""
    return f"{path}:{line}" if line is not None else f"{path}"
