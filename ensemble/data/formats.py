"""Item files -> Items, and gold files -> labels.

Item formats (the FORMATS registry; ``format="auto"`` detects them):
  jsonl   flat rows: id, question, options?, answer?, context?; other fields -> meta.
          A ``.json`` file holding one list of such rows reads the same way.
  csv     the same columns; options as A/B/C... columns or a JSON list in an ``options`` cell
  nested  competition rows {"id", "problem", "questions": [...]} (see ensemble.data.nested)
  mmlu_pro / mmlu / arc / ceval  the common multiple-choice layouts (see ensemble.data.tables)
Files may also be Parquet, Arrow or ``datasets.save_to_disk`` folders (ensemble.data.tables);
``columns`` (``data.columns``) maps our fields to other column names first.
Every problem is an EnsembleError naming file:line (1-based) and the fix.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from ensemble.data import fields, tables
from ensemble.data.items import Item
from ensemble.data.nested import nested_items
from ensemble.data.rows import Row, read_rows
from ensemble.data.tables import LAYOUTS, detect_layout, layout_rows, rename_columns
from ensemble.errors import EnsembleError, where
from ensemble.registry import Registry

# Each parser maps rows -> [(line, Item)]; the line travels on for duplicate-id errors.
FORMATS: Registry[Callable[[Path, list[Row]], list[tuple[int, Item]]]] = Registry("data format")
FLAT_FIELDS = ("id", "question", "options", "answer", "context")
NEED = "an id and a question"


def flat_items(path: Path, rows: list[Row]) -> list[tuple[int, Item]]:
    """One Item per row (jsonl, csv, .json list)."""
    out = []
    for no, row in rows:
        for name in ("id", "question"):
            if row.get(name) in (None, ""):
                raise EnsembleError(f"{where(path, no)}: missing required field '{name}'; every row needs {NEED} "
                                    f"(found columns: {', '.join(map(str, row))}); map other column names "
                                    "with data.columns, e.g. {question: prompt}")
        id_ = fields.row_id(path, no, fields.required(path, no, row, "id", NEED))
        question = fields.string(path, no, fields.required(path, no, row, "question", NEED), "question",
                                 required=True)
        options = fields.options(path, no, row["options"], "options") if row.get("options") is not None else ()
        answer = fields.answer(path, no, row.get("answer"), options, "answer")
        context = fields.string(path, no, row.get("context"), "context")
        meta = {k: v for k, v in row.items() if k not in FLAT_FIELDS}
        out.append((no, Item(id_, question, options, answer, context, meta)))
    return out


FORMATS.add("jsonl", flat_items)
FORMATS.add("csv", flat_items)
FORMATS.add("nested", nested_items)


def _layout_parser(layout: str) -> Callable[[Path, list[Row]], list[tuple[int, Item]]]:
    return lambda path, rows: flat_items(path, layout_rows(path, rows, layout))


for _layout in LAYOUTS:
    FORMATS.add(_layout, _layout_parser(_layout))


def detect_format(path: Path, rows: list[Row]) -> str:
    """nested when the first row has ``questions``; a multiple-choice layout by its columns;
    csv by the file name; else jsonl."""
    first = rows[0][1]
    if "questions" in first:
        return "nested"
    layout = detect_layout(first)
    if layout is not None:
        return layout
    return "csv" if path.suffix.lower() == ".csv" else "jsonl"


def data_rows(path: Path, *, csv_format: bool | None = None) -> list[Row]:
    """Raw rows of any data file: JSONL / JSON / CSV, or Parquet / Arrow / a save_to_disk folder."""
    return tables.read_table_rows(path) if tables.is_table(path) else read_rows(path, csv_format=csv_format)


def read_items(path: str | Path, *, format: str = "auto", columns: Mapping[str, str] | None = None) -> list[Item]:
    """Every Item of a data file, in file order; ids must be unique.

    ``columns``: our field -> the file's column name (``data.columns``), applied first."""
    path = Path(path)
    if format != "auto":
        FORMATS.get(format)  # unknown names fail before the file is read
    rows = rename_columns(path, data_rows(path, csv_format=(format == "csv") or None), columns or {})
    numbered = FORMATS.get(detect_format(path, rows) if format == "auto" else format)(path, rows)
    fields.check_unique(path, ((no, it.id) for no, it in numbered))
    return [it for _, it in numbered]


def read_gold(path: str | Path) -> dict[str, str]:
    """Gold labels: rows with ``item`` (or ``id``) and ``answer``, or any items file."""
    path = Path(path)
    rows = data_rows(path)
    if any(k in rows[0][1] for k in ("question", "questions", "Question")):
        return {it.id: it.answer for it in read_items(path) if it.answer is not None}
    gold: dict[str, str] = {}
    lines: list[tuple[int, str]] = []
    need = "an item id and an answer"
    for no, row in rows:
        key = "item" if "item" in row else "id"
        id_ = fields.row_id(path, no, fields.required(path, no, row, key, need), key)
        answer = fields.answer(path, no, fields.required(path, no, row, "answer", need), (), "answer")
        lines.append((no, id_))
        gold[id_] = answer  # type: ignore[assignment]  # never None: required above
    fields.check_unique(path, lines)
    return gold
