"""Calls: which votes were asked, and what per-voter numbers may count.

An adaptive run (issue 11) stops asking for votes on an item once its answer is
decided, so its vote matrix carries ``asked`` (I, V, S): False where a vote was never
asked. Such a vote is *absent*: not a vote, not an abstention, not an error. So

* a voter's own metrics (accuracy, coverage, its row in the report, the best-voter
  baseline) are computed on the items it was asked (at least one sample);
* abstain counts and rates count asked cells only;
* the report gains a ``calls`` section: calls made, possible, saved, and each voter's
  coverage (share of its (item, sample) cells asked).

A matrix without ``asked`` (every run that is not adaptive) has every cell asked, and
every function here gives what the plain code gave before.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ensemble.predictions.matrix import VoteMatrix, abstained, asked_mask

ABSENT_NOTE = ("Votes that were not asked (the adaptive run stopped before them) are treated as absent: "
               "never counted as a vote, an abstention or an error. Each voter's own metrics use the "
               "items it was asked.")


def voter_asked(m: VoteMatrix) -> np.ndarray:
    """(I, V) bool: voter j was asked at least one sample of item i."""
    asked: np.ndarray = np.asarray(asked_mask(m).any(axis=2))
    return asked


def abstain_counts(m: VoteMatrix) -> dict[str, int]:
    """{voter: asked (item, sample) cells without an answer}; a cell never asked is not counted."""
    per_voter = abstained(m).sum(axis=(0, 2))                          # (V,)
    return {v: int(n) for v, n in zip(m.voters, per_voter)}


def calls(m: VoteMatrix) -> dict[str, Any] | None:
    """The report's ``calls`` section; None when the matrix has no asked mask (all asked).

    made / possible count (item, voter, sample) cells over every item (dev ones too);
    saved = possible - made; saved_fraction = saved / possible (None for an empty matrix);
    coverage {voter: share of its I * S cells asked}; abstain_rate {voter: share of its
    asked cells without an answer} (None for a voter never asked).
    """
    if m.asked is None:
        return None
    asked = asked_mask(m)                                              # (I, V, S)
    made, possible = int(asked.sum()), int(asked.size)
    per_voter = asked.sum(axis=(0, 2))                                 # (V,) asked cells
    cells = m.n_items * m.n_samples                                    # per voter
    absent = abstained(m).sum(axis=(0, 2))                             # (V,)
    return {
        "made": made, "possible": possible, "saved": possible - made,
        "saved_fraction": (possible - made) / possible if possible else None,
        "coverage": {v: (int(n) / cells if cells else None) for v, n in zip(m.voters, per_voter)},
        "abstain_rate": {v: (int(a) / int(n) if n else None)
                         for v, a, n in zip(m.voters, absent, per_voter)},
        "note": ABSENT_NOTE,
    }


def share_right(labels: np.ndarray, gold: np.ndarray, mask: np.ndarray) -> float | None:
    """Accuracy of ``labels`` (I,) against ``gold`` (I,) on the items of ``mask`` (None if none)."""
    n = int(mask.sum())
    return float(np.sum(labels[mask] == gold[mask]) / n) if n else None
