"""Helpers shared by tests/test_training_recipe.py and tests/test_training_multi.py."""
from __future__ import annotations

import random

from ensemble.data.items import Item


def yes_items(n: int, seed: int = 0, distinct: int | None = None) -> list[Item]:
    """A learnable toy task: the answer is always the option whose text is "yes" (its position
    drawn with ``seed``). Item i asks "Question k: pick one", k = i, or i % ``distinct`` for
    questions that repeat."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        options = ["yes", "no"] if rng.random() < 0.5 else ["no", "yes"]
        k = i if distinct is None else i % distinct
        out.append(Item(f"q{i}", f"Question {k}: pick one", tuple(options), "AB"[options.index("yes")]))
    return out
