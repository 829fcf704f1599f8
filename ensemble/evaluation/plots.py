"""Figures for the HTML report (``ensemble.evaluation.html``): matplotlib Agg -> PNG bytes.

The numbers drawn come from ``evaluate`` / ``ablate`` results; the few per-bin or
per-pair arrays the report tables do not hold (reliability bins, the voter x voter
agreement matrix; the error-correlation one is ``metrics.error_correlation_matrix``)
are computed here by the same rules as
their summary in ``ensemble.evaluation.metrics`` (ECE bins; abstentions are not
disagreements but are errors), and the tests pin each summary against them.
"""
from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ensemble.evaluation.metrics import ECE_BINS, voter_answers
from ensemble.predictions.matrix import ABSTAIN, VoteMatrix


def png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # Agg canvas: no display, no pyplot global state
    return fig


# -- reliability ------------------------------------------------------------------
def reliability_bins(gold: np.ndarray, pred: np.ndarray, scores: np.ndarray,
                     n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per equal-width bin of the answer's score: item count, mean score, accuracy.

    gold, pred (E,) class codes; scores (E, C). Abstained items are left out, as in
    ``metrics.calibration``, so sum(count * |accuracy - confidence|) / sum(count) is its ECE.
    Empty bins hold NaN.
    """
    answered = pred != ABSTAIN
    conf = scores[np.flatnonzero(answered), pred[answered]]  # (A,)
    correct = (pred == gold)[answered].astype(float)
    bins = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(bins, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / count
    return {"count": count, "confidence": confidence, "accuracy": accuracy,
            "edges": np.linspace(0.0, 1.0, n_bins + 1)}


def reliability_figure(method: str, bins: Mapping[str, np.ndarray], ece: float | None) -> Figure:
    """Accuracy per score bin (bars) against the diagonal of perfect calibration."""
    fig = _figure(4.2, 4.0)
    ax = fig.add_subplot()
    edges, full = bins["edges"], bins["count"] > 0
    width = float(edges[1] - edges[0])
    # No legend (it would hide bars); the page's note says what bars, dots and diagonal are.
    ax.bar(edges[:-1][full], bins["accuracy"][full], width=width, align="edge", alpha=0.75, edgecolor="black")
    ax.plot(bins["confidence"][full], bins["accuracy"][full], "o", color="black", ms=3)
    ax.plot([0, 1], [0, 1], ls="--", color="grey")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("score of the answer given")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{method} — ECE " + ("–" if ece is None else f"{ece:.3f}"), fontsize=10)
    fig.tight_layout()
    return fig


# -- voters against each other ----------------------------------------------------------
def agreement_matrix(m: VoteMatrix) -> np.ndarray:
    """(V, V): share of the items both voters answered on which their answers agree.

    Each voter's answer is its plurality over samples; abstentions are not counted
    (as in ``metrics.mean_pairwise_disagreement``, whose value is 1 - the mean of the
    upper triangle). NaN where a pair shares no answered item.
    """
    A = voter_answers(m)  # (I, V)
    V = A.shape[1]
    out = np.full((V, V), np.nan)
    for j in range(V):
        for k in range(V):
            both = (A[:, j] != ABSTAIN) & (A[:, k] != ABSTAIN)
            if both.any():
                out[j, k] = float(np.mean(A[both, j] == A[both, k]))
    return out


def heatmap_figure(values: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str, *,
                   vmin: float, vmax: float, cmap: str, colorbar: str, integers: bool = False) -> Figure:
    """A labelled heatmap with each cell's value written in it (NaN cells: '–')."""
    n_rows, n_cols = values.shape
    fig = _figure(min(12.0, max(4.0, 1.2 + 0.55 * n_cols)), min(10.0, max(3.2, 1.4 + 0.45 * n_rows)))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values.astype(float)), vmin=vmin, vmax=vmax, cmap=cmap,
                      aspect="auto")
    fig.colorbar(image, ax=ax, label=colorbar, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n_cols), [_short(c) for c in cols], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n_rows), [_short(r) for r in rows], fontsize=8)
    small = n_rows <= 20 and n_cols <= 20  # numbers in cells only while they stay legible
    for (r, c), v in np.ndenumerate(values):
        if small:
            text = "–" if not math.isfinite(v) else (f"{int(v)}" if integers else f"{v:.2f}")
            ax.text(c, r, text, ha="center", va="center", fontsize=7,
                    color="white" if math.isfinite(v) and _dark(image.cmap(image.norm(v))) else "black")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def _dark(rgba: Any) -> bool:
    """Is this cell colour dark enough for white text? (relative luminance below one half)"""
    r, g, b = rgba[:3]
    return bool(0.2126 * r + 0.7152 * g + 0.0722 * b < 0.5)


def _short(label: str, limit: int = 24) -> str:
    """Long names cut in the middle: voter names often differ only at the end (…-seed3-r16)."""
    if len(label) <= limit:
        return label
    tail = (limit - 1) // 2
    return label[:limit - 1 - tail] + "…" + label[-tail:]


# -- per class, per group ------------------------------------------------------------------
def bars_figure(values: Mapping[str, Sequence[float | None]], categories: Sequence[str], title: str,
                ylabel: str) -> Figure:
    """Grouped bars: one group per category, one bar per series (missing values: no bar)."""
    fig = _figure(min(14.0, max(6.0, 3.0 + 0.45 * len(categories) * max(1, len(values)) ** 0.5)), 3.8)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(values))
    x = np.arange(len(categories))
    for s, (name, ys) in enumerate(values.items()):
        heights = [np.nan if y is None else float(y) for y in ys]
        ax.bar(x + (s - (len(values) - 1) / 2) * width, heights, width=width, label=_short(name))
    ax.set_xticks(x, [_short(c, 16) for c in categories], rotation=30 if len(categories) > 6 else 0,
                  ha="right" if len(categories) > 6 else "center", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: bars reach 1.0
    fig.tight_layout()
    return fig


def group_accuracy(groups: Sequence[str | None], eval_mask: np.ndarray, gold: np.ndarray,
                   labels: np.ndarray) -> dict[str, tuple[int, float]]:
    """{group: (n eval items, accuracy)} over the eval items that have a group; sorted by group.

    groups (I,) group per item (None: none); eval_mask (I,) bool; gold, labels (I,) codes.
    """
    out: dict[str, Any] = {}
    g = np.array([x if x is not None else "" for x in groups], dtype=object)
    has = eval_mask & (g != "")
    for name in sorted(set(g[has].tolist())):
        sel = has & (g == name)
        out[name] = (int(sel.sum()), float(np.mean(labels[sel] == gold[sel])))
    return out
