"""Tie-break policies: which class wins when several share the top score.

Every method scores the classes of each item and hands the (I, C) scores to
``decision`` here, so all of them share one tie rule. A tie is a set of classes
whose scores equal the row maximum up to rounding
(``ensemble.predictions.matrix.tied_classes``: float sums such as 0.1 + 0.2 vs 0.3
are ties). Policies, selected per method with ``tie_break=`` (``--option
majority.tie_break=random``):

* ``first``       the class that sorts first (scikit-learn's convention; favours "A").
* ``random``      a class drawn from a stable hash (blake2b) of the item id: the same
                  item always gets the same class whatever the row or voter order, and
                  across items every tied class is equally likely.
* ``confidence``  the class whose counted votes have the largest summed confidence
                  (probability of the voted class when a vote has no confidence);
                  still tied -> ``first``. A matrix with neither confidences nor
                  probabilities has nothing to sum: ``first`` (info says so).
* ``abstain``     tied items stay ABSTAIN (a submission then needs ``--fallback``).

No policy ever reads the order of rows or voters.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.predictions.matrix import (
    ABSTAIN,
    Decision,
    VoteMatrix,
    near_max,
    normalise,
    support,
    tied_classes,
)
from ensemble.registry import Registry, unknown_name

# Chosen by measurement on the bundled benchmark (experiments/tie_break.py,
# experiments/results/tie_break.json).
DEFAULT_TIE_BREAK = "first"

# policy(tied (n, C) bool with >= 2 True per row, keys (n,) uint64 | None,
#        tie_scores (n, C) | None) -> (n,) int32 class codes or ABSTAIN
Policy = Callable[[np.ndarray, "np.ndarray | None", "np.ndarray | None"], np.ndarray]
TIE_BREAKS: Registry[Policy] = Registry("tie_break")


def _first(tied: np.ndarray) -> np.ndarray:
    first: np.ndarray = np.argmax(tied, axis=1).astype(np.int32)      # first True per row
    return first


@TIE_BREAKS.register("first")
def _policy_first(tied: np.ndarray, keys: np.ndarray | None,
                  tie_scores: np.ndarray | None) -> np.ndarray:
    return _first(tied)


@TIE_BREAKS.register("random")
def _policy_random(tied: np.ndarray, keys: np.ndarray | None,
                   tie_scores: np.ndarray | None) -> np.ndarray:
    # The r-th tied class in class order, r = key mod (number tied): uniform over
    # the tied set because the keys are uniform 64-bit hashes.
    assert keys is not None, "tie_break='random' needs item keys"
    n_tied = tied.sum(axis=1).astype(np.uint64)
    r = (keys % n_tied).astype(np.int64)                               # (n,) in [0, n_tied)
    rank = np.cumsum(tied, axis=1) - 1                                  # (n, C) rank among tied
    picked: np.ndarray = np.argmax(tied & (rank == r[:, None]), axis=1).astype(np.int32)
    return picked


@TIE_BREAKS.register("confidence")
def _policy_confidence(tied: np.ndarray, keys: np.ndarray | None,
                       tie_scores: np.ndarray | None) -> np.ndarray:
    assert tie_scores is not None, "tie_break='confidence' needs summed confidences"
    return _first(near_max(tie_scores, tied))


@TIE_BREAKS.register("abstain")
def _policy_abstain(tied: np.ndarray, keys: np.ndarray | None,
                    tie_scores: np.ndarray | None) -> np.ndarray:
    return np.full(len(tied), ABSTAIN, dtype=np.int32)


def check_tie_break(tie_break: str, method: str) -> None:
    """EnsembleError with did-you-mean unless ``tie_break`` names a policy."""
    if tie_break not in TIE_BREAKS:
        raise EnsembleError(f"{method}: {unknown_name('tie_break', tie_break, TIE_BREAKS)} "
                            f"(option '{method}.tie_break')")


def hash_keys(ids: Sequence[str]) -> np.ndarray:
    """(n,) uint64: the first 8 bytes of blake2b(id), stable across runs and machines.

    Python's ``hash()`` is salted per process, so it would give another answer each run.
    """
    return np.array([int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(),
                                    "little") for i in ids], dtype=np.uint64)


# Per-row inputs of a policy: the full (I, ...) array, or a function of the tied
# rows' indices (n,) that computes just those rows (hashing 1M ids takes seconds).
RowData = np.ndarray | Callable[[np.ndarray], np.ndarray]


def _rows(data: RowData | None, rows: np.ndarray) -> np.ndarray | None:
    if data is None:
        return None
    return data(rows) if callable(data) else data[rows]


def item_keys(m: VoteMatrix, rows: np.ndarray) -> np.ndarray:
    """(n,) uint64 hash keys of the items ``rows`` of ``m``."""
    return hash_keys([m.items[i] for i in rows])


def break_ties(scores: np.ndarray, tie_break: str = DEFAULT_TIE_BREAK, *,
               keys: RowData | None = None, tie_scores: RowData | None = None) -> np.ndarray:
    """(I, C) scores -> (I,) int32 labels under the policy; ABSTAIN for no positive score.

    ``random`` needs ``keys``: (I,) uint64 hash keys per row; ``confidence`` needs
    ``tie_scores``: the (I, C) second key. Either may be a function of the tied
    rows' indices (n,) giving (n,) / (n, C), so only tied rows are computed.
    """
    return resolve(scores, tie_break, keys=keys, tie_scores=tie_scores)[0]


def resolve(scores: np.ndarray, tie_break: str, *, keys: RowData | None = None,
            tie_scores: RowData | None = None) -> tuple[np.ndarray, int]:
    """``break_ties`` that also returns how many rows were tied (before the policy)."""
    policy = TIE_BREAKS.get(tie_break)                                  # unknown name: error
    tied = tied_classes(scores)                                         # (I, C)
    n_tied = tied.sum(axis=1)
    labels = np.where(n_tied > 0, _first(tied), ABSTAIN).astype(np.int32)
    multi = np.flatnonzero(n_tied > 1)                                  # (n,) tied rows
    if tie_break == "first" or len(multi) == 0:
        return labels, len(multi)
    labels[multi] = policy(tied[multi],
                           _rows(keys, multi) if tie_break == "random" else None,
                           _rows(tie_scores, multi) if tie_break == "confidence" else None)
    return labels, len(multi)


def n_tied_items(scores: np.ndarray) -> int:
    """How many rows of (I, C) ``scores`` have two or more top classes."""
    return int((tied_classes(scores).sum(axis=1) > 1).sum())


# -- what the policies read from a vote matrix ------------------------------------
def effective_tie_break(m: VoteMatrix, tie_break: str) -> str:
    """The policy actually applied: ``confidence`` on a matrix with neither confidences
    nor probabilities has nothing to sum, so it is ``first`` (its own second rule)."""
    if tie_break == "confidence" and m.confidence is None and m.probs is None:
        return "first"
    return tie_break


def vote_confidence(m: VoteMatrix, method: str, rows: np.ndarray | None = None) -> np.ndarray:
    """(I, V, S) confidence of each vote for ``confidence`` tie-breaks (``rows``: (n,) only).

    ``m.confidence`` where given, else the vote's probability of the class it voted
    (``m.probs``); a vote with neither adds 0; abstentions are 0. EnsembleError when
    the matrix has neither (``effective_tie_break`` then never asks).
    """
    if m.confidence is None and m.probs is None:
        raise EnsembleError(f"{method}: tie_break='confidence' needs vote confidences or "
                            "probabilities, which this vote matrix lacks")
    at = slice(None) if rows is None else rows
    labels = m.labels[at]
    conf = np.full(labels.shape, np.nan) if m.confidence is None else m.confidence[at]
    if m.probs is not None:
        voted = np.take_along_axis(m.probs[at], np.maximum(labels, 0)[..., None], axis=-1)[..., 0]
        conf = np.where(np.isnan(conf), voted, conf)
    out: np.ndarray = np.where((labels != ABSTAIN) & ~np.isnan(conf), conf, 0.0)
    return out


def voter_vote_confidence(labels: np.ndarray, conf: np.ndarray, votes: np.ndarray) -> np.ndarray:
    """(I, V, 1) confidence of each voter's one vote: the mean over its samples that voted it.

    labels, conf (I, V, S); votes (I, V) the voter's vote (ABSTAIN -> 0).
    """
    agree = (labels == votes[..., None]) & (votes[..., None] != ABSTAIN)  # (I, V, S)
    total = np.where(agree, conf, 0.0).sum(axis=2)
    mean: np.ndarray = total / np.maximum(agree.sum(axis=2), 1)          # (I, V)
    return mean[..., None]


def decision(m: VoteMatrix, scores: np.ndarray, tie_break: str, method: str, *,
             tie_scores: Callable[[np.ndarray], np.ndarray] | None = None,
             **info: Any) -> Decision:
    """Per-class support (I, C) of ``m``'s items -> Decision under ``tie_break``.

    ``tie_scores(rows)`` gives the (n, C) summed confidence of the votes that count
    on the tied items ``rows``; only the ``confidence`` policy calls it. Default: the
    summed confidence of every vote of those items. ``info`` gains ``tie_break``
    and ``n_tied`` (items with several top classes, before the policy broke them);
    ``tie_break_requested`` too when the policy applied differs (see
    ``effective_tie_break``).
    """
    check_tie_break(tie_break, method)
    requested, tie_break = tie_break, effective_tie_break(m, tie_break)
    if requested != tie_break:
        info["tie_break_requested"] = requested

    def every_vote(rows: np.ndarray) -> np.ndarray:
        return support(m.labels[rows], m.n_classes, vote_confidence(m, method, rows))

    labels, n_tied = resolve(scores, tie_break, keys=lambda rows: item_keys(m, rows),
                             tie_scores=tie_scores if tie_scores is not None else every_vote)
    return Decision(labels=labels, scores=normalise(scores),
                    info=dict(info, tie_break=tie_break, n_tied=n_tied))


__all__ = ["DEFAULT_TIE_BREAK", "TIE_BREAKS", "break_ties", "check_tie_break", "decision",
           "effective_tie_break", "hash_keys", "item_keys", "n_tied_items", "resolve",
           "vote_confidence", "voter_vote_confidence"]
