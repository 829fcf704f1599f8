"""Helpers shared by tests/test_voting.py and tests/test_tiebreak.py: vote matrices written as
strings, one per item, one letter per voter over the classes A, B, C ("." abstains)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ensemble.predictions.matrix import ABSTAIN, VoteMatrix, from_arrays

CLASSES = ("A", "B", "C")
CODE = {c: i for i, c in enumerate(CLASSES)} | {".": ABSTAIN}


def codes(text: str) -> list[int]:
    return [CODE[ch] for ch in text]


def rows(*items: str, gold: str | None = None, **arrays: Any) -> VoteMatrix:
    """rows("AAB", "BA.") -> a (2 items, 3 voters v0..v2) matrix over A, B, C."""
    return from_arrays(np.array([codes(r) for r in items]), CLASSES,
                       gold=None if gold is None else np.array(codes(gold)), **arrays)


def letters(labels: np.ndarray) -> str:
    """Decision labels -> such a string ("AAB.")."""
    return "".join("." if c == ABSTAIN else CLASSES[c] for c in labels)
