"""Dataset readers -> Items (questions to answer) and ChatExamples (training data).

Item formats (the FORMATS registry; ``format="auto"`` detects them):
  jsonl   flat rows: id, question, options?, answer?, context?; other fields -> meta.
          A ``.json`` file holding one list of such rows reads the same way.
  csv     the same columns; options as A/B/C... columns or a JSON list in an ``options`` cell
  nested  competition rows {"id", "problem", "questions": [{"question", "options", "answer"?}]},
          one Item per sub-question with id "<id>#<k>" (k from 1) and context = problem
Chat formats (CHAT_FORMATS): LLaMA-Factory's ``alpaca`` and ``sharegpt`` (also OpenAI ``messages``).
Every problem is an EnsembleError naming file:line (1-based) and the fix.

(The Item type is a shared contract: keep its fields.)
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ensemble.errors import EnsembleError, where
from ensemble.registry import Registry

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Item:
    """One question to answer.

    id        unique id; nested competition rows flatten to ``<problem id>#<k>`` (k from 1)
    question  the question text (for nested rows: the sub-question only)
    options   option texts, in letter order A, B, C...; empty for open questions
    answer    gold answer as a label: an option letter for multiple choice, else the
              normalised answer string; None when unknown (test sets)
    context   shared text before the question (the nested format's ``problem``), or ""
    meta      anything else from the row (kept for submissions and templates)
    """

    id: str
    question: str
    options: tuple[str, ...] = ()
    answer: str | None = None
    context: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def letters(self) -> tuple[str, ...]:
        return tuple(LETTERS[: len(self.options)])


# ---------------------------------------------------------------------------
# Raw rows: (1-based line, dict) from JSONL, a JSON list, or CSV.
# Line numbers travel with every row so each error can say file:line.

Row = tuple[int, dict[str, Any]]


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
    decoder, rows, pos = json.JSONDecoder(), [], text.index("[") + 1
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


def json_cell(path: Path, line: int, text: str, problem: str) -> Any:
    """A CSV cell holding JSON (options lists, probs objects); bad JSON -> ``file:line: problem``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise EnsembleError(f"{where(path, line)}: {problem}") from None


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


# ---------------------------------------------------------------------------
# Field checks shared by every format.

def _required(path: Path, no: int, row: dict[str, Any], name: str, what: str) -> Any:
    if row.get(name) in (None, ""):
        raise EnsembleError(f"{where(path, no)}: missing required field '{name}'; every row needs {what}")
    return row[name]


def _string(path: Path, no: int, value: Any, name: str, *, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise EnsembleError(f"{where(path, no, name)}: expected a non-empty string, got {value!r}; "
                            "write it as text")
    return value


def _row_id(path: Path, no: int, value: Any, name: str = "id") -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise EnsembleError(f"{where(path, no, name)}: expected a string or integer id, got {value!r}; "
                            "give every row a unique id")
    return str(value)


def _options(path: Path, no: int, value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(o, str) for o in value):
        raise EnsembleError(f"{where(path, no, name)}: options must be a list of strings, got {value!r}; "
                            'write e.g. ["yes", "no"]')
    if not 2 <= len(value) <= len(LETTERS):
        raise EnsembleError(f"{where(path, no, name)}: {len(value)} options; a multiple-choice question "
                            f"needs 2 to {len(LETTERS)} (leave 'options' out for an open question)")
    return tuple(value)


def _answer(path: Path, no: int, value: Any, options: tuple[str, ...], name: str) -> str | None:
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


def _check_unique(path: Path, ids: Iterable[tuple[int, str]]) -> None:
    seen: dict[str, int] = {}
    for no, id_ in ids:
        if id_ in seen:
            raise EnsembleError(f"{where(path, no)}: duplicate id {id_!r} (first on line {seen[id_]}); "
                                "ids must be unique: rename or remove one")
        seen[id_] = no


# ---------------------------------------------------------------------------
# Item formats. Each parser maps rows -> [(line, Item)].

FORMATS: Registry[Callable[[Path, list[Row]], list[tuple[int, Item]]]] = Registry("data format")
FLAT_FIELDS = ("id", "question", "options", "answer", "context")


def _flat_items(path: Path, rows: list[Row]) -> list[tuple[int, Item]]:
    out = []
    for no, row in rows:
        id_ = _row_id(path, no, _required(path, no, row, "id", "an id and a question"))
        question = _string(path, no, _required(path, no, row, "question", "an id and a question"),
                           "question", required=True)
        options = _options(path, no, row["options"], "options") if row.get("options") is not None else ()
        meta = {k: v for k, v in row.items() if k not in FLAT_FIELDS}
        out.append((no, Item(id_, question, options, _answer(path, no, row.get("answer"), options, "answer"),
                             _string(path, no, row.get("context"), "context"), meta)))
    return out


FORMATS.add("jsonl", _flat_items)
FORMATS.add("csv", _flat_items)


@FORMATS.register("nested")
def _nested_items(path: Path, rows: list[Row]) -> list[tuple[int, Item]]:
    """{"id", "problem", "questions": [...]} -> one Item per sub-question, id "<id>#<k>"."""
    out = []
    for no, row in rows:
        pid = _row_id(path, no, _required(path, no, row, "id", "an id and a questions list"))
        questions = _required(path, no, row, "questions", "an id and a questions list")
        if not isinstance(questions, list):
            raise EnsembleError(f"{where(path, no, 'questions')}: expected a list of "
                                '{"question", "options", "answer"} objects; wrap it in [...]')
        problem = _string(path, no, row.get("problem"), "problem")
        extra = {k: v for k, v in row.items() if k not in ("id", "problem", "questions")}
        for k, q in enumerate(questions, 1):
            field_ = f"questions[{k - 1}]"
            if not isinstance(q, dict) or q.get("question") in (None, "") or q.get("options") is None:
                raise EnsembleError(f"{where(path, no, field_)}: each sub-question needs 'question' and "
                                    "'options'; add the missing field")
            options = _options(path, no, q["options"], f"{field_}.options")
            meta = {**extra, **{f: v for f, v in q.items() if f not in ("question", "options", "answer")},
                    "problem_id": pid, "k": k}
            out.append((no, Item(f"{pid}#{k}", _string(path, no, q["question"], f"{field_}.question", required=True),
                                 options, _answer(path, no, q.get("answer"), options, f"{field_}.answer"),
                                 problem, meta)))
    return out


def detect_format(path: Path, rows: list[Row]) -> str:
    """csv by the file name; nested when the first row has ``questions``; else jsonl."""
    if path.suffix.lower() == ".csv":
        return "csv"
    return "nested" if "questions" in rows[0][1] else "jsonl"


def read_items(path: str | Path, *, format: str = "auto") -> list[Item]:
    path = Path(path)
    if format != "auto":
        FORMATS.get(format)  # unknown names fail before the file is read
    rows = read_rows(path, csv_format=(format == "csv") or None)
    numbered = FORMATS.get(detect_format(path, rows) if format == "auto" else format)(path, rows)
    _check_unique(path, ((no, it.id) for no, it in numbered))
    return [it for _, it in numbered]


def read_gold(path: str | Path) -> dict[str, str]:
    """Gold labels: rows with ``item`` (or ``id``) and ``answer``, or any items file."""
    path = Path(path)
    rows = read_rows(path)
    if any(k in rows[0][1] for k in ("question", "questions")):
        return {it.id: it.answer for it in read_items(path) if it.answer is not None}
    gold: dict[str, str] = {}
    lines: list[tuple[int, str]] = []
    for no, row in rows:
        key = "item" if "item" in row else "id"
        id_ = _row_id(path, no, _required(path, no, row, key, "an item id and an answer"), key)
        answer = _answer(path, no, _required(path, no, row, "answer", "an item id and an answer"), (), "answer")
        lines.append((no, id_))
        gold[id_] = answer  # type: ignore[assignment]  # never None: required above
    _check_unique(path, lines)
    return gold


# ---------------------------------------------------------------------------
# Training conversations (LLaMA-Factory's alpaca and sharegpt layouts).

@dataclass(frozen=True)
class ChatExample:
    id: str
    messages: tuple[dict[str, str], ...]  # the prompt turns (system/user/assistant history)
    target: str  # the assistant reply to learn


CHAT_FORMATS: Registry[Callable[[Path, int, dict[str, Any]], tuple[tuple[dict[str, str], ...], str]]] = \
    Registry("chat format")
ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@CHAT_FORMATS.register("alpaca")
def _alpaca(path: Path, no: int, row: dict[str, Any]) -> tuple[tuple[dict[str, str], ...], str]:
    need = "instruction and output"
    instruction = _string(path, no, _required(path, no, row, "instruction", need), "instruction", required=True)
    target = _string(path, no, _required(path, no, row, "output", need), "output", required=True)
    extra = _string(path, no, row.get("input"), "input")
    system = _string(path, no, row.get("system"), "system")
    messages = [{"role": "system", "content": system}] if system else []
    history = row.get("history") or []
    for i, pair in enumerate(history if isinstance(history, list) else [None]):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise EnsembleError(f"{where(path, no, f'history[{i}]')}: expected a [user, assistant] pair of "
                                f"strings, got {pair!r}; history is a list of such pairs")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    # LLaMA-Factory joins instruction and input with one newline
    messages.append({"role": "user", "content": instruction + ("\n" + extra if extra else "")})
    return tuple(messages), target


@CHAT_FORMATS.register("sharegpt")
def _sharegpt(path: Path, no: int, row: dict[str, Any]) -> tuple[tuple[dict[str, str], ...], str]:
    """``conversations`` (from/value) or OpenAI ``messages`` (role/content); last assistant turn = target."""
    name = "conversations" if "conversations" in row else "messages"
    turns = _required(path, no, row, name, "a conversations (or messages) list")
    if not isinstance(turns, list):
        raise EnsembleError(f"{where(path, no, name)}: expected a list of turns; wrap them in [...]")
    system = _string(path, no, row.get("system"), "system")
    messages = [{"role": "system", "content": system}] if system else []
    for i, turn in enumerate(turns):
        field_ = f"{name}[{i}]"
        role = ROLES.get(turn.get("from", turn.get("role"))) if isinstance(turn, dict) else None
        text = turn.get("value", turn.get("content")) if isinstance(turn, dict) else None
        if role is None or not isinstance(text, str):
            raise EnsembleError(f"{where(path, no, field_)}: expected {{'from': human|gpt|system, 'value': text}} "
                                f"or {{'role': user|assistant|system, 'content': text}}, got {turn!r}")
        # LLaMA-Factory's rule: optional system first, then user/assistant strictly alternating
        expected = "user" if sum(m["role"] != "system" for m in messages) % 2 == 0 else "assistant"
        if role != expected and not (role == "system" and not messages):
            raise EnsembleError(f"{where(path, no, field_)}: a {role} turn where a {expected} turn belongs; "
                                "turns must alternate user, assistant after an optional system turn")
        messages.append({"role": role, "content": text})
    if not messages or messages[-1]["role"] != "assistant":
        raise EnsembleError(f"{where(path, no, name)}: the last turn must be the assistant reply to learn; "
                            "add it or drop the trailing turn")
    return tuple(messages[:-1]), messages[-1]["content"]


def read_chat_examples(path: str | Path, *, format: str = "auto") -> list[ChatExample]:
    path = Path(path)
    if format != "auto":
        CHAT_FORMATS.get(format)
    rows = read_rows(path)
    if format == "auto":
        keys = rows[0][1]
        if "conversations" in keys or "messages" in keys:
            format = "sharegpt"
        elif "instruction" in keys:
            format = "alpaca"
        else:
            raise EnsembleError(f"{where(path, rows[0][0])}: cannot tell the chat format from fields "
                                f"{sorted(keys)}; use alpaca (instruction, input, output) or sharegpt "
                                "(conversations / messages) rows, or pass format=")
    parse = CHAT_FORMATS.get(format)
    out = []
    for k, (no, row) in enumerate(rows, 1):
        messages, target = parse(path, no, row)
        id_ = _row_id(path, no, row["id"]) if "id" in row else f"{path.stem}:{k}"  # k: row position
        out.append((no, ChatExample(id_, messages, target)))
    _check_unique(path, ((no, ex.id) for no, ex in out))
    return [ex for _, ex in out]
