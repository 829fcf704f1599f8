"""Write the answers file: the competition template filled in, or a plain id,answer table.

Everything is checked before anything is written (missing items, answers for unknown
ids, letters that are not options, abstentions), and the file is written atomically,
so after an error no partial output exists. Abstained items (answer None) are filled
only when the caller picks a FALLBACKS policy other than ``none``.
"""
from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ensemble.data.formats import FORMATS as DATA_FORMATS
from ensemble.data.formats import detect_format
from ensemble.data.items import LETTERS, Item
from ensemble.data.rows import Row, read_rows
from ensemble.errors import EnsembleError, where
from ensemble.io import atomic_write_text
from ensemble.registry import Registry

SHOWN = 5  # ids listed per problem in an error message


@dataclass(frozen=True)
class SubmissionReport:
    n_items: int
    n_filled: int  # items answered by the fallback policy
    filled_ids: tuple[str, ...]
    out_path: Path


# ---------------------------------------------------------------------------
# Fallback policies: (items to fill, the answered items' letters, rng) -> {id: letter}.

Fallback = Callable[[Sequence[Item], Mapping[str, str], random.Random], dict[str, str]]
FALLBACKS: Registry[Fallback] = Registry("fallback policy")


@FALLBACKS.register("none")
def _fallback_none(todo: Sequence[Item], answered: Mapping[str, str], rng: random.Random) -> dict[str, str]:
    return {}  # nothing filled: write_answers reports the abstentions as an error


@FALLBACKS.register("first")
def _fallback_first(todo: Sequence[Item], answered: Mapping[str, str], rng: random.Random) -> dict[str, str]:
    return {it.id: "A" for it in todo}


@FALLBACKS.register("random")
def _fallback_random(todo: Sequence[Item], answered: Mapping[str, str], rng: random.Random) -> dict[str, str]:
    return {it.id: rng.choice(it.letters) for it in todo}  # in item order, so the seed fixes the fill


@FALLBACKS.register("prior")
def _fallback_prior(todo: Sequence[Item], answered: Mapping[str, str], rng: random.Random) -> dict[str, str]:
    """The most common answered letter (ties -> first letter); per item, among its own letters."""
    counts = Counter(answered.values())
    return {it.id: max(it.letters, key=lambda c: (counts[c], -LETTERS.index(c))) for it in todo}


# ---------------------------------------------------------------------------
# Checks.

def _listed(ids: Sequence[str]) -> str:
    more = f" (+{len(ids) - SHOWN} more)" if len(ids) > SHOWN else ""
    return ", ".join(ids[:SHOWN]) + more


def _problems(answers: Mapping[str, str | None], items: Sequence[Item] | None, source: str) -> list[str]:
    """Missing / extra ids and answers that are not one of the item's option letters."""
    if items is None:
        return []
    by_id = {it.id: it for it in items}
    missing = [it.id for it in items if it.id not in answers]
    extra = [i for i in answers if i not in by_id]
    bad = [f"{i}={a!r}" for i, a in answers.items() if a is not None and i in by_id
           and not (isinstance(a, str) and (a in by_id[i].letters if by_id[i].options else a.strip()))]
    out = []
    if missing:
        out.append(f"{len(missing)} item(s) of {source} have no answer: {_listed(missing)}")
    if extra:
        out.append(f"{len(extra)} answer(s) for ids not in {source}: {_listed(extra)}")
    if bad:
        out.append(f"{len(bad)} answer(s) are not an option letter of their item: {_listed(bad)}")
    return out


def _fill(answers: Mapping[str, str | None], items: Sequence[Item] | None, fallback: str,
          seed: int) -> tuple[dict[str, str], list[str]]:
    """Apply the fallback to abstentions; returns the final answers and the filled ids."""
    policy = FALLBACKS.get(fallback)
    abstained = [i for i, a in answers.items() if a is None]
    if not abstained:
        return dict(answers), []  # type: ignore[arg-type]
    if fallback == "none":
        raise EnsembleError(f"{len(abstained)} item(s) abstained (no answer): {_listed(abstained)}; "
                            f"pass a fallback ({', '.join(n for n in FALLBACKS.names() if n != 'none')}) "
                            "or answer them")
    by_id = {it.id: it for it in items or ()}
    todo = [by_id.get(i) for i in abstained]
    if any(it is None or not it.options for it in todo):
        unknown = [i for i, it in zip(abstained, todo) if it is None or not it.options]
        raise EnsembleError(f"fallback '{fallback}' needs each abstained item's options, unknown for "
                            f"{_listed(unknown)}; give the test file as the template (or the items)")
    answered = {i: a for i, a in answers.items() if a is not None}
    todo_ids = set(abstained)
    order = [it for it in (items or ()) if it.id in todo_ids]  # template order, so the seed fixes the fill
    filled = policy(order, answered, random.Random(seed))
    return {i: (a if a is not None else filled[i]) for i, a in answers.items()}, [it.id for it in order]


# ---------------------------------------------------------------------------
# Output.



def _filled_template(rows: list[Row], final: Mapping[str, str]) -> str:
    """The template's rows with answers set; key order and every other field unchanged."""
    lines = []
    for _, row in rows:
        if "questions" in row:
            for k, q in enumerate(row["questions"], 1):
                q["answer"] = final[f"{row['id']}#{k}"]
        else:
            row["answer"] = final[str(row["id"])]
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    return "".join(lines)


def _table(final: Mapping[str, str], order: Sequence[str], out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix == ".csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["id", "answer"])
        writer.writerows([i, final[i]] for i in order)
        return buf.getvalue()
    if suffix in (".jsonl", ".json"):
        return "".join(json.dumps({"id": i, "answer": final[i]}, ensure_ascii=False) + "\n" for i in order)
    raise EnsembleError(f"{out}: unknown output type '{suffix}'; name the file .csv or .jsonl "
                        "(or pass the test file as template=)")


def _template_rows(template: Path) -> tuple[list[Row], list[Item]]:
    if template.suffix.lower() == ".csv":
        raise EnsembleError(f"{template}: a template must be the JSONL test file; CSV templates are not "
                            "supported (write without a template for an id,answer table)")
    rows = read_rows(template)
    items = [it for _, it in DATA_FORMATS.get(detect_format(template, rows))(template, rows)]
    return rows, items


def write_answers(answers: Mapping[str, str | None], out: Path, *, template: Path | None = None,
                  items: Sequence[Item] | None = None, fallback: str = "none",
                  seed: int = 0) -> SubmissionReport:
    out = Path(out)
    FALLBACKS.get(fallback)
    rows: list[Row] | None = None
    if template is not None:
        rows, items = _template_rows(Path(template))
    source = str(template) if template is not None else "the items"
    problems = _problems(answers, items, source)
    if problems:
        raise EnsembleError(f"{out}: not written: {'; '.join(problems)}")
    final, filled = _fill(answers, items, fallback, seed)
    if rows is not None:
        text = _filled_template(rows, final)
    else:
        text = _table(final, [it.id for it in items] if items is not None else list(final), out)
    atomic_write_text(out, text)
    return SubmissionReport(len(final), len(filled), tuple(filled), out)


def write_test_answers(answers: Mapping[str, str | None], test_items: Sequence[Item], out: str | Path, *,
                       test_file: Path | None, fallback: str = "none") -> SubmissionReport:
    """`vote run`'s submission: the answers for the test items only. A competition (nested)
    test file is filled in place; a flat one gives an id,answer table."""
    test_ids = {it.id for it in test_items}
    nested = bool(test_items) and "problem_id" in test_items[0].meta
    return write_answers({k: v for k, v in answers.items() if k in test_ids}, Path(out), items=test_items,
                         template=test_file if nested else None, fallback=fallback)


# ---------------------------------------------------------------------------
# Checking a written file against the template.

def _strip_answers(row: dict[str, Any]) -> str:
    """The row without its answers, as canonical text (key order included)."""
    if isinstance(row.get("questions"), list):
        row = {**row, "questions": [{k: v for k, v in q.items() if k != "answer"} if isinstance(q, dict) else q
                                    for q in row["questions"]]}
    else:
        row = {k: v for k, v in row.items() if k != "answer"}
    return json.dumps(row, ensure_ascii=False)


def _slots(row: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, answer, options) for each answer the row must carry."""
    if isinstance(row.get("questions"), list):
        return [(f"questions[{k}].answer", q.get("answer"), q.get("options"))
                for k, q in enumerate(row["questions"]) if isinstance(q, dict)]
    return [("answer", row.get("answer"), row.get("options"))]


def validate_submission(path: str | Path, template: str | Path) -> list[str]:
    """Problems with a written submission (empty list = valid). A bad template raises."""
    path, template = Path(path), Path(template)
    expected, _ = _template_rows(template)
    try:
        got = read_rows(path, csv_format=False)
    except EnsembleError as e:
        return [str(e)]
    problems = []
    if len(got) != len(expected):
        problems.append(f"{path}: {len(got)} rows but {template} has {len(expected)}; write one row per "
                        "template row")
    for (no, row), (tno, trow) in zip(got, expected):
        if _strip_answers(row) != _strip_answers(trow):
            problems.append(f"{where(path, no)}: differs from {where(template, tno)} beyond the answers "
                            "(row order, fields and key order must be the template's)")
            continue
        for name, answer, options in _slots(row):
            if not isinstance(options, list):  # open question: any text
                if not (isinstance(answer, str) and answer.strip()):
                    problems.append(f"{where(path, no, name)}: no answer; write the answer text")
            elif not (isinstance(answer, str) and answer in tuple(LETTERS[: len(options)])):
                problems.append(f"{where(path, no, name)}: {answer!r} is not an option letter "
                                f"(A-{LETTERS[len(options) - 1]}); write one letter per sub-question")
    return problems
