"""The KINDS registry and what every problem kind shares: Question, names, text helpers.

A kind is a generator ``(rng, zh) -> (problem text, pool of candidate questions)``;
each kind module registers one with ``@KINDS.register("<kind>")``.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ensemble.registry import Registry

EN_NAMES = ["Anna", "Ben", "Carl", "Dora", "Emma", "Frank", "Grace", "Henry", "Iris", "Jack", "Kate", "Leo", "Mia", "Nora", "Oscar", "Paul", "Quinn", "Rosa", "Sam", "Tina", "Uma", "Victor", "Wendy", "Yara", "Zoe", "Adam", "Bella", "Chris", "Diana", "Ethan", "Fiona", "George", "Hannah", "Ivan", "Julia", "Kevin", "Laura", "Mark", "Nina", "Owen"]
ZH_NAMES = tuple("小" + c for c in "明红刚丽华军芳强梅亮杰玲兰伟雪东静龙燕平娟峰敏勇琳波月林婷涛")
UNDECIDED = {False: "cannot be decided", True: "无法确定"}


@dataclass(frozen=True)
class Question:
    text: str  # without the "Question k:" header
    correct: str  # the correct option's text
    wrong: tuple[str, ...]  # candidate wrong options; those equal to `correct` are dropped


Generator = Callable[[random.Random, bool], tuple[str, list[Question]]]  # (rng, zh) -> (problem, pool)
KINDS: Registry[Generator] = Registry("problem kind")


def candidate(text: str, correct: Any, wrong: Sequence[Any]) -> Question:
    """A candidate question; answers and wrong options may be numbers (written as text)."""
    return Question(text, str(correct), tuple(str(w) for w in wrong))


def join_words(words: Sequence[Any], zh: bool, last: str = "and") -> str:
    """"a, b and c" in English, "a、b、c" in Chinese."""
    words = [str(w) for w in words]
    if zh or len(words) == 1:
        return "、".join(words)
    return ", ".join(words[:-1]) + f" {last} " + words[-1]


def near(v: int, *extra: int) -> list[int]:
    """Wrong numeric options: ``extra`` (typical mistakes) first, then values close to ``v``."""
    return [*extra, v + 1, v - 1, v + 2, v - 2, v + 10, v - 10]
