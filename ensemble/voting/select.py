"""Greedy forward ensemble selection with replacement (Caruana et al. 2004).

Start from the empty ensemble -- or, with ``init=N``, from the N voters best on dev
(Caruana's "sorted initialization", which keeps one lucky voter from ending the
search in round one) -- then each round add the voter whose addition most
improves dev accuracy of the weighted vote, where a voter's weight is how many
times it has been added. Stop when no voter strictly improves dev accuracy, or
after ``max_rounds``. Adding a voter again is how it gets more weight, so the
result is a weighted vote with small integer weights, fitted directly to the
metric we report instead of to a likelihood.
"""
from __future__ import annotations

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.predictions.matrix import Decision, VoteMatrix, argmax_with_ties, support
from ensemble.voting import METHODS
from ensemble.voting.weighted import dev_items, weighted


def greedy_counts(per_voter: np.ndarray, gold: np.ndarray, max_rounds: int, init: int = 0) -> list[int]:
    """Voter indices in order of addition (the ``init`` sorted-initialization voters first).

    per_voter  (V, D, C) each voter's vote counts on the dev items
    gold       (D,) class codes
    Ties between candidates go to the lower voter index (np.argmax takes the first;
    the initial voters are sorted by dev accuracy with a stable sort), so the result is
    deterministic. Accuracy is counted in integers (no float ties).
    """
    V, D, C = per_voter.shape
    alone = (argmax_with_ties(per_voter.reshape(V * D, C)).reshape(V, D) == gold).sum(axis=1)  # (V,)
    chosen = [int(j) for j in np.argsort(-alone, kind="stable")[:init]]
    current = per_voter[chosen].sum(axis=0) if chosen else np.zeros((D, C))  # support of the ensemble
    best = int((argmax_with_ties(current) == gold).sum()) if chosen else 0   # empty: all ABSTAIN
    for _ in range(max_rounds):
        candidates = (current[None] + per_voter).reshape(V * D, C)
        right = (argmax_with_ties(candidates).reshape(V, D) == gold).sum(axis=1)  # (V,)
        j = int(np.argmax(right))
        if right[j] <= best:
            break
        best = int(right[j])
        current += per_voter[j]
        chosen.append(j)
    return chosen


@METHODS.register("select")
def select(m: VoteMatrix, *, dev: np.ndarray | None = None, max_rounds: int = 50, init: int = 0) -> Decision:
    """Weighted vote whose integer weights come from greedy selection on dev gold.

    Use with a few hundred dev items when some voters are redundant or harmful:
    selection drops them (weight 0) and repeats the useful ones. Needs ``dev``.
    Ties between candidate voters: lower voter index; ties between classes: the
    class that sorts first. Votes of unselected voters do not count, so an item
    only they voted on is ABSTAIN, as is an all-abstain item. ``init=N`` starts from
    the N best voters on dev, once each (N >= the number of voters: all of them).
    info = {"chosen": [voters in order of addition], "weights": {voter: count}}.
    """
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, (int, np.integer)) \
            or max_rounds < 1:
        raise EnsembleError(f"select: max_rounds must be a whole number >= 1, got {max_rounds!r}")
    if isinstance(init, bool) or not isinstance(init, (int, np.integer)) or init < 0:
        raise EnsembleError(f"select: init must be a whole number >= 0 (voters to start from), got {init!r}")
    idx = dev_items(m, dev, "select", "pass dev= a bool mask of items with gold answers")
    labels = m.labels[idx]                                       # (D, V, S)
    per_voter = np.stack([support(labels[:, j], m.n_classes) for j in range(m.n_voters)])
    chosen = greedy_counts(per_voter, m.gold[idx], int(max_rounds), int(init))
    if not chosen:
        raise EnsembleError(f"select: no voter gets any of the {len(idx)} dev items right, so "
                            "none can be selected: check the gold answers or use majority")
    counts = np.bincount(chosen, minlength=m.n_voters)          # (V,) weight = times chosen
    decision = weighted(m, weights=counts.astype(np.float64))
    info = {"chosen": [m.voters[j] for j in chosen],
            "weights": {v: int(c) for v, c in zip(m.voters, counts)}}
    return Decision(labels=decision.labels, scores=decision.scores, info=info)
