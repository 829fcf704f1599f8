"""Weighted vote: each voter's votes count with that voter's weight.

Weights are given (a mapping voter -> weight, or a sequence aligned with
``m.voters``) or fitted on the dev items as log-odds of each voter's accuracy:

    w_j = max(0, log((C - 1) * p_j / (1 - p_j)))

which is the Bayes-optimal weight for voters that are right with probability p_j
and otherwise pick one of the C - 1 wrong classes uniformly, independently of each
other (Nitzan & Paroush 1982). p_j is the Laplace-smoothed dev accuracy
(correct + 1) / (votes + C): one pseudo-vote per class, so a voter with no dev
votes sits exactly at chance 1/C and gets weight 0.

Why clip at 0: a voter below chance gets a *negative* log-odds weight, i.e. its
vote counts *against* the class it names. That only helps if it is wrong in the
same way on new data; on shifted data a noisy voter turned into an adversary can
flip answers the others got right. Weight 0 just ignores it.

The same machinery is reused by ``confidence`` (a weight per vote) and ``select``
(selection counts as weights), so every method shares ``support`` + ``decide`` and
the one tie rule: the class that sorts first wins.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.predictions.matrix import ABSTAIN, Decision, VoteMatrix, decide, support
from ensemble.voting import METHODS
from ensemble.voting.majority import vote_labels

# An accuracy of exactly 1 (or 0) would give an infinite log-odds; cap it here.
_P_EPS = 1e-6


def dev_items(m: VoteMatrix, dev: np.ndarray | None, method: str, fix: str) -> np.ndarray:
    """Indices (D,) of items in the ``dev`` mask that have a gold answer.

    EnsembleError when ``dev`` is missing, is not an (I,) bool mask, or selects no
    item with gold; ``fix`` says what to do instead.
    """
    if dev is None:
        raise EnsembleError(f"{method} fits on dev items but got dev=None: {fix}")
    dev = np.asarray(dev)
    if dev.dtype != bool or dev.shape != (m.n_items,):
        raise EnsembleError(f"{method}: dev must be a bool mask of shape ({m.n_items},) "
                            f"(one entry per item), got dtype {dev.dtype} shape {dev.shape}")
    idx = np.flatnonzero(dev & m.has_gold())
    if len(idx) == 0:
        raise EnsembleError(f"{method}: none of the {int(dev.sum())} dev items has a gold "
                            f"answer: {fix}")
    return idx


def log_odds_weights(accuracy: Sequence[float], n_classes: int) -> np.ndarray:
    """Accuracies (V,) in [0, 1] -> weights (V,) = max(0, log((C-1) p / (1-p))).

    Used for fitted dev accuracies and for held-out accuracies from a training
    manifest. p is capped to [1e-6, 1 - 1e-6] so a perfect voter gets a large but
    finite weight (about 13.8 + log(C-1)). At or below chance (p <= 1/C) -> 0.
    """
    p = np.asarray(accuracy, dtype=np.float64).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(p) | (p < 0) | (p > 1))
    if len(bad):
        raise EnsembleError(f"accuracy at position {bad[0]} is {p[bad[0]]}; "
                            "accuracies must be shares in [0, 1]")
    if n_classes < 2:
        raise EnsembleError(f"log-odds weights need at least 2 classes, got {n_classes}")
    p = np.clip(p, _P_EPS, 1 - _P_EPS)
    return np.maximum(0.0, np.log((n_classes - 1) * p / (1 - p)))


def fit_log_odds_weights(m: VoteMatrix, dev: np.ndarray | None) -> np.ndarray:
    """(V,) log-odds weights from each voter's Laplace-smoothed accuracy on dev gold.

    Each non-abstaining sample of voter j on a dev item is one trial; abstentions
    are not counted as wrong (abstaining is handled by not voting).
    """
    idx = dev_items(m, dev, "weighted",
                    "pass weights={voter: weight} or dev items with gold answers")
    labels = m.labels[idx]                                   # (D, V, S)
    gold = m.gold[idx][:, None, None]                        # (D, 1, 1)
    correct = (labels == gold).sum(axis=(0, 2))              # (V,)
    voted = (labels != ABSTAIN).sum(axis=(0, 2))             # (V,)
    p = (correct + 1.0) / (voted + m.n_classes)
    return log_odds_weights(p, m.n_classes)


def voter_weights(m: VoteMatrix, weights: Mapping[str, float] | Sequence[float]) -> np.ndarray:
    """User weights -> (V,) float array aligned with ``m.voters``; EnsembleError if invalid."""
    voters = list(m.voters)
    if isinstance(weights, Mapping):
        unknown = [str(v) for v in weights if v not in voters]
        if unknown:
            raise EnsembleError(f"Weights name unknown voter '{unknown[0]}'. "
                                f"Voters: {', '.join(voters)}")
        missing = [v for v in voters if v not in weights]
        if missing:
            raise EnsembleError(f"Weights miss voter(s) {', '.join(missing)}: give every voter "
                                "a weight (0 to ignore one)")
        values = [weights[v] for v in voters]
    elif isinstance(weights, (str, bytes)):
        raise EnsembleError(f"weights must map voter -> number, got the string {weights!r}")
    else:
        values = list(weights)
        if len(values) != len(voters):
            raise EnsembleError(f"Got {len(values)} weights for {len(voters)} voters "
                                f"({', '.join(voters)}): give one weight per voter")
    try:
        w = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise EnsembleError(f"weights must be numbers, got {values!r}") from None
    bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
    if len(bad):
        raise EnsembleError(f"Weight of voter '{voters[bad[0]]}' is {w[bad[0]]}: weights must "
                            "be finite and >= 0 (use 0 to ignore a voter)")
    return w


def weighted_decision(m: VoteMatrix, w: np.ndarray, *, samples: str = "each",
                      **info: Any) -> Decision:
    """Weighted plurality with weights ``w``: (V,) per voter or (I, V, S) per vote.

    samples="voter" first reduces each voter to one vote (see majority), so it only
    takes per-voter weights. Votes with weight 0 do not count: an item whose only
    votes have weight 0 is ABSTAIN, like an item with no votes.
    """
    votes = vote_labels(m.labels, m.n_classes, samples)     # (I, V, S) or (I, V, 1)
    if w.ndim == 1:
        w = w[None, :, None]                                 # (1, V, 1) broadcasts over items/samples
    return decide(support(votes, m.n_classes, w), **info)


@METHODS.register("weighted")
def weighted(m: VoteMatrix, *, dev: np.ndarray | None = None,
             weights: Mapping[str, float] | Sequence[float] | None = None,
             samples: str = "each") -> Decision:
    """Weighted plurality: voter j's votes count w_j each.

    Use when voters differ in quality and you have their accuracies (given
    ``weights``) or a few hundred dev items with gold (weights=None: log-odds
    weights fitted on ``dev``, see the module docstring). Uniform weights give
    exactly majority's decision. Ties: the class that sorts first wins;
    all-abstain items stay ABSTAIN. info["weights"] = {voter: weight}.
    """
    if weights is None:
        w = fit_log_odds_weights(m, dev)
        if not (w > 0).any():
            raise EnsembleError(f"weighted: every voter is at or below chance (1/{m.n_classes}) "
                                "on the dev items, so every log-odds weight is 0: use majority "
                                "or more dev items")
    else:
        w = voter_weights(m, weights)
        if not (w > 0).any():
            raise EnsembleError("weighted: every weight is 0, so no vote would count: give at "
                                "least one voter a positive weight")
    return weighted_decision(m, w, samples=samples,
                             weights={v: float(x) for v, x in zip(m.voters, w)})
