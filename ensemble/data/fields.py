"""Field checks shared by every row format (items, gold files, chat examples).

Each takes the file and the row's 1-based line, so its EnsembleError names
``file:line`` (and the field) and says how to fix the value.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ensemble.data.items import LETTERS
from ensemble.errors import EnsembleError, where


def required(path: Path, no: int, row: dict[str, Any], name: str, what: str) -> Any:
    """``row[name]``; missing or empty fails saying the row needs ``what``."""
    if row.get(name) in (None, ""):
        raise EnsembleError(f"{where(path, no)}: missing required field '{name}'; every row needs {what}")
    return row[name]


def string(path: Path, no: int, value: Any, name: str, *, required: bool = False) -> str:
    """A text field; an absent optional one is ""."""
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise EnsembleError(f"{where(path, no, name)}: expected a non-empty string, got {value!r}; "
                            "write it as text")
    return value


def row_id(path: Path, no: int, value: Any, name: str = "id") -> str:
    """A string or integer id, as a string."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise EnsembleError(f"{where(path, no, name)}: expected a string or integer id, got {value!r}; "
                            "give every row a unique id")
    return str(value)


def options(path: Path, no: int, value: Any, name: str) -> tuple[str, ...]:
    """2 to 26 option texts (one per letter)."""
    if not isinstance(value, list) or not all(isinstance(o, str) for o in value):
        raise EnsembleError(f"{where(path, no, name)}: options must be a list of strings, got {value!r}; "
                            'write e.g. ["yes", "no"]')
    if not 2 <= len(value) <= len(LETTERS):
        raise EnsembleError(f"{where(path, no, name)}: {len(value)} options; a multiple-choice question "
                            f"needs 2 to {len(LETTERS)} (leave 'options' out for an open question)")
    return tuple(value)


def answer(path: Path, no: int, value: Any, options: tuple[str, ...], name: str) -> str | None:
    """An option letter, or an option's exact text -> its letter; open questions keep the text.

    A letter wins over an option whose text happens to be that letter."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise EnsembleError(f"{where(path, no, name)}: expected text, got {value!r}; "
                            "write the answer as a letter or the option text")
    text = str(value).strip()
    if not options:
        return text
    letters = LETTERS[: len(options)]
    if len(text) == 1 and text in letters:
        return text
    hits = [i for i, o in enumerate(options) if o.strip() == text]
    if len(hits) == 1:
        return letters[hits[0]]
    if hits:
        raise EnsembleError(f"{where(path, no, name)}: {text!r} matches options "
                            f"{' and '.join(letters[i] for i in hits)}; give the letter instead")
    raise EnsembleError(f"{where(path, no, name)}: {text!r} is neither an option letter (A-{letters[-1]}) "
                        f"nor the text of one of the {len(options)} options; use a letter or an option's exact text")


def check_unique(path: Path, ids: Iterable[tuple[int, str]]) -> None:
    """``(line, id)`` pairs; a repeated id fails naming both lines."""
    seen: dict[str, int] = {}
    for no, id_ in ids:
        if id_ in seen:
            raise EnsembleError(f"{where(path, no)}: duplicate id {id_!r} (first on line {seen[id_]}); "
                                "ids must be unique: rename or remove one")
        seen[id_] = no
