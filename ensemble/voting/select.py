"""Greedy forward ensemble selection with replacement (Caruana et al. 2004).

Start from the empty ensemble -- or, with ``init=N``, from the N voters best on dev
(Caruana's "sorted initialization", which keeps one lucky voter from ending the
search in round one) -- then each round add the voter whose addition most
improves dev accuracy of the weighted vote, where a voter's weight is how many
times it has been added. Stop when no voter strictly improves dev accuracy, or
after ``max_rounds``. Adding a voter again is how it gets more weight, so the
result is a weighted vote with small integer weights, fitted directly to the
metric we report instead of to a likelihood.

Dev accuracy is counted under the same tie policy as the final vote, and voters
tied on it are ranked by name, so the selection never depends on voter order.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.predictions.matrix import Decision, VoteMatrix, support
from ensemble.voting import METHODS
from ensemble.voting.groups import (
    DEFAULT_GROUP_PRIOR,
    blend,
    check_group_options,
    fit_groups,
    own_share,
)
from ensemble.voting.majority import plurality
from ensemble.voting.tiebreak import (
    DEFAULT_TIE_BREAK,
    break_ties,
    check_tie_break,
    effective_tie_break,
    hash_keys,
    vote_confidence,
)
from ensemble.voting.weighted import dev_items, weighted


def greedy_counts(per_voter: np.ndarray, gold: np.ndarray, max_rounds: int, init: int = 0, *,
                  names: Sequence[str] | None = None, tie_break: str = DEFAULT_TIE_BREAK,
                  keys: np.ndarray | None = None,
                  per_voter_conf: np.ndarray | None = None) -> list[int]:
    """Voter indices in order of addition (the ``init`` sorted-initialization voters first).

    per_voter       (V, D, C) each voter's vote counts on the dev items
    gold            (D,) class codes
    names           (V,) voter names: voters equally good on dev are taken in name
                    order (default: position order), so voter order cannot matter
    keys            (D,) uint64 item hash keys, for tie_break="random"
    per_voter_conf  (V, D, C) each voter's summed vote confidence, for "confidence"
                    (an ensemble's key sums its distinct voters, unweighted)
    Accuracy is counted in integers (no float ties between candidates).
    """
    V, D, C = per_voter.shape
    rank = np.argsort(np.argsort(list(names) if names is not None else np.arange(V),
                                 kind="stable"), kind="stable")           # (V,) name order

    def right(support_: np.ndarray, conf_: np.ndarray | None) -> np.ndarray:
        """(n, D, C) candidate supports -> (n,) dev items each gets right."""
        n = support_.shape[0]
        labels = break_ties(support_.reshape(n * D, C), tie_break,
                            keys=None if keys is None else np.tile(keys, n),  # row k*D + d
                            tie_scores=None if conf_ is None else conf_.reshape(n * D, C))
        return np.asarray((labels.reshape(n, D) == gold).sum(axis=1))

    def best_voter(score: np.ndarray) -> int:
        """Highest ``score``; among equals the name that sorts first."""
        return int(np.lexsort((rank, -score))[0])

    alone = right(per_voter, per_voter_conf)                             # (V,)
    chosen = [int(j) for j in np.lexsort((rank, -alone))[:init]]
    in_ensemble = np.zeros(V, dtype=bool)
    in_ensemble[chosen] = True
    current = per_voter[chosen].sum(axis=0) if chosen else np.zeros((D, C))  # ensemble support
    conf = None if per_voter_conf is None else per_voter_conf[in_ensemble].sum(axis=0)
    best = int(right(current[None], None if conf is None else conf[None])[0]) if chosen else 0
    for _ in range(max_rounds):
        cand_conf = None if conf is None or per_voter_conf is None else \
            conf[None] + np.where(in_ensemble[:, None, None], 0.0, per_voter_conf)
        score = right(current[None] + per_voter, cand_conf)
        j = best_voter(score)
        if score[j] <= best:
            break
        best = int(score[j])
        current += per_voter[j]
        if conf is not None and per_voter_conf is not None and not in_ensemble[j]:
            conf += per_voter_conf[j]
        in_ensemble[j] = True
        chosen.append(j)
    return chosen


def select_counts(m: VoteMatrix, idx: np.ndarray, max_rounds: int, init: int,
                  on_dev: str) -> list[int]:
    """Voter indices in the order greedy selection on the dev items ``idx`` added them."""
    assert m.gold is not None
    labels = m.labels[idx]                                       # (D, V, S)
    per_voter = np.stack([support(labels[:, j], m.n_classes) for j in range(m.n_voters)])
    per_voter_conf = None
    if on_dev == "confidence":
        conf = vote_confidence(m, "select", idx)                 # (D, V, S)
        per_voter_conf = np.stack([support(labels[:, j], m.n_classes, conf[:, j])
                                   for j in range(m.n_voters)])
    keys = hash_keys([m.items[i] for i in idx]) if on_dev == "random" else None
    return greedy_counts(per_voter, m.gold[idx], max_rounds, init, names=m.voters,
                         tie_break=on_dev, keys=keys, per_voter_conf=per_voter_conf)


@METHODS.register("select")
def select(m: VoteMatrix, *, dev: np.ndarray | None = None, max_rounds: int = 50, init: int = 0,
           tie_break: str = DEFAULT_TIE_BREAK, per_group: bool = False,
           group_prior: float = DEFAULT_GROUP_PRIOR) -> Decision:
    """Weighted vote whose integer weights come from greedy selection on dev gold.

    Use with a few hundred dev items when some voters are redundant or harmful:
    selection drops them (weight 0) and repeats the useful ones. Needs ``dev``.
    Ties between candidate voters: the voter name that sorts first; ties between
    classes: ``tie_break``, both on dev and in the final vote. Votes of unselected
    voters do not count, so an item only they voted on is ABSTAIN, as is an
    all-abstain item. ``init=N`` starts from the N best voters on dev, once each
    (N >= the number of voters: all of them).
    info = {"chosen": [voters in order of addition], "weights": {voter: count}, ...}.

    ``per_group=True`` also runs the selection on each group's dev items
    (``ensemble.voting.groups``). Selection counts are a mixture over voters, so a
    group's weights are the convex blend (1 - a) global + a own, a = n / (n +
    group_prior), with its own counts rescaled to the global total first (only
    proportions matter to a plurality): a small group mostly keeps the global mix.
    A group where no voter gets a dev item right keeps the global counts.
    """
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, (int, np.integer)) \
            or max_rounds < 1:
        raise EnsembleError(f"select: max_rounds must be a whole number >= 1, got {max_rounds!r}")
    if isinstance(init, bool) or not isinstance(init, (int, np.integer)) or init < 0:
        raise EnsembleError(f"select: init must be a whole number >= 0 (voters to start from), "
                            f"got {init!r}")
    check_tie_break(tie_break, "select")
    check_group_options(per_group, group_prior, "select")
    on_dev = effective_tie_break(m, tie_break)                   # the policy the vote applies
    idx = dev_items(m, dev, "select", "pass dev= a bool mask of items with gold answers")
    assert m.gold is not None                                    # dev_items found gold
    chosen = select_counts(m, idx, int(max_rounds), int(init), on_dev)
    if not chosen:
        raise EnsembleError(f"select: no voter gets any of the {len(idx)} dev items right, so "
                            "none can be selected: check the gold answers or use majority")
    counts = np.bincount(chosen, minlength=m.n_voters)          # (V,) weight = times chosen
    info: dict[str, Any] = {"chosen": [m.voters[j] for j in chosen],
                            "weights": {v: int(c) for v, c in zip(m.voters, counts)}}
    global_w = counts.astype(np.float64)
    if not per_group:
        decision = weighted(m, weights=global_w, tie_break=tie_break)
        return Decision(labels=decision.labels, scores=decision.scores,
                        info=dict(decision.info, **info))

    def fit_group(group_idx: np.ndarray) -> np.ndarray:
        if own_share(len(group_idx), float(group_prior)) == 0.0:
            return global_w                                      # skip a fit that gets weight 0
        picked = select_counts(m, group_idx, int(max_rounds), int(init), on_dev)
        if not picked:
            return global_w
        own = np.bincount(picked, minlength=m.n_voters).astype(np.float64)
        return blend(global_w, own * (global_w.sum() / own.sum()), len(group_idx),
                     float(group_prior))

    item_w, group_info = fit_groups(m, idx, global_w, "select", fit_group)
    return plurality(m, item_w[:, :, None], tie_break=tie_break, method="select",
                     **info, **group_info, per_group=True, group_prior=float(group_prior))
