"""Finding an item's options in free text: the folded form options are compared in,
and which option a reply names.

Folding is NFKC + casefold + one space per whitespace run, so "Ｐａｒｉｓ" and "paris"
compare equal. Word edges are ASCII-only (``WORD``): Chinese text has no spaces
between words, so "选红" must still find the option "红".
"""
from __future__ import annotations

import re
import unicodedata

from ensemble.data.items import Item

WORD = "A-Za-z0-9"  # the characters that continue a word


def fold(text: str) -> str:
    """NFKC, casefold, whitespace runs -> one space: the form options are compared in."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def strip_edges(text: str) -> str:
    """Strip whitespace and punctuation (Unicode category P*) from both ends."""
    is_edge = lambda ch: ch.isspace() or unicodedata.category(ch).startswith("P")
    start, end = 0, len(text)
    while start < end and is_edge(text[start]):
        start += 1
    while end > start and is_edge(text[end - 1]):
        end -= 1
    return text[start:end]


def option_pattern(option: str) -> re.Pattern[str]:
    """Regex for a folded option inside folded text; ASCII word edges must not continue."""
    body = r"\s+".join(re.escape(w) for w in option.split(" "))
    left = rf"(?<![{WORD}])" if option[:1].isascii() and option[:1].isalnum() else ""
    right = rf"(?![{WORD}])" if option[-1:].isascii() and option[-1:].isalnum() else ""
    return re.compile(left + body + right)


def option_mentioned(text: str, item: Item) -> str | None:
    """The letter of the option ``text`` states: equal to it, or the one option mentioned.

    Overlapping mentions keep the longest ("dark red" beats "red"); mentions of two
    different options are ambiguous -> None.
    """
    folded = fold(strip_edges(text))
    options = [fold(strip_edges(o)) for o in item.options]
    if folded in options:
        return item.letters[options.index(folded)]
    spans = [(m.start(), m.end(), i) for i, o in enumerate(options) if o
             for m in option_pattern(o).finditer(folded)]
    kept = {i for s, e, i in spans
            if not any(s2 <= s and e <= e2 and (e2 - s2) > (e - s) for s2, e2, _ in spans)}
    return item.letters[kept.pop()] if len(kept) == 1 else None


def option_at_start(text: str, item: Item) -> str | None:
    """The letter of the longest option that ``text`` starts with."""
    folded = fold(text)
    best: tuple[int, str] | None = None
    for letter, option in zip(item.letters, item.options):
        o = fold(strip_edges(option))
        if o and option_pattern(o).match(folded) and (best is None or len(o) > best[0]):
            best = (len(o), letter)
    return best[1] if best else None
