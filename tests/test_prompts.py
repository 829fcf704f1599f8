"""Prompt templates: exact rendered messages, template checks, answer strings."""
from __future__ import annotations

import pytest

from ensemble.data.items import Item
from ensemble.errors import EnsembleError
from ensemble.prompts import (
    PROMPTS,
    PromptTemplate,
    choice_continuations,
    get_template,
    plain_text,
    render_messages,
    render_text,
    resolve,
    scoring_prefix,
    training_target,
)

# Rows of /work/shared/samples/logic_nested_train.jsonl, flattened as the data reader does.
EN = Item(
    id="sample_001#1",
    question="Question 1:\nWhich number comes first after sorting?",
    options=("4", "9", "2", "none of them"),
    answer="C",
    context="A list holds the numbers 4, 9 and 2. Sorting puts the smallest first.",
)
ZH = Item(
    id="sample_000#2",
    question="选择题 2：\n蓝盒里是什么？",
    options=("硬币", "钥匙", "卡片"),
    answer="B",
    context="有三个盒子，分别标记为红、绿、蓝。红盒里不是钥匙；绿盒里是卡片。",
)
NO_CONTEXT = Item(id="q2", question="Can Tom fly?", options=("yes", "no"), answer="A")
OPEN_ITEM = Item(id="q3", question="What is 6 * 7?", answer="42")

EN_USER = (
    "A list holds the numbers 4, 9 and 2. Sorting puts the smallest first.\n"
    "\n"
    "Question 1:\n"
    "Which number comes first after sorting?\n"
    "\n"
    "A. 4\n"
    "B. 9\n"
    "C. 2\n"
    "D. none of them\n"
    "\n"
    'Answer with the letter of the correct option. End your reply with a line of the form '
    '"Answer: X", where X is one of A, B, C, D.'
)
ZH_USER = (
    "有三个盒子，分别标记为红、绿、蓝。红盒里不是钥匙；绿盒里是卡片。\n"
    "\n"
    "选择题 2：\n"
    "蓝盒里是什么？\n"
    "\n"
    "A. 硬币\n"
    "B. 钥匙\n"
    "C. 卡片\n"
    "\n"
    "请选出正确的选项。回答的最后一行写成“答案是：X”，其中 X 是 A, B, C 中的一个字母。"
)


def test_mc_renders_english_item_exactly() -> None:
    assert render_messages(get_template("mc"), EN) == ({"role": "user", "content": EN_USER},)


def test_mc_zh_renders_chinese_item_exactly() -> None:
    assert render_messages(get_template("mc_zh"), ZH) == ({"role": "user", "content": ZH_USER},)


def test_empty_context_leaves_no_gap() -> None:
    (message,) = render_messages(get_template("mc"), NO_CONTEXT)
    assert message["content"] == (
        "Can Tom fly?\n\nA. yes\nB. no\n\nAnswer with the letter of the correct option. End your "
        'reply with a line of the form "Answer: X", where X is one of A, B.'
    )


def test_open_and_plain_render_exactly() -> None:
    assert render_messages(get_template("open"), OPEN_ITEM) == ({
        "role": "user",
        "content": 'What is 6 * 7?\n\nSolve the problem. End your reply with a line of the form '
                   '"The answer is X", where X is the final answer.',
    },)
    assert render_messages(get_template("plain"), EN) == ({"role": "user", "content": EN.question},)


@pytest.mark.parametrize("item, expected", [
    (EN, "mc"),
    (ZH, "mc_zh"),
    (NO_CONTEXT, "mc"),
    (Item(id="c", question="Which box?", options=("红", "blue"), context=""), "mc_zh"),  # option only
    (Item(id="d", question="Which box?", options=("a", "b"), context="盒子"), "mc_zh"),  # context only
    (Item(id="e", question="Ünïcödé — «quotes»?", options=("é", "ß")), "mc"),  # non-ASCII, not CJK
])
def test_mc_auto_picks_the_language(item: Item, expected: str) -> None:
    auto = get_template("mc_auto")
    chosen = resolve(auto, item)
    assert (chosen.user, chosen.answer_prefix) == (get_template(expected).user, get_template(expected).answer_prefix)
    assert render_messages(auto, item) == render_messages(get_template(expected), item)
    assert scoring_prefix(auto, item) == get_template(expected).answer_prefix


def test_mc_short_auto_is_the_bare_question_in_either_language() -> None:
    short = get_template("mc_short_auto")
    for item, prefix in ((EN, "Answer:"), (ZH, "答案是：")):
        system, msg = render_messages(short, item)   # an empty system message: no default one
        assert system == {"role": "system", "content": ""} and msg["role"] == "user"
        assert msg["content"] == f"{item.context}\n\n{item.question}\n\n" + "\n".join(
            f"{letter}. {text}" for letter, text in zip(item.letters, item.options))
        assert scoring_prefix(short, item) == prefix
        assert len(msg["content"]) < len(render_messages(get_template("mc_auto"), item)[-1]["content"])


def test_custom_template_with_system_message_and_text_prompt() -> None:
    t = get_template({"name": "short", "system": "You answer {first_letter}-{last_letter}.",
                      "user": "{question}\n{options}", "answer_prefix": "Final:"})
    assert t == PromptTemplate(name="short", user="{question}\n{options}",
                               system="You answer {first_letter}-{last_letter}.", answer_prefix="Final:")
    assert render_messages(t, NO_CONTEXT) == (
        {"role": "system", "content": "You answer A-B."},
        {"role": "user", "content": "Can Tom fly?\nA. yes\nB. no"},
    )
    assert render_text(t, NO_CONTEXT) == "You answer A-B.\n\nCan Tom fly?\nA. yes\nB. no\n\n"
    assert render_text(t, NO_CONTEXT) + scoring_prefix(t, NO_CONTEXT) + " A" == (
        "You answer A-B.\n\nCan Tom fly?\nA. yes\nB. no\n\nFinal: A")


def test_plain_text_skips_empty_messages() -> None:
    """A model without a chat template reads this (``ensemble.tokens``): an empty system
    message (``mc_short``) must not leave a blank line before the question."""
    system, user = render_messages(get_template("mc_short"), NO_CONTEXT)
    assert system == {"role": "system", "content": ""}
    assert plain_text((system, user)) == "Can Tom fly?\n\nA. yes\nB. no\n\n"
    assert render_text(get_template("mc_short"), NO_CONTEXT) == plain_text((user,))


def test_literal_braces_and_cjk_variant_from_config() -> None:
    t = get_template({"user": "{{json}} {question}", "cjk": {"user": "问：{question}", "answer_prefix": "答："}})
    assert t.name == "custom"
    assert render_messages(t, NO_CONTEXT)[0]["content"] == "{json} Can Tom fly?"
    assert render_messages(t, ZH)[0]["content"] == "问：选择题 2：\n蓝盒里是什么？"
    assert training_target(t, ZH, "letter") == "答： B"


@pytest.mark.parametrize("name", PROMPTS.names())
def test_every_builtin_renders_question_and_no_placeholder(name: str) -> None:
    item = OPEN_ITEM if name in ("open", "plain") else EN
    messages = render_messages(get_template(name), item)
    assert messages[-1]["role"] == "user"
    assert "Which number comes first" in messages[-1]["content"] or "6 * 7" in messages[-1]["content"]
    for m in messages:
        assert "{" not in m["content"] and "}" not in m["content"]


# --- errors --------------------------------------------------------------------------


def test_bad_field_fails_at_construction_naming_valid_fields() -> None:
    with pytest.raises(EnsembleError, match=r"prompt template 'mine', field 'user': unknown field "
                                            r"\{answer\}\. Valid fields: \{context\}, \{question\}, "
                                            r"\{options\}, \{letters\}, \{first_letter\}, \{last_letter\}"):
        get_template({"name": "mine", "user": "{question} {answer}"})
    with pytest.raises(EnsembleError, match=r"field 'system': unknown field \{\}"):
        PromptTemplate(name="x", user="{question}", system="Positional {}")


def test_unbalanced_brace_and_empty_user() -> None:
    with pytest.raises(EnsembleError, match=r"field 'user': .*write \{\{ and \}\} for literal braces"):
        get_template({"user": "{question"})
    with pytest.raises(EnsembleError, match=r"prompt template 'custom', field 'user': expected a non-empty "
                                            r"text pattern, got ''"):
        get_template({"user": ""})
    with pytest.raises(EnsembleError, match=r"field 'answer_prefix': expected text, got int"):
        get_template({"user": "{question}", "answer_prefix": 5})


def test_mapping_errors() -> None:
    with pytest.raises(EnsembleError, match=r"prompt template 'custom': missing field 'user'"):
        get_template({"system": "hi"})
    with pytest.raises(EnsembleError, match=r"Unknown key in prompt template 'custom': 'usr'\. "
                                            r"Did you mean 'user'\?"):
        get_template({"usr": "{question}"})
    with pytest.raises(EnsembleError, match=r"a prompt template is a name \(mc, .*\) or a mapping with "
                                            r"'user', got int"):
        get_template(3)  # type: ignore[arg-type]


def test_unknown_name_with_origin() -> None:
    with pytest.raises(EnsembleError, match=r"^run\.yaml: field 'prompt': Unknown prompt template 'mc_zn'\. "
                                            r"Did you mean 'mc_zh'\?"):
        get_template("mc_zn", origin="run.yaml: field 'prompt'")


def test_option_fields_on_open_item() -> None:
    with pytest.raises(EnsembleError, match=r"prompt template 'mc', field 'user': item 'q3' has no options "
                                            r"to fill \{options\}; use the 'open' template"):
        render_messages(get_template("mc"), OPEN_ITEM)


# --- answer strings ---------------------------------------------------------------------


def test_choice_continuations() -> None:
    assert choice_continuations(EN, "cloze") == (" 4", " 9", " 2", " none of them")
    assert choice_continuations(EN, "letter") == (" A", " B", " C", " D")
    assert choice_continuations(ZH, "cloze") == (" 硬币", " 钥匙", " 卡片")
    assert choice_continuations(OPEN_ITEM, "cloze") == ()  # open items: nothing to score


@pytest.mark.parametrize("template, item, mode, expected", [
    ("mc", EN, "letter", "Answer: C"),
    ("mc", EN, "cloze", "Answer: 2"),
    ("mc_zh", ZH, "letter", "答案是： B"),
    ("mc_zh", ZH, "cloze", "答案是： 钥匙"),
    ("mc_auto", ZH, "letter", "答案是： B"),
    ("mc_auto", EN, "cloze", "Answer: 2"),
    ("plain", NO_CONTEXT, "letter", " A"),
    ("open", OPEN_ITEM, "cloze", "The answer is 42"),
    ("mc_short_auto", ZH, "cloze", "答案是： 钥匙"),
    ("mc_short_auto", EN, "cloze", "Answer: 2"),
])
def test_training_target_spelled_out(template: str, item: Item, mode: str, expected: str) -> None:
    assert training_target(get_template(template), item, mode) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["letter", "cloze"])
@pytest.mark.parametrize("template", ["mc", "mc_zh", "mc_auto", "mc_short_auto", "plain"])
@pytest.mark.parametrize("item", [EN, ZH, NO_CONTEXT], ids=["en", "zh", "no_context"])
def test_training_target_is_prefix_plus_gold_continuation(mode: str, template: str, item: Item) -> None:
    t = get_template(template)
    gold = item.letters.index(item.answer)  # type: ignore[arg-type]
    assert training_target(t, item, mode) == scoring_prefix(t, item) + choice_continuations(item, mode)[gold]  # type: ignore[arg-type]


def test_answer_string_errors() -> None:
    with pytest.raises(EnsembleError, match=r"Unknown scoring mode 'clozed'\. Did you mean 'cloze'\?"):
        choice_continuations(EN, "clozed")  # type: ignore[arg-type]
    with pytest.raises(EnsembleError, match=r"item 'x': field 'answer' is empty; training needs"):
        training_target(get_template("mc"), Item(id="x", question="q", options=("a", "b")), "letter")
    with pytest.raises(EnsembleError, match=r"item 'x': field 'answer' is 'E', not one of the option "
                                            r"letters A, B"):
        training_target(get_template("mc"), Item(id="x", question="q", options=("a", "b"), answer="E"),
                        "cloze")
