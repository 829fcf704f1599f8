"""Number sequences: arithmetic or geometric; the rule is found from the shown terms."""
from __future__ import annotations

import random
from collections.abc import Sequence
from fractions import Fraction
from itertools import pairwise

from ensemble.data.benchmark.kinds import KINDS, Question, candidate, near


def continue_sequence(terms: Sequence[int], k: int) -> list[int]:
    """The next k terms, by a constant difference or else a constant ratio."""
    diffs = {b - a for a, b in pairwise(terms)}
    ratios = {Fraction(b, a) for a, b in pairwise(terms) if a} if all(terms[:-1]) else set()
    if len(diffs) == 1:
        d, r = Fraction(diffs.pop()), Fraction(1)
    elif len(ratios) == 1:
        d, r = Fraction(0), ratios.pop()
    else:
        raise ValueError(f"no arithmetic or geometric rule fits {terms}")
    out = [Fraction(terms[-1])]
    for _ in range(k):
        out.append(out[-1] * r + d)
    assert all(v.denominator == 1 for v in out), "the sequence leaves the integers"
    return [int(v) for v in out[1:]]


@KINDS.register("sequence")
def _sequence(rng: random.Random, zh: bool) -> tuple[str, list[Question]]:
    n = rng.randint(4, 6)
    if rng.random() < 0.5:
        a, d = rng.randint(-20, 50), rng.choice([-1, 1]) * rng.randint(1, 15)
        terms = [a + d * i for i in range(n)]
    else:
        ratio = rng.choice(tuple(map(Fraction, ("2", "3", "-2", "-3", "1/2", "1/3", "-1/2"))))
        n = min(n, 5)
        start = rng.choice((-1, 1)) * rng.randint(1, 99) * ratio.denominator ** (n + 1)  # integral terms
        terms = [int(start * ratio ** i) for i in range(n)]
    nxt, after = continue_sequence(terms, 2)
    last, prev = terms[-1], terms[-2]
    arithmetic = last - prev == nxt - last
    other = (last * last // prev if prev else 2 * last) if arithmetic else 2 * last - prev  # the other rule
    step = abs(last - prev) or 1
    shown = ", ".join(map(str, terms))
    text = f"数列 {shown}, ... 遵循固定的规律。" if zh else f"The sequence {shown}, ... follows a fixed rule."
    asks = [("下一项是多少？", "What is the next term?", nxt, near(nxt, other, last, nxt + step, nxt - step)),
            ("再下一项是多少？", "What is the term after the next one?", after, near(after, nxt, after + step)),
            ("接下来两项之和是多少？", "What is the sum of the next two terms?", nxt + after,
             near(nxt + after, other + after, nxt + nxt))]
    return text, [candidate(z if zh else e, v, w) for z, e, v, w in asks]
