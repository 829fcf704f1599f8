"""Atomic file writes: a reader (or a rerun after ``kill -9``) sees the old file or the
whole new one, never half of one. Every output file of the project goes through here."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write_bytes(path: str | Path, write: Callable[[IO[bytes]], object], *, fsync: bool = False) -> Path:
    """Call ``write(f)`` on a temp file in ``path``'s folder, then ``os.replace`` it onto ``path``.

    The temp file is removed if ``write`` fails; ``fsync`` forces the bytes to disk
    first (for records a resumed job trusts, like the training manifest)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = False) -> Path:
    """UTF-8 text, written atomically (no newline translation)."""
    return atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")), fsync=fsync)
