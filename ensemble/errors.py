"""One exception type for every problem a user can fix.

The CLI prints ``EnsembleError`` as a single line and exits with code 2; anything
else is a bug and keeps its traceback. Messages name the file / line / field and
say how to fix it.
"""
from __future__ import annotations

from pathlib import Path


class EnsembleError(Exception):
    """A user-facing error: bad input, bad config, unknown name, missing file."""

    exit_code = 2


def where(path: str | Path, line: int | None = None, field: str | None = None) -> str:
    """Format a location as ``file:line: field`` for error messages."""
    out = str(path)
    if line is not None:
        out += f":{line}"
    if field is not None:
        out += f": field '{field}'"
    return out
