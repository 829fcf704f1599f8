"""Columnar benchmark files and the common multiple-choice layouts.

Files (read with pyarrow / datasets, never by hand):
  .parquet               pyarrow.parquet
  .arrow                 pyarrow IPC (file or stream format, as ``datasets`` writes shards)
  save_to_disk folder    datasets.load_from_disk (one split: a DatasetDict folder names its splits)

Layouts (``format: auto`` detects them from the columns, in any file type):
  mmlu_pro  question, options (list), answer (letter), answer_index, category; id: question_id
  mmlu      question, choices (list), answer (int index), subject
  arc       question, choices {text: [...], label: [...]}, answerKey (a label); id: id
  ceval     question, A, B, C, D... columns, answer (letter); C-Eval and CMMLU (Question/Answer)
Each becomes a flat row (id, question, options, answer, group) for the ``jsonl`` reader;
rows without an id column are numbered from 0, like lm-eval's doc_id. ``data.columns``
maps other layouts: our field -> the file's column (``{question: prompt, answer: label}``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ensemble.data.items import LETTERS
from ensemble.data.rows import Row
from ensemble.errors import EnsembleError

INSTALL = "pip install 'ensemble[data]' (or pip install datasets pyarrow)"
FIELDS = ("id", "question", "options", "answer", "context", "group")
TABLE_SUFFIXES = (".parquet", ".arrow")


# -- files -------------------------------------------------------------------------
def is_table(path: Path) -> bool:
    """A Parquet / Arrow file or a ``save_to_disk`` folder (read here, not by data.rows)."""
    return path.suffix.lower() in TABLE_SUFFIXES or path.is_dir()


def read_table_rows(path: str | Path) -> list[Row]:
    """``(row number from 1, dict)`` for every row of a Parquet / Arrow file or dataset folder."""
    path = Path(path)
    if not path.exists():
        raise EnsembleError(f"{path}: no such file or folder; check the path in data.train / dev / test")
    if path.is_dir():
        records = _dataset_folder(path)
    elif path.suffix.lower() == ".parquet":
        pq = _need("pyarrow.parquet", path)
        records = _table(path, lambda: pq.read_table(path))
    else:
        records = _table(path, lambda: _arrow(path))
    if not records:
        raise EnsembleError(f"{path}: the table has no rows")
    return [(k + 1, row) for k, row in enumerate(records)]


def _need(module: str, path: Path) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise EnsembleError(f"{path}: reading this file needs {module.split('.')[0]}: {INSTALL}") from None


def _table(path: Path, read: Callable[[], Any]) -> list[dict[str, Any]]:
    try:
        rows: list[dict[str, Any]] = read().to_pylist()
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
        raise EnsembleError(f"{path}: cannot read the table ({e}); is it a valid {path.suffix} file?") from None
    return rows


def _arrow(path: Path) -> Any:
    ipc = _need("pyarrow.ipc", path)
    try:
        return ipc.open_file(path).read_all()
    except ValueError:  # not the IPC file format: datasets' shards are the stream format
        with open(path, "rb") as f:
            return ipc.open_stream(f).read_all()


def _dataset_folder(path: Path) -> list[dict[str, Any]]:
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if (p / "state.json").is_file())
        raise EnsembleError(f"{path}: a DatasetDict folder with splits {', '.join(splits)}; point data.train / "
                            f"dev / test at one split folder, e.g. {path / (splits[0] if splits else 'test')}")
    if not (path / "state.json").is_file():
        raise EnsembleError(f"{path}: a folder but not a datasets.save_to_disk folder (no state.json); give a "
                            ".jsonl, .csv, .parquet or .arrow file, or a save_to_disk folder")
    datasets = _need("datasets", path)
    return list(datasets.load_from_disk(str(path)).to_list())


# -- layouts -----------------------------------------------------------------------
GROUP_KEYS = ("group", "subject", "category", "kind")


def item_group(meta: Mapping[str, Any]) -> str | None:
    """An item's group from its meta: the layouts' ``group``, else subject / category / kind
    (the bundled benchmark's problem kind)."""
    return next((str(meta[k]) for k in GROUP_KEYS if meta.get(k) not in (None, "")), None)


def rename_columns(path: Path, rows: list[Row], columns: Mapping[str, str]) -> list[Row]:
    """Apply ``data.columns`` (our field -> the file's column) to every row."""
    if not columns:
        return rows
    unknown = sorted(set(columns) - set(FIELDS))
    if unknown:
        raise EnsembleError(f"data.columns: unknown field '{unknown[0]}'; map any of {', '.join(FIELDS)} "
                            "to a column of the file")
    found = list(rows[0][1])
    for ours, theirs in columns.items():
        if theirs not in rows[0][1]:
            raise EnsembleError(f"{path}: data.columns maps '{ours}' to column '{theirs}', which is missing; "
                                f"found columns: {', '.join(found)}")
    taken = set(columns.values())
    return [(no, {**{k: v for k, v in row.items() if k not in taken},
                  **{ours: row.get(theirs) for ours, theirs in columns.items()}}) for no, row in rows]


def _col(path: Path, no: int, row: dict[str, Any], name: str, layout: str) -> Any:
    """``row[name]``; a missing one fails naming the file, row, column and the columns found."""
    if row.get(name) is None:
        raise EnsembleError(f"{path}: row {no}: missing column '{name}' ({layout} layout); found columns: "
                            f"{', '.join(row)}")
    return row[name]


def _id(row: dict[str, Any], key: str, no: int) -> Any:
    return row[key] if row.get(key) not in (None, "") else None  # None: numbered by layout_rows


def _flat(row: dict[str, Any], used: tuple[str, ...], **fields: Any) -> dict[str, Any]:
    meta = {k: v for k, v in row.items() if k not in used and k not in FIELDS}
    return {**meta, **{k: v for k, v in fields.items() if v is not None}}


def mmlu_pro(path: Path, no: int, row: dict[str, Any]) -> dict[str, Any]:
    L = "mmlu_pro"
    options = list(_col(path, no, row, "options", L))
    answer = row.get("answer")
    if answer in (None, ""):
        answer = LETTERS[int(_col(path, no, row, "answer_index", L))]
    return _flat(row, ("question_id", "answer_index", "category"), id=_id(row, "question_id", no),
                 question=_col(path, no, row, "question", L), options=options, answer=answer,
                 group=row.get("category"))


def mmlu(path: Path, no: int, row: dict[str, Any]) -> dict[str, Any]:
    L = "mmlu"
    options = list(_col(path, no, row, "choices", L))
    answer = _col(path, no, row, "answer", L)
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(options):
        answer = LETTERS[answer]  # MMLU's answer is the choice index
    return _flat(row, ("choices", "subject"), id=_id(row, "id", no), question=_col(path, no, row, "question", L),
                 options=options, answer=answer, group=row.get("subject"))


def arc(path: Path, no: int, row: dict[str, Any]) -> dict[str, Any]:
    L = "arc"
    choices = _col(path, no, row, "choices", L)
    if not isinstance(choices, Mapping) or "text" not in choices or "label" not in choices:
        raise EnsembleError(f"{path}: row {no}: column 'choices' must hold {{text: [...], label: [...]}} "
                            f"(arc layout), got {choices!r}")
    labels = [str(x) for x in choices["label"]]
    key = str(_col(path, no, row, "answerKey", L)).strip()
    if key not in labels:
        raise EnsembleError(f"{path}: row {no}: answerKey {key!r} is not one of the choice labels {labels}")
    return _flat(row, ("choices", "answerKey"), id=_id(row, "id", no), question=_col(path, no, row, "question", L),
                 options=list(choices["text"]), answer=LETTERS[labels.index(key)], group=row.get("subject"))


def ceval(path: Path, no: int, row: dict[str, Any]) -> dict[str, Any]:
    L = "ceval"
    q, a = ("question", "answer") if "question" in row else ("Question", "Answer")
    letters = [c for c in LETTERS if row.get(c) not in (None, "")]
    if "options" in row and not letters:  # CSV: data.rows already gathered A, B, C... into options
        options = list(row["options"])
    else:
        options = [str(row[c]) for c in LETTERS[: len(letters)] if c in row]
        if len(options) != len(letters):
            raise EnsembleError(f"{path}: row {no}: option columns {', '.join(letters)} are not A, B, C... in "
                                f"order (ceval layout); found columns: {', '.join(row)}")
    return _flat(row, (*LETTERS, q, a, "subject", "category"), id=_id(row, "id", no),
                 question=_col(path, no, row, q, L), options=options, answer=_col(path, no, row, a, L),
                 group=row.get("subject") or row.get("category"))


LAYOUTS: dict[str, Callable[[Path, int, dict[str, Any]], dict[str, Any]]] = {
    "mmlu_pro": mmlu_pro, "mmlu": mmlu, "arc": arc, "ceval": ceval}


def detect_layout(first: dict[str, Any]) -> str | None:
    """The layout whose tell-tale columns the first row has; None for the flat format."""
    keys = set(first)
    if {"question", "options", "answer_index"} <= keys:
        return "mmlu_pro"
    if {"choices", "answerKey"} <= keys:
        return "arc"
    if {"question", "choices", "answer"} <= keys and isinstance(first["choices"], (list, tuple)):
        return "mmlu"
    if ({"question", "answer"} <= keys or {"Question", "Answer"} <= keys) and {"A", "B"} <= keys:
        return "ceval"
    if {"Question", "Answer", "options"} <= keys:  # CMMLU as CSV (options gathered by data.rows)
        return "ceval"
    return None


def layout_rows(path: Path, rows: list[Row], layout: str) -> list[Row]:
    """Rows of a named layout -> flat rows (id, question, options, answer, group + the rest)."""
    convert = LAYOUTS[layout]
    out = []
    for pos, (no, row) in enumerate(rows):
        flat = convert(path, no, row)
        flat.setdefault("id", pos)  # no id column: the row's 0-based position, like lm-eval's doc_id
        out.append((no, flat))
    return out
