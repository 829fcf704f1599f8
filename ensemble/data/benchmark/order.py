"""Ordering chains: "A is taller than B." -> who is tallest / second / how many above."""
from __future__ import annotations

import random
from collections.abc import Sequence

from ensemble.data.benchmark.kinds import (
    EN_NAMES,
    KINDS,
    UNDECIDED,
    ZH_NAMES,
    Question,
    candidate,
)

ATTRS_EN = (("taller", "shorter", "tallest", "shortest"), ("older", "younger", "oldest", "youngest"),
            ("faster", "slower", "fastest", "slowest"), ("heavier", "lighter", "heaviest", "lightest"))
ATTRS_ZH = (("高", "矮"), ("年长", "年轻"), ("快", "慢"), ("重", "轻"))


def solve_order(people: Sequence[str], facts: Sequence[tuple[str, str]]) -> list[str]:
    """Facts (more, less) -> everyone from most to least; the chain must fix a total order."""
    below = {p: {b for a, b in facts if a == p} for p in people}
    for _ in people:  # transitive closure by repeated expansion (n <= 5)
        below = {p: s.union(*(below[q] for q in s)) for p, s in below.items()}
    order = sorted(people, key=lambda p: -len(below[p]))
    assert [len(below[p]) for p in order] == list(range(len(people) - 1, -1, -1)), "order not unique"
    return order


@KINDS.register("order")
def _order(rng: random.Random, zh: bool) -> tuple[str, list[Question]]:
    a = rng.randrange(len(ATTRS_EN))
    people = rng.sample(ZH_NAMES if zh else EN_NAMES, rng.randint(3, 5))  # hidden order: most first
    facts = [(people[i], people[i + 1]) for i in range(len(people) - 1)]
    rng.shuffle(facts)
    said = []
    for hi, lo in facts:  # half the facts are said the other way round ("B is shorter than A")
        flip = rng.random() < 0.5
        x, y, word = (lo, hi, 1) if flip else (hi, lo, 0)
        said.append(f"{x}比{y}{ATTRS_ZH[a][word]}。" if zh else f"{x} is {ATTRS_EN[a][word]} than {y}.")
    order = solve_order(people, facts)
    assert order == people
    x, y = rng.sample(people, 2)
    who, who_wrong = (x, y) if order.index(x) < order.index(y) else (y, x)
    p = rng.choice(people)
    above, counts = order.index(p), range(len(people))
    if zh:
        adj, inv = ATTRS_ZH[a]
        pool = [candidate(f"谁最{adj}？", order[0], order), candidate(f"谁最{inv}？", order[-1], order),
                candidate(f"谁第二{adj}？", order[1], order), candidate(f"{x}和{y}谁更{adj}？", who, (who_wrong, UNDECIDED[zh])),
                candidate(f"有几个人比{p}{adj}？", above, counts)]
    else:
        comp, _, sup, inv_sup = ATTRS_EN[a]
        pool = [candidate(f"Who is the {sup}?", order[0], order), candidate(f"Who is the {inv_sup}?", order[-1], order),
                candidate(f"Who is the second {sup}?", order[1], order),
                candidate(f"Who is {comp}, {x} or {y}?", who, (who_wrong, UNDECIDED[zh])),
                candidate(f"How many people are {comp} than {p}?", above, counts)]
    return "".join(said) if zh else " ".join(said), pool
