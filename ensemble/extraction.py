"""Answer extraction: a model's raw text -> a label, or None (ABSTAIN).

Like lm-evaluation-harness filters, an extractor is a pipeline of named steps
(``["regex:Final: (.*)", "option_text"]``). A step is ``(text, item) -> str | None``;
None means "cannot parse" and stops the pipeline, and so does an empty result.
Steps that take an argument are written ``name:arg`` (``regex:<pattern>``,
``take:last``). Unparseable answers are ABSTAIN, never a default class.

``letter`` reads an option letter in three tiers; the first tier with any
candidate decides, and within a tier the last stated answer wins:
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
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ensemble.data.readers import Item
from ensemble.errors import EnsembleError
from ensemble.registry import Registry, unknown_name

Step = Callable[[str, Item], "str | None"]


@dataclass(frozen=True)
class StepFactory:
    """A step that takes an argument (spec ``name:arg``); ``make(arg)`` builds it and
    raises EnsembleError for a bad argument."""

    make: Callable[[str], Step]
    usage: str  # how to write it, e.g. "regex:<pattern>"


STEPS: Registry[Step | StepFactory] = Registry("extraction step")
PRESETS: Registry[tuple[str, ...]] = Registry("extractor preset")

# --- text helpers ---------------------------------------------------------------------

_WORD = "A-Za-z0-9"  # word edges are ASCII-only: Chinese text has no spaces between words


def _fold(text: str) -> str:
    """NFKC, casefold, whitespace runs -> one space: the form options are compared in."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _strip_edges(text: str) -> str:
    """Strip whitespace and punctuation (Unicode category P*) from both ends."""
    is_edge = lambda ch: ch.isspace() or unicodedata.category(ch).startswith("P")
    start, end = 0, len(text)
    while start < end and is_edge(text[start]):
        start += 1
    while end > start and is_edge(text[end - 1]):
        end -= 1
    return text[start:end]


def _option_pattern(option: str) -> re.Pattern[str]:
    """Regex for a folded option inside folded text; ASCII word edges must not continue."""
    body = r"\s+".join(re.escape(w) for w in option.split(" "))
    left = rf"(?<![{_WORD}])" if option[:1].isascii() and option[:1].isalnum() else ""
    right = rf"(?![{_WORD}])" if option[-1:].isascii() and option[-1:].isalnum() else ""
    return re.compile(left + body + right)


def _option_mentioned(text: str, item: Item) -> str | None:
    """The letter of the option ``text`` states: equal to it, or the one option mentioned.

    Overlapping mentions keep the longest ("dark red" beats "red"); mentions of two
    different options are ambiguous -> None.
    """
    folded = _fold(_strip_edges(text))
    options = [_fold(_strip_edges(o)) for o in item.options]
    if folded in options:
        return item.letters[options.index(folded)]
    spans = [(m.start(), m.end(), i) for i, o in enumerate(options) if o
             for m in _option_pattern(o).finditer(folded)]
    kept = {i for s, e, i in spans
            if not any(s2 <= s and e <= e2 and (e2 - s2) > (e - s) for s2, e2, _ in spans)}
    return item.letters[kept.pop()] if len(kept) == 1 else None


# --- letter ---------------------------------------------------------------------------

# "Answer", "answer is", "答案", "答案是/为", then separators and markdown bold.
_MARKER = re.compile(r"(?:\b(?i:answer)\b(?:\s+(?i:is)\b)?|答案(?:应该|應該)?(?:是|为|為)?)"
                     r"\s*\**\s*[:：=\-–—]?\s*\**\s*")
_MARKED_LETTER = re.compile(rf"(?:(?i:option|choice)\s*|选项\s*)?(?P<open>[(\[（]|\*\*)?\s*"
                            rf"(?P<letter>[A-Za-z])\s*(?P<close>[)\]）]|\*\*)?(?![{_WORD}])")
_BOXED = re.compile(r"\\boxed\{\s*(?P<letter>[A-Za-z])\s*\}")
_LOWER_OK_AFTER = ("", "\n", ".", "。", ",", "，", ";", "；", "!", "！", "*")
_FORMATTED = [
    re.compile(r"\*\*\s*[(\[（]?([A-Z])[)\]）.:]?\s*\*\*"),  # **B**, **(B)**
    re.compile(r"[(（]([A-Z])[)）]"),  # (B)
    re.compile(rf"(?i:option|choice)\s*([A-Z])(?![{_WORD}])"),  # option B
    re.compile(rf"选(?:项|择)?\s*([A-Z])(?![{_WORD}])"),  # 选B, 选项B
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
        option = _option_at_start(rest, item)
        if option is not None:
            found.append((m.start(), option))
    return found


def _option_at_start(text: str, item: Item) -> str | None:
    """The letter of the longest option that ``text`` starts with."""
    folded = _fold(text)
    best: tuple[int, str] | None = None
    for letter, option in zip(item.letters, item.options):
        o = _fold(_strip_edges(option))
        if o and _option_pattern(o).match(folded) and (best is None or len(o) > best[0]):
            best = (len(o), letter)
    return best[1] if best else None


def letter_step(text: str, item: Item) -> str | None:
    """The option letter the reply states (see the module docstring for the rules)."""
    if not item.options or not text.strip():
        return None
    for tier in (_marked(text, item),
                 [(m.start(1), m.group(1)) for p in _FORMATTED for m in p.finditer(text)]):
        if tier:
            chosen = max(tier, key=lambda c: c[0])[1]
            return chosen if chosen in item.letters else None
    return _option_mentioned(text, item)


# --- number ---------------------------------------------------------------------------

_NUMBER = re.compile(rf"(?<![{_WORD}])(?P<sign>[-−+])?\$?"
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


# --- small steps ----------------------------------------------------------------------


def normalize_step(text: str, item: Item) -> str | None:
    """NFKC, whitespace runs -> one space, punctuation/whitespace stripped at the edges,
    lowercase."""
    return _strip_edges(" ".join(unicodedata.normalize("NFKC", text).split())).lower()


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


STEPS.add("letter", letter_step)
STEPS.add("number", number_step)
STEPS.add("strip", lambda text, item: text.strip())
STEPS.add("lower", lambda text, item: text.lower())
STEPS.add("normalize", normalize_step)
STEPS.add("first_line", lambda text, item: next(iter(_lines(text)), None))
STEPS.add("option_text", lambda text, item: _option_mentioned(text, item) if item.options else None)


def _make_regex(pattern: str) -> Step:
    spec = f"regex:{pattern}"
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise EnsembleError(f"extraction step '{spec}': the pattern does not compile ({e}); "
                            "fix the regular expression") from None
    if compiled.groups < 1:
        raise EnsembleError(f"extraction step '{spec}': the pattern has no group; put ( ) around "
                            "the answer, e.g. 'regex:Final: (.*)'")

    def regex(text: str, item: Item) -> str | None:
        matches = list(compiled.finditer(text))
        return matches[-1].group(1) if matches else None  # first group of the LAST match

    return regex


def _make_take(which: str) -> Step:
    if which not in ("first", "last"):
        raise EnsembleError(f"extraction step 'take:{which}': the argument must be 'first' or 'last' "
                            "(the first / last non-empty line)")
    index = 0 if which == "first" else -1
    return lambda text, item: (_lines(text) or [None])[index]


STEPS.add("regex", StepFactory(_make_regex, "regex:<pattern with one ( ) group>"))
STEPS.add("take", StepFactory(_make_take, "take:first|last"))

PRESETS.add("mc", ("letter",))
PRESETS.add("number", ("number",))
PRESETS.add("text", ("strip", "normalize"))


# --- pipelines ------------------------------------------------------------------------


def build_step(spec: str) -> Step:
    """A step from its spec: a registered name, or ``name:arg`` for steps with an argument."""
    if not isinstance(spec, str):
        raise EnsembleError(f"an extraction step is a name like 'letter' or 'regex:<pattern>', "
                            f"got {spec!r}")
    name, has_arg, arg = spec.partition(":")
    entry = STEPS.get(name.strip())
    if isinstance(entry, StepFactory):
        if not has_arg:
            raise EnsembleError(f"extraction step '{name}' needs an argument; write '{entry.usage}'")
        return entry.make(arg)
    if has_arg:
        raise EnsembleError(f"extraction step '{name}' takes no argument, got '{spec}'; write '{name}'")
    return entry


@dataclass(frozen=True)
class Extractor:
    """A pipeline of step specs, resolved (and checked) at construction."""

    steps: tuple[str, ...]
    _fns: tuple[Step, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        steps = (self.steps,) if isinstance(self.steps, str) else tuple(self.steps)
        if not steps:
            raise EnsembleError("an extractor needs at least one step, e.g. ['letter']")
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "_fns", tuple(build_step(s) for s in steps))

    def extract(self, text: str, item: Item) -> str | None:
        """The answer label, or None (ABSTAIN) when a step cannot parse or nothing is left."""
        out: str | None = text
        for fn in self._fns:
            out = fn(out, item)
            if not out:
                return None
        return out


def build_extractor(spec: str | Sequence[str] | Extractor, *, origin: str | None = None) -> Extractor:
    """An extractor from a preset name ("mc", "number", "text"), one step spec, or a list
    of step specs. ``origin`` (e.g. "run.yaml: field 'extract'") prefixes error messages."""
    try:
        if isinstance(spec, Extractor):
            return spec
        if isinstance(spec, str):
            if spec in PRESETS:
                return Extractor(PRESETS.get(spec))
            if spec.partition(":")[0].strip() not in STEPS:
                raise EnsembleError(unknown_name("extractor", spec, dict.fromkeys([*PRESETS, *STEPS])))
            return Extractor((spec,))
        return Extractor(tuple(spec))
    except EnsembleError as e:
        if origin is None:
            raise
        raise EnsembleError(f"{origin}: {e}") from None


def extract_all(texts: Sequence[str | None], items: Sequence[Item],
                extractor: Extractor) -> tuple[list[str | None], int]:
    """Extract every text against its item; returns (answers, number unparseable).
    A None text (no output) counts as unparseable."""
    if len(texts) != len(items):
        raise ValueError(f"extract_all: {len(texts)} texts for {len(items)} items")
    answers = [None if t is None else extractor.extract(t, item) for t, item in zip(texts, items)]
    return answers, sum(a is None for a in answers)
