"""The bundled benchmark: determinism, disjoint splits, and every question re-solved from its text.

The checkers below parse the generated English / Chinese text and solve it with code
written independently of ensemble.data.benchmark (regexes + brute force), so a wrong
answer key, a second correct option or an unparseable template fails here.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from itertools import pairwise, permutations, product
from pathlib import Path
from typing import Any

import pytest
from scipy.stats import chisquare

from ensemble.data.benchmark import (
    KINDS,
    continue_sequence,
    ensure_benchmark,
    evaluate,
    generate_problems,
    show,
    solve_boxes,
    solve_order,
    solve_syllogism,
    write_benchmark,
)
from ensemble.data.readers import LETTERS, read_gold, read_items
from ensemble.errors import EnsembleError
from ensemble.evaluation.submission import validate_submission, write_answers

Row = dict[str, Any]


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    return generate_problems(3000, 7, split="train")


# ---------------------------------------------------------------------------
# Independent checkers: (problem text, question text) -> the correct option text.

def check_compare(problem: str, q: str) -> str:
    nums = sorted((int(x) for x in re.findall(r"-?\d+", problem)), reverse=True)
    for words, value in ((("second largest", "第二大"), nums[1]), (("second smallest", "第二小"), nums[-2]),
                         (("largest", "最大"), nums[0]), (("smallest", "最小"), nums[-1])):
        if any(w in q for w in words):
            return str(value)
    raise AssertionError(q)


MORE = {"taller", "older", "faster", "heavier", "高", "年长", "快", "重"}
LESS = {"shorter", "younger", "slower", "lighter", "矮", "年轻", "慢", "轻"}
SUP_MORE = {"tallest", "oldest", "fastest", "heaviest"}


def check_order(problem: str, q: str) -> str:
    facts = re.findall(r"(\w+) is (\w+) than (\w+)\.", problem) + \
        [(a, word, b) for a, b, word in re.findall(r"(小.)比(小.)(高|矮|年长|年轻|快|慢|重|轻)。", problem)]
    assert len(facts) == problem.count(".") + problem.count("。")  # every sentence is a fact
    edges = {(a, b) if word in MORE else (b, a) for a, word, b in facts}
    people = {p for e in edges for p in e}
    above = {p: {a for a in people if a != p and _reaches(edges, a, p)} for p in people}
    order = sorted(people, key=lambda p: len(above[p]))
    assert sorted(len(v) for v in above.values()) == list(range(len(people)))  # a total order
    if m := re.fullmatch(r"Who is the second (\w+)\?|谁第二(.+)？", q):
        return order[1]
    if m := re.fullmatch(r"Who is the (\w+)\?|谁最(.+)？", q):
        word = m[1] or m[2]
        return order[0] if word in SUP_MORE or word in MORE else order[-1]
    if m := re.fullmatch(r"Who is (\w+), (\w+) or (\w+)\?|(小.)和(小.)谁更(.+)？", q):
        word, x, y = (m[1], m[2], m[3]) if m[1] else (m[6], m[4], m[5])
        hi, lo = sorted((x, y), key=order.index)
        return hi if word in MORE else lo
    if m := re.fullmatch(r"How many people are (\w+) than (\w+)\?|有几个人比(小.)(.+)？", q):
        word, p = (m[1], m[2]) if m[1] else (m[4], m[3])
        return str(len(above[p]) if word in MORE else len(people) - 1 - len(above[p]))
    raise AssertionError(q)


def _reaches(edges: set[tuple[str, str]], a: str, b: str) -> bool:
    todo, seen = [a], set()
    while todo:
        x = todo.pop()
        for u, v in edges:
            if u == x and v not in seen:
                seen.add(v)
                todo.append(v)
    return b in seen


def check_arith(problem: str, q: str) -> str:
    env = {name: eval(expr, {"__builtins__": {}}) for name, expr in re.findall(r"([xy]) = ([-\d+*() ]+\d\)?)", problem)}
    if m := re.fullmatch(r"What is the value of ([xy])\?|([xy]) 的值是多少？", q):
        return str(env[m[1] or m[2]])
    if m := re.fullmatch(r"What is (x [-+] y)\?|(x [-+] y) 等于多少？", q):
        return str(eval(m[1] or m[2], {"__builtins__": {}}, env))
    raise AssertionError(q)


SENTENCES_EN = [(r"All (\w+)s are (\w+)s", "all"), (r"No (\w+)s are (\w+)s", "no"),
                (r"Some (\w+)s are not (\w+)s", "some_not"), (r"Some (\w+)s are (\w+)s", "some"),
                (r"([A-Z]\w+) is not a (\w+)", "is_not"), (r"([A-Z]\w+) is a (\w+)", "is")]
SENTENCES_ZH = [(r"所有(..)都是(..)", "all"), (r"没有(..)是(..)", "no"), (r"有些(..)不是(..)", "some_not"),
                (r"有些(..)是(..)", "some"), (r"(小.)不是(..)", "is_not"), (r"(小.)是(..)", "is")]
ASK = [(r"Is every (\w+) a (\w+)\?|所有(..)都是(..)吗？", "all"),
       (r"Is it true that no (\w+) is a (\w+)\?|是否没有(..)是(..)？", "no"),
       (r"Is at least one (\w+) a (\w+)\?|是否有(..)是(..)？", "some"), (r"Is (\w+) a (\w+)\?|(小.)是(..)吗？", "is")]


def _parse(text: str, patterns: list[tuple[str, str]]) -> tuple[str, str, str]:
    for pattern, form in patterns:
        if m := re.fullmatch(pattern, text):
            a, b = [g for g in m.groups() if g is not None]
            return form, a, b
    raise AssertionError(text)


def _true(form: str, a: str, b: str, world: dict[str, set[int]], me: int) -> bool:
    """world: term -> set of the regions (members) in it; me: the individual's member."""
    if form in ("is", "is_not"):
        return (me in world[b]) == (form == "is")
    both = world[a] & world[b]
    return {"all": world[a] <= world[b], "no": not both, "some": bool(both),
            "some_not": bool(world[a] - world[b])}[form]


def check_syllogism(problem: str, q: str) -> str:
    zh = "。" in problem
    parts = [s for s in re.split(r"(?<=\.) |。", problem) if s]
    premises = [_parse(s.rstrip("."), SENTENCES_ZH if zh else SENTENCES_EN) for s in parts]
    question = _parse(q, ASK)
    terms = sorted({t for f, a, b in premises + [question] for t in ((a, b) if f not in ("is", "is_not") else (b,))})
    terms += ["_pad"] * (3 - len(terms))
    # a member = which of the three terms it belongs to (8 kinds); a world = which kinds exist
    kinds = list(product((0, 1), repeat=3))
    outcomes = set()
    for exists in product((False, True), repeat=8):
        members = [k for k, e in zip(range(8), exists) if e]
        world = {t: {k for k in members if kinds[k][i]} for i, t in enumerate(terms)}
        if any(not world[t] for t in terms):  # every term names a non-empty kind
            continue
        for me in members:
            if all(_true(f, a, b, world, me) for f, a, b in premises):
                outcomes.add(_true(*question, world, me))
    assert outcomes, "inconsistent premises"
    verdicts = ("是", "否", "无法确定") if zh else ("yes", "no", "cannot be decided")
    return verdicts[2] if len(outcomes) == 2 else verdicts[0] if True in outcomes else verdicts[1]


def check_sequence(problem: str, q: str) -> str:
    t = [int(x) for x in re.findall(r"-?\d+", problem)]
    if len({b - a for a, b in pairwise(t)}) == 1:
        nxt, after = t[-1] + (t[-1] - t[-2]), t[-1] + 2 * (t[-1] - t[-2])
    else:
        assert all(t[i + 1] * t[i - 1] == t[i] ** 2 for i in range(1, len(t) - 1))  # geometric
        r = Fraction(t[-1], t[-2])
        nxt, after = t[-1] * r, t[-1] * r * r
    answers = {"What is the next term?": nxt, "下一项是多少？": nxt,
               "What is the term after the next one?": after, "再下一项是多少？": after,
               "What is the sum of the next two terms?": nxt + after, "接下来两项之和是多少？": nxt + after}
    value = answers[q]
    assert value.denominator == 1 if isinstance(value, Fraction) else True
    return str(int(value))


def check_boxes(problem: str, q: str) -> str:
    en = r"There are (\w+) boxes, labelled (.+?)\. Each box holds exactly one of (.+?), all different\. (.+)"
    if m := re.fullmatch(en, problem):
        colors = re.split(r", | and ", m[2])
        things = [t.removeprefix("a ") for t in re.split(r", | or ", m[3])]
        clues = re.split(r"(?<=\.) ", m[4])
        patterns = [(r"The (\w+) box holds the (\w+)\.", "is"), (r"The (\w+) box does not hold the (\w+)\.", "not"),
                    (r"The (\w+) is in the (\w+) box or the (\w+) box\.", "either")]
    else:
        m = re.fullmatch(r"有(.)个盒子，分别标记为(.+?)。每个盒子里恰好有(.+?)中的一种，且各不相同。(.+)。", problem)
        assert m, problem
        colors = m[2].split("、")
        things = [t[2:] for t in re.split(r"、|或", m[3])]  # drop the measure word (一枚, 一把 ...)
        clues = m[4].split("；")
        patterns = [(r"(.)盒里是(.+)", "is"), (r"(.)盒里不是(.+)", "not"), (r"(.+)在(.)盒或(.)盒里", "either")]
    assert len(colors) == len(things) == {"three": 3, "four": 4, "三": 3, "四": 4}[m[1]]
    fits = []
    for clue in clues:
        kind, groups = next((k, g.groups()) for p, k in patterns if (g := re.fullmatch(p, clue)))
        fits.append((kind, groups))

    def ok(assign: dict[str, str]) -> bool:  # color -> thing
        for kind, g in fits:
            if kind == "is" and assign[g[0]] != g[1] or kind == "not" and assign[g[0]] == g[1] or \
                    kind == "either" and g[0] not in (assign[g[1]], assign[g[2]]):
                return False
        return True

    (sol,) = [a for p in permutations(things) if ok(a := dict(zip(colors, p)))]
    if m := re.fullmatch(r"What is in the (\w+) box\?|(.)盒里是什么？", q):
        return sol[m[1] or m[2]]
    if m := re.fullmatch(r"Which box holds the (\w+)\?", q):
        return next(c for c, t in sol.items() if t == m[1])
    m = re.fullmatch(r"(.+)在哪个盒子里？", q)
    return next(c for c, t in sol.items() if t == m[1]) + "盒"


CHECKERS: dict[str, Callable[[str, str], str]] = {
    "compare": check_compare, "order": check_order, "arith": check_arith, "syllogism": check_syllogism,
    "sequence": check_sequence, "boxes": check_boxes}


def test_checkers_cover_every_kind() -> None:
    assert sorted(KINDS.names()) == sorted(CHECKERS)


def test_every_question_has_exactly_one_correct_option(rows: list[Row]) -> None:
    for row in rows:
        zh = row["questions"][0]["question"].startswith("选择题")
        assert 1 <= len(row["questions"]) <= 3
        for k, q in enumerate(row["questions"], 1):
            header = f"选择题 {k}：\n" if zh else f"Question {k}:\n"
            assert q["question"].startswith(header), row
            options = q["options"]
            assert 2 <= len(options) <= 5 and len(set(options)) == len(options), row
            correct = CHECKERS[row["kind"]](row["problem"], q["question"][len(header):])
            assert options.count(correct) == 1 and options[LETTERS.index(q["answer"])] == correct, (row, correct)


def test_mix_of_kinds_languages_and_letters(rows: list[Row]) -> None:
    kinds = Counter(r["kind"] for r in rows)
    assert set(kinds) == set(KINDS.names()) and min(kinds.values()) > 0.12 * len(rows)
    zh = sum(r["questions"][0]["question"].startswith("选择题") for r in rows) / len(rows)
    assert 0.2 <= zh <= 0.3
    by_n: dict[int, Counter[str]] = {}
    for r in rows:
        for q in r["questions"]:
            by_n.setdefault(len(q["options"]), Counter())[q["answer"]] += 1
    assert sorted(by_n) == [2, 3, 4, 5]
    for n, counts in by_n.items():  # the correct letter is uniform over the n positions
        observed = [counts[c] for c in LETTERS[:n]]
        assert chisquare(observed).pvalue > 1e-3, (n, observed)
    verdicts = Counter(q["options"][LETTERS.index(q["answer"])] for r in rows if r["kind"] == "syllogism"
                       for q in r["questions"])
    assert min(verdicts[v] for v in ("yes", "no", "cannot be decided")) > 0.2 * sum(verdicts.values())


# ---------------------------------------------------------------------------
# Files: determinism, disjoint splits, round trips through the readers and the writer.

def test_write_benchmark_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    a = write_benchmark(tmp_path / "a", n_train=300, n_dev=100, n_test=100, seed=3)
    b = write_benchmark(tmp_path / "b", n_train=300, n_dev=100, n_test=100, seed=3)
    c = write_benchmark(tmp_path / "c", n_train=300, n_dev=100, n_test=100, seed=4)
    assert sorted(a) == ["dev", "test", "test_questions", "train"]
    for split in a:
        assert a[split].read_bytes() == b[split].read_bytes()
        assert a[split].read_bytes() != c[split].read_bytes()
    items = {s: read_items(a[s]) for s in a}
    problems = {s: {it.context for it in items[s]} for s in ("train", "dev", "test")}
    assert len({it.meta["problem_id"] for it in items["train"]}) == 300
    assert not problems["train"] & problems["dev"] and not problems["train"] & problems["test"] \
        and not problems["dev"] & problems["test"]
    assert all(it.answer in it.letters for s in ("train", "dev", "test") for it in items[s])
    assert [it.answer for it in items["test_questions"]] == [None] * len(items["test"])
    assert [(it.id, it.question, it.options) for it in items["test_questions"]] == \
        [(it.id, it.question, it.options) for it in items["test"]]
    # the competition round trip: fill test_questions with the gold answers -> test.jsonl
    out = tmp_path / "sub.jsonl"
    write_answers(read_gold(a["test"]), out, template=a["test_questions"])
    assert out.read_bytes() == a["test"].read_bytes()
    assert validate_submission(out, a["test_questions"]) == []


def test_generate_problems_excludes_given_texts() -> None:
    first = generate_problems(50, 0, split="dev")
    again = generate_problems(50, 0, split="dev", exclude={first[0]["problem"]})
    assert first[0]["problem"] not in {r["problem"] for r in again}
    assert [r["id"] for r in first] == [f"dev_{i:05d}" for i in range(50)]
    assert generate_problems(50, 0, split="test") != first


def test_kinds_restrict_the_mix_and_unknown_kinds_are_named() -> None:
    rows = generate_problems(60, 0, split="dev", kinds=["arith", "order"])
    assert {r["kind"] for r in rows} == {"arith", "order"}
    assert generate_problems(20, 0, split="dev", kinds=None) == generate_problems(20, 0, split="dev", kinds=KINDS.names())
    with pytest.raises(EnsembleError, match=r"Unknown problem kind 'ordr'\. Did you mean 'order'\?"):
        generate_problems(5, 0, split="dev", kinds=["ordr"])
    with pytest.raises(EnsembleError, match="no problem kinds given"):
        generate_problems(5, 0, split="dev", kinds=[])


def test_ensure_benchmark_reuses_files_made_with_the_same_settings_only(tmp_path: Path) -> None:
    paths = ensure_benchmark(tmp_path, n_train=20, n_dev=5, n_test=5, seed=1, kinds=["compare"])
    stamp = {k: p.stat().st_mtime_ns for k, p in paths.items()}
    assert json.loads((tmp_path / "benchmark.json").read_text())["kinds"] == ["compare"]
    again = ensure_benchmark(tmp_path, n_train=20, n_dev=5, n_test=5, seed=1, kinds=["compare"])
    assert {k: p.stat().st_mtime_ns for k, p in again.items()} == stamp            # reused, not rewritten
    other = ensure_benchmark(tmp_path, n_train=20, n_dev=5, n_test=7, seed=1, kinds=["arith"])
    assert len(read_gold(other["test"])) > 0 and {json.loads(line)["kind"] for line in
                                                 other["test"].read_text().splitlines()} == {"arith"}
    (tmp_path / "benchmark.json").unlink()                                       # a generation killed midway
    ensure_benchmark(tmp_path, n_train=20, n_dev=5, n_test=7, seed=1, kinds=["arith"])
    assert (tmp_path / "benchmark.json").is_file()


# ---------------------------------------------------------------------------
# The generator's own solvers on spelled-out instances.

def test_solvers_on_small_instances() -> None:
    assert solve_order(["a", "b", "c", "d"], [("c", "d"), ("a", "b"), ("b", "c")]) == ["a", "b", "c", "d"]
    with pytest.raises(AssertionError):
        solve_order(["a", "b", "c"], [("a", "b"), ("a", "c")])  # b vs c unknown
    barbara = [("all", 0, 1), ("all", 1, 2)]
    assert solve_syllogism(barbara, ("all", 0, 2)) == 0
    assert solve_syllogism(barbara, ("all", 2, 0)) == 2
    assert solve_syllogism(barbara, ("some", 0, 2)) == 0  # every term is non-empty
    assert solve_syllogism([("no", 0, 1), ("all", 2, 1)], ("some", 2, 0)) == 1
    assert solve_syllogism([("all", 0, 1), ("is", 0, -1)], ("is", 1, -1)) == 0
    assert solve_syllogism([("all", 0, 1), ("is_not", 1, -1), ("is", 0, -1)], ("is", 2, -1)) is None
    assert continue_sequence([3, 7, 11], 2) == [15, 19]
    assert continue_sequence([48, 24, 12], 2) == [6, 3]
    assert continue_sequence([2, -4, 8], 1) == [-16]
    with pytest.raises(ValueError, match="no arithmetic or geometric rule"):
        continue_sequence([1, 2, 4, 7], 1)
    # the sample puzzle: red, green, blue boxes; coin 0, key 1, card 2; red holds no key, green the card
    assert solve_boxes(3, [("not", 0, 1, -1), ("is", 1, 2, -1)]) == [(0, 2, 1)]
    assert len(solve_boxes(3, [("either", 0, 0, 1)])) == 4


@pytest.mark.parametrize("expr, text, value", [
    (("+", 2, ("*", 3, 4)), "2 + 3 * 4", 14), (("*", ("+", 2, 3), 4), "(2 + 3) * 4", 20),
    (("-", 9, ("-", 5, 2)), "9 - (5 - 2)", 6), (("-", ("-", 9, 5), 2), "9 - 5 - 2", 2),
    (("-", ("+", 1, 2), ("*", 3, 4)), "1 + 2 - 3 * 4", -9)])
def test_expressions_print_and_evaluate(expr: Any, text: str, value: int) -> None:
    assert show(expr) == text and evaluate(expr) == value == eval(text)
