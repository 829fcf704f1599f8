"""The ``letter`` step: a reply -> the option letter it states.

Three tiers; the first tier with any candidate decides, and within a tier the last
stated answer wins:
  1. after an answer marker ("Answer: B", "the answer is (B)", "答案是：B", "\\boxed{B}"),
     a letter or an option's text ("The answer is Paris");
  2. formatted letters: "**B**", "(B)", "option B", "选B", a line starting "B." / "B)",
     or a line that is just "B";
  3. an option's text mentioned in the reply (unambiguous mentions only).
If the deciding candidate is not a letter of this item (e.g. "E" with 3 options) the
answer is None: an invalid final answer is not replaced by an earlier mention.
Lowercase letters count only when clearly marked: after a marker and wrapped or
followed by the end of the line or punctuation ("answer: b", not "answer: a bird").
"""
from __future__ import annotations

import re

from ensemble.data.items import Item
from ensemble.extraction.options import WORD, option_at_start, option_mentioned

# "Answer", "answer is", "答案", "答案是/为", then separators and markdown bold.
_MARKER = re.compile(r"(?:\b(?i:answer)\b(?:\s+(?i:is)\b)?|答案(?:应该|應該)?(?:是|为|為)?)"
                     r"\s*\**\s*[:：=\-–—]?\s*\**\s*")
_MARKED_LETTER = re.compile(rf"(?:(?i:option|choice)\s*|选项\s*)?(?P<open>[(\[（]|\*\*)?\s*"
                            rf"(?P<letter>[A-Za-z])\s*(?P<close>[)\]）]|\*\*)?(?![{WORD}])")
_BOXED = re.compile(r"\\boxed\{\s*(?P<letter>[A-Za-z])\s*\}")
_LOWER_OK_AFTER = ("", "\n", ".", "。", ",", "，", ";", "；", "!", "！", "*")
_FORMATTED = [
    re.compile(r"\*\*\s*[(\[（]?([A-Z])[)\]）.:]?\s*\*\*"),  # **B**, **(B)**
    re.compile(r"[(（]([A-Z])[)）]"),  # (B)
    re.compile(rf"(?i:option|choice)\s*([A-Z])(?![{WORD}])"),  # option B
    re.compile(rf"选(?:项|择)?\s*([A-Z])(?![{WORD}])"),  # 选B, 选项B
    re.compile(r"(?m)^[ \t]*([A-Z])(?:[.)．、:：](?:[ \t]|$)|[ \t]*$)"),  # line "B." / "B)" / "B"
]
_LEAD_IN = re.compile(r"[\s*\"'“”‘’「」(（]*")


def _marked(text: str, item: Item) -> list[tuple[int, str]]:
    """(position, letter) for every answer marker followed by a letter or an option."""
    found = [(m.start(), m.group("letter")) for m in _BOXED.finditer(text)]
    for m in _MARKER.finditer(text):
        lm = _MARKED_LETTER.match(text, m.end())
        if lm:
            letter = lm.group("letter")
            wrapped = lm.group("open") and lm.group("close")
            if letter.isupper() or wrapped or text[lm.end():lm.end() + 1] in _LOWER_OK_AFTER:
                found.append((m.start(), letter.upper()))
                continue
        rest = text[_LEAD_IN.match(text, m.end()).end():]  # type: ignore[union-attr]
        option = option_at_start(rest, item)
        if option is not None:
            found.append((m.start(), option))
    return found


def letter_step(text: str, item: Item) -> str | None:
    """The option letter the reply states (see the module docstring for the rules)."""
    if not item.options or not text.strip():
        return None
    for tier in (_marked(text, item),
                 [(m.start(1), m.group(1)) for p in _FORMATTED for m in p.finditer(text)]):
        if tier:
            chosen = max(tier, key=lambda c: c[0])[1]
            return chosen if chosen in item.letters else None
    return option_mentioned(text, item)
