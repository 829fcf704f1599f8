"""How accuracy grows with the number of voters, and what each voter adds.

For each k (default 1..K) every subset of k voters is run through each method when
there are at most ``cap`` of them, else ``cap`` distinct subsets drawn with a seeded
RNG (seeded per k, so a k's subsets do not depend on which other ks are asked for).
Methods see the whole sub-matrix (they may fit on ``dev``); accuracy and macro-F1
are measured on the eval items, as in ``ensemble.evaluation.report.evaluate``: outside dev,
with gold. Leave-one-out: each method with all voters vs. with one voter removed;
``delta = accuracy_without - accuracy_all``, so a positive delta means the voter hurts.

The protocol of ``evaluate`` holds here too (``ensemble.evaluation.protocol``): methods
run on the canonical (sorted) matrix with gold masked outside dev, so results do not
depend on row or voter order; options that name voters (``weights={voter: w}``) are cut
down to each subset's voters.

A method that refuses a subset (EnsembleError, e.g. weighted when every voter in it is
at chance on dev) makes ``ablate`` raise, naming the subset and the reason. With
``on_error="record"`` that subset is instead recorded as failed (``error``, counted in
``n_failed``) and left out of the statistics; a method failing on every subset raises.

On an adaptive run's matrix (``VoteMatrix.asked``) a vote never asked is absent: a
subset votes with the votes it was asked, and a single voter's accuracy is over the
eval items it was asked.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.evaluation.calls import share_right, voter_asked
from ensemble.evaluation.metrics import jsonable, macro_f1, voter_decisions
from ensemble.evaluation.protocol import (
    by_voter_name,
    canonical,
    gold_codes,
    mask_gold,
    require_dev,
    restrict_options,
)
from ensemble.evaluation.report import check_dev, check_methods
from ensemble.evaluation.splits import Split
from ensemble.io import atomic_write_bytes, atomic_write_text
from ensemble.predictions.matrix import VoteMatrix
from ensemble.voting import vote

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SUMMARY_FIELDS = ("method", "k", "n_subsets", "n_possible", "exhaustive", "n_failed",
                  "mean", "std", "min", "max", "p2_5", "p97_5", "macro_f1_mean")
LOO_FIELDS = ("method", "voter", "accuracy_all", "accuracy_without", "delta",
              "macro_f1_all", "macro_f1_without", "error")


@dataclass(frozen=True, eq=False)
class Ablation:
    """Accuracy over voter subsets per (method, k), leave-one-out deltas, single voters."""

    methods: tuple[str, ...]
    voters: tuple[str, ...]
    n_eval_items: int
    cap: int
    seed: int
    summary: tuple[dict[str, Any], ...]        # per (method, k), SUMMARY_FIELDS; stats of accuracy
    leave_one_out: tuple[dict[str, Any], ...]  # one row per (method, voter), LOO_FIELDS
    subsets: tuple[dict[str, Any], ...]        # per (method, subset): k, voters, accuracy, ...
    single_voters: dict[str, float | None]     # each voter's accuracy on the eval items it was asked

    def to_rows(self) -> list[dict[str, Any]]:
        """The per-(method, k) summary rows (what ablation.csv holds)."""
        return [dict(r) for r in self.summary]

    def to_dict(self) -> dict[str, Any]:
        mean = _mean_single(self.single_voters)
        out: dict[str, Any] = jsonable({
            "methods": self.methods, "voters": self.voters, "n_eval_items": self.n_eval_items,
            "cap": self.cap, "seed": self.seed, "single_voters": self.single_voters,
            "single_voter_mean": mean, "summary": self.summary,
            "leave_one_out": self.leave_one_out, "subsets": self.subsets,
        })
        return out

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ablation.csv, leave_one_out.csv, ablation.json, ablation.png (each atomically)."""
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise EnsembleError(f"{out}: exists and is not a folder. Give a folder for the "
                                "ablation outputs.")
        out.mkdir(parents=True, exist_ok=True)
        paths = {"csv": out / "ablation.csv", "leave_one_out": out / "leave_one_out.csv",
                 "json": out / "ablation.json", "png": out / "ablation.png"}
        text = {"csv": _csv(self.to_rows(), SUMMARY_FIELDS),
                "leave_one_out": _csv(self.leave_one_out, LOO_FIELDS),
                "json": json.dumps(self.to_dict(), indent=1, allow_nan=False)}
        for key, body in text.items():
            atomic_write_text(paths[key], body)
        atomic_write_bytes(paths["png"], lambda f: plot(self).savefig(f, format="png", dpi=120))
        return paths


def ablate(m: VoteMatrix, methods: Sequence[str] = ("majority",), *, dev: np.ndarray | Split | None = None,
           method_options: dict[str, dict[str, Any]] | None = None, cap: int = 2000, seed: int = 0,
           ks: Sequence[int] | None = None, on_error: str = "raise") -> Ablation:
    """Accuracy / macro-F1 of each method over subsets of k voters, plus leave-one-out."""
    methods = list(methods)
    if on_error not in ("raise", "record"):
        raise EnsembleError(f"ablation on_error={on_error!r}: use 'raise' or 'record'")
    given = check_dev(m, dev.dev_mask(m) if isinstance(dev, Split) else dev)
    options = by_voter_name(check_methods(methods, method_options), m.voters)
    require_dev(methods, options, given if given.any() else None, m.gold)
    m, order = canonical(m)
    dev_mask = given[order]
    eval_mask = m.has_gold() & ~dev_mask
    if not eval_mask.any():
        raise EnsembleError("ablation: no item outside dev has a gold answer, so there is "
                            "nothing to score. Load gold answers or leave some gold items out "
                            "of dev.")
    if not isinstance(cap, (int, np.integer)) or cap < 1:
        raise EnsembleError(f"ablation cap: got {cap!r}; give a whole number of subsets >= 1.")
    K, gold = m.n_voters, gold_codes(m)[eval_mask]
    ks = check_ks(ks, K)

    seen = mask_gold(m, dev_mask)  # what every method may see: gold on dev only
    cache: dict[tuple[int, ...], dict[str, dict[str, Any]]] = {}

    def run(subset: tuple[int, ...]) -> dict[str, dict[str, Any]]:
        """{method: {accuracy, macro_f1, error}} for these voter positions (run once each)."""
        if subset not in cache:
            sub = seen.select_voters(list(subset))
            opts = restrict_options(options, m.voters, sub.voters)
            cache[subset] = {n: _score(sub, n, opts.get(n, {}), dev_mask, eval_mask, gold, on_error)
                             for n in methods}
        return cache[subset]

    summary, subset_rows = [], []
    for k in ks:
        chosen, exhaustive = choose_subsets(K, k, cap, seed)
        results = [run(s) for s in chosen]
        for n in methods:
            summary.append(_summarise(n, k, math.comb(K, k), exhaustive, [r[n] for r in results]))
            subset_rows += [{"method": n, "k": k, "voters": [m.voters[v] for v in s], **r[n]}
                            for s, r in zip(chosen, results)]
    loo = _leave_one_out(methods, m.voters, run)
    _fail_if_never_ran(methods, cache)
    asked = voter_asked(m)                                          # (I, V): a vote never asked is absent
    singles = {name: share_right(d.labels, gold_codes(m), eval_mask & asked[:, j])
               for j, (name, d) in enumerate(voter_decisions(m).items())}
    return Ablation(methods=tuple(methods), voters=m.voters, n_eval_items=int(eval_mask.sum()),
                    cap=int(cap), seed=seed, summary=tuple(summary), leave_one_out=tuple(loo),
                    subsets=tuple(subset_rows), single_voters=singles)


def _score(sub: VoteMatrix, method: str, options: dict[str, Any], dev: np.ndarray,
           eval_mask: np.ndarray, gold: np.ndarray, on_error: str) -> dict[str, Any]:
    """Accuracy and macro-F1 of one method on one voter subset (``sub``: gold masked).

    A method may refuse a subset it cannot fit (weighted when every voter in it is
    at chance on dev): that raises, naming the subset, or with ``on_error="record"``
    the subset is recorded as failed.
    """
    try:
        pred = vote(sub, method, dev=dev, **options).labels[eval_mask]  # (E,)
    except EnsembleError as e:
        if on_error != "record":
            raise EnsembleError(f"ablation: method '{method}' failed on the voter subset "
                                f"{{{', '.join(sub.voters)}}}: {e}") from None
        return {"accuracy": None, "macro_f1": None, "error": str(e)}
    return {"accuracy": float(np.mean(pred == gold)), "macro_f1": macro_f1(gold, pred),
            "error": None}


def _summarise(method: str, k: int, n_possible: int, exhaustive: bool,
               results: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary row over the subsets of size k that ran (failed ones counted).

    mean/std/min/max/p2_5/p97_5 are of accuracy across subsets (std with ddof=0).
    """
    ok = [r for r in results if r["error"] is None]
    row = {"method": method, "k": k, "n_subsets": len(results), "n_possible": n_possible,
           "exhaustive": exhaustive, "n_failed": len(results) - len(ok)}
    if not ok:
        return {**row, **{f: None for f in SUMMARY_FIELDS if f not in row}}
    acc = np.array([r["accuracy"] for r in ok])
    lo, hi = np.percentile(acc, [2.5, 97.5])
    return {**row, "mean": float(acc.mean()), "std": float(acc.std()), "min": float(acc.min()),
            "max": float(acc.max()), "p2_5": float(lo), "p97_5": float(hi),
            "macro_f1_mean": float(np.mean([r["macro_f1"] for r in ok]))}


def _leave_one_out(methods: list[str], voters: tuple[str, ...],
                   run: Callable[[tuple[int, ...]], dict[str, dict[str, Any]]]
                   ) -> list[dict[str, Any]]:
    """Each method with all voters vs. without each one; delta > 0: the voter hurts."""
    rows, full = [], tuple(range(len(voters)))
    for n in methods:
        for v in range(len(voters) if len(voters) > 1 else 0):  # one voter: nothing to leave out
            a, b = run(full)[n], run(full[:v] + full[v + 1:])[n]
            failed = a["accuracy"] is None or b["accuracy"] is None
            delta = None if failed else b["accuracy"] - a["accuracy"]
            rows.append({"method": n, "voter": voters[v], "accuracy_all": a["accuracy"],
                         "accuracy_without": b["accuracy"], "delta": delta,
                         "macro_f1_all": a["macro_f1"], "macro_f1_without": b["macro_f1"],
                         "error": a["error"] or b["error"]})
    return rows


def _fail_if_never_ran(methods: list[str],
                       cache: dict[tuple[int, ...], dict[str, dict[str, Any]]]) -> None:
    """A method that failed on every subset has a problem of its own (bad options): say it."""
    for n in methods:
        errors = [r[n]["error"] for r in cache.values()]
        if all(errors):
            raise EnsembleError(f"ablation: method '{n}' failed on every voter subset; "
                                f"first error: {errors[0]}")


def choose_subsets(K: int, k: int, cap: int, seed: int) -> tuple[list[tuple[int, ...]], bool]:
    """All C(K, k) subsets (sorted positions) when <= cap, else ``cap`` distinct random ones."""
    if math.comb(K, k) <= cap:
        return list(itertools.combinations(range(K), k)), True
    rng = np.random.default_rng([seed, k])
    seen: dict[tuple[int, ...], None] = {}  # insertion-ordered set: draw order is the seeded order
    while len(seen) < cap:
        # (cap, k): the first k of a random permutation per row = a uniform random k-subset
        draws = np.sort(rng.random((cap, K)).argsort(axis=1)[:, :k], axis=1)
        for row in draws.tolist():
            seen.setdefault(tuple(row), None)
            if len(seen) == cap:
                break
    return list(seen), False


def check_ks(ks: Sequence[int] | None, K: int) -> list[int]:
    if ks is None:
        return list(range(1, K + 1))
    bad = [k for k in ks if not isinstance(k, (int, np.integer)) or not 1 <= k <= K]
    if bad or not ks:
        raise EnsembleError(f"ablation ks: {list(ks)} has {bad or 'no'} voter counts out of range; "
                            f"use whole numbers between 1 and {K} (the matrix has {K} voters).")
    return sorted({int(k) for k in ks})


def plot(ab: Ablation) -> Figure:
    """Mean accuracy vs k per method, 2.5-97.5% band across subsets, single-voter mean."""
    # Imported here, so that importing this module stays light.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for n in ab.methods:
        rows = [r for r in ab.summary if r["method"] == n and r["mean"] is not None]
        k = [r["k"] for r in rows]
        (line,) = ax.plot(k, [r["mean"] for r in rows], marker="o", label=n)
        ax.fill_between(k, [r["p2_5"] for r in rows], [r["p97_5"] for r in rows],
                        color=line.get_color(), alpha=0.15)
    ax.axhline(_mean_single(ab.single_voters), color="grey", ls="--", label="single voter (mean)")
    ax.set_xticks(sorted({r["k"] for r in ab.summary}))
    ax.set_xlabel("number of voters k")
    ax.set_ylabel(f"accuracy on {ab.n_eval_items} eval items")
    ax.set_title("Accuracy vs number of voters (band: 2.5-97.5% of subsets)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def _mean_single(single_voters: dict[str, float | None]) -> float:
    """Mean single-voter accuracy over the voters asked any eval item (NaN when none was)."""
    known = [a for a in single_voters.values() if a is not None]
    return float(np.mean(known)) if known else math.nan


def _csv(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


