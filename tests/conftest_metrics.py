"""A synthetic vote matrix for the metrics / report / ablation tests (imported, not a conftest)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ensemble.predictions.matrix import ABSTAIN, VoteMatrix, from_arrays


def synthetic(n_items: int, accs: Sequence[float], *, n_classes: int = 4, n_samples: int = 1,
              abstain: float = 0.05, no_gold: float = 0.0, seed: int = 0) -> VoteMatrix:
    """Voter v answers each sample right with probability accs[v], else a random wrong class.

    Confidence is higher on right answers; probs put the confidence on the answer and
    spread the rest evenly. A share ``no_gold`` of items has no gold answer.
    """
    rng = np.random.default_rng(seed)
    I, V, S, C = n_items, len(accs), n_samples, n_classes
    gold = rng.integers(0, C, I)
    right = rng.random((I, V, S)) < np.asarray(accs)[None, :, None]
    wrong = (gold[:, None, None] + rng.integers(1, C, (I, V, S))) % C  # never the gold class
    labels = np.where(right, gold[:, None, None], wrong)
    labels[rng.random((I, V, S)) < abstain] = ABSTAIN
    conf = np.clip(0.45 + 0.3 * right + rng.normal(0, 0.1, (I, V, S)), 0.3, 1.0)
    probs = np.broadcast_to(((1 - conf) / (C - 1))[..., None], (I, V, S, C)).copy()
    np.put_along_axis(probs, np.maximum(labels, 0)[..., None], conf[..., None], axis=3)
    probs[labels == ABSTAIN] = np.nan
    conf[labels == ABSTAIN] = np.nan
    gold[rng.random(I) < no_gold] = ABSTAIN
    classes = [chr(ord("A") + c) for c in range(C)]
    return from_arrays(labels, classes, gold=gold, confidence=conf, probs=probs)
