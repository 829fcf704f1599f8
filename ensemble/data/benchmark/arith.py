"""Small arithmetic: x = a + b * c etc.; wrong options near the answer and the value you
get by ignoring precedence.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from ensemble.data.benchmark.kinds import KINDS, Question, candidate, join_words, near

Expr = Any  # int | tuple[str, Expr, Expr]
SHAPES: tuple[Callable[[int, int, int, int], Expr], ...] = (
    lambda a, b, c, d: ("+", a, ("*", b, c)), lambda a, b, c, d: ("-", ("*", a, b), c),
    lambda a, b, c, d: ("*", ("+", a, b), c), lambda a, b, c, d: ("-", a, ("*", b, c)),
    lambda a, b, c, d: ("+", ("*", a, b), ("*", c, d)), lambda a, b, c, d: ("*", ("-", a, b), c),
    lambda a, b, c, d: ("-", ("+", a, b), ("*", c, d)))
OPS = {"+": lambda u, v: u + v, "-": lambda u, v: u - v, "*": lambda u, v: u * v}
PREC = {"+": 1, "-": 1, "*": 2}


def evaluate(e: Expr) -> int:
    return e if isinstance(e, int) else OPS[e[0]](evaluate(e[1]), evaluate(e[2]))


def show(e: Expr, prec: int = 0, right: bool = False) -> str:
    """Minimal parentheses: a lower-precedence child, or an equal one right of '-'."""
    if isinstance(e, int):
        return str(e)
    p = PREC[e[0]]
    s = f"{show(e[1], p)} {e[0]} {show(e[2], p, True)}"
    return f"({s})" if p < prec or (right and p == prec and prec == 1) else s


def _left_to_right(e: Expr) -> int:
    """The usual mistake: drop the parentheses and evaluate strictly left to right."""
    tokens = show(e).replace("(", "").replace(")", "").split()
    value = int(tokens[0])
    for op, v in zip(tokens[1::2], tokens[2::2]):
        value = OPS[op](value, int(v))
    return value


@KINDS.register("arith")
def _arith(rng: random.Random, zh: bool) -> tuple[str, list[Question]]:
    names = ("x", "y")[: rng.randint(1, 2)]
    exprs = [rng.choice(SHAPES)(*(rng.randint(2, 20) for _ in range(4))) for _ in names]
    vals = [evaluate(e) for e in exprs]
    defs = [f"{n} = {show(e)}" for n, e in zip(names, exprs)]
    text = f"设 {'，'.join(defs)}。" if zh else f"Let {join_words(defs, zh)}."
    pool = [candidate(f"{n} 的值是多少？" if zh else f"What is the value of {n}?", v, near(v, _left_to_right(e)))
            for n, e, v in zip(names, exprs, vals)]
    if len(names) == 2:
        op = rng.choice("+-")
        v, other = OPS[op](*vals), OPS["-" if op == "+" else "+"](*vals)
        pool.append(candidate(f"x {op} y 等于多少？" if zh else f"What is x {op} y?", v,
                       near(v, other, OPS[op](_left_to_right(exprs[0]), vals[1]))))
    return text, pool
