"""Prompt templates: an ``Item`` -> chat messages, a plain prompt, and answer strings.

A template is four strings. ``user`` / ``system`` are ``str.format`` patterns over the
fields in ``FIELDS``; ``answer_prefix`` is literal text the assistant's answer starts
with ("Answer:", "答案是："). The same strings serve generation, scoring and training:

    scoring prompt  = chat-templated messages + assistant turn start + answer_prefix
    continuation    = " " + option text (cloze) or " " + letter (letter)
    training target = answer_prefix + continuation of the gold option

so a variant is trained on exactly the string it is later scored on. The separator
(``SEPARATOR = " "``) is added in ``choice_continuations`` and ``training_target`` reuses it.

Template lines whose fields are all empty (``{context}`` for an item without
context) are dropped together with the blank line after them, so optional fields
leave no gap.
"""
from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from ensemble.data.items import Item
from ensemble.errors import EnsembleError
from ensemble.registry import Registry, unknown_name

FIELDS = ("context", "question", "options", "letters", "first_letter", "last_letter")
_OPTION_FIELDS = ("options", "letters", "first_letter", "last_letter")
MODES = ("cloze", "letter")
SEPARATOR = " "  # between the answer prefix and the answer: "Answer:" + " " + "B"
Mode = Literal["cloze", "letter"]
Message = dict[str, str]

# Han ideographs (CJK unified, extension A, compatibility): the competition files mix
# Chinese and English items, and any Han character marks an item as Chinese.
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def _fields_in(pattern: str) -> list[str]:
    """Names of the ``{fields}`` in a format pattern; ValueError on unbalanced braces."""
    return [name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None]


@dataclass(frozen=True)
class PromptTemplate:
    """How to ask one item. ``cjk`` (optional) is the template used instead when the
    item's text contains Chinese characters (that is how ``mc_auto`` works)."""

    name: str
    user: str
    system: str | None = None
    answer_prefix: str = ""
    cjk: PromptTemplate | None = None

    def __post_init__(self) -> None:
        for key in ("user", "system"):
            pattern = getattr(self, key)
            if pattern is None and key == "system":
                continue
            _check_pattern(self.name, key, pattern)
        if not isinstance(self.answer_prefix, str):
            raise EnsembleError(f"prompt template '{self.name}', field 'answer_prefix': expected text, "
                                f"got {type(self.answer_prefix).__name__}; quote it in the config")


def _check_pattern(name: str, key: str, pattern: object) -> None:
    where = f"prompt template '{name}', field '{key}'"
    if not isinstance(pattern, str) or (key == "user" and not pattern.strip()):
        raise EnsembleError(f"{where}: expected a non-empty text pattern, got {pattern!r}; "
                            "write the prompt with {question} and friends")
    valid = ", ".join("{" + f + "}" for f in FIELDS)
    try:
        names = _fields_in(pattern)
    except ValueError as e:
        raise EnsembleError(f"{where}: {e}; write {{{{ and }}}} for literal braces") from None
    for field_name in names:
        if field_name not in FIELDS:
            shown = "{" + field_name + "}"
            raise EnsembleError(f"{where}: unknown field {shown}. Valid fields: {valid} "
                                "(write {{ and }} for literal braces)")


# --- built-in templates -----------------------------------------------------------

PROMPTS: Registry[PromptTemplate] = Registry("prompt template")

MC = PromptTemplate(
    name="mc",
    user=("{context}\n\n{question}\n\n{options}\n\n"
          "Answer with the letter of the correct option. End your reply with a line of the "
          'form "Answer: X", where X is one of {letters}.'),
    answer_prefix="Answer:",
)
MC_ZH = PromptTemplate(
    name="mc_zh",
    user=("{context}\n\n{question}\n\n{options}\n\n"
          "请选出正确的选项。回答的最后一行写成“答案是：X”，其中 X 是 {letters} 中的一个字母。"),
    answer_prefix="答案是：",
)
OPEN = PromptTemplate(
    name="open",
    user=("{context}\n\n{question}\n\n"
          'Solve the problem. End your reply with a line of the form "The answer is X", '
          "where X is the final answer."),
    answer_prefix="The answer is",
)
PLAIN = PromptTemplate(name="plain", user="{question}")
# Compact multiple choice for cloze scoring / training: no instruction line (the model
# is scored on the option text after the answer prefix, never asked to write a letter)
# and an empty system message (else chat templates such as SmolLM2's insert their
# default one; SmolLM2's is 16 tokens: 94 -> 78 tokens per row on the quickstart's
# dev split). Training and scoring cost scale with tokens.
SHORT = PromptTemplate(name="mc_short", user="{context}\n\n{question}\n\n{options}", system="",
                       answer_prefix="Answer:")
SHORT_ZH = PromptTemplate(name="mc_short_zh", user="{context}\n\n{question}\n\n{options}", system="",
                          answer_prefix="答案是：")

for _t in (MC, MC_ZH, OPEN, PLAIN, SHORT, SHORT_ZH):
    PROMPTS.add(_t.name, _t)
PROMPTS.add("mc_auto", PromptTemplate(name="mc_auto", user=MC.user, system=MC.system,
                                      answer_prefix=MC.answer_prefix, cjk=MC_ZH))
PROMPTS.add("mc_short_auto", PromptTemplate(name="mc_short_auto", user=SHORT.user, system="",
                                            answer_prefix=SHORT.answer_prefix, cjk=SHORT_ZH))

_TEMPLATE_KEYS = ("name", "user", "system", "answer_prefix", "cjk")


def get_template(spec: str | Mapping[str, object] | PromptTemplate, *,
                 origin: str | None = None) -> PromptTemplate:
    """A template from a registered name, a config mapping, or a template.

    The mapping (e.g. from YAML) has ``user`` and optionally ``system``,
    ``answer_prefix``, ``name`` and ``cjk`` (a name or another mapping).
    ``origin`` (e.g. "run.yaml: field 'prompt'") prefixes error messages.
    """
    try:
        if isinstance(spec, PromptTemplate):
            return spec
        if isinstance(spec, str):
            return PROMPTS.get(spec)
        if isinstance(spec, Mapping):
            return _from_mapping(spec)
        raise EnsembleError(f"a prompt template is a name ({', '.join(PROMPTS.names())}) or a mapping "
                            f"with 'user', got {type(spec).__name__}")
    except EnsembleError as e:
        if origin is None:
            raise
        raise EnsembleError(f"{origin}: {e}") from None


def _from_mapping(spec: Mapping[str, object]) -> PromptTemplate:
    name = str(spec.get("name", "custom"))
    for key in spec:
        if key not in _TEMPLATE_KEYS:
            raise EnsembleError(unknown_name(f"key in prompt template '{name}':", key, _TEMPLATE_KEYS))
    if "user" not in spec:
        raise EnsembleError(f"prompt template '{name}': missing field 'user'; add the user message "
                            "pattern, e.g. user: \"{question}\\n\\n{options}\"")
    cjk = spec.get("cjk")
    return PromptTemplate(
        name=name,
        user=spec["user"],  # type: ignore[arg-type]  # checked in __post_init__
        system=spec.get("system"),  # type: ignore[arg-type]
        answer_prefix=spec.get("answer_prefix", ""),  # type: ignore[arg-type]
        cjk=None if cjk is None else get_template(cjk),  # type: ignore[arg-type]
    )


# --- rendering -----------------------------------------------------------------------


def resolve(template: PromptTemplate, item: Item) -> PromptTemplate:
    """The template actually used for ``item`` (``cjk`` variant for Chinese text)."""
    if template.cjk is not None and _CJK.search(" ".join((item.context, item.question, *item.options))):
        return resolve(template.cjk, item)
    return template


def _values(item: Item) -> dict[str, str]:
    letters = item.letters
    return {
        "context": item.context.strip(),
        "question": item.question.strip(),
        "options": "\n".join(f"{letter}. {text}" for letter, text in zip(letters, item.options)),
        "letters": ", ".join(letters),
        "first_letter": letters[0] if letters else "",
        "last_letter": letters[-1] if letters else "",
    }


def _fill(template: PromptTemplate, key: str, pattern: str, values: dict[str, str], item: Item) -> str:
    """Format ``pattern`` line by line, dropping lines that only held empty fields."""
    out: list[str] = []
    drop_blank = False
    for line in pattern.split("\n"):
        names = _fields_in(line)
        needs_options = [n for n in names if n in _OPTION_FIELDS]
        if needs_options and not item.options:
            raise EnsembleError(f"prompt template '{template.name}', field '{key}': item '{item.id}' has "
                                "no options to fill {" + needs_options[0] + "}; use the 'open' template "
                                "for open questions")
        text = line.format_map(values)
        if names and not text.strip():
            drop_blank = True  # an empty optional field: drop its line and the gap after it
            continue
        if drop_blank and not text.strip():
            drop_blank = False
            continue
        drop_blank = False
        out.append(text)
    return "\n".join(out).strip()


def render_messages(template: PromptTemplate, item: Item) -> tuple[Message, ...]:
    """Chat messages for ``item``: a system message (when the template has one), then the user's."""
    t = resolve(template, item)
    values = _values(item)
    messages: list[Message] = []
    if t.system is not None:
        messages.append({"role": "system", "content": _fill(t, "system", t.system, values, item)})
    messages.append({"role": "user", "content": _fill(t, "user", t.user, values, item)})
    return tuple(messages)


def plain_text(messages: Sequence[Message]) -> str:
    """Chat messages as plain text, for a model without a chat template: each non-empty
    content followed by a blank line, no role names (an empty system message, as in
    ``mc_short``, leaves no gap). It ends where the reply starts."""
    return "".join(m["content"] + "\n\n" for m in messages if m["content"])


def render_text(template: PromptTemplate, item: Item) -> str:
    """A plain prompt for engines without a chat template (``plain_text`` of the messages;
    append ``scoring_prefix`` to score)."""
    return plain_text(render_messages(template, item))


def scoring_prefix(template: PromptTemplate, item: Item) -> str:
    """Text appended after the generation prompt when scoring options."""
    return resolve(template, item).answer_prefix


# --- answers: one definition for scoring and training ------------------------------------


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise EnsembleError(unknown_name("scoring mode", mode, MODES))


def _answer_body(item: Item, mode: str, index: int) -> str:
    return item.letters[index] if mode == "letter" else item.options[index].strip()


def choice_continuations(item: Item, mode: Mode) -> tuple[str, ...]:
    """What follows the scoring prefix, one per option: " text" (cloze) or " A" (letter).

    The leading space is the separator after the answer prefix ("Answer:" + " B"); in
    byte-level BPE vocabularies " B" is the single token a model writes there. Open items
    (no options) have nothing to score: ``()``.
    """
    _check_mode(mode)
    return tuple(SEPARATOR + _answer_body(item, mode, i) for i in range(len(item.options)))


def training_target(template: PromptTemplate, item: Item, mode: Mode) -> str:
    """The assistant reply a variant learns: ``scoring_prefix + continuation`` of the gold
    option ("Answer: B" / "Answer: Paris"); for open items (no options) the answer text."""
    _check_mode(mode)
    prefix = scoring_prefix(template, item)
    if item.answer is None:
        raise EnsembleError(f"item '{item.id}': field 'answer' is empty; training needs the gold "
                            "answer of every item")
    if not item.options:
        return prefix + SEPARATOR + item.answer.strip()
    if item.answer not in item.letters:
        raise EnsembleError(f"item '{item.id}': field 'answer' is '{item.answer}', not one of the option "
                            f"letters {', '.join(item.letters)}; fix the answer or the options")
    return prefix + choice_continuations(item, mode)[item.letters.index(item.answer)]
