"""Adaptive voting: when to stop asking voters about one item.

An item's cells (voter, sample) are asked in a fixed order. After each answer a stop
rule looks at the votes so far (``VotesSoFar``) and says whether to stop. Rules are
registered by name in ``STOP_RULES`` with their parameters:

* ``none``       never stop: every cell is asked (the non-adaptive run).
* ``exact``      stop once the remaining votes cannot change the winner: the leader's
                 (weighted) support beats the runner-up's by more than the total weight
                 still to ask, strictly, so no tie can arise whatever the tie policy.
                 Never changes a ``majority`` / ``weighted`` decision (samples="each":
                 every cell is one vote) over all cells.
* ``dirichlet``  Adaptive-Consistency: stop once P(leader is the argmax of the class
                 probabilities) >= 1 - delta under the posterior Dirichlet(counts + prior).
                 Params: delta (0.05), prior (1.0), min_votes (1).
* ``predictive`` stop once P(the votes still to come change the winner) <= delta, each
                 of them drawn from the posterior Dirichlet(counts + prior): ``exact``'s
                 question asked in probability (delta -> 0 approaches ``exact``). It
                 targets what adaptive voting must keep, the full vote's decision.
                 Params: delta (0.05), prior (1.0), min_votes (1).
* ``sticky``     ``predictive`` where a vote to come from a voter already heard on the item
                 repeats one of that voter's votes with probability ``stick`` (0: ``predictive``),
                 as one voter's samples agree more with each other than with other voters.
                 Measured no better than ``predictive`` / ``cisc`` (README).
                 Params: delta (0.05), prior (1.0), stick (0.5), min_votes (1).
* ``cisc``       the same test on confidence-weighted counts (CISC): each counted vote
                 weighs softmax(confidence / temperature), scaled so the weights sum to
                 the number of counted votes. Params: delta (0.05), temperature (0.1),
                 min_votes (1).

Every rule is a pure function of the votes so far (no random draws): a resumed run
recomputes the same decisions from the stored votes. ``walk_item`` is the one place
that walks an item's asking order; the offline ``replay`` and the live run both use
it. Posterior arithmetic: ``ensemble.voting.dirichlet``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.predictions.matrix import ABSTAIN, TIE_ATOL, TIE_RTOL, VoteMatrix
from ensemble.registry import Registry, unknown_name
from ensemble.voting.dirichlet import (
    cisc_weights,
    class_counts,
    flip_probability,
    leader_probability,
    own_counts,
    rescale,
    sticky_flip_probability,
)


@dataclass(frozen=True)
class VotesSoFar:
    """What a stop rule sees of one item. n votes asked so far, m still to ask."""

    labels: np.ndarray       # (n,) int32 class codes in asking order; ABSTAIN allowed
    confidence: np.ndarray   # (n,) float64 in [0, 1]; NaN where the vote gave none
    weights: np.ndarray      # (n,) float64 >= 0: each asked vote's weight (1.0 for majority)
    remaining: np.ndarray    # (m,) float64 >= 0: weights of the votes not yet asked
    n_classes: int           # classes the item can take (options; open answers: seen + 1)
    voters: np.ndarray | None = None            # (n,) voter of each asked vote; None: unknown
    remaining_voters: np.ndarray | None = None  # (m,) voter of each vote not yet asked

    @property
    def counted(self) -> np.ndarray:
        """(n,) bool: votes that count (not abstained, weight > 0)."""
        out: np.ndarray = (self.labels != ABSTAIN) & (self.weights > 0)
        return out


StopRule = Callable[[VotesSoFar], bool]  # True: stop asking this item


@dataclass(frozen=True)
class Param:
    default: float
    ok: Callable[[float], bool]
    fix: str  # what a valid value looks like, for the error message


@dataclass(frozen=True)
class RuleSpec:
    make: Callable[..., StopRule]  # keyword arguments: the params
    params: Mapping[str, Param]


STOP_RULES: Registry[RuleSpec] = Registry("stop rule")

_DELTA = Param(0.05, lambda x: 0 < x < 1, "use a probability in (0, 1), e.g. 0.05")
_MIN_VOTES = Param(1, lambda x: x >= 1 and float(x).is_integer(), "use a whole number of votes, 1 or more")


def _never() -> StopRule:
    return lambda votes: False


def _exact() -> StopRule:
    def stop(votes: VotesSoFar) -> bool:
        counts = np.sort(class_counts(votes.labels, votes.weights, votes.n_classes))[::-1]
        top = float(counts[0]) if len(counts) else 0.0
        runner_up = float(counts[1]) if len(counts) > 1 else 0.0
        rest = float(votes.remaining.sum())
        # Worst case: every remaining vote goes to the runner-up. Strict lead beyond the
        # tie tolerance (doubled: float sums in another order differ by rounding), so
        # the final scores are never tied and no tie policy gets to choose.
        margin = 2 * (TIE_ATOL + TIE_RTOL * (top + rest))
        return top > 0 and top - runner_up - rest > margin
    return stop


def _posterior(delta: float, min_votes: float, prior: float,
               counts_of: Callable[[VotesSoFar], np.ndarray]) -> StopRule:
    def stop(votes: VotesSoFar) -> bool:
        if len(votes.labels) < min_votes:
            return False
        if not votes.remaining.size:
            return True
        return leader_probability(counts_of(votes), prior) >= 1 - delta
    return stop


def _weighted_counts(votes: VotesSoFar) -> np.ndarray:
    return rescale(class_counts(votes.labels, votes.weights, votes.n_classes), int(votes.counted.sum()))


def _dirichlet(delta: float, prior: float, min_votes: float) -> StopRule:
    return _posterior(delta, min_votes, prior, _weighted_counts)


def _predictive(delta: float, prior: float, min_votes: float) -> StopRule:
    def stop(votes: VotesSoFar) -> bool:
        if len(votes.labels) < min_votes:
            return False
        # summed weights: the remaining weights add on the same scale
        counts = class_counts(votes.labels, votes.weights, votes.n_classes)
        rest = votes.remaining[votes.remaining > 0]
        return flip_probability(counts, int(votes.counted.sum()), rest, prior) <= delta
    return stop


def _sticky(delta: float, prior: float, stick: float, min_votes: float) -> StopRule:
    def stop(votes: VotesSoFar) -> bool:
        if len(votes.labels) < min_votes:
            return False
        counts = class_counts(votes.labels, votes.weights, votes.n_classes)
        keep = votes.remaining > 0
        own = own_counts(votes.labels, votes.counted, len(counts), votes.voters, votes.remaining_voters, keep)
        return sticky_flip_probability(counts, int(votes.counted.sum()), votes.remaining[keep], own, prior,
                                       stick) <= delta
    return stop


def _cisc(delta: float, temperature: float, min_votes: float) -> StopRule:
    def counts(votes: VotesSoFar) -> np.ndarray:
        c = votes.counted
        w = np.zeros(len(votes.labels))
        w[c] = cisc_weights(votes.confidence[c], temperature) * votes.weights[c]
        return rescale(class_counts(votes.labels, w, votes.n_classes), int(c.sum()))
    # prior 1: the uniform Dirichlet of Adaptive-Consistency
    return _posterior(delta, min_votes, 1.0, counts)


STOP_RULES.add("none", RuleSpec(_never, {}))
STOP_RULES.add("exact", RuleSpec(_exact, {}))
STOP_RULES.add("dirichlet", RuleSpec(_dirichlet, {
    "delta": _DELTA,
    "prior": Param(1.0, lambda x: x > 0, "use a positive pseudo-count, e.g. 1.0"),
    "min_votes": _MIN_VOTES}))
STOP_RULES.add("predictive", RuleSpec(_predictive, {
    "delta": _DELTA,
    "prior": Param(1.0, lambda x: x > 0, "use a positive pseudo-count, e.g. 1.0"),
    "min_votes": _MIN_VOTES}))
STOP_RULES.add("sticky", RuleSpec(_sticky, {
    "delta": _DELTA,
    "prior": Param(1.0, lambda x: x > 0, "use a positive pseudo-count, e.g. 1.0"),
    "stick": Param(0.5, lambda x: 0 <= x < 1, "use a probability in [0, 1), e.g. 0.5"),
    "min_votes": _MIN_VOTES}))
STOP_RULES.add("cisc", RuleSpec(_cisc, {
    "delta": _DELTA,
    "temperature": Param(0.1, lambda x: x > 0, "use a positive temperature, e.g. 0.1"),
    "min_votes": _MIN_VOTES}))


def _resolve(name: str, params: Mapping[str, Any] | None) -> tuple[RuleSpec, dict[str, float]]:
    spec = STOP_RULES.get(name)                                         # unknown: did-you-mean
    given = dict(params or {})
    where = f"stop rule '{name}'"
    for key in given:
        if key not in spec.params:
            accepted = list(spec.params) or ["(none)"]
            raise EnsembleError(f"{where}: {unknown_name('parameter', key, accepted)}; "
                                "remove it or fix its name (run.adaptive.params)")
    out = {}
    for key, p in spec.params.items():
        value = given.get(key, p.default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value) \
                or not p.ok(float(value)):
            raise EnsembleError(f"{where}: parameter '{key}' is {value!r}; {p.fix} (run.adaptive.params.{key})")
        out[key] = float(value)
    return spec, out


def check_stop_rule(name: str, params: Mapping[str, Any] | None) -> None:
    """EnsembleError unless ``name`` is a registered rule and ``params`` are its, in range."""
    _resolve(name, params)


def get_stop_rule(name: str, params: Mapping[str, Any] | None = None) -> StopRule:
    """The stop rule ``name`` with ``params`` (defaults for those not given)."""
    spec, values = _resolve(name, params)
    return spec.make(**values)


def _check_weights(weights: np.ndarray, where: str) -> None:
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise EnsembleError(f"{where}: vote weights must be finite and >= 0, got {weights.tolist()[:8]}; "
                            "use weights: none or fit non-negative weights (the weighted method clips at 0)")


def walk_item(votes: Callable[[int], tuple[int, float] | None], weights: Sequence[float], rule: StopRule,
              n_classes: int | None, voters: Sequence[int] | None = None) -> tuple[int, bool]:
    """How far down one item's asking order to go: (k, decided).

    ``votes(k)``: (class code, confidence or NaN) of the k-th cell if known, else None.
    ``weights[k]``: that cell's weight. Returns (k, True) when the rule stops after k
    votes (or k = len(weights): everyone was asked), (k, False) when cell k must be
    asked next. ``n_classes`` None: open answers, the distinct answers seen + 1. ``voters[k]``:
    the voter of cell k (for rules that tell voters apart), or None."""
    w, who = np.asarray(weights, dtype=np.float64), None if voters is None else np.asarray(voters, dtype=np.int64)
    _check_weights(w, "walk_item")
    labels: list[int] = []
    conf: list[float] = []
    for k in range(len(w)):
        seen = np.array(labels, dtype=np.int32)
        k_classes = n_classes if n_classes is not None else len(set(labels) - {ABSTAIN}) + 1
        so_far = VotesSoFar(labels=seen, confidence=np.array(conf, dtype=np.float64), weights=w[:k],
                            remaining=w[k:], n_classes=k_classes, voters=None if who is None else who[:k],
                            remaining_voters=None if who is None else who[k:])
        if rule(so_far):
            return k, True
        vote = votes(k)
        if vote is None:
            return k, False
        labels.append(int(vote[0]))
        conf.append(float(vote[1]))  # NaN: no confidence
    return len(w), True


def replay(matrix: VoteMatrix, order: Sequence[tuple[int, int]], rule: StopRule,
           weights: np.ndarray | None = None, *, n_classes: Sequence[int | None] | None = None) -> np.ndarray:
    """(I, V, S) bool: the cells ``rule`` would have asked of this fully-asked matrix.

    order: (voter index, sample index) cells in asking order; cells not in it are never
    asked. weights: None (1 per vote), (V,) per voter or (I, V, S) per cell. n_classes:
    per item, its class count for the rule (None: open answers, seen + 1); default: its
    options (``matrix.valid``), else open. As in the live run, an answer outside the
    item's options is no vote for the rule.
    """
    I, V, S = matrix.labels.shape
    cells = np.array(order, dtype=np.int64).reshape(-1, 2)              # (K, 2)
    if len(cells) and (cells.min() < 0 or cells[:, 0].max() >= V or cells[:, 1].max() >= S):
        raise EnsembleError(f"replay: order has a cell outside the matrix's {V} voters x {S} samples")
    if weights is not None and weights.shape not in ((V,), (I, V, S)):
        raise EnsembleError(f"replay: weights have shape {weights.shape}; use ({V},) per voter or "
                            f"({I}, {V}, {S}) per cell")
    w = np.ones((I, V, S)) if weights is None else np.broadcast_to(
        weights[None, :, None] if weights.shape == (V,) else weights, (I, V, S))
    labels = matrix.labels[:, cells[:, 0], cells[:, 1]]                 # (I, K) in asking order
    if matrix.valid is not None:                                         # outside the options: no vote
        ok = np.take_along_axis(matrix.valid, np.maximum(labels, 0), axis=1)
        labels = np.where(ok, labels, ABSTAIN)
    conf = (np.full(labels.shape, np.nan) if matrix.confidence is None
            else matrix.confidence[:, cells[:, 0], cells[:, 1]])
    cell_w = w[:, cells[:, 0], cells[:, 1]]                             # (I, K)
    if n_classes is None:
        n_classes = [None] * I if matrix.valid is None else [int(n) for n in matrix.valid.sum(axis=1)]
    asked = np.zeros((I, V, S), dtype=bool)
    cell_voters = cells[:, 0].tolist()
    for i in range(I):
        def known(j: int, i: int = i) -> tuple[int, float]:                  # every cell is known
            return int(labels[i, j]), float(conf[i, j])

        k, _ = walk_item(known, cell_w[i], rule, n_classes[i], cell_voters)
        asked[i, cells[:k, 0], cells[:k, 1]] = True
    return asked


def default_order(n_voters: int, n_samples: int) -> list[tuple[int, int]]:
    """Every voter's sample 0 in voter order, then every voter's sample 1, ..."""
    return [(v, s) for s in range(n_samples) for v in range(n_voters)]


__all__ = ["STOP_RULES", "StopRule", "VotesSoFar", "check_stop_rule", "default_order", "get_stop_rule",
           "replay", "walk_item"]
