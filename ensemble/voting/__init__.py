"""Voting methods: pure functions over one VoteMatrix.

Every method has the signature::

    fn(m: VoteMatrix, *, dev: np.ndarray | None = None, **options) -> Decision

``dev`` is an (I,) bool mask of items whose gold answers the method may *fit* on
(weighted with fitted weights, select, stack). Methods that need it raise
EnsembleError when it is missing; methods that do not, ignore it. Metrics are then
reported on the items outside ``dev`` only (see ensemble.evaluation.metrics).

Every method returns ``Decision(labels (I,), scores (I, C), info)``, takes a
``tie_break`` option and breaks ties with ``ensemble.voting.tiebreak`` (one
implementation for all; default ``first``: the class that sorts first, chosen on
the bundled benchmark's dev split).

Votes never asked (an adaptive run stopped before them: ``VoteMatrix.asked`` False)
hold ABSTAIN, so they add to no class's support; every method treats them as absent.
Fitted quantities (weighted's dev accuracies, select's dev counts, Dawid–Skene's
confusions, stack's features) come from the asked votes only, and an abstention
(asked, no answer) stays distinct: stack divides a voter's shares by the samples
asked, so an abstaining sample dilutes them and a sample never asked does not.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.predictions.matrix import Decision, VoteMatrix
from ensemble.registry import Registry, unknown_name

MethodFn = Callable[..., Decision]
METHODS: Registry[MethodFn] = Registry("voting method")


def vote(m: VoteMatrix, method: str = "majority", *, dev: np.ndarray | None = None,
         **options: Any) -> Decision:
    """Combine the votes in ``m`` with the registered ``method``."""
    fn = METHODS.get(method)
    check_options(method, fn, options)
    return fn(m, dev=dev, **options)


def check_options(method: str, fn: MethodFn, options: dict[str, Any]) -> None:
    """Unknown option names fail with the accepted ones listed (not a TypeError traceback)."""
    accepted = [p for p in inspect.signature(fn).parameters if p not in ("m", "dev")]
    for name in options:
        if name not in accepted:
            raise EnsembleError(f"{unknown_name(f'option for {method}', name, accepted)}")


# Importing the modules registers the methods (order = order shown in reports).
from ensemble.voting import (  # noqa: F401
    confidence,
    dawid_skene,
    majority,
    select,
    stack,
    weighted,
)

__all__ = ["METHODS", "MethodFn", "vote"]
