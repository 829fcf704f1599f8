"""The ``number`` step: a reply -> the number it states, in one canonical spelling."""
from __future__ import annotations

import re
import unicodedata

from ensemble.data.items import Item
from ensemble.extraction.options import WORD

_NUMBER = re.compile(rf"(?<![{WORD}])(?P<sign>[-−+])?\$?"
                     r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
                     r"(?:\s*/\s*(?P<den>\d+))?")
_NUMBER_MARKER = re.compile(r"####|\b(?i:answer)\b(?:\s+(?i:is)\b|\s*[:：=])|答案(?:是|为|為|\s*[:：])"
                            r"|\\boxed\{")


def _format_number(m: re.Match[str]) -> str:
    """'1,000' -> '1000', '-3.50' -> '-3.5', '.5' -> '0.5', '1/2' stays '1/2'."""
    whole, _, frac = m.group("num").replace(",", "").partition(".")
    value = (whole.lstrip("0") or "0") + ("." + frac.rstrip("0") if frac.rstrip("0") else "")
    if m.group("den"):
        value += "/" + (m.group("den").lstrip("0") or "0")
    negative = m.group("sign") in ("-", "−") and value.strip("0./") != ""
    return "-" + value if negative else value


def number_step(text: str, item: Item) -> str | None:
    """The stated number: the first on the line of the last answer marker that has one
    ("#### 42", "The answer is 1,000", "答案是 12"), else the last number in the text; '$', '%', thousands
    separators and trailing zeros are dropped."""
    text = unicodedata.normalize("NFKC", text)
    for marker in reversed(list(_NUMBER_MARKER.finditer(text))):
        line_end = text.find("\n", marker.end())
        m = _NUMBER.search(text, marker.end(), len(text) if line_end < 0 else line_end)
        if m:  # the first number on the marker's line
            return _format_number(m)
    numbers = list(_NUMBER.finditer(text))
    return _format_number(numbers[-1]) if numbers else None
