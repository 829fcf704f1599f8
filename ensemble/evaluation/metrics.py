"""Metrics for one decision, the paired test between two, and voter diagnostics.

Everything here works on encoded arrays (class codes, ``ABSTAIN = -1``) and returns
plain JSON-safe dicts / floats. ``ensemble.evaluation.report.evaluate`` puts it together over a
VoteMatrix and the registered voting methods.

Abstentions: an ABSTAIN prediction is a wrong answer. It lowers accuracy, counts as
a miss in recall and adds nothing to precision (sklearn is called with the class
codes as ``labels``, and -1 is not one of them). A vote never asked (adaptive runs,
``VoteMatrix.asked``) is no prediction at all: see ``ensemble.evaluation.calls``.

Bootstrap intervals: resampling I items with replacement and counting the correct
ones is a Binomial(I, accuracy) draw; for a paired difference the counts of
(+1, 0, -1) per-item differences are a Multinomial draw. We draw those counts
directly: the same distribution as resampling item indices, in O(n_boot) memory
instead of O(n_boot * I).
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from ensemble.evaluation.calls import voter_asked
from ensemble.predictions.matrix import (
    ABSTAIN,
    Decision,
    VoteMatrix,
    argmax_with_ties,
    normalise,
    support,
)

# sklearn.metrics and scipy.stats are imported in the functions that use them: with pandas and pyarrow
# (sklearn imports both) they hold ~100 MB that the CLI's report printing would otherwise carry.
ECE_BINS = 15
LOG_LOSS_EPS = 1e-12


# -- one decision against gold ------------------------------------------------
def score_decision(gold: np.ndarray, pred: np.ndarray, n_classes: int, *,
                   scores: np.ndarray | None = None,
                   class_names: list[str] | tuple[str, ...] | None = None,
                   n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """All metrics of ``pred`` (I,) against ``gold`` (I,), both class codes; gold has no ABSTAIN.

    Macro averages run over the classes that occur in gold or in the predictions
    (sklearn's own default set), so a class absent from the scored items does not
    count as a zero; ``per_class`` lists every class. ``recall_micro`` equals
    accuracy; ``precision_micro`` is accuracy on the answered items.
    ``scores`` (I, C) adds calibration: ``ece``, ``brier``, ``log_loss``.
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    gold, pred = np.asarray(gold), np.asarray(pred)
    if gold.shape != pred.shape or gold.ndim != 1:
        raise ValueError(f"gold {gold.shape} and pred {pred.shape} must be equal (I,) arrays")
    if np.any(gold == ABSTAIN):
        raise ValueError("gold contains ABSTAIN: score only the items whose gold is known")
    names = list(class_names) if class_names is not None else [str(c) for c in range(n_classes)]
    codes = list(range(n_classes))
    n = len(gold)
    out: dict[str, Any] = {"n": n, "coverage": _mean(pred != ABSTAIN)}
    if n == 0:
        return out
    out["accuracy"] = float(accuracy_score(gold, pred))
    out["accuracy_ci"] = bootstrap_accuracy_ci(pred == gold, n_boot=n_boot, seed=seed)

    averages = (("macro", present_classes(gold, pred)), ("micro", codes), ("weighted", codes))
    for avg, labels in averages:
        p, r, f, _ = precision_recall_fscore_support(gold, pred, labels=labels, average=avg,
                                                     zero_division=0)
        out[f"{avg}_f1"] = float(f)
        out[f"precision_{avg}"], out[f"recall_{avg}"] = float(p), float(r)
    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=codes, zero_division=0)
    out["per_class"] = {names[c]: {"precision": float(p[c]), "recall": float(r[c]),
                                   "f1": float(f[c]), "support": int(s[c])} for c in codes}
    # Rows: gold class; columns: predicted class, then "abstain" (the last label, -1).
    cm = confusion_matrix(gold, pred, labels=codes + [ABSTAIN])[:n_classes]
    out["confusion"] = cm.tolist()
    out["confusion_columns"] = names + ["abstain"]
    if scores is not None:
        out.update(calibration(gold, pred, np.asarray(scores, dtype=np.float64)))
    return out


def present_classes(gold: np.ndarray, pred: np.ndarray) -> list[int]:
    """Class codes seen in gold or predicted: the classes macro averages run over."""
    return sorted(set(gold.tolist()) | set(pred[pred != ABSTAIN].tolist()))


def macro_f1(gold: np.ndarray, pred: np.ndarray) -> float:
    """Macro-F1 as in ``score_decision`` (ABSTAIN is a miss; classes seen only)."""
    from sklearn.metrics import f1_score

    return float(f1_score(gold, pred, labels=present_classes(gold, pred), average="macro",
                          zero_division=0))


def calibration(gold: np.ndarray, pred: np.ndarray, scores: np.ndarray,
                n_bins: int = ECE_BINS) -> dict[str, Any]:
    """ECE, multiclass Brier and log-loss of ``scores`` (I, C) against ``gold`` (I,).

    ECE: equal-width bins [0, 1/n_bins), ... [.., 1] on the score of the predicted
    class (the top score under the shared tie rule); abstained items are excluded and
    counted in ``ece_n_abstained``. Brier: mean over items of sum_c (score - onehot)^2
    (an abstained all-zero row costs 1). Log-loss: scores clipped at 1e-12 and
    renormalised, so an all-zero row becomes uniform.
    """
    from sklearn.metrics import brier_score_loss, log_loss

    I, C = scores.shape
    answered = pred != ABSTAIN
    conf = scores[np.flatnonzero(answered), pred[answered]]  # (A,) score of the answer given
    correct = (pred == gold)[answered]
    out: dict[str, Any] = {"ece": None, "ece_n_abstained": int(I - answered.sum())}
    if conf.size:
        bins = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
        count = np.bincount(bins, minlength=n_bins)
        gap = np.bincount(bins, weights=correct.astype(float), minlength=n_bins) \
            - np.bincount(bins, weights=conf, minlength=n_bins)  # per bin: sum(correct - conf)
        out["ece"] = float(np.abs(gap).sum() / count.sum())
    with warnings.catch_warnings():  # all-zero (abstained) rows do not sum to one: intended
        warnings.filterwarnings("ignore", message=".*do not sum to one.*")
        out["brier"] = float(brier_score_loss(gold, scores, labels=list(range(C)),
                                              scale_by_half=False))
    clipped = np.clip(scores, LOG_LOSS_EPS, None)
    clipped /= clipped.sum(axis=1, keepdims=True)
    out["log_loss"] = float(log_loss(gold, clipped, labels=list(range(C))))
    return out


def bootstrap_accuracy_ci(correct: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                          level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval [lo, hi] of the mean of ``correct`` (I,) bool.

    None when ``n_boot`` is 0 (no interval wanted) or there are no items.
    """
    n = len(correct)
    if n_boot <= 0 or n == 0:
        return None
    draws = np.random.default_rng(seed).binomial(n, float(np.mean(correct)), size=n_boot) / n
    return _percentiles(draws, level)


def paired_test(gold: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, *,
                n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Is ``pred_a`` more accurate than ``pred_b`` on the same items?

    McNemar's exact test: under no difference, each discordant item (exactly one of
    the two right) is a fair coin, so ``binomtest(n_a_only, n_a_only + n_b_only)``.
    ``delta_ci`` is the paired-bootstrap 95% interval of accuracy(a) - accuracy(b)
    (None when ``n_boot`` is 0).
    """
    from scipy.stats import binomtest

    a, b = np.asarray(pred_a) == gold, np.asarray(pred_b) == gold
    n, n_a_only, n_b_only = len(a), int(np.sum(a & ~b)), int(np.sum(~a & b))
    n_disc = n_a_only + n_b_only
    p_value = float(binomtest(n_a_only, n_disc, 0.5).pvalue) if n_disc else 1.0
    out: dict[str, Any] = {"test": "mcnemar-exact", "n": n, "n_a_only": n_a_only,
                           "n_b_only": n_b_only, "p_value": p_value,
                           "delta": None, "delta_ci": None}
    if n:
        out["delta"] = float((n_a_only - n_b_only) / n)
    if n and n_boot > 0:
        shares = np.array([n_a_only, n_b_only, n - n_disc]) / n
        counts = np.random.default_rng(seed).multinomial(n, shares, size=n_boot)  # (B, 3)
        out["delta_ci"] = _percentiles((counts[:, 0] - counts[:, 1]) / n, 0.95)
    return out


# -- single voters and how they relate ----------------------------------------
def voter_decisions(m: VoteMatrix) -> dict[str, Decision]:
    """Each voter on its own: the plurality of its S samples (shared tie rule).

    Scores are the mean of its per-sample ``probs`` where it has any (NaN rows
    skipped), else its vote shares.
    """
    out: dict[str, Decision] = {}
    for v, name in enumerate(m.voters):
        share = support(m.labels[:, v, :], m.n_classes)  # (I, C)
        labels, scores = argmax_with_ties(share), normalise(share)
        if m.probs is not None:
            p = m.probs[:, v]  # (I, S, C)
            has = ~np.isnan(p).any(axis=2)  # (I, S) sample gave a probability row
            mean = np.where(has[..., None], p, 0.0).sum(1) / np.maximum(has.sum(1), 1)[:, None]
            scores = np.where(has.any(1)[:, None], normalise(mean), scores)
        out[name] = Decision(labels=labels, scores=scores, info={"voter": name})
    return out


def voter_answers(m: VoteMatrix) -> np.ndarray:
    """(I, V) each voter's plurality answer (ABSTAIN where it gave none)."""
    return np.stack([d.labels for d in voter_decisions(m).values()], axis=1)


def oracle(m: VoteMatrix) -> np.ndarray:
    """(I,) bool: some sample of some voter is the gold answer (False without gold)."""
    if m.gold is None:
        return np.zeros(m.n_items, dtype=bool)
    hit: np.ndarray = (m.labels == m.gold[:, None, None]).any(axis=(1, 2)) & m.has_gold()
    return hit


def mean_pairwise_disagreement(m: VoteMatrix) -> float:
    """Mean over voter pairs of: among items both answered, the share where they differ.

    Abstentions are not disagreements. NaN with fewer than two voters or no shared answers.
    """
    if m.n_items == 0:
        return math.nan
    A = voter_answers(m)  # (I, V)
    rates = []
    for j, k in zip(*np.triu_indices(A.shape[1], k=1)):
        both = (A[:, j] != ABSTAIN) & (A[:, k] != ABSTAIN)
        if both.any():
            rates.append(np.mean(A[both, j] != A[both, k]))
    return float(np.mean(rates)) if rates else math.nan


def error_correlation_matrix(m: VoteMatrix) -> np.ndarray:
    """(V, V) Pearson correlation of the voters' error indicators on the gold items.

    An abstention is an error; an item a voter was not asked is no observation: with an
    asked mask each pair is correlated over the items both were asked. A voter always
    right or always wrong (on a pair's items) has no variance: NaN there.
    """
    V, keep = m.n_voters, m.has_gold()
    out = np.full((V, V), np.nan)
    if m.gold is None or not keep.any():
        return out
    errors = (voter_answers(m)[keep] != m.gold[keep, None]).astype(float)  # (G, V)
    if m.asked is None:
        ok = np.flatnonzero(errors.std(axis=0) > 0)
        if ok.size:
            out[np.ix_(ok, ok)] = np.atleast_2d(np.corrcoef(errors[:, ok], rowvar=False))
        return out
    asked = voter_asked(m)[keep]                                           # (G, V)
    for j, k in zip(*np.triu_indices(V)):
        a, b = errors[asked[:, j] & asked[:, k], j], errors[asked[:, j] & asked[:, k], k]
        if a.size and a.std() > 0 and b.std() > 0:
            out[j, k] = out[k, j] = np.corrcoef(a, b)[0, 1]
    return out


def error_correlation(m: VoteMatrix) -> float:
    """Mean pairwise error correlation (the upper triangle of ``error_correlation_matrix``).

    Pairs where a voter is always right or always wrong (zero variance) are skipped;
    NaN when no pair is left.
    """
    upper = error_correlation_matrix(m)[np.triu_indices(m.n_voters, k=1)]
    upper = upper[~np.isnan(upper)]
    return float(upper.mean()) if upper.size else math.nan


# -- helpers -------------------------------------------------------------------
def _mean(x: np.ndarray) -> float | None:
    return float(np.mean(x)) if len(x) else None


def _percentiles(draws: np.ndarray, level: float) -> list[float]:
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    return [float(lo), float(hi)]


def jsonable(x: Any) -> Any:
    """numpy -> Python, NaN/inf -> None, tuples -> lists, recursively; unknown objects -> str."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if x is None or isinstance(x, str):
        return x
    return str(x)


def __getattr__(name: str) -> Any:
    """``ensemble.evaluation.metrics.evaluate`` / ``Report`` live in ensemble.evaluation.report (which imports the
    voting methods); resolved lazily so the metric maths here imports without them."""
    if name in ("evaluate", "Report"):
        from ensemble.evaluation import report
        return getattr(report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
