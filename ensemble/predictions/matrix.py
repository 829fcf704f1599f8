"""The vote matrix: the one data structure every voting method reads.

Labels are encoded once into integers; ``ABSTAIN = -1`` marks a missing or
unparseable vote. Shapes (I items, V voters, S samples per voter, C classes):

    labels      (I, V, S) int32    class code or ABSTAIN
    confidence  (I, V, S) float64  in [0, 1]; NaN where the vote gave none   (optional)
    probs       (I, V, S, C) float64  per-class probability; NaN rows where absent (optional)
    gold        (I,) int32         class code or ABSTAIN where unknown       (optional)
    valid       (I, C) bool        which classes are options of each item    (optional)
    groups      I strings          each item's group (subject / category / task; "" = none) (optional)

Class codes follow the sorted order of the class names (``sorted(str)``), so the
encoding never depends on row order. That is also the order of the tie rule
``first``: when several classes share the top score (up to rounding), the one
that sorts first wins (``ensemble.voting.tiebreak`` has the other policies and
the default).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

ABSTAIN = -1


@dataclass(frozen=True)
class LabelEncoder:
    """Maps class names <-> integer codes; codes are positions in sorted ``classes``."""

    classes: tuple[str, ...]

    @classmethod
    def fit(cls, values: Iterable[str | None]) -> LabelEncoder:
        return cls(tuple(sorted({v for v in values if v not in (None, "")})))

    def __len__(self) -> int:
        return len(self.classes)

    def encode(self, values: Iterable[str | None]) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index.get(v, ABSTAIN) if v not in (None, "") else ABSTAIN for v in values],
                        dtype=np.int32)

    def decode(self, codes: Iterable[int]) -> list[str | None]:
        return [self.classes[c] if c >= 0 else None for c in codes]


@dataclass(frozen=True, eq=False)
class VoteMatrix:
    labels: np.ndarray
    items: tuple[str, ...]
    voters: tuple[str, ...]
    encoder: LabelEncoder
    confidence: np.ndarray | None = None
    probs: np.ndarray | None = None
    gold: np.ndarray | None = None
    valid: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    groups: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        I, V, S = self.labels.shape
        assert len(self.items) == I and len(self.voters) == V, "items/voters do not match labels"
        if self.confidence is not None:
            assert self.confidence.shape == (I, V, S)
        if self.probs is not None:
            assert self.probs.shape == (I, V, S, len(self.encoder))
        if self.gold is not None:
            assert self.gold.shape == (I,)
        if self.valid is not None:
            assert self.valid.shape == (I, len(self.encoder))
        if self.groups is not None:
            assert len(self.groups) == I, "groups do not match items"

    # -- shape helpers ---------------------------------------------------
    @property
    def n_items(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_voters(self) -> int:
        return int(self.labels.shape[1])

    @property
    def n_samples(self) -> int:
        return int(self.labels.shape[2])

    @property
    def n_classes(self) -> int:
        return len(self.encoder)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.encoder.classes

    def has_gold(self) -> np.ndarray:
        """(I,) bool: items whose gold answer is known."""
        if self.gold is None:
            return np.zeros(self.n_items, dtype=bool)
        known: np.ndarray = self.gold != ABSTAIN
        return known

    # -- sub-matrices (used by dev/test splits and ablation) --------------
    def select_items(self, mask_or_index: np.ndarray) -> VoteMatrix:
        idx = _as_index(mask_or_index)
        return replace(
            self,
            labels=self.labels[idx],
            items=tuple(self.items[i] for i in idx),
            confidence=None if self.confidence is None else self.confidence[idx],
            probs=None if self.probs is None else self.probs[idx],
            gold=None if self.gold is None else self.gold[idx],
            valid=None if self.valid is None else self.valid[idx],
            groups=None if self.groups is None else tuple(self.groups[i] for i in idx),
        )

    def select_voters(self, voters: Sequence[int] | Sequence[str]) -> VoteMatrix:
        """Keep these voters, in this order (names or positions; repeats allowed)."""
        idx = np.array([self.voters.index(v) if isinstance(v, str) else int(v) for v in voters],
                       dtype=np.intp)
        return replace(
            self,
            labels=self.labels[:, idx],
            voters=tuple(self.voters[i] for i in idx),
            confidence=None if self.confidence is None else self.confidence[:, idx],
            probs=None if self.probs is None else self.probs[:, idx],
        )

    def decode(self, codes: Iterable[int]) -> list[str | None]:
        return self.encoder.decode(codes)


def _as_index(mask_or_index: np.ndarray) -> np.ndarray:
    arr = np.asarray(mask_or_index)
    return np.flatnonzero(arr) if arr.dtype == bool else arr.astype(np.intp)


@dataclass(frozen=True, eq=False)
class Decision:
    """What a voting method returns.

    labels  (I,) int32: the chosen class per item, ABSTAIN where no vote counted
            (or where the tie-break policy ``abstain`` left a tie unanswered).
    scores  (I, C) float64: each class's share of the (weighted) support; rows sum
            to 1, or to 0 for items with no support. Used for calibration metrics.
    info    method-specific facts worth reporting (fitted weights, chosen voters...).
    """

    labels: np.ndarray
    scores: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def support(labels: np.ndarray, n_classes: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Sum of vote weights per (item, class).

    labels  (I, ...) int codes with ABSTAIN = -1 (any trailing shape: voters, samples)
    weights same shape as ``labels`` or broadcastable to it; None = 1 per vote
    returns (I, C) float64

    One ``np.bincount`` over flattened ``item * C + label`` indices: linear time,
    no Python loop, about 0.1 s for 16M votes.
    """
    I = labels.shape[0]
    flat = labels.reshape(I, int(np.prod(labels.shape[1:])))  # (I, V*S); -1 would fail when I == 0
    # ABSTAIN (-1) goes to a spare bin 0 that is dropped afterwards: no boolean compress of
    # the 16M-vote array (that alone cost 0.6-2 s at 1M x 16), and NaN weights in abstaining
    # cells cannot leak into real bins.
    idx = np.arange(I, dtype=np.int64)[:, None] * (n_classes + 1) + (flat + 1)
    w = None if weights is None else np.broadcast_to(weights, labels.shape).reshape(flat.shape).ravel()
    out = np.bincount(idx.ravel(), weights=w, minlength=I * (n_classes + 1))
    return out.reshape(I, n_classes + 1)[:, 1:].astype(np.float64)


# Scores equal up to rounding are ties: float sums depend on the order of addition
# (0.1 + 0.2 > 0.3), and that order must not pick the winner. Same test as
# np.isclose(score, row max): |max - score| <= TIE_ATOL + TIE_RTOL * |max|.
TIE_RTOL = 1e-9
TIE_ATOL = 1e-12


def near_max(scores: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
    """(I, C) bool: the entries within rounding of their row's maximum.

    ``candidates`` (I, C) bool restricts both the maximum and the result to those
    entries (rows without a candidate are all False).
    """
    if candidates is None:
        candidates = np.ones(scores.shape, dtype=bool)
    masked = np.where(candidates, scores, -np.inf)
    top = masked.max(axis=1, initial=-np.inf)[:, None]                 # (I, 1)
    with np.errstate(invalid="ignore"):                                # -inf - -inf rows
        close = np.abs(top - masked) <= TIE_ATOL + TIE_RTOL * np.abs(top)
    tied: np.ndarray = candidates & close & np.isfinite(top)
    return tied


def tied_classes(scores: np.ndarray) -> np.ndarray:
    """(I, C) -> (I, C) bool: the classes that share the row's top score (up to rounding).

    Only positive scores count: a row with no positive support has no candidate.
    Same test as ``near_max`` in three passes over (I, C): every score is <= the
    row max, so |max - score| <= tol reduces to score >= max - tol.
    """
    top = scores.max(axis=1, keepdims=True, initial=0.0)               # (I, 1)
    tied: np.ndarray = scores >= top - (TIE_ATOL + TIE_RTOL * np.abs(top))
    tied &= scores > 0
    return tied


def argmax_with_ties(scores: np.ndarray) -> np.ndarray:
    """(I, C) -> (I,) winning class per row; ABSTAIN where the row has no positive support.

    Tie rule ``first`` (the last resort of every policy): among the classes whose score
    equals the row maximum up to rounding (``tied_classes``), the lowest class code
    wins, i.e. the class name that sorts first. Other policies live in
    ``ensemble.voting.tiebreak``.
    """
    tied = tied_classes(scores)
    out: np.ndarray = np.argmax(tied, axis=1).astype(np.int32)  # first True per row
    out[~tied.any(axis=1)] = ABSTAIN
    return out


def normalise(scores: np.ndarray) -> np.ndarray:
    """Rows scaled to sum to 1; all-zero rows stay zero. (I, C) -> (I, C)."""
    total = scores.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: np.ndarray = np.where(total > 0, scores / np.where(total > 0, total, 1.0), 0.0)
    return out


def decide(scores: np.ndarray, **info: Any) -> Decision:
    """Turn per-class support into a Decision with the shared tie rule."""
    return Decision(labels=argmax_with_ties(scores), scores=normalise(scores), info=dict(info))


def from_arrays(
    labels: np.ndarray,
    classes: Sequence[str] | None = None,
    *,
    items: Sequence[str] | None = None,
    voters: Sequence[str] | None = None,
    gold: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
    probs: np.ndarray | None = None,
    valid: np.ndarray | None = None,
) -> VoteMatrix:
    """Build a VoteMatrix from already-encoded arrays (tests, benchmarks, library users).

    ``labels`` may be (I, V) or (I, V, S); ``classes`` defaults to "0".."C-1"
    zero-padded so that string order equals code order.
    """
    labels = np.asarray(labels, dtype=np.int32)
    if labels.ndim == 2:
        labels = labels[:, :, None]
        confidence = None if confidence is None else np.asarray(confidence, float)[:, :, None]
        probs = None if probs is None else np.asarray(probs, float)[:, :, None, :]
    I, V, _ = labels.shape
    if classes is None:
        top = int(max(labels.max(initial=0), -1 if gold is None else np.max(gold, initial=0))) + 1
        width = len(str(max(top - 1, 0)))
        classes = [str(c).zfill(width) for c in range(max(top, 1))]
    if list(classes) != sorted(classes):
        raise ValueError("classes must be given in sorted order (codes follow sorted names)")
    return VoteMatrix(
        labels=labels,
        items=tuple(items) if items is not None else tuple(str(i) for i in range(I)),
        voters=tuple(voters) if voters is not None else tuple(f"v{j}" for j in range(V)),
        encoder=LabelEncoder(tuple(classes)),
        confidence=None if confidence is None else np.asarray(confidence, dtype=np.float64),
        probs=None if probs is None else np.asarray(probs, dtype=np.float64),
        gold=None if gold is None else np.asarray(gold, dtype=np.int32),
        valid=None if valid is None else np.asarray(valid, dtype=bool),
    )
