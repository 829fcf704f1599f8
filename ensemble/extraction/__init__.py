"""Answer extraction: a model's raw text -> a label, or None (ABSTAIN).

Like lm-evaluation-harness filters, an extractor is a pipeline of named steps
(``["regex:Final: (.*)", "option_text"]``). A step is ``(text, item) -> str | None``;
None means "cannot parse" and stops the pipeline, and so does an empty result.
Steps that take an argument are written ``name:arg`` (``regex:<pattern>``,
``take:last``). Unparseable answers are ABSTAIN, never a default class.

The steps live in ``letter`` (option letters), ``number`` and here (the small ones);
``options`` finds an item's options in free text.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ensemble.data.items import Item
from ensemble.errors import EnsembleError
from ensemble.extraction.letter import letter_step
from ensemble.extraction.number import number_step
from ensemble.extraction.options import option_mentioned, strip_edges
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

# --- small steps ----------------------------------------------------------------------


def normalize_step(text: str, item: Item) -> str | None:
    """NFKC, whitespace runs -> one space, punctuation/whitespace stripped at the edges,
    lowercase."""
    return strip_edges(" ".join(unicodedata.normalize("NFKC", text).split())).lower()


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


STEPS.add("letter", letter_step)
STEPS.add("number", number_step)
STEPS.add("strip", lambda text, item: text.strip())
STEPS.add("lower", lambda text, item: text.lower())
STEPS.add("normalize", normalize_step)
STEPS.add("first_line", lambda text, item: next(iter(_lines(text)), None))
STEPS.add("option_text", lambda text, item: option_mentioned(text, item) if item.options else None)


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

    def take(text: str, item: Item) -> str | None:
        lines = _lines(text)
        return lines[index] if lines else None

    return take


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
        out = text
        for fn in self._fns:
            step_out = fn(out, item)
            if not step_out:
                return None
            out = step_out
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
