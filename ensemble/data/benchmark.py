"""The bundled benchmark: procedurally generated multiple-choice reasoning problems.

Rows use the nested competition format plus a ``kind`` field:
``{"id", "kind", "problem", "questions": [{"question", "options", "answer"}]}``.
Six kinds (KINDS registry), each a fixed set of templates filled with random numbers
and names, about a quarter in Chinese. A generator builds an instance, *solves* it
(sorting, transitive closure, expression evaluation, Venn-model enumeration, rule
detection, permutation search) and offers candidate questions as (text, correct
option, wrong options). Exactly one option is correct and its letter is uniform over
the positions. Everything derives from ``random.Random(f"...{seed}/{split}")``, so
the same seed gives byte-identical files.
"""
from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from itertools import pairwise, permutations
from pathlib import Path
from typing import Any

from ensemble.data.readers import LETTERS
from ensemble.errors import EnsembleError
from ensemble.registry import Registry

ZH_SHARE = 0.25  # fraction of problems written in Chinese
MAX_RETRIES = 1000  # duplicate problem texts in a row before giving up

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


def _q(text: str, correct: Any, wrong: Sequence[Any]) -> Question:
    return Question(text, str(correct), tuple(str(w) for w in wrong))


def _join(words: Sequence[Any], zh: bool, last: str = "and") -> str:
    words = [str(w) for w in words]
    if zh or len(words) == 1:
        return "、".join(words)
    return ", ".join(words[:-1]) + f" {last} " + words[-1]


# ---------------------------------------------------------------------------
# 1. Which number is largest / smallest / second largest / second smallest.

@KINDS.register("compare")
def _compare(rng: random.Random, zh: bool) -> tuple[str, list[Question]]:
    hi = rng.choice((50, 100, 1000, 10000))
    nums = rng.sample(range(-hi if rng.random() < 0.3 else 1, hi), rng.randint(3, 6))
    ranked = sorted(nums, reverse=True)
    text = f"有以下几个数：{_join(nums, zh)}。" if zh else f"Consider the numbers {_join(nums, zh)}."
    asks = [("最大", "the largest", ranked[0]), ("最小", "the smallest", ranked[-1]),
            ("第二大", "the second largest", ranked[1]), ("第二小", "the second smallest", ranked[-2])]
    return text, [_q(f"哪个数{z}？" if zh else f"Which number is {e}?", v, nums) for z, e, v in asks]


# ---------------------------------------------------------------------------
# 2. Ordering chains: "A is taller than B." -> who is tallest / second / how many above.

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
        pool = [_q(f"谁最{adj}？", order[0], order), _q(f"谁最{inv}？", order[-1], order),
                _q(f"谁第二{adj}？", order[1], order), _q(f"{x}和{y}谁更{adj}？", who, (who_wrong, UNDECIDED[zh])),
                _q(f"有几个人比{p}{adj}？", above, counts)]
    else:
        comp, _, sup, inv_sup = ATTRS_EN[a]
        pool = [_q(f"Who is the {sup}?", order[0], order), _q(f"Who is the {inv_sup}?", order[-1], order),
                _q(f"Who is the second {sup}?", order[1], order),
                _q(f"Who is {comp}, {x} or {y}?", who, (who_wrong, UNDECIDED[zh])),
                _q(f"How many people are {comp} than {p}?", above, counts)]
    return "".join(said) if zh else " ".join(said), pool


# ---------------------------------------------------------------------------
# 3. Small arithmetic: x = a + b * c etc.; wrong options near the answer and the
#    value you get by ignoring precedence.

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


def _near(v: int, *extra: int) -> list[int]:
    return [*extra, v + 1, v - 1, v + 2, v - 2, v + 10, v - 10]


@KINDS.register("arith")
def _arith(rng: random.Random, zh: bool) -> tuple[str, list[Question]]:
    names = ("x", "y")[: rng.randint(1, 2)]
    exprs = [rng.choice(SHAPES)(*(rng.randint(2, 20) for _ in range(4))) for _ in names]
    vals = [evaluate(e) for e in exprs]
    defs = [f"{n} = {show(e)}" for n, e in zip(names, exprs)]
    text = f"设 {'，'.join(defs)}。" if zh else f"Let {_join(defs, zh)}."
    pool = [_q(f"{n} 的值是多少？" if zh else f"What is the value of {n}?", v, _near(v, _left_to_right(e)))
            for n, e, v in zip(names, exprs, vals)]
    if len(names) == 2:
        op = rng.choice("+-")
        v, other = OPS[op](*vals), OPS["-" if op == "+" else "+"](*vals)
        pool.append(_q(f"x {op} y 等于多少？" if zh else f"What is x {op} y?", v,
                       _near(v, other, OPS[op](_left_to_right(exprs[0]), vals[1]))))
    return text, pool


# ---------------------------------------------------------------------------
# 4. Syllogisms over nonsense words (no world knowledge helps), solved by enumerating
#    Venn models: which of the 8 regions of three sets are non-empty, and the region
#    the named individual is in. Every set is taken to be non-empty.

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
            by_verdict.setdefault(v, []).append(_q(q, verdicts[v], verdicts))  # type: ignore[index]
    # balance yes / no / undecided: one question per verdict, verdicts in random order
    return text, [rng.choice(by_verdict[v]) for v in rng.sample(sorted(by_verdict), len(by_verdict))]


# ---------------------------------------------------------------------------
# 5. Number sequences: arithmetic or geometric; the rule is found from the shown terms.

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
    asks = [("下一项是多少？", "What is the next term?", nxt, _near(nxt, other, last, nxt + step, nxt - step)),
            ("再下一项是多少？", "What is the term after the next one?", after, _near(after, nxt, after + step)),
            ("接下来两项之和是多少？", "What is the sum of the next two terms?", nxt + after,
             _near(nxt + after, other + after, nxt + nxt))]
    return text, [_q(z if zh else e, v, w) for z, e, v, w in asks]


# ---------------------------------------------------------------------------
# 6. Boxes: n boxes, n different things, clues until exactly one assignment fits.

COLORS = (("red", "红"), ("green", "绿"), ("blue", "蓝"), ("yellow", "黄"), ("white", "白"), ("black", "黑"),
          ("purple", "紫"), ("orange", "橙"))
THINGS = (("coin", "一枚", "硬币"), ("key", "一把", "钥匙"), ("card", "一张", "卡片"), ("ring", "一枚", "戒指"),
          ("stamp", "一张", "邮票"), ("shell", "一个", "贝壳"), ("button", "一颗", "纽扣"), ("marble", "一颗", "弹珠"))
Clue = tuple[str, int, int, int]  # ("is"|"not", box, thing, -1) or ("either", thing, box1, box2)


def _fits(c: Clue, p: Sequence[int]) -> bool:
    """p[box] = thing."""
    kind, u, v, w = c
    return p[u] == v if kind == "is" else p[u] != v if kind == "not" else u in (p[v], p[w])


def solve_boxes(n: int, clues: Sequence[Clue]) -> list[tuple[int, ...]]:
    return [p for p in permutations(range(n)) if all(_fits(c, p) for c in clues)]


@KINDS.register("boxes")
def _boxes(rng: random.Random, zh: bool) -> tuple[str, list[Question]]:
    n = rng.choice((3, 3, 4))
    colors, things = rng.sample(COLORS, n), rng.sample(THINGS, n)
    hidden = tuple(rng.sample(range(n), n))
    pool: list[Clue] = [("not", b, t, -1) for b in range(n) for t in range(n) if t != hidden[b]]
    pool += [("either", hidden[b], *sorted((b, o))) for b in range(n) for o in range(n) if o != b]
    b = rng.randrange(n)
    pool.append(("is", b, hidden[b], -1))
    rng.shuffle(pool)
    clues: list[Clue] = []
    for c in pool:  # add true clues until one assignment is left ...
        clues.append(c)
        if len(solve_boxes(n, clues)) == 1:
            break
    for c in list(clues):  # ... then drop every clue the others make redundant
        if len(solve_boxes(n, [d for d in clues if d != c])) == 1:
            clues.remove(c)
    (solved,) = solve_boxes(n, clues)
    assert solved == hidden
    col = [c[1] if zh else c[0] for c in colors]
    thing = [t[2] if zh else t[0] for t in things]
    if zh:
        say = {"is": "{c}盒里是{t}", "not": "{c}盒里不是{t}", "either": "{t}在{c}盒或{d}盒里"}
    else:
        say = {"is": "The {c} box holds the {t}.", "not": "The {c} box does not hold the {t}.",
               "either": "The {t} is in the {c} box or the {d} box."}
    said = [say[k].format(c=col[u], t=thing[v], d="") if k != "either" else
            say[k].format(t=thing[u], c=col[v], d=col[w]) for k, u, v, w in clues]
    count = {3: ("三", "three"), 4: ("四", "four")}[n][0 if zh else 1]
    if zh:
        text = (f"有{count}个盒子，分别标记为{_join(col, zh)}。每个盒子里恰好有"
                f"{'、'.join(t[1] + t[2] for t in things[:-1])}或{things[-1][1]}{things[-1][2]}中的一种，"
                f"且各不相同。{'；'.join(said)}。")
    else:
        text = (f"There are {count} boxes, labelled {_join(col, zh)}. Each box holds exactly one of "
                f"{_join(['a ' + t for t in thing], zh, 'or')}, all different. {' '.join(said)}")
    stated = {(u, v) for k, u, v, _ in clues if k == "is"}  # not asked: a clue says it outright
    where = [c + "盒" if zh else c for c in col]
    pool_q = [_q(f"{col[b]}盒里是什么？" if zh else f"What is in the {col[b]} box?", thing[solved[b]], thing)
              for b in range(n) if (b, solved[b]) not in stated]
    pool_q += [_q(f"{thing[t]}在哪个盒子里？" if zh else f"Which box holds the {thing[t]}?",
                  where[solved.index(t)], where) for t in range(n) if (solved.index(t), t) not in stated]
    return text, pool_q


# ---------------------------------------------------------------------------
# Problems, splits, files.

def _options(rng: random.Random, q: Question) -> tuple[list[str], str]:
    """2..5 options: the correct one at a uniformly drawn position among n."""
    wrong = [w for w in dict.fromkeys(q.wrong) if w != q.correct]
    n = rng.randint(2, min(5, len(wrong) + 1))
    options = rng.sample(wrong, n - 1)
    at = rng.randrange(n)
    options.insert(at, q.correct)
    return options, LETTERS[at]


def _problem(rng: random.Random, kind: str, zh: bool) -> dict[str, Any]:
    text, pool = KINDS.get(kind)(rng, zh)
    header = "选择题 {k}：\n" if zh else "Question {k}:\n"
    questions = []
    for k, q in enumerate(rng.sample(pool, rng.randint(1, min(3, len(pool)))), 1):
        options, letter = _options(rng, q)
        questions.append({"question": header.format(k=k) + q.text, "options": options, "answer": letter})
    return {"kind": kind, "problem": text, "questions": questions}


def check_kinds(kinds: Sequence[str] | None) -> tuple[str, ...]:
    """The kinds to draw from (``None`` = every registered kind); unknown names fail with did-you-mean."""
    if kinds is None:
        return tuple(KINDS.names())
    if not kinds:
        raise EnsembleError("no problem kinds given; name at least one of " + ", ".join(KINDS.names()))
    for kind in kinds:
        KINDS.get(kind)  # raises "Unknown problem kind 'x'. Did you mean ...? Available: ..."
    return tuple(dict.fromkeys(kinds))


def generate_problems(n: int, seed: int, *, split: str, exclude: frozenset[str] | set[str] = frozenset(),
                      kinds: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """n problems with ids ``<split>_<00000>``; none repeats a problem text (nor one in ``exclude``).

    Each problem's kind is drawn uniformly from ``kinds`` (default: all registered)."""
    rng = random.Random(f"ensemble-benchmark/{seed}/{split}")
    seen, out, kinds = set(exclude), [], list(check_kinds(kinds))
    while len(out) < n:
        kind, zh = rng.choice(kinds), rng.random() < ZH_SHARE
        for _ in range(MAX_RETRIES):  # retry the same kind and language, so the mix stays as drawn
            row = _problem(rng, kind, zh)
            if row["problem"] not in seen:
                break
        else:
            raise RuntimeError(f"{MAX_RETRIES} duplicate '{kind}' problems in a row after {len(out)}: "
                               "ask for fewer problems")
        seen.add(row["problem"])
        out.append({"id": f"{split}_{len(out):05d}", **row})
    return out


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_benchmark(out_dir: str | Path, *, n_train: int, n_dev: int, n_test: int, seed: int = 0,
                    kinds: Sequence[str] | None = None) -> dict[str, Path]:
    """train/dev/test.jsonl (with answers) and test_questions.jsonl (the test file without them)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    paths: dict[str, Path] = {}
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        rows = generate_problems(n, seed, split=split, exclude=seen, kinds=kinds)
        seen.update(r["problem"] for r in rows)
        paths[split] = _write_jsonl(out_dir / f"{split}.jsonl", rows)
    blank = [{**r, "questions": [{k: v for k, v in q.items() if k != "answer"} for q in r["questions"]]}
             for r in rows]
    paths["test_questions"] = _write_jsonl(out_dir / "test_questions.jsonl", blank)
    return paths


SETTINGS_FILE = "benchmark.json"


def ensure_benchmark(out_dir: str | Path, *, n_train: int, n_dev: int, n_test: int, seed: int = 0,
                     kinds: Sequence[str] | None = None) -> dict[str, Path]:
    """The benchmark in ``out_dir``, generated only when absent or made with other settings.

    ``benchmark.json`` (written last, atomically) records the settings the files were
    made with, so a killed generation or a config that changed the sizes / kinds / seed
    regenerates instead of silently reusing the old files."""
    from ensemble.io import atomic_write_text

    out_dir = Path(out_dir)
    settings = {"n_train": n_train, "n_dev": n_dev, "n_test": n_test, "seed": seed,
                "kinds": list(check_kinds(kinds))}
    marker = out_dir / SETTINGS_FILE
    names = ("train", "dev", "test", "test_questions")
    paths = {name: out_dir / f"{name}.jsonl" for name in names}
    try:
        same = json.loads(marker.read_text(encoding="utf-8")) == settings
    except (OSError, ValueError):
        same = False
    if not (same and all(p.is_file() for p in paths.values())):
        marker.unlink(missing_ok=True)
        paths = write_benchmark(out_dir, n_train=n_train, n_dev=n_dev, n_test=n_test, seed=seed, kinds=kinds)
        atomic_write_text(marker, json.dumps(settings, indent=1))
    return paths
