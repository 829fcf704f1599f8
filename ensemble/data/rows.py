"""Raw rows: ``(1-based line, dict)`` from JSONL, a JSON list, or CSV.

Line numbers travel with every row so each error can say ``file:line``. CSV options
come as A/B/C... columns or as a JSON list in an ``options`` cell; an empty cell means
"not given".
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ensemble.data.items import LETTERS
from ensemble.errors import EnsembleError, where

Row = tuple[int, dict[str, Any]]


def read_rows(path: str | Path, *, csv_format: bool | None = None) -> list[Row]:
    """All rows of a JSONL / JSON-list / CSV file (CSV when the name ends in .csv)."""
    path = Path(path)
    text = _text(path)
    if csv_format is None:
        csv_format = path.suffix.lower() == ".csv"
    if csv_format:
        rows = _csv_rows(path, text)
    elif text.lstrip().startswith("["):
        rows = _json_list_rows(path, text)
    else:
        rows = _jsonl_rows(path, text)
    if not rows:
        raise EnsembleError(f"{path}: the file is empty; it needs one row per line")
    return rows


def json_cell(path: Path, line: int, text: str, problem: str) -> Any:
    """A CSV cell holding JSON (options lists, probs objects); bad JSON -> ``file:line: problem``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise EnsembleError(f"{where(path, line)}: {problem}") from None


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: drops a UTF-8 BOM if present
    except UnicodeDecodeError as e:
        raise EnsembleError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise EnsembleError(f"{path}: cannot read the file ({e.strerror}); check the path") from None


def _as_object(path: Path, no: int, row: Any) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise EnsembleError(f"{where(path, no)}: expected a JSON object {{...}}, got {type(row).__name__}; "
                            "write one object per row")
    return row


def _jsonl_rows(path: Path, text: str) -> list[Row]:
    rows = []
    # split on "\n" only: str.splitlines would also split on U+2028 inside JSON strings
    for no, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise EnsembleError(f"{where(path, no)}: invalid JSON ({e.msg} at column {e.colno}); "
                                "each line must be one complete JSON object") from None
        rows.append((no, _as_object(path, no, row)))
    return rows


def _json_list_rows(path: Path, text: str) -> list[Row]:
    try:
        json.loads(text)  # validate first, so the walk below cannot fail
    except json.JSONDecodeError as e:
        raise EnsembleError(f"{where(path, e.lineno)}: invalid JSON ({e.msg} at column {e.colno}); "
                            "fix the syntax (a .json file must hold one list of objects)") from None
    # walk the list element by element to know the line each one starts on
    decoder, pos = json.JSONDecoder(), text.index("[") + 1
    rows: list[Row] = []
    line = text.count("\n", 0, pos) + 1
    while True:
        start = pos
        while text[pos] in " \t\r\n,":
            pos += 1
        line += text.count("\n", start, pos)
        if text[pos] == "]":
            return rows
        row, end = decoder.raw_decode(text, pos)
        rows.append((line, _as_object(path, line, row)))
        line += text.count("\n", pos, end)
        pos = end


def _csv_rows(path: Path, text: str) -> list[Row]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows, last = [], 0
    for cells in reader:
        no, last = last + 1, reader.line_num  # a quoted cell may span lines: report the first
        if not any(c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip() for c in cells]
            dup = sorted({h for h in header if header.count(h) > 1})
            if dup:
                raise EnsembleError(f"{where(path, no)}: duplicate column {dup[0]!r} in the header; rename it")
            continue
        if len(cells) > len(header):
            raise EnsembleError(f"{where(path, no)}: {len(cells)} cells but the header has {len(header)}; "
                                "quote cells that contain commas")
        # an empty cell means "not given"
        row = {h: c for h, c in zip(header, cells) if c.strip() != ""}
        rows.append((no, _csv_options(path, no, row)))
    return rows


def _csv_options(path: Path, no: int, row: dict[str, Any]) -> dict[str, Any]:
    """Options come as A/B/C... columns or as a JSON list in an ``options`` cell."""
    if "options" in row:
        row["options"] = json_cell(path, no, row["options"], "field 'options': not a JSON list; write it as "
                                   '["first", "second"] or use A, B, C... columns')
    letters = [c for c in LETTERS if c in row]
    if letters:
        if "options" in row:
            raise EnsembleError(f"{where(path, no)}: both an 'options' cell and option columns "
                                f"({', '.join(letters)}); keep one of them")
        if letters != list(LETTERS[: len(letters)]):
            gap = next(c for c in LETTERS if c not in row)
            raise EnsembleError(f"{where(path, no)}: option column {gap} is empty but a later one is "
                                "set; fill the options in order A, B, C...")
        row["options"] = [row.pop(c) for c in letters]
    return row
