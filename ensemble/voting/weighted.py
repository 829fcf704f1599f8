"""Weighted vote: each voter's votes count with that voter's weight.

Weights are given (a mapping voter -> weight, or a sequence aligned with
``m.voters``) or fitted on the dev items as log-odds of each voter's accuracy
against its chance level:

    w_j = max(0, logit(p_j) - logit(c_j)),   logit(x) = log(x / (1 - x))

With C options everywhere, c_j = 1/C and this is log((C - 1) p_j / (1 - p_j)), the
Bayes-optimal weight for voters that are right with probability p_j and otherwise
pick one of the C - 1 wrong classes uniformly, independently of each other
(Nitzan & Paroush 1982). Items may have fewer options than the file has classes
(``m.valid``: 2-option true/false items next to 4-option ones), so c_j is the mean
of 1 / (options of the item) over the dev votes voter j cast: a coin-flip voter
on 2-option items sits at chance 1/2 and gets weight 0, not log 3.

p_j is the smoothed dev accuracy (correct + 1) / (votes + 1 / c_j): one correct
pseudo-vote in 1 / c_j (C pseudo-votes when every item has C options), so a voter
with no dev votes sits exactly at chance and gets weight 0.

Why clip at 0: a voter below chance gets a *negative* log-odds weight, i.e. its
vote counts *against* the class it names. That only helps if it is wrong in the
same way on new data; on shifted data a noisy voter turned into an adversary can
flip answers the others got right. Weight 0 just ignores it.

The same machinery (``majority.plurality``) is reused by ``confidence`` (a weight
per vote) and ``select`` (selection counts as weights), so every method shares
``support`` + the tie policy of ``ensemble.voting.tiebreak``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.predictions.matrix import ABSTAIN, Decision, VoteMatrix
from ensemble.voting import METHODS
from ensemble.voting.groups import DEFAULT_GROUP_PRIOR, check_group_options, fit_groups
from ensemble.voting.majority import plurality
from ensemble.voting.tiebreak import DEFAULT_TIE_BREAK

# An accuracy of exactly 1 (or 0) would give an infinite log-odds; cap it here.
_P_EPS = 1e-6
_FIT_FIX = "pass weights={voter: weight} or dev items with gold answers"


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


def _logit(p: np.ndarray) -> np.ndarray:
    return np.asarray(np.log(p / (1 - p)), dtype=np.float64)


def log_odds_weights(accuracy: Sequence[float] | np.ndarray, n_classes: int | None = None, *,
                     chance: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Accuracies (V,) in [0, 1] -> weights (V,) = max(0, logit(p) - logit(chance)).

    ``chance`` (V,) is each voter's chance level; None means 1/n_classes for every
    voter, i.e. max(0, log((C-1) p / (1-p))). Used for fitted dev accuracies and for
    held-out accuracies from a training manifest. p and chance are capped to
    [1e-6, 1 - 1e-6] so a perfect voter gets a large but finite weight (about
    13.8 + log(C-1)). At or below chance -> 0.
    """
    p = np.asarray(accuracy, dtype=np.float64).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(p) | (p < 0) | (p > 1))
    if len(bad):
        raise EnsembleError(f"accuracy at position {bad[0]} is {p[bad[0]]}; "
                            "accuracies must be shares in [0, 1]")
    if chance is None:
        if n_classes is None or n_classes < 2:
            raise EnsembleError(f"log-odds weights need at least 2 classes, got {n_classes}")
        c = np.full(p.shape, 1.0 / n_classes)
    else:
        c = np.asarray(chance, dtype=np.float64).reshape(-1)
        if c.shape != p.shape or not ((c > 0) & (c <= 1)).all():
            raise EnsembleError(f"chance levels must be one share in (0, 1] per accuracy, "
                                f"got {c.tolist()} for {len(p)} accuracies")
    p, c = np.clip(p, _P_EPS, 1 - _P_EPS), np.clip(c, _P_EPS, 1 - _P_EPS)
    weights: np.ndarray = np.maximum(0.0, _logit(p) - _logit(c))
    return weights


def item_chance(m: VoteMatrix, idx: np.ndarray) -> np.ndarray:
    """(n,) chance of a blind guess on the items ``idx``: 1 / (their number of options).

    Options come from ``m.valid``; without it (or for an item with no option
    marked) every class is an option.
    """
    if m.valid is None:
        return np.full(len(idx), 1.0 / m.n_classes)
    n_options = m.valid[idx].sum(axis=1)
    return 1.0 / np.where(n_options > 0, n_options, m.n_classes)


def vote_counts(m: VoteMatrix, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(correct, votes, chance_sum), each (V,), over each voter's samples on items ``idx``.

    Each non-abstaining sample is one trial; abstentions are not counted as wrong
    (abstaining is handled by not voting), and cells never asked (ABSTAIN with
    ``asked`` False) are no trial either. chance_sum adds 1 / (options) per trial.
    """
    assert m.gold is not None
    labels = m.labels[idx]                                   # (D, V, S)
    voted = labels != ABSTAIN                                # (D, V, S)
    correct = (labels == m.gold[idx][:, None, None]).sum(axis=(0, 2)).astype(np.float64)
    n_votes = voted.sum(axis=(0, 2)).astype(np.float64)
    chance_sum = np.einsum("dvs,d->v", voted, item_chance(m, idx))       # (V,)
    return correct, n_votes, chance_sum


def smoothed_accuracy(correct: np.ndarray, n_votes: np.ndarray, chance_sum: np.ndarray,
                      n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(p, chance), each (V,): p = (correct + 1) / (votes + 1 / chance), chance = mean
    1 / (options) over the trials (1 / C for a voter with none)."""
    chance = np.where(n_votes > 0, chance_sum / np.maximum(n_votes, 1e-300), 1.0 / n_classes)
    return (correct + 1.0) / (n_votes + 1.0 / chance), chance


def fit_log_odds_weights(m: VoteMatrix, dev: np.ndarray | None) -> np.ndarray:
    """(V,) log-odds weights from each voter's smoothed accuracy on dev gold."""
    idx = dev_items(m, dev, "weighted", _FIT_FIX)
    p, chance = smoothed_accuracy(*vote_counts(m, idx), m.n_classes)
    return log_odds_weights(p, m.n_classes, chance=chance)


def shrunk_group_weights(m: VoteMatrix, idx: np.ndarray, group_idx: np.ndarray,
                         group_prior: float) -> np.ndarray:
    """(V,) log-odds weights of one group, its counts shrunk toward the global ones.

    ``group_prior`` pseudo-votes per voter that look like the global dev votes (right
    with the global smoothed accuracy p_j, at the global chance c_j) join the
    group's own votes (a Beta prior centred on the global fit), then the usual
    smoothing applies: prior 0 is the group's own fit, prior -> inf the global fit
    (inf: exactly the global weights).
    """
    p_all, c_all = smoothed_accuracy(*vote_counts(m, idx), m.n_classes)
    if math.isinf(group_prior):
        return log_odds_weights(p_all, m.n_classes, chance=c_all)
    correct, n_votes, chance_sum = vote_counts(m, group_idx)
    p, chance = smoothed_accuracy(correct + group_prior * p_all, n_votes + group_prior,
                                  chance_sum + group_prior * c_all, m.n_classes)
    return log_odds_weights(p, m.n_classes, chance=chance)


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


@METHODS.register("weighted")
def weighted(m: VoteMatrix, *, dev: np.ndarray | None = None,
             weights: Mapping[str, float] | Sequence[float] | None = None,
             samples: str = "each", tie_break: str = DEFAULT_TIE_BREAK, per_group: bool = False,
             group_prior: float = DEFAULT_GROUP_PRIOR) -> Decision:
    """Weighted plurality: voter j's votes count w_j each.

    Use when voters differ in quality and you have their accuracies (given
    ``weights``) or a few hundred dev items with gold (weights=None: log-odds
    weights fitted on ``dev``, see the module docstring). Uniform weights give
    exactly majority's decision. Ties: ``tie_break`` (``ensemble.voting.tiebreak``);
    all-abstain items stay ABSTAIN. info["weights"] = {voter: weight}.

    ``per_group=True`` fits weights per item group (``m.groups``, see
    ``ensemble.voting.groups``): a group's accuracies get ``group_prior``
    pseudo-votes at the global accuracy, so a group with few dev items stays near
    the global weights. A group whose weights all come out 0 uses the global ones.
    """
    check_group_options(per_group, group_prior, "weighted")
    if weights is None:
        w = fit_log_odds_weights(m, dev)
        if not (w > 0).any():
            raise EnsembleError("weighted: every voter is at or below chance (1 / the options "
                                "of the dev items it answered), so every log-odds weight is 0: "
                                "use majority or more dev items")
    else:
        if per_group:
            raise EnsembleError("weighted: per_group=true fits weights on dev, but weights= "
                                "were given: drop one of them")
        w = voter_weights(m, weights)
        if not (w > 0).any():
            raise EnsembleError("weighted: every weight is 0, so no vote would count: give at "
                                "least one voter a positive weight")
    info: dict[str, Any] = {"weights": {v: float(x) for v, x in zip(m.voters, w)}}
    per_vote = w
    if per_group:
        idx = dev_items(m, dev, "weighted", _FIT_FIX)

        def fit_group(group_idx: np.ndarray) -> np.ndarray:
            own = shrunk_group_weights(m, idx, group_idx, float(group_prior))
            return own if (own > 0).any() else w

        item_w, group_info = fit_groups(m, idx, w, "weighted", fit_group)
        per_vote = item_w[:, :, None]                               # (I, V, 1) per item
        info.update(group_info, per_group=True, group_prior=float(group_prior))
    return plurality(m, per_vote, samples=samples, tie_break=tie_break, method="weighted",
                     **info)
