"""Answer extraction: literal reply -> answer tables, steps, pipelines, errors."""
from __future__ import annotations

import pytest

from ensemble.data.items import Item
from ensemble.errors import EnsembleError
from ensemble.extraction import (
    PRESETS,
    STEPS,
    Extractor,
    StepFactory,
    build_extractor,
    build_step,
    extract_all,
)
from ensemble.prompts import get_template, training_target

CITIES = Item(id="cities", question="Capital of France?", options=("London", "Paris", "Rome"), answer="B")
TWO = Item(id="two", question="Capital of France?", options=("London", "Paris"), answer="B")
BOXES = Item(id="boxes", question="蓝盒里是什么？", options=("硬币", "钥匙", "卡片"), answer="B")
NUMS = Item(id="nums", question="Which comes first?", options=("4", "9", "2", "none of them"), answer="C")
REDS = Item(id="reds", question="Colour?", options=("red", "dark red", "blue"), answer="B")
OPEN = Item(id="open", question="What is 6 * 7?", answer="42")

LETTER_CASES = [
    # explicit answer markers: the last one wins
    ("I think A... no, the answer is C", CITIES, "C"),
    ("Answer: B", CITIES, "B"),
    ("The answer is (B).", CITIES, "B"),
    ("the correct answer is option C", CITIES, "C"),
    ("**Answer:** C", CITIES, "C"),
    ("Answer: **A**", CITIES, "A"),
    ("Final answer - A", CITIES, "A"),
    ("The answer is B. Option A is wrong because London is in England.", CITIES, "B"),
    ("Answer: A\nWait, that is wrong.\nAnswer: C", CITIES, "C"),
    ("The final answer is $\\boxed{C}$.", CITIES, "C"),
    ("答案是：B", BOXES, "B"),
    ("答案：C", BOXES, "C"),
    ("红盒里是硬币，所以答案是 A。", BOXES, "A"),
    ("答案应该是B项", BOXES, "B"),
    ("Answer: E", CITIES, None),  # not a letter of a 3-option item
    ("(A) looks right, but the final answer: D", CITIES, None),  # invalid final answer is not replaced
    ("answer: b", CITIES, "B"),  # lowercase, clearly marked
    ("the answer is (c)", CITIES, "C"),
    ("Answer: a bird would know", CITIES, None),  # lowercase followed by words: an article
    # an option's text after a marker, or the only option mentioned
    ("The answer is Paris", TWO, "B"),
    ("The answer is Paris, not London.", CITIES, "B"),
    ("Answer: Rome", CITIES, "C"),
    ("答案是钥匙。", BOXES, "B"),
    ("The answer is 2", NUMS, "C"),
    ("i'd say   PARIS.", CITIES, "B"),
    ("dark red", REDS, "B"),  # longest option match wins
    ("It is dark   Red, I believe", REDS, "B"),
    ("London or Paris, hard to say", CITIES, None),  # two options: ambiguous
    # formatted letters
    ("**B**", CITIES, "B"),
    ("B.", CITIES, "B"),
    ("(B)", CITIES, "B"),
    ("B", CITIES, "B"),
    ("  C  \n", CITIES, "C"),
    ("Let me check (A) and (C): (C) fits.", CITIES, "C"),
    ("Reasoning about each option...\n\nB) Paris", CITIES, "B"),
    ("I pick option A", CITIES, "A"),
    ("选C", BOXES, "C"),
    # nothing to read
    ("", CITIES, None),
    ("   \n", CITIES, None),
    ("Neither", TWO, None),
    ("b", CITIES, None),  # a bare lowercase letter is not clearly marked
    ("I don't know", CITIES, None),
    ("Answer: B", OPEN, None),  # open item: no letters at all
]


@pytest.mark.parametrize("text, item, expected", LETTER_CASES)
def test_letter(text: str, item: Item, expected: str | None) -> None:
    assert build_step("letter")(text, item) == expected


@pytest.mark.parametrize("text, item, expected", LETTER_CASES)
def test_letter_ignores_surrounding_whitespace(text: str, item: Item, expected: str | None) -> None:
    assert build_step("letter")("\n  " + text + "\n\n", item) == expected


@pytest.mark.parametrize("template", ["mc", "mc_zh", "mc_auto"])
@pytest.mark.parametrize("mode", ["letter", "cloze"])
@pytest.mark.parametrize("item", [CITIES, BOXES, NUMS, REDS], ids=lambda i: i.id)
def test_letter_reads_every_training_target(template: str, mode: str, item: Item) -> None:
    target = training_target(get_template(template), item, mode)  # type: ignore[arg-type]
    assert build_extractor("mc").extract(target, item) == item.answer


NUMBER_CASES = [
    ("#### 42", "42"),
    ("The answer is 1,000", "1000"),
    ("The answer is 1,000.", "1000"),
    ("-3.50", "-3.5"),
    ("1/2", "1/2"),
    ("So x = -1/2.", "-1/2"),
    ("It costs $1,234.50 in total.", "1234.5"),
    ("The rate is 50%", "50"),
    ("1000.00", "1000"),
    ("007", "7"),
    ("-0.0", "0"),
    (".5", "0.5"),
    ("I have 3 apples and 5 pears", "5"),  # last number as fallback
    ("The answer is 5 apples, not 6", "5"),  # first number after the marker
    ("6 * 7 = 42\n#### 42\nCheck: 6 * 7 = 42 by 2 methods", "42"),
    ("答案是 12。", "12"),
    ("答案：１２", "12"),  # full-width digits
    ("\\boxed{-7}", "-7"),
    ("The answer is below.\nIt is 8", "8"),  # marker line without a number: fall back
    ("1,2,3", "3"),  # not a thousands separator
    ("1,000,000 ways", "1000000"),
    ("no number here", None),
    ("", None),
]


@pytest.mark.parametrize("text, expected", NUMBER_CASES)
def test_number(text: str, expected: str | None) -> None:
    assert build_extractor("number").extract(text, OPEN) == expected


@pytest.mark.parametrize("spec, text, expected", [
    ("regex:Final: (\\w+)", "Final: A ... Final: C", "C"),  # first group of the LAST match
    ("regex:(\\d+)-(\\d+)", "1-2 and 3-4", "3"),
    ("regex:Final: (\\w+)", "nothing final", None),
    ("regex:(?i)choice=(x)?y", "CHOICE=y", None),  # the group did not take part
    ("regex:a:(b)", "a:b", "b"),  # only the first ':' separates name and argument
    ("take:first", "\n  first  \nsecond\n\n", "first"),
    ("take:last", "first\nsecond  \n\n", "second"),
    ("take:last", " \n ", None),
    ("first_line", "\n\nHello world\nmore", "Hello world"),
    ("strip", "  Paris \n", "Paris"),
    ("lower", "PaRiS", "paris"),
    ("normalize", "  «Ｐａｒｉｓ»!  ", "paris"),
    ("normalize", "New   York.", "new york"),
    ("normalize", "...", None),  # nothing left: ABSTAIN
    ("option_text", "paris", "B"),
    ("option_text", " The capital is Rome ", "C"),
    ("option_text", "Berlin", None),
])
def test_steps(spec: str, text: str, expected: str | None) -> None:
    assert Extractor([spec]).extract(text, CITIES) == expected


@pytest.mark.parametrize("name", STEPS.names())
def test_every_step_returns_text_or_none(name: str) -> None:
    entry = STEPS.get(name)
    spec = {"regex": "regex:(\\w+)", "take": "take:last"}.get(name, name) if isinstance(entry, StepFactory) else name
    step = build_step(spec)
    for text in ("", "Answer: B", "答案是：钥匙", "#### 42\n"):
        for item in (CITIES, BOXES, OPEN):
            out = step(text, item)
            assert out is None or isinstance(out, str)


@pytest.mark.parametrize("steps, text, expected", [
    (["regex:Final answer: (.*)", "option_text"], "Thinking...\nFinal answer: paris", "B"),
    (["regex:Final answer: (.*)", "option_text"], "Final answer: Berlin", None),
    (["take:last", "letter"], "Answer: A\n(C)", "C"),
    (["first_line", "letter"], "Answer: A\nAnswer: C", "A"),
    (["strip", "normalize"], "  Paris!\n", "paris"),
    (["strip"], "   ", None),  # empty result: ABSTAIN
])
def test_pipelines(steps: list[str], text: str, expected: str | None) -> None:
    assert Extractor(steps).extract(text, CITIES) == expected


def test_pipeline_stops_at_the_first_none(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setitem(STEPS._items, "record", lambda text, item: calls.append(text) or text)
    assert Extractor(["regex:X=(\\d)", "record"]).extract("no match", CITIES) is None
    assert calls == []
    assert Extractor(["regex:X=(\\d)", "record"]).extract("X=7", CITIES) == "7"
    assert calls == ["7"]


@pytest.mark.parametrize("name, steps", [("mc", ("letter",)), ("number", ("number",)),
                                         ("text", ("strip", "normalize"))])
def test_presets(name: str, steps: tuple[str, ...]) -> None:
    assert name in PRESETS.names()
    assert build_extractor(name) == Extractor(steps)


def test_build_extractor_forms() -> None:
    assert build_extractor("letter").steps == ("letter",)
    assert build_extractor("regex:(\\d+)").steps == ("regex:(\\d+)",)
    assert build_extractor(["strip", "lower"]) == Extractor(("strip", "lower"))
    assert Extractor("letter").steps == ("letter",)  # a lone string is one step, not characters
    mc = build_extractor("mc")
    assert build_extractor(mc) is mc


def test_extract_all_counts_unparseable() -> None:
    answers, n_bad = extract_all(["Answer: B", "no idea", None, "答案是：C"],
                                 [CITIES, CITIES, CITIES, BOXES], build_extractor("mc"))
    assert answers == ["B", None, None, "C"]
    assert n_bad == 2
    with pytest.raises(ValueError, match="2 texts for 1 items"):
        extract_all(["A", "B"], [CITIES], build_extractor("mc"))


# --- errors --------------------------------------------------------------------------


def test_unknown_step_did_you_mean() -> None:
    with pytest.raises(EnsembleError, match=r"Unknown extraction step 'lettr'\. Did you mean 'letter'\? "
                                            r"Available: letter, number, "):
        Extractor(["strip", "lettr"])


def test_unknown_extractor_did_you_mean_with_origin() -> None:
    with pytest.raises(EnsembleError, match=r"^run\.yaml: field 'extract': Unknown extractor 'numbr'\. "
                                            r"Did you mean 'number'\? Available: mc, number, text, letter"):
        build_extractor("numbr", origin="run.yaml: field 'extract'")


def test_regex_errors() -> None:
    with pytest.raises(EnsembleError, match=r"extraction step 'regex:\(a': the pattern does not compile "
                                            r"\(missing \), unterminated subpattern.*\); fix the regular"):
        build_extractor(["regex:(a"])
    with pytest.raises(EnsembleError, match=r"extraction step 'regex:Answer: \\w': the pattern has no "
                                            r"group; put \( \) around the answer"):
        build_extractor(["regex:Answer: \\w"])


def test_argument_errors() -> None:
    with pytest.raises(EnsembleError, match=r"extraction step 'regex' needs an argument; write "
                                            r"'regex:<pattern with one \( \) group>'"):
        build_extractor(["regex"])
    with pytest.raises(EnsembleError, match=r"extraction step 'letter' takes no argument, got "
                                            r"'letter:x'; write 'letter'"):
        build_extractor(["letter:x"])
    with pytest.raises(EnsembleError, match=r"extraction step 'take:middle': the argument must be "
                                            r"'first' or 'last'"):
        build_extractor("take:middle")


def test_pipeline_shape_errors() -> None:
    with pytest.raises(EnsembleError, match=r"an extractor needs at least one step, e\.g\. \['letter'\]"):
        build_extractor([])
    with pytest.raises(EnsembleError, match=r"an extraction step is a name like 'letter' or "
                                            r"'regex:<pattern>', got 3"):
        build_extractor(["letter", 3])  # type: ignore[list-item]
