"""The Item: one question to answer, whatever file format it came from.

(The Item type is a shared contract between readers, prompts, extraction, engines and
submissions: keep its fields.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
