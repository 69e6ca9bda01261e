"""User-facing errors.

Everything the user can cause (a bad path, a wrong value, a corrupt file) raises
`QuantpipeError`; the CLI prints its message as one line and exits 2. Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class QuantpipeError(Exception):
    """A user error: the message says what was wrong, which value, and what to do."""

    exit_code = 2


class DataError(QuantpipeError):
    """A data set path, format or content is unusable."""


class ModelError(QuantpipeError):
    """A model name, factory or checkpoint is unusable."""


class RunDirLockedError(QuantpipeError):
    """Another process holds the run directory."""


class CorruptArtifactError(QuantpipeError):
    """An artifact on disk (cache, container, manifest) fails its integrity checks."""


def shown(recorded: str) -> str:
    """A string read from a file, as a message shows it: as is, or quoted with escapes when
    it holds line breaks or other unprintable characters, so that a damaged file cannot turn
    a one-line refusal into several lines."""
    return recorded if recorded.isprintable() else repr(recorded)
