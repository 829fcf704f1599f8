"""Boxes: n boxes, n different things, clues until exactly one assignment fits."""
from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import permutations

from ensemble.data.benchmark.kinds import KINDS, Question, candidate, join_words

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
    pool += [("either", hidden[b], min(b, o), max(b, o)) for b in range(n) for o in range(n) if o != b]
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
        text = (f"有{count}个盒子，分别标记为{join_words(col, zh)}。每个盒子里恰好有"
                f"{'、'.join(t[1] + t[2] for t in things[:-1])}或{things[-1][1]}{things[-1][2]}中的一种，"
                f"且各不相同。{'；'.join(said)}。")
    else:
        text = (f"There are {count} boxes, labelled {join_words(col, zh)}. Each box holds exactly one of "
                f"{join_words(['a ' + t for t in thing], zh, 'or')}, all different. {' '.join(said)}")
    stated = {(u, v) for k, u, v, _ in clues if k == "is"}  # not asked: a clue says it outright
    where = [c + "盒" if zh else c for c in col]
    pool_q = [candidate(f"{col[b]}盒里是什么？" if zh else f"What is in the {col[b]} box?", thing[solved[b]], thing)
              for b in range(n) if (b, solved[b]) not in stated]
    pool_q += [candidate(f"{thing[t]}在哪个盒子里？" if zh else f"Which box holds the {thing[t]}?",
                  where[solved.index(t)], where) for t in range(n) if (solved.index(t), t) not in stated]
    return text, pool_q
