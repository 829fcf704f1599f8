"""The submission writer (template fill / id,answer tables, fallbacks, atomic writes) and validator."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ensemble.data.formats import read_gold
from ensemble.data.items import Item
from ensemble.errors import EnsembleError
from ensemble.evaluation.submission import (
    FALLBACKS,
    SubmissionReport,
    validate_submission,
    write_answers,
)

DATA = Path(__file__).parent / "data"
TEMPLATE = DATA / "logic_nested_test.jsonl"
ONE_LETTER = "write one letter per sub-question"
SAME_ROWS = "(row order, fields and key order must be the template's)"
GOLD = {"sample_000#1": "A", "sample_000#2": "B", "sample_001#1": "C", "sample_002#1": "A", "sample_002#2": "C"}


def test_filling_the_sample_test_file_reproduces_the_train_file(tmp_path: Path) -> None:
    out = tmp_path / "sub.jsonl"
    report = write_answers(GOLD, out, template=TEMPLATE)
    assert report == SubmissionReport(5, 0, (), out)
    # the train sample is the test sample with answers: same bytes, Chinese unescaped
    assert out.read_bytes() == (DATA / "logic_nested_train.jsonl").read_bytes()
    assert validate_submission(out, TEMPLATE) == []


def test_template_order_other_fields_and_chinese_preserved(tmp_path: Path) -> None:
    template = tmp_path / "t.jsonl"
    template.write_text(
        '{"problem": "比较：3、7", "id": 5, "questions": '
        '[{"options": ["3", "7"], "answer": null, "question": "哪个大？", "w": 1}]}\n'
        '\n'
        '{"id": "b", "questions": [{"question": "Q", "options": ["x", "y", "z"]}, '
        '{"question": "R", "options": ["p", "q"]}], "tag": [1, {"k": "v"}]}\n',
        encoding="utf-8")
    out = tmp_path / "out" / "sub.jsonl"
    write_answers({"b#2": "A", "5#1": "B", "b#1": "C"}, out, template=template)
    assert out.read_text(encoding="utf-8") == (
        '{"problem": "比较：3、7", "id": 5, "questions": '
        '[{"options": ["3", "7"], "answer": "B", "question": "哪个大？", "w": 1}]}\n'
        '{"id": "b", "questions": [{"question": "Q", "options": ["x", "y", "z"], "answer": "C"}, '
        '{"question": "R", "options": ["p", "q"], "answer": "A"}], "tag": [1, {"k": "v"}]}\n')
    assert validate_submission(out, template) == []


def test_flat_jsonl_template(tmp_path: Path) -> None:
    template = tmp_path / "flat.jsonl"
    template.write_text('{"id": 1, "question": "q", "options": ["a", "b"]}\n', encoding="utf-8")
    write_answers({"1": "B"}, tmp_path / "o.jsonl", template=template)
    assert (tmp_path / "o.jsonl").read_text() == '{"id": 1, "question": "q", "options": ["a", "b"], "answer": "B"}\n'


def test_id_answer_tables_without_template(tmp_path: Path) -> None:
    items = [Item("q2", "?", ("x", "y")), Item("q1", "?", ("x", "y", "z")), Item("open", "?")]
    write_answers({"q1": "C", "open": "四十二", "q2": "A"}, tmp_path / "a.csv", items=items)
    assert (tmp_path / "a.csv").read_text(encoding="utf-8") == "id,answer\nq2,A\nq1,C\nopen,四十二\n"
    write_answers({"q1": "C", "q2": "A"}, tmp_path / "a.jsonl")  # no items: the answers' own order
    assert (tmp_path / "a.jsonl").read_text() == '{"id": "q1", "answer": "C"}\n{"id": "q2", "answer": "A"}\n'
    assert read_gold(tmp_path / "a.csv") == {"q2": "A", "q1": "C", "open": "四十二"}


# ---------------------------------------------------------------------------
# Errors: nothing is written, an existing file stays as it was.

ERRORS = [
    ({k: v for k, v in GOLD.items() if k != "sample_001#1"},
     r"not written: 1 item\(s\) of .*logic_nested_test\.jsonl have no answer: sample_001#1$"),
    ({**GOLD, "sample_009#1": "A", "x": "B"}, r"2 answer\(s\) for ids not in .*: sample_009#1, x$"),
    ({**GOLD, "sample_002#1": "C", "sample_000#1": "a"},
     r"2 answer\(s\) are not an option letter of their item: sample_000#1='a', sample_002#1='C'"),
    ({**GOLD, "sample_002#1": None, "sample_000#2": None},
     r"2 item\(s\) abstained \(no answer\): sample_000#2, sample_002#1; pass a fallback \(first, random, prior\)"),
    ({}, r"5 item\(s\) of .* have no answer: sample_000#1, sample_000#2, sample_001#1, sample_002#1, sample_002#2$"),
    ({f"z{i}": "A" for i in range(7)} | GOLD, r"7 answer\(s\) for ids not in .*: z0, z1, z2, z3, z4 \(\+2 more\)"),
]


@pytest.mark.parametrize("answers, match", ERRORS)
def test_errors_leave_no_file(tmp_path: Path, answers: dict[str, str | None], match: str) -> None:
    out = tmp_path / "sub.jsonl"
    with pytest.raises(EnsembleError, match=match):
        write_answers(answers, out, template=TEMPLATE)
    assert list(tmp_path.iterdir()) == []


def test_error_keeps_an_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "sub.jsonl"
    out.write_text("old\n")
    with pytest.raises(EnsembleError, match="abstained"):
        write_answers({**GOLD, "sample_001#1": None}, out, template=TEMPLATE)
    assert out.read_text() == "old\n" and list(tmp_path.iterdir()) == [out]


def test_missing_and_mixed_problems_in_one_message(tmp_path: Path) -> None:
    answers = {"sample_000#1": "Z", "extra": "A"}
    with pytest.raises(EnsembleError, match=r"have no answer: sample_000#2.*; 1 answer\(s\) for ids not in .*: extra; "
                                            r"1 answer\(s\) are not an option letter of their item: sample_000#1='Z'"):
        write_answers(answers, tmp_path / "s.jsonl", template=TEMPLATE)


def test_other_errors(tmp_path: Path) -> None:
    with pytest.raises(EnsembleError, match=r"Unknown fallback policy 'prio'\. Did you mean 'prior'\?"):
        write_answers(GOLD, tmp_path / "s.jsonl", template=TEMPLATE, fallback="prio")
    with pytest.raises(EnsembleError, match=r"s\.txt: unknown output type '\.txt'; name the file \.csv or \.jsonl"):
        write_answers({"a": "A"}, tmp_path / "s.txt")
    with pytest.raises(EnsembleError, match=r"fallback 'first' needs each abstained item's options, unknown for a; "
                                            r"give the test file as the template \(or the items\)"):
        write_answers({"a": None}, tmp_path / "s.csv", fallback="first")
    with pytest.raises(EnsembleError, match=r"t\.csv: a template must be the JSONL test file"):
        write_answers({"a": "A"}, tmp_path / "s.csv", template=tmp_path / "t.csv")
    items = [Item("q", "?", ("x", "y"))]
    with pytest.raises(EnsembleError, match=r"1 answer\(s\) are not an option letter of their item: q='C'"):
        write_answers({"q": "C"}, tmp_path / "s.csv", items=items)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------
# Fallback policies. Answered: A once, C twice; abstained: a 3-option and a 2-option item.

PARTIAL = {"sample_000#1": "C", "sample_000#2": None, "sample_001#1": "C", "sample_002#1": None, "sample_002#2": "A"}
FILLS = {
    "first": {"sample_000#2": "A", "sample_002#1": "A"},
    # C is the commonest letter; the 2-option item has no C, so its commonest own letter: A (1 vote)
    "prior": {"sample_000#2": "C", "sample_002#1": "A"},
    # random.Random(0): choice of (A, B, C) then of (A, B), in template order
    "random": {"sample_000#2": "B", "sample_002#1": "B"},
}


@pytest.mark.parametrize("policy", [n for n in FALLBACKS.names() if n != "none"])
def test_fallback_fills(tmp_path: Path, policy: str) -> None:
    out = tmp_path / "sub.jsonl"
    report = write_answers(PARTIAL, out, template=TEMPLATE, fallback=policy)
    assert report == SubmissionReport(5, 2, ("sample_000#2", "sample_002#1"), out)
    assert read_gold(out) == {**PARTIAL, **FILLS[policy]}
    assert validate_submission(out, TEMPLATE) == []


def test_random_fallback_follows_the_seed(tmp_path: Path) -> None:
    items = [Item(f"q{i}", "?", ("a", "b", "c", "d")) for i in range(40)]
    fills = []
    for seed in (0, 0, 1):
        write_answers({it.id: None for it in items}, tmp_path / "r.csv", items=items, fallback="random", seed=seed)
        fills.append(read_gold(tmp_path / "r.csv"))
    assert fills[0] == fills[1] != fills[2]
    rng = random.Random(0)
    assert fills[0] == {it.id: rng.choice("ABCD") for it in items}


def test_prior_ties_go_to_the_first_letter() -> None:
    todo = [Item("t", "?", ("a", "b", "c")), Item("u", "?", ("a", "b", "c"))]
    prior = FALLBACKS.get("prior")
    assert prior(todo, {"x": "C", "y": "B"}, random.Random(0)) == {"t": "B", "u": "B"}
    assert prior(todo, {}, random.Random(0)) == {"t": "A", "u": "A"}


# ---------------------------------------------------------------------------
# Validation of a written file.

def test_validate_submission_finds_problems(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (DATA / "logic_nested_train.jsonl").read_text(encoding="utf-8").splitlines()]
    rows[0]["questions"][1]["answer"] = "D"
    rows[1]["problem"] = "changed"
    del rows[2]["questions"][0]["answer"]
    sub = tmp_path / "sub.jsonl"
    sub.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert validate_submission(sub, TEMPLATE) == [
        f"{sub}:1: field 'questions[1].answer': 'D' is not an option letter (A-C); {ONE_LETTER}",
        f"{sub}:2: differs from {TEMPLATE}:2 beyond the answers {SAME_ROWS}",
        f"{sub}:3: field 'questions[0].answer': None is not an option letter (A-B); {ONE_LETTER}",
    ]
    sub.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:1]), encoding="utf-8")
    assert validate_submission(sub, TEMPLATE)[0] == \
        f"{sub}: 1 rows but {TEMPLATE} has 3; write one row per template row"
    sub.write_text("{oops\n")
    assert validate_submission(sub, TEMPLATE) == [
        (f"{sub}:1: invalid JSON (Expecting property name enclosed in double quotes at column 2); "
         "each line must be one complete JSON object")]


def test_validate_rejects_reordered_rows_and_keys(tmp_path: Path) -> None:
    lines = (DATA / "logic_nested_train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    sub = tmp_path / "sub.jsonl"
    sub.write_text(lines[1] + lines[0] + lines[2], encoding="utf-8")
    assert len(validate_submission(sub, TEMPLATE)) == 2
    row = json.loads(lines[1])
    sub.write_text(lines[0] + json.dumps({"problem": row["problem"], **row}) + "\n" + lines[2], encoding="utf-8")
    assert validate_submission(sub, TEMPLATE) == [f"{sub}:2: differs from {TEMPLATE}:2 beyond the answers {SAME_ROWS}"]
