"""Plurality vote: every vote counts once, the class with most votes wins.

The baseline every other method is measured against, and the right default when
nothing is known about the voters (no dev gold, no confidences). Ties follow the
``tie_break`` policy (``ensemble.voting.tiebreak``; default ``first``: the class
that sorts first); items on
which every vote abstains stay ABSTAIN.

``samples`` says how a voter's S samples per item count:

* ``"each"``  every sample is one vote (a voter with 5 samples casts 5 votes);
* ``"voter"`` each voter first takes the plurality of its own samples (same tie
  policy; ``random`` draws from the item id and voter name), then casts one vote.
  This is self-consistency per voter followed by a vote across voters, so a
  voter's internal disagreement cannot outweigh others.

``plurality`` (weighted support + the shared tie policy) is what ``weighted``,
``confidence`` and ``select`` are built from.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.predictions.matrix import ABSTAIN, Decision, VoteMatrix, support
from ensemble.registry import unknown_name
from ensemble.voting import METHODS
from ensemble.voting.tiebreak import (
    DEFAULT_TIE_BREAK,
    break_ties,
    check_tie_break,
    decision,
    effective_tie_break,
    hash_keys,
    item_keys,
    vote_confidence,
    voter_vote_confidence,
)

SAMPLE_MODES = ("each", "voter")


def check_samples(samples: str) -> None:
    """EnsembleError (with did-you-mean) unless ``samples`` is one of SAMPLE_MODES."""
    if samples not in SAMPLE_MODES:
        raise EnsembleError(unknown_name("samples mode", samples, SAMPLE_MODES)
                            + " (option 'samples': 'each' counts every sample, "
                              "'voter' one vote per voter)")


def voter_labels(m: VoteMatrix, tie_break: str = DEFAULT_TIE_BREAK,
                 method: str = "majority") -> np.ndarray:
    """(I, V, S) votes -> (I, V): each voter's plurality over its own samples.

    Same tie policy as the vote across voters; ``random`` keys a voter's tie on
    hash(item) xor hash(voter name), so voters tied on one item draw independently.
    A voter whose samples all abstain abstains. Loops over voters: memory (I, C).
    """
    I, V, S = m.labels.shape
    if S == 1:
        return m.labels[:, :, 0]
    check_tie_break(tie_break, method)
    tie_break = effective_tie_break(m, tie_break)
    out = np.full((I, V), ABSTAIN, dtype=np.int32)
    for j in range(V):
        own = m.labels[:, j, :]                                          # (I, S)
        voter_key = hash_keys([m.voters[j]])[0]

        def keys(rows: np.ndarray, voter_key: np.uint64 = voter_key) -> np.ndarray:
            return item_keys(m, rows) ^ voter_key

        def tie_scores(rows: np.ndarray, j: int = j) -> np.ndarray:
            conf = vote_confidence(m, method, rows)[:, j, :]            # (n, S)
            return support(m.labels[rows, j, :], m.n_classes, conf)

        out[:, j] = break_ties(support(own, m.n_classes), tie_break, keys=keys,
                               tie_scores=tie_scores)
    return out


def vote_labels(m: VoteMatrix, samples: str, tie_break: str = DEFAULT_TIE_BREAK,
                method: str = "majority") -> np.ndarray:
    """The votes that count under ``samples``: (I, V, S) for "each", (I, V, 1) for "voter"."""
    check_samples(samples)
    if samples == "each":
        return m.labels
    return voter_labels(m, tie_break, method)[:, :, None]


def plurality(m: VoteMatrix, w: np.ndarray | None, *, samples: str = "each",
              tie_break: str = DEFAULT_TIE_BREAK, method: str = "majority",
              **info: Any) -> Decision:
    """Weighted plurality with weights ``w``: None (1 each), (V,) per voter or (I, V, S) per vote.

    samples="voter" first reduces each voter to one vote, so it only takes per-voter
    weights. ``info`` gains ``samples``. Votes with weight 0 do not count: an item whose only votes have weight
    0 is ABSTAIN, like an item with no votes. The ``confidence`` tie policy sums the
    confidences of the votes that count (weight > 0), unweighted.
    """
    check_tie_break(tie_break, method)
    votes = vote_labels(m, samples, tie_break, method)                  # (I, V, S) or (I, V, 1)
    if w is not None and w.ndim == 1:
        w = w[None, :, None]                                             # (1, V, 1)

    def counted_confidence(rows: np.ndarray) -> np.ndarray:
        """(n, C) summed confidence of the counted votes of the items ``rows``."""
        conf = vote_confidence(m, method, rows)                          # (n, V, S)
        if samples == "voter":
            conf = voter_vote_confidence(m.labels[rows], conf, votes[rows, :, 0])  # (n, V, 1)
        if w is not None:
            conf = np.where(np.broadcast_to(w, votes.shape)[rows] > 0, conf, 0.0)
        return support(votes[rows], m.n_classes, conf)

    return decision(m, support(votes, m.n_classes, w), tie_break, method,
                    tie_scores=counted_confidence, samples=samples, **info)


@METHODS.register("majority")
def majority(m: VoteMatrix, *, dev: np.ndarray | None = None, samples: str = "each",
             tie_break: str = DEFAULT_TIE_BREAK) -> Decision:
    """Plurality over all votes; ``dev`` is ignored (nothing is fitted).

    Use when voters are of similar quality or there is no gold to fit weights on.
    scores = each class's share of the counted votes. Ties: ``tie_break`` (see
    ``ensemble.voting.tiebreak``). All-abstain items stay ABSTAIN.
    """
    return plurality(m, None, samples=samples, tie_break=tie_break, method="majority")
