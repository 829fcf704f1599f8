"""The vote matrix: the one data structure every voting method reads.

Labels are encoded once into integers; ``ABSTAIN = -1`` marks a missing or
unparseable vote. Shapes (I items, V voters, S samples per voter, C classes):

    labels      (I, V, S) int32    class code or ABSTAIN
    confidence  (I, V, S) float64  in [0, 1]; NaN where the vote gave none   (optional)
    probs       (I, V, S, C) float64  per-class probability; NaN rows where absent (optional)
    gold        (I,) int32         class code or ABSTAIN where unknown       (optional)
    valid       (I, C) bool        which classes are options of each item    (optional)
    groups      I strings          each item's group (subject / category / task; "" = none) (optional)
    asked       (I, V, S) bool     False where the vote was never asked (adaptive runs; optional,
                                   None = every cell was asked)

A cell that was not asked holds ``ABSTAIN`` (so it adds to no class's support) with
``asked`` False and NaN confidence / probs; an abstention is ``ABSTAIN`` where the vote
*was* asked (``abstained``). Methods and metrics treat a not-asked vote as absent: it
is neither a vote, nor an abstention, nor an error.

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

from ensemble.predictions.scores import (
    ABSTAIN,
    TIE_ATOL,
    TIE_RTOL,
    argmax_with_ties,
    near_max,
    normalise,
    support,
    tied_classes,
)

# Re-exported: the arithmetic on label codes lives in scores.py, imported from here for years.
__all__ = [
    "ABSTAIN", "TIE_ATOL", "TIE_RTOL", "Decision", "LabelEncoder", "VoteMatrix", "abstained",
    "argmax_with_ties", "asked_mask", "decide", "from_arrays", "near_max", "normalise", "support",
    "tied_classes",
]


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
    asked: np.ndarray | None = None

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
        if self.asked is not None:
            assert self.asked.shape == (I, V, S) and self.asked.dtype == bool, "asked must be (I, V, S) bool"
            assert (self.labels[~self.asked] == ABSTAIN).all(), "a not-asked cell must hold ABSTAIN"

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
            asked=None if self.asked is None else self.asked[idx],
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
            asked=None if self.asked is None else self.asked[:, idx],
        )

    def select_samples(self, samples: Sequence[int]) -> VoteMatrix:
        """Keep these sample indices of every voter, in this order."""
        idx = np.array(samples, dtype=np.intp)
        return replace(
            self,
            labels=self.labels[:, :, idx],
            confidence=None if self.confidence is None else self.confidence[:, :, idx],
            probs=None if self.probs is None else self.probs[:, :, idx],
            asked=None if self.asked is None else self.asked[:, :, idx],
        )

    def decode(self, codes: Iterable[int]) -> list[str | None]:
        return self.encoder.decode(codes)


def asked_mask(m: VoteMatrix) -> np.ndarray:
    """(I, V, S) bool: the cells whose vote was asked (all True when ``m.asked`` is None)."""
    if m.asked is None:
        return np.ones(m.labels.shape, dtype=bool)
    mask: np.ndarray = m.asked
    return mask


def abstained(m: VoteMatrix) -> np.ndarray:
    """(I, V, S) bool: asked cells without a counted vote (not-asked cells are not abstentions)."""
    out: np.ndarray = m.labels == ABSTAIN
    if m.asked is not None:
        out &= m.asked
    return out


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
    asked: np.ndarray | None = None,
) -> VoteMatrix:
    """Build a VoteMatrix from already-encoded arrays (tests, benchmarks, library users).

    ``labels`` may be (I, V) or (I, V, S); ``classes`` defaults to "0".."C-1"
    zero-padded so that string order equals code order. ``asked`` (same shape as
    ``labels``, bool) marks the asked cells; not-asked cells are set to ABSTAIN, with NaN
    confidence and probs, whatever ``labels`` held there.
    """
    labels = np.asarray(labels, dtype=np.int32)
    if labels.ndim == 2:
        labels = labels[:, :, None]
        confidence = None if confidence is None else np.asarray(confidence, float)[:, :, None]
        probs = None if probs is None else np.asarray(probs, float)[:, :, None, :]
        asked = None if asked is None else np.asarray(asked, dtype=bool)[:, :, None]
    confidence = None if confidence is None else np.asarray(confidence, dtype=np.float64)
    probs = None if probs is None else np.asarray(probs, dtype=np.float64)
    if asked is not None:
        asked = np.asarray(asked, dtype=bool)
        if asked.shape != labels.shape:
            raise ValueError(f"asked has shape {asked.shape}; it must match labels {labels.shape}")
        labels = np.where(asked, labels, ABSTAIN).astype(np.int32)
        confidence = None if confidence is None else np.where(asked, confidence, np.nan)
        probs = None if probs is None else np.where(asked[..., None], probs, np.nan)
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
        confidence=confidence,
        probs=probs,
        gold=None if gold is None else np.asarray(gold, dtype=np.int32),
        valid=None if valid is None else np.asarray(valid, dtype=bool),
        asked=asked,
    )
