"""Which number is largest / smallest / second largest / second smallest."""
from __future__ import annotations

import random

from ensemble.data.benchmark.kinds import KINDS, Question, candidate, join_words


@KINDS.register("compare")
def _compare(rng: random.Random, zh: bool) -> tuple[str, list[Question]]:
    hi = rng.choice((50, 100, 1000, 10000))
    nums = rng.sample(range(-hi if rng.random() < 0.3 else 1, hi), rng.randint(3, 6))
    ranked = sorted(nums, reverse=True)
    text = f"有以下几个数：{join_words(nums, zh)}。" if zh else f"Consider the numbers {join_words(nums, zh)}."
    asks = [("最大", "the largest", ranked[0]), ("最小", "the smallest", ranked[-1]),
            ("第二大", "the second largest", ranked[1]), ("第二小", "the second smallest", ranked[-2])]
    return text, [candidate(f"哪个数{z}？" if zh else f"Which number is {e}?", v, nums) for z, e, v in asks]
