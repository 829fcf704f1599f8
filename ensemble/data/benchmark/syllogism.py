"""Syllogisms over nonsense words (no world knowledge helps), solved by enumerating Venn
models: which of the 8 regions of three sets are non-empty, and the region the named
individual is in. Every set is taken to be non-empty.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from functools import cache

from ensemble.data.benchmark.kinds import EN_NAMES, KINDS, ZH_NAMES, Question, candidate

TERMS_EN = ["wug", "blicket", "fep", "zorp", "glim", "tove", "florp", "quib", "vorn", "mib", "snerk", "plonk", "brill", "trog", "yem", "zib", "krell", "dorf", "gimble", "norp"]
TERMS_ZH = ("卢姆", "塔克", "菲普", "佐尔", "格林", "多克", "米布", "维恩", "奎布", "弗洛", "布利", "赞特", "莫克", "帕奇", "索伦", "提格", "库伦", "纳布", "洛普", "贝克")
SAY_EN = {"all": "All {x}s are {y}s.", "no": "No {x}s are {y}s.", "some": "Some {x}s are {y}s.",
          "some_not": "Some {x}s are not {y}s.", "is": "{n} is a {x}.", "is_not": "{n} is not a {x}."}
SAY_ZH = {"all": "所有{x}都是{y}。", "no": "没有{x}是{y}。", "some": "有些{x}是{y}。",
          "some_not": "有些{x}不是{y}。", "is": "{n}是{x}。", "is_not": "{n}不是{x}。"}
ASK_EN = {"all": "Is every {x} a {y}?", "no": "Is it true that no {x} is a {y}?",
          "some": "Is at least one {x} a {y}?", "is": "Is {n} a {x}?"}
ASK_ZH = {"all": "所有{x}都是{y}吗？", "no": "是否没有{x}是{y}？", "some": "是否有{x}是{y}？", "is": "{n}是{x}吗？"}
VERDICTS = {False: ("yes", "no", "cannot be decided"), True: ("是", "否", "无法确定")}
Stmt = tuple[str, int, int]  # (form, set i, set j); j = -1 for statements about the individual


@cache
def _models() -> tuple[tuple[int, int], ...]:
    """(mask of non-empty regions, the individual's region); region r has bit i iff inside set i."""
    return tuple((m, t) for m in range(1, 256) if all(any(r >> i & 1 for r in range(8) if m >> r & 1)
                                                      for i in range(3))
                 for t in range(8) if m >> t & 1)


def _holds(s: Stmt, m: int, t: int) -> bool:
    form, i, j = s
    regions = [r for r in range(8) if m >> r & 1]
    if form in ("is", "is_not"):
        return bool(t >> i & 1) == (form == "is")
    hit = [r >> i & 1 and r >> j & 1 for r in regions]  # a member of both sets exists
    miss = [r >> i & 1 and not r >> j & 1 for r in regions]  # a member of i outside j exists
    return {"all": not any(miss), "no": not any(hit), "some": any(hit), "some_not": any(miss)}[form]


@cache
def _mask(s: Stmt) -> int:
    """The models where s holds, as a bitset over _models()."""
    return sum(1 << k for k, (m, t) in enumerate(_models()) if _holds(s, m, t))


def solve_syllogism(premises: Sequence[Stmt], question: Stmt) -> int | None:
    """0 yes (true in every model of the premises), 1 no (in none), 2 undecided; None: inconsistent."""
    models = (1 << len(_models())) - 1
    for p in premises:
        models &= _mask(p)
    if not models:
        return None
    q = _mask(question)
    return 0 if models & ~q == 0 else 1 if models & q == 0 else 2


@KINDS.register("syllogism")
def _syllogism(rng: random.Random, zh: bool) -> tuple[str, list[Question]]:
    while True:
        forms = rng.choices(("all", "no", "some", "some_not"), (4, 2, 2, 2), k=3)
        premises: list[Stmt] = [(forms[0], 0, 1), (forms[1], 1, 2)]  # a chain X-Y, Y-Z ...
        extra: Stmt = (forms[2], *rng.sample(range(3), 2))  # type: ignore[assignment]
        if rng.random() < 0.4 and extra not in premises:
            premises.append(extra)
        if rng.random() < 0.6:
            premises.append((rng.choice(("is", "is", "is_not")), rng.randrange(2), -1))
        rng.shuffle(premises)
        if solve_syllogism(premises, ("is", 0, -1)) is not None:
            break
    words = rng.sample(TERMS_ZH if zh else TERMS_EN, 3)
    name = rng.choice(ZH_NAMES if zh else EN_NAMES)
    say, ask, verdicts = (SAY_ZH, ASK_ZH, VERDICTS[zh]) if zh else (SAY_EN, ASK_EN, VERDICTS[zh])
    text = ("" if zh else " ").join(say[f].format(x=words[i], y=words[j], n=name) for f, i, j in premises)
    asks: list[Stmt] = [(f, i, j) for f in ("all", "no", "some") for i in range(3) for j in range(3) if i != j]
    if any(j == -1 for _, _, j in premises):
        asks += [("is", i, -1) for i in range(3)]
    by_verdict: dict[int, list[Question]] = {}
    for s in asks:
        if s not in premises:  # never ask what a premise states outright
            v = solve_syllogism(premises, s)
            q = ask[s[0]].format(x=words[s[1]], y=words[s[2]], n=name)
            by_verdict.setdefault(v, []).append(candidate(q, verdicts[v], verdicts))  # type: ignore[index, arg-type]
    # balance yes / no / undecided: one question per verdict, verdicts in random order
    return text, [rng.choice(by_verdict[v]) for v in rng.sample(sorted(by_verdict), len(by_verdict))]
