"""The competition format: one row per problem, one Item per sub-question.

    {"id", "problem", "questions": [{"question", "options", "answer"?}, ...]}

Sub-question k (from 1) becomes Item ``"<id>#<k>"`` with ``context = problem``; the
row's other fields and the sub-question's extra fields go to ``meta`` together with
``problem_id`` and ``k`` (submissions regroup the answers by them).
"""
from __future__ import annotations

from pathlib import Path

from ensemble.data import fields
from ensemble.data.items import Item
from ensemble.data.rows import Row
from ensemble.errors import EnsembleError, where

NEED = "an id and a questions list"


def nested_items(path: Path, rows: list[Row]) -> list[tuple[int, Item]]:
    """Rows -> [(line, Item)], one Item per sub-question."""
    out = []
    for no, row in rows:
        pid = fields.row_id(path, no, fields.required(path, no, row, "id", NEED))
        questions = fields.required(path, no, row, "questions", NEED)
        if not isinstance(questions, list):
            raise EnsembleError(f"{where(path, no, 'questions')}: expected a list of "
                                '{"question", "options", "answer"} objects; wrap it in [...]')
        problem = fields.string(path, no, row.get("problem"), "problem")
        extra = {k: v for k, v in row.items() if k not in ("id", "problem", "questions")}
        for k, q in enumerate(questions, 1):
            name = f"questions[{k - 1}]"
            if not isinstance(q, dict) or q.get("question") in (None, "") or q.get("options") is None:
                raise EnsembleError(f"{where(path, no, name)}: each sub-question needs 'question' and "
                                    "'options'; add the missing field")
            options = fields.options(path, no, q["options"], f"{name}.options")
            meta = {**extra, **{f: v for f, v in q.items() if f not in ("question", "options", "answer")},
                    "problem_id": pid, "k": k}
            question = fields.string(path, no, q["question"], f"{name}.question", required=True)
            answer = fields.answer(path, no, q.get("answer"), options, f"{name}.answer")
            out.append((no, Item(f"{pid}#{k}", question, options, answer, problem, meta)))
    return out
