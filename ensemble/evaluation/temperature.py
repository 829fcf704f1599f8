"""Temperature scaling of a decision's scores, fitted on dev gold (Guo et al., 2017).

A voting method's ``Decision.scores`` (I, C) are support shares or mean probabilities:
they rank the classes, but nothing makes them calibrated (five voters give shares in
steps of 0.2; a LoRA trained for a few steps is over-confident). Temperature scaling is
the standard fix that cannot change a single answer: one scalar ``t`` per method,

    scaled[i, c] = softmax_c( log(max(scores[i, c], FLOOR)) / t )   over the item's valid classes

``t`` > 1 softens, ``t`` < 1 sharpens, and the order of the classes in each row (so the
argmax, so every decision and its accuracy) is unchanged. ``t`` minimises the mean
negative log-likelihood of the gold class on the dev items (never the items the scaled
scores are reported on), by a bounded 1-D search over log t: deterministic, no seed.

``FLOOR`` keeps a class nobody voted for at a finite logit (log 1e-4 = -9.2), so a
soft ``t`` can give it some mass: a vote share of 0 out of 5 is not a certainty. Rows
without support (abstained items, all zeros) stay all zeros, as ``metrics.calibration``
expects.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ensemble.evaluation.metrics import calibration
from ensemble.predictions.matrix import ABSTAIN

FLOOR = 1e-4
T_BOUNDS = (0.05, 50.0)


def scale(scores: np.ndarray, t: float, valid: np.ndarray | None = None) -> np.ndarray:
    """(I, C) ``scores`` tempered by ``t`` (see the module doc); ``valid`` (I, C) bool or None (all)."""
    scores = np.asarray(scores, dtype=np.float64)
    allowed = np.ones(scores.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    allowed = allowed | (scores > 0)         # a class with support is a class, whatever valid says
    live = scores.sum(axis=1) > 0            # (I,) rows with any support
    allowed[~live] = True                    # dead rows come out all zeros below; keep the math finite
    logit = np.log(np.maximum(scores, FLOOR)) / t
    logit = logit - np.max(np.where(allowed, logit, -np.inf), axis=1, keepdims=True)
    p = np.where(allowed, np.exp(logit), 0.0)
    return np.where(live[:, None], p / p.sum(axis=1, keepdims=True), 0.0)


def nll(scores: np.ndarray, gold: np.ndarray, t: float, valid: np.ndarray | None = None) -> float:
    """Mean -log p(gold) of the tempered ``scores`` over rows with support."""
    p = scale(scores, t, valid)[np.arange(len(gold)), gold]
    return float(-np.mean(np.log(np.maximum(p, 1e-300))))


def fit_temperature(scores: np.ndarray, gold: np.ndarray, valid: np.ndarray | None = None) -> float | None:
    """The ``t`` in ``T_BOUNDS`` minimising ``nll`` on the rows with gold and support; None
    when there is no such row (nothing to fit on)."""
    scores, gold = np.asarray(scores, dtype=np.float64), np.asarray(gold)
    keep = (gold != ABSTAIN) & (scores.sum(axis=1) > 0)
    if not keep.any():
        return None
    s, g = scores[keep], gold[keep]
    v = None if valid is None else np.asarray(valid, dtype=bool)[keep]
    from scipy.optimize import minimize_scalar  # on first use: see ensemble.isolate

    lo, hi = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
    res = minimize_scalar(lambda u: nll(s, g, float(np.exp(u)), v), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-4})
    return float(np.exp(res.x))


def tempered_calibration(dev_scores: np.ndarray, dev_gold: np.ndarray, eval_scores: np.ndarray,
                         eval_gold: np.ndarray, eval_pred: np.ndarray, *,
                         dev_valid: np.ndarray | None = None, eval_valid: np.ndarray | None = None
                         ) -> dict[str, Any] | None:
    """``t`` fitted on the dev rows, then ECE / Brier / log-loss of the tempered eval scores
    (``metrics.calibration``), as ``{"t", "n_fit", "ece", "brier", "log_loss", ...}``.
    None without a dev row to fit on."""
    t = fit_temperature(dev_scores, dev_gold, dev_valid)
    if t is None:
        return None
    n_fit = int(((np.asarray(dev_gold) != ABSTAIN) & (np.asarray(dev_scores).sum(axis=1) > 0)).sum())
    scaled = scale(eval_scores, t, eval_valid)
    return {"t": t, "fitted_on": "dev", "n_fit": n_fit, **calibration(eval_gold, eval_pred, scaled)}


def ece_text(row: dict[str, Any]) -> str:
    """A report row's ECE after temperature scaling, with its t: "0.041 (t=2.31)"; "–" without one."""
    t = row.get("temperature") or {}
    return "–" if t.get("ece") is None else f"{t['ece']:.3f} (t={t['t']:.2f})"
