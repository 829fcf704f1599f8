"""Load-time checks: every name a config uses is resolved before anything runs.

The schema's ``__post_init__`` methods call these, so a config fails when it loads (and a
``Config`` built in code fails when it is built) -- not after hours of inference. They
consult registries only: no file is read or written, and nothing heavy is imported
(engine names come from ``ENGINE_NAMES``, not from the engine modules, which import torch).

Messages keep the loader's shape, ``field '<path>' is <value!r>; <fix>``; the loader
puts the file name in front.
"""
from __future__ import annotations

import inspect
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from ensemble.config.loader import ConfigError
from ensemble.errors import EnsembleError
from ensemble.registry import unknown_name

SPLITS = ("train", "dev", "test")
# Method options whose values are names, and where those names live: a misspelled
# value is caught here like a misspelled method. Keyed by option name (the same option
# means the same thing in every method that takes it).
_CHOICE_MODULES = {"tie_break": ("ensemble.voting.tiebreak", "TIE_BREAKS"),
                   "samples": ("ensemble.voting.majority", "SAMPLE_MODES"),
                   "features": ("ensemble.voting.stack", "FEATURES")}


def fail(field: str, value: Any, fix: str) -> None:
    raise ConfigError(f"field '{field}' is {value!r}; {fix}")


def check_name(value: Any, names: Collection[str], field: str, kind: str) -> None:
    """``value`` must be one of ``names``; else did-you-mean and the list."""
    if value not in names:
        fail(field, value, unknown_name(kind, value, list(dict.fromkeys(names))))


def option_choices(option: str) -> tuple[str, ...] | None:
    """The valid values of a name-valued method option, or None for a free-valued one."""
    if option not in _CHOICE_MODULES:
        return None
    import importlib

    module, attr = _CHOICE_MODULES[option]
    return tuple(getattr(importlib.import_module(module), attr))


# -- run ----------------------------------------------------------------------
def check_methods(methods: Sequence[str]) -> None:
    from ensemble.voting import METHODS

    if not methods:
        fail("run.methods", list(methods), f"name at least one voting method: {', '.join(METHODS.names())}")
    for name in methods:
        check_name(name, METHODS.names(), "run.methods", "voting method")
    dupes = sorted({m for m in methods if list(methods).count(m) > 1})
    if dupes:
        fail("run.methods", list(methods), f"{', '.join(dupes)} is listed twice; list each method once")


def check_method_options(method_options: Mapping[str, Mapping[str, Any]]) -> None:
    """Method names, option names (the method's keyword parameters) and name-valued values."""
    from ensemble.voting import METHODS

    for method, options in method_options.items():
        check_name(method, METHODS.names(), "run.method_options", "voting method")
        params = _keyword_params(METHODS.get(method))
        for option, value in options.items():
            field = f"run.method_options.{method}.{option}"
            choices = option_choices(option)
            if choices is not None:
                check_name(value, choices, field, f"{option} value")
            if params is None:  # the method takes **options: it checks them itself
                continue
            if option not in params:
                fix = (unknown_name(f"{method} option", option, list(params)) if params
                       else f"{method} takes no options; remove run.method_options.{method}")
                raise ConfigError(f"field 'run.method_options.{method}' has option {option!r}; {fix}")
            _check_type(value, params[option].default, field)


def _keyword_params(fn: Any) -> dict[str, inspect.Parameter] | None:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {k: p for k, p in params.items() if k not in ("m", "dev")}


def _check_type(value: Any, default: Any, field: str) -> None:
    """An option's value must have its default's type (a default of None accepts anything)."""
    if default is None or default is inspect.Parameter.empty:
        return
    if isinstance(default, bool):
        ok, what = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, what = isinstance(value, int) and not isinstance(value, bool), "a whole number"
    elif isinstance(default, float):
        ok, what = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, str):
        ok, what = isinstance(value, str), "a string"
    else:
        return
    if not ok:
        fail(field, value, f"expected {what}, like the default {default!r}")


def check_extractor(spec: str | Sequence[str]) -> None:
    from ensemble.extraction import build_extractor

    shown = spec if isinstance(spec, str) else list(spec)
    try:
        build_extractor(spec)
    except EnsembleError as exc:
        fail("run.extractor", shown, f"{exc} (a preset name or a list of step names)")


def check_engine(engine: str) -> None:
    from ensemble.engines.base import ENGINE_NAMES, ENGINES

    check_name(engine, [*ENGINE_NAMES, *ENGINES.names()], "run.engine", "engine")


def check_splits(splits: Sequence[str]) -> None:
    if not splits:
        fail("run.splits", list(splits), "name the splits to answer, e.g. [dev, test]")
    for split in splits:
        check_name(split, SPLITS, "run.splits", "split")
    if len(set(splits)) < len(splits):
        fail("run.splits", list(splits), "list each split once")


def check_submission(run: Any) -> None:
    """submission_method is a method that runs; fallback is a policy; a submission needs test."""
    from ensemble.evaluation.submission import FALLBACKS
    from ensemble.voting import METHODS

    check_name(run.submission_method, METHODS.names(), "run.submission_method", "voting method")
    check_name(run.fallback, FALLBACKS.names(), "run.fallback", "fallback policy")
    if run.submission is None:
        return
    if run.submission_method not in run.methods:
        fail("run.submission_method", run.submission_method,
             f"it is not among run.methods ({', '.join(run.methods)}); add it to run.methods "
             "or pick one of those")
    if "test" not in run.splits:
        fail("run.submission", run.submission,
             f"a submission answers the test split, but run.splits is {list(run.splits)}; add test to run.splits")


# -- run.adaptive ---------------------------------------------------------------------
ADAPTIVE_ORDERS = ("dev_accuracy", "given")
ADAPTIVE_WEIGHTS = ("none", "dev")


def check_adaptive(adaptive: Any) -> None:
    """The stop rule and its parameters (ensemble.voting.adaptive), the voter order, the weights."""
    from ensemble.voting.adaptive import STOP_RULES, check_stop_rule

    check_name(adaptive.rule, list(STOP_RULES), "run.adaptive.rule", "stop rule")
    try:
        check_stop_rule(adaptive.rule, adaptive.params)
    except EnsembleError as exc:
        fail("run.adaptive.params", dict(adaptive.params), f"{exc} (parameters of stop rule '{adaptive.rule}')")
    check_name(adaptive.order, ADAPTIVE_ORDERS, "run.adaptive.order", "voter order")
    check_name(adaptive.weights, ADAPTIVE_WEIGHTS, "run.adaptive.weights", "vote weights")


def check_adaptive_splits(run: Any) -> None:
    """An order by dev accuracy and dev-fitted weights need the dev split among run.splits."""
    a = run.adaptive
    if a is None or "dev" in run.splits:
        return
    for name, value, other in (("order", a.order, "given"), ("weights", a.weights, "none")):
        if value in ("dev_accuracy", "dev"):
            fail(f"run.adaptive.{name}", value, f"it is fitted on the dev split's gold answers, but run.splits is "
                 f"{list(run.splits)}: add dev to run.splits, or set run.adaptive.{name}: {other}")


# -- prompts, data --------------------------------------------------------------
def check_prompt(spec: Any, field: str = "prompt") -> None:
    from ensemble.prompts import get_template

    try:
        get_template(spec)
    except EnsembleError as exc:
        fail(field, spec, f"{exc} (a template name or a mapping with 'user')")


def check_prompt_name(name: str, field: str) -> None:
    from ensemble.prompts import PROMPTS

    check_name(name, PROMPTS.names(), field, "prompt template")


def check_format(fmt: str) -> None:
    from ensemble.data.chat import CHAT_FORMATS
    from ensemble.data.formats import FORMATS

    check_name(fmt, ["auto", *FORMATS.names(), *CHAT_FORMATS.names()], "data.format", "data format")


def check_columns(columns: dict[str, str]) -> None:
    """data.columns maps our item fields to the file's column names."""
    from ensemble.data.tables import FIELDS

    for ours, theirs in columns.items():
        check_name(ours, list(FIELDS), "data.columns", "item field")
        if not isinstance(theirs, str) or not theirs:
            fail(f"data.columns.{ours}", theirs, "give the column's name in the file, e.g. "
                 "data.columns: {question: prompt}")


# -- run x data (no I/O: only what the config says) -------------------------------
# Methods that fit on the dev split's gold answers (weighted only when it fits its
# weights; given weights or weights_from: manifest need no dev). tests/test_config_checks.py
# keeps this equal to the methods that raise without dev.
FITTED = ("weighted", "select", "stack")


def fits_on_dev(method: str, options: Mapping[str, Any], weights_from: str) -> bool:
    if method not in FITTED:
        return False
    return not (method == "weighted" and ("weights" in options or weights_from == "manifest"))


def check_run_data(data: Any, run: Any) -> None:
    """Every split in run.splits has data; every fitted method has the dev split."""
    for split in run.splits:
        if getattr(data, split) is None and data.benchmark is None:
            fail("run.splits", split, f"data.{split} is not set and there is no data.benchmark; set "
                 f"data.{split} to a file, add data.benchmark, or remove {split} from run.splits")
    if "dev" in run.splits:
        return
    for method in run.methods:
        if fits_on_dev(method, run.method_options.get(method, {}), run.weights_from):
            extra = (" or give it weights (run.method_options.weighted.weights, or run.weights_from: "
                     "manifest)," if method == "weighted" else "")
            fail("run.methods", method, f"it fits on the dev split's gold answers, but run.splits is "
                 f"{list(run.splits)}: add dev to run.splits (with data.dev or data.benchmark),{extra} "
                 f"or remove {method} from run.methods")
