"""Stacking: a conditional logit over the voters, fitted on dev gold.

For item i and class c the score is ``s_ic = sum_j w_j x_ijc`` with one weight per
voter, and P(answer = c | item i) is the softmax of s_i over the item's own options
(``m.valid`` when given, else all classes). Features:

* with ``m.probs``: x_ijc = (1/S_ij) sum_s log p_ijsc, probabilities clipped at 1e-6,
  abstaining samples contribute 0. With w_j = 1 for all j this is the product of
  the voters' distributions (a log-linear pool); fitting w calibrates how much each
  voter's log-probabilities are worth.
* without: x_ijc = share of voter j's S_ij samples that voted c (one-hot votes), which
  makes the model a weighted vote whose weights are fitted by likelihood.

S_ij is the number of voter j's samples that were *asked* on item i (S when the
matrix has no asked mask; ``VoteMatrix.asked``): an abstaining sample dilutes the
voter's shares (it was asked and gave nothing), a sample never asked is absent, so
a voter asked 2 of 4 samples counts like a voter with 2 samples. A voter not asked
at all has x_ij = 0, like one that abstained on every sample.

Weights are fitted by maximum likelihood with an L2 penalty ||w||^2 / (2C) using
scipy's L-BFGS-B and the analytic gradient. The objective is strictly convex, so
the fit does not depend on the starting point or on the order of voters.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.predictions.matrix import (
    ABSTAIN,
    Decision,
    VoteMatrix,
    asked_mask,
    support,
)
from ensemble.registry import unknown_name
from ensemble.voting import METHODS
from ensemble.voting.groups import (
    DEFAULT_GROUP_PRIOR,
    blend,
    check_group_options,
    fit_groups,
    own_share,
)
from ensemble.voting.tiebreak import DEFAULT_TIE_BREAK, check_tie_break, decision
from ensemble.voting.weighted import dev_items

FEATURES = ("auto", "probs", "votes")
_P_MIN = 1e-6          # log(0) would be -inf: a voter sure that c is wrong vetoes c forever
_CHUNK = 65_536        # items per prediction chunk: features are (chunk, V, C) floats


def _features(m: VoteMatrix, idx: np.ndarray, kind: str) -> np.ndarray:
    """(n, V, C) features x_ijc of the items ``idx``; ``kind`` is "probs" or "votes"."""
    labels = m.labels[idx]                                          # (n, V, S)
    n, V, S = labels.shape
    # (n, V, 1) samples asked per (item, voter), at least 1 so a voter never asked gives 0 / 1
    n_asked = np.maximum(asked_mask(m)[idx].sum(axis=2, keepdims=True), 1) if m.asked is not None else S
    if kind == "votes":
        shares: np.ndarray = support(labels.reshape(n * V, S), m.n_classes).reshape(n, V, -1) / n_asked
        return shares
    assert m.probs is not None                                      # _feature_kind checked
    logp = np.log(np.clip(m.probs[idx], _P_MIN, 1.0))               # (n, V, S, C)
    mean: np.ndarray = np.where((labels != ABSTAIN)[..., None], logp, 0.0).sum(axis=2) / n_asked
    return mean


def _valid(m: VoteMatrix, idx: np.ndarray) -> np.ndarray:
    """(n, C) bool: the options of each item (all classes when m.valid is None)."""
    if m.valid is None:
        return np.ones((len(idx), m.n_classes), dtype=bool)
    valid: np.ndarray = m.valid[idx]
    return valid


def _softmax(s: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Softmax of (n, C) scores over each row's valid classes; invalid -> 0, no valid -> row 0."""
    s = np.where(valid, s, -np.inf)
    top = np.max(s, axis=1, keepdims=True)
    e = np.exp(s - np.where(np.isfinite(top), top, 0.0))
    total = e.sum(axis=1, keepdims=True)
    return np.where(total > 0, e / np.where(total > 0, total, 1.0), 0.0)


def _feature_kind(m: VoteMatrix, features: str) -> str:
    """Resolve ``features`` and check the probabilities it needs; EnsembleError if unusable."""
    if features not in FEATURES:
        raise EnsembleError(unknown_name("stack features", features, FEATURES))
    kind = "probs" if features == "probs" or (features == "auto" and m.probs is not None) \
        else "votes"
    if kind == "votes":
        return kind
    if m.probs is None:
        raise EnsembleError("stack: features='probs' needs per-class probabilities, which this "
                            "vote matrix lacks: use features='votes'")
    voted = m.labels != ABSTAIN
    lacking = int((voted & np.isnan(m.probs).any(axis=-1)).sum())
    if lacking:
        raise EnsembleError(f"stack: {lacking} of {int(voted.sum())} votes have no "
                            "probabilities (NaN rows): pass features='votes' to stack their "
                            "labels instead")
    return kind


def fit_stack_weights(x: np.ndarray, gold: np.ndarray, valid: np.ndarray, C: float) -> np.ndarray:
    """Maximum-likelihood voter weights (V,) of the conditional logit.

    x (D, V, K) features, gold (D,) class codes, valid (D, K) bool, C > 0 the inverse
    L2 strength. Loss = -sum_i log softmax(s_i)[gold_i] + ||w||^2 / (2C).
    """
    from scipy.optimize import minimize  # on first use: see ensemble.isolate
    from scipy.special import logsumexp

    D, V, _ = x.shape
    x_gold = x[np.arange(D), :, gold]                               # (D, V)
    x_gold_sum = x_gold.sum(axis=0)                                 # (V,)

    def loss_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = np.where(valid, np.einsum("dvk,v->dk", x, w), -np.inf)  # (D, K)
        lse = logsumexp(s, axis=1)                                  # (D,)
        p = np.exp(s - lse[:, None])                                # (D, K), 0 where invalid
        loss = -(x_gold @ w - lse).sum() + w @ w / (2 * C)
        grad = -(x_gold_sum - np.einsum("dk,dvk->v", p, x)) + w / C
        return float(loss), grad

    result = minimize(loss_and_grad, np.zeros(V), jac=True, method="L-BFGS-B")
    w: np.ndarray = result.x
    return w


@METHODS.register("stack")
def stack(m: VoteMatrix, *, dev: np.ndarray | None = None, C: float = 1.0,
          features: str = "auto", tie_break: str = DEFAULT_TIE_BREAK, per_group: bool = False,
          group_prior: float = DEFAULT_GROUP_PRIOR) -> Decision:
    """Conditional-logit stacking of the voters, fitted on the ``dev`` gold.

    Use with probabilities from scoring the options (features="auto" picks them
    when ``m.probs`` exists) and a few hundred dev items: it learns how much each
    voter's log-probabilities are worth and gives calibrated scores. Weights may
    be negative. ``C``: inverse L2 strength (smaller = weights closer to 0).
    scores = softmax probabilities (rows sum to 1); all-abstain items are ABSTAIN
    with a zero row. Ties (equal up to rounding): ``tie_break``; its
    ``confidence`` policy sums the confidences of every vote.
    info["weights"] = {voter: weight}.

    ``per_group=True`` also fits the model on each group's dev items
    (``ensemble.voting.groups``) and uses (1 - a) w_global + a w_group, a = n / (n +
    group_prior): the posterior-mean compromise between a group's n items and a
    prior worth ``group_prior`` items centred on the global fit. A blend, not an L2
    pull toward w_global inside the fit, because its limits are exact (prior 0: the
    group's own fit; inf: the global one) and it needs no second tuning constant.
    """
    check_tie_break(tie_break, "stack")
    check_group_options(per_group, group_prior, "stack")
    if not (isinstance(C, (int, float)) and np.isfinite(C) and C > 0):
        raise EnsembleError(f"stack: C (inverse regularisation strength) must be > 0, got {C!r}")
    kind = _feature_kind(m, features)
    idx = dev_items(m, dev, "stack", "pass dev= a bool mask of items with gold answers")
    assert m.gold is not None                                       # dev_items found gold
    gold, valid = m.gold[idx], _valid(m, idx)
    outside = int((~valid[np.arange(len(idx)), gold]).sum())
    if outside:
        raise EnsembleError(f"stack: {outside} dev items have a gold answer that is not one of "
                            "their options (valid): fix the gold or the options")
    w = fit_stack_weights(_features(m, idx, kind), gold, valid, float(C))
    info: dict[str, Any] = {"weights": {v: float(x) for v, x in zip(m.voters, w)},
                            "features": kind}
    item_w: np.ndarray | None = None                                # (I, V) when per group
    if per_group:
        all_gold = m.gold                                           # (I,), narrowed above

        def fit_group(group_idx: np.ndarray) -> np.ndarray:
            if own_share(len(group_idx), float(group_prior)) == 0.0:
                return w                                            # skip a fit that gets weight 0
            own = fit_stack_weights(_features(m, group_idx, kind), all_gold[group_idx],
                                    _valid(m, group_idx), float(C))
            return blend(w, own, len(group_idx), float(group_prior))

        item_w, group_info = fit_groups(m, idx, w, "stack", fit_group)
        info.update(group_info, per_group=True, group_prior=float(group_prior))

    scores = np.zeros((m.n_items, m.n_classes))
    for start in range(0, m.n_items, _CHUNK):
        chunk = np.arange(start, min(start + _CHUNK, m.n_items))
        x = _features(m, chunk, kind)                               # (n, V, K)
        if item_w is None:
            s = np.einsum("ivk,v->ik", x, w)
        else:
            s = np.einsum("ivk,iv->ik", x, item_w[chunk])
        scores[chunk] = _softmax(s, _valid(m, chunk))
    scores[~(m.labels != ABSTAIN).any(axis=(1, 2))] = 0.0          # all-abstain -> ABSTAIN
    return decision(m, scores, tie_break, "stack", **info)
