"""Confidence-weighted vote: each vote counts with its own confidence.

This is ``weighted`` with a weight per vote (cell) instead of per voter. When the
matrix carries per-class probabilities (``m.probs``, e.g. from scoring the options)
it becomes soft voting: each vote adds its whole probability vector, so a 0.51 vs
0.49 vote says "unsure" instead of counting as a full vote for one class.

``top_fraction`` < 1 keeps, per item, only the most confident share of its votes
(DeepConf, Fu et al. 2025): confident traces are more often right, and dropping the
unsure tail helps more than down-weighting it when many votes are noise.
"""
from __future__ import annotations

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.predictions.matrix import ABSTAIN, Decision, VoteMatrix, support
from ensemble.voting import METHODS
from ensemble.voting.majority import plurality
from ensemble.voting.tiebreak import DEFAULT_TIE_BREAK, check_tie_break, decision

# top_fraction * n is computed in floating point (0.7 * 10 = 7.000000000000001);
# subtract a hair before ceil so exact products are not rounded up.
_CEIL_EPS = 1e-9


def top_share(key: np.ndarray, voted: np.ndarray, top_fraction: float) -> np.ndarray:
    """(I, V, S) bool: the votes kept per item by ``top_fraction``.

    key    (I, V, S) ranking value (confidence), only read where ``voted``
    voted  (I, V, S) bool, the non-abstaining votes
    For an item with n votes, k = ceil(top_fraction * n) and every vote whose key
    is >= the item's k-th largest key is kept: ties at the threshold are all kept,
    so the result never depends on the order of voters or samples.
    """
    if top_fraction >= 1.0:
        return voted
    I = key.shape[0]
    flat = np.where(voted, key, -np.inf).reshape(I, -1)                # (I, V*S)
    n = voted.reshape(I, -1).sum(axis=1)                                # (I,)
    k = np.maximum(np.ceil(top_fraction * n - _CEIL_EPS).astype(np.int64), 1)
    ascending = np.sort(flat, axis=1)
    threshold = ascending[np.arange(I), flat.shape[1] - k]              # (I,) k-th largest
    kept: np.ndarray = voted & (key >= threshold[:, None, None])
    return kept


def _check_key(key: np.ndarray, voted: np.ndarray, what: str, fix: str) -> None:
    """EnsembleError when a counted vote has a NaN or out-of-range confidence."""
    missing = int((voted & np.isnan(key)).sum())
    if missing:
        raise EnsembleError(f"confidence: {missing} of {int(voted.sum())} votes have no "
                            f"{what} (NaN): {fix}")
    outside = int((voted & ((key < 0) | (key > 1))).sum())
    if outside:
        raise EnsembleError(f"confidence: {outside} votes have a {what} outside [0, 1]: "
                            "rescale them to probabilities")


@METHODS.register("confidence")
def confidence(m: VoteMatrix, *, dev: np.ndarray | None = None, top_fraction: float = 1.0,
               soft: bool | None = None, tie_break: str = DEFAULT_TIE_BREAK) -> Decision:
    """Votes weighted by their confidence; soft voting when probabilities exist.

    Use when voters report how sure they are (token log-probs, verbalised
    confidence, option scores) and that signal is calibrated enough to rank votes.
    soft=None: soft voting if ``m.probs`` exists, else confidence weights;
    soft=True requires probs; soft=False always uses ``m.confidence``.
    ``top_fraction`` in (0, 1]: per item keep the most confident share of its
    votes (ties at the cut all kept). Equal confidences give exactly majority's
    decision. A vote with confidence 0 does not count. Ties (sums equal up to
    rounding): ``tie_break``; ``tie_break='confidence'`` compares the summed
    confidences of the kept votes, which is the score itself when soft=False.
    All-abstain items stay ABSTAIN. ``dev`` is ignored.
    """
    check_tie_break(tie_break, "confidence")
    if not 0.0 < top_fraction <= 1.0:
        raise EnsembleError(f"confidence: top_fraction must be in (0, 1], got {top_fraction}")
    if soft is True and m.probs is None:
        raise EnsembleError("confidence: soft=True needs per-class probabilities, which this "
                            "vote matrix lacks: score the options or use soft=False")
    use_soft = m.probs is not None and soft is not False
    if m.confidence is None and not use_soft:
        raise EnsembleError("confidence: the vote matrix has neither confidences nor "
                            "probabilities: add a 'confidence' column or use majority")
    voted = m.labels != ABSTAIN                                          # (I, V, S)
    conf = m.confidence

    if not use_soft:
        assert conf is not None                                          # checked above
        _check_key(conf, voted, "confidence", "give every vote a confidence or use majority")
        keep = top_share(conf, voted, top_fraction)
        return plurality(m, np.where(keep, conf, 0.0), tie_break=tie_break,
                         method="confidence", soft=False, top_fraction=top_fraction)

    probs = m.probs
    assert probs is not None                                             # (I, V, S, C), use_soft
    lacking = int((voted & np.isnan(probs).any(axis=-1)).sum())
    if lacking:
        raise EnsembleError(f"confidence: {lacking} of {int(voted.sum())} votes have no "
                            "probabilities (NaN rows): pass soft=False to weight votes by "
                            "their confidence instead")
    # Rank votes by their reported confidence, or by their top probability if none.
    key = conf if conf is not None else np.where(voted[..., None], probs, 0.0).max(axis=-1)
    if top_fraction < 1.0:
        _check_key(key, voted, "confidence", "give every vote a confidence or top_fraction=1")
    keep = top_share(key, voted, top_fraction)
    scores = np.where(keep[..., None], probs, 0.0).sum(axis=(1, 2))    # (I, C)
    kept_key = np.where(keep & ~np.isnan(key), key, 0.0)               # (I, V, S)
    return decision(m, scores, tie_break, "confidence",
                    tie_scores=lambda rows: support(m.labels[rows], m.n_classes, kept_key[rows]),
                    soft=True, top_fraction=top_fraction)
