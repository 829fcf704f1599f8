"""Plurality vote: every vote counts once, the class with most votes wins.

The baseline every other method is measured against, and the right default when
nothing is known about the voters (no dev gold, no confidences). Ties go to the
class that sorts first (``ensemble.predictions.matrix.argmax_with_ties``); items on which every
vote abstains stay ABSTAIN.

``samples`` says how a voter's S samples per item count:

* ``"each"``  every sample is one vote (a voter with 5 samples casts 5 votes);
* ``"voter"`` each voter first takes the plurality of its own samples (same tie
  rule), then casts one vote. This is self-consistency per voter followed by a
  vote across voters, so a voter's internal disagreement cannot outweigh others.
"""
from __future__ import annotations

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.predictions.matrix import (
    ABSTAIN,
    Decision,
    VoteMatrix,
    argmax_with_ties,
    decide,
    support,
)
from ensemble.registry import unknown_name
from ensemble.voting import METHODS

SAMPLE_MODES = ("each", "voter")


def check_samples(samples: str) -> None:
    """EnsembleError (with did-you-mean) unless ``samples`` is one of SAMPLE_MODES."""
    if samples not in SAMPLE_MODES:
        raise EnsembleError(unknown_name("samples mode", samples, SAMPLE_MODES)
                            + " (option 'samples': 'each' counts every sample, "
                              "'voter' one vote per voter)")


def voter_labels(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(I, V, S) -> (I, V): each voter's plurality over its own samples.

    Same tie rule as every method (lowest class code wins); a voter whose samples
    all abstain abstains. Loops over voters only, so memory stays (I, C).
    """
    I, V, S = labels.shape
    if S == 1:
        return labels[:, :, 0]
    out = np.full((I, V), ABSTAIN, dtype=np.int32)
    for j in range(V):
        out[:, j] = argmax_with_ties(support(labels[:, j, :], n_classes))
    return out


def vote_labels(labels: np.ndarray, n_classes: int, samples: str) -> np.ndarray:
    """The votes that count under ``samples``: (I, V, S) for "each", (I, V, 1) for "voter"."""
    check_samples(samples)
    if samples == "each":
        return labels
    return voter_labels(labels, n_classes)[:, :, None]


@METHODS.register("majority")
def majority(m: VoteMatrix, *, dev: np.ndarray | None = None, samples: str = "each") -> Decision:
    """Plurality over all votes; ``dev`` is ignored (nothing is fitted).

    Use when voters are of similar quality or there is no gold to fit weights on.
    scores = each class's share of the counted votes. Ties: the class that sorts
    first wins. All-abstain items stay ABSTAIN.
    """
    votes = vote_labels(m.labels, m.n_classes, samples)
    return decide(support(votes, m.n_classes), samples=samples)
