"""Which tie-break policy should be the default? Every method x every policy, measured.

    python experiments/tie_break.py --run runs/quickstart          # a `vote run` output folder
    python experiments/tie_break.py --predictions P.jsonl --gold G.jsonl [--dev-fraction 0.3]
                                    [--repeats 20]

Data. ``--run DIR`` reads DIR/predictions.jsonl (the run's store) and the run's own
splits DIR/data/dev.jsonl and DIR/data/test.jsonl (gold answers and each item's
options, as ``vote run`` builds its matrix). ``--predictions`` + ``--gold`` take
the dev split ``vote eval --fit-on dev`` draws (``ensemble.evaluation.splits``: whole
problems by a seeded hash, so the sub-questions of one problem stay together and the
split never depends on row order). On small files one split is noisy: ``--repeats R``
measures R splits (seeds seed .. seed+R-1) and averages them. Loading, splits and
cross-fitting are shared with per_group.py (experiments/run_data.py).

Measurement. For every registered method and every policy in TIE_BREAKS:

* dev accuracy, used to pick the default. Methods that fit on gold (weighted,
  select, stack) are cross-fitted within dev (2 folds by hash: fit on one half,
  score the other), so their dev accuracy is out-of-sample like the others';
* test accuracy of the method fitted on all of dev (what ``vote run`` reports);
* tied items (several classes share the top score up to rounding) on dev and
  test, accuracy on the tied test items, and how often the tie went to the class
  that sorts first. With repeats: accuracies averaged, tied items summed.

Choice. The default is the policy with the best mean dev accuracy over the
methods that ran under every policy (and over the repeats); ``first`` stays
unless another policy is strictly better. Writes experiments/results/tie_break.json and prints a table.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from run_data import accuracy, cross_fit, load, parser, write_report

from ensemble.errors import EnsembleError
from ensemble.predictions.matrix import VoteMatrix, tied_classes
from ensemble.voting import METHODS, vote
from ensemble.voting.tiebreak import DEFAULT_TIE_BREAK, TIE_BREAKS

RESULTS = Path(__file__).resolve().parent / "results" / "tie_break.json"
FITTED = {"weighted", "select", "stack"}


def dev_predictions(m: VoteMatrix, method: str, dev: np.ndarray, policy: str,
                    seed: int) -> np.ndarray:
    """(I,) labels whose dev entries are out-of-sample (2-fold cross-fit for fitted methods)."""
    if method not in FITTED:
        return vote(m, method, dev=dev, tie_break=policy).labels
    return cross_fit(m, method, dev, seed, tie_break=policy)


def tie_facts(m: VoteMatrix, scores: np.ndarray, labels: np.ndarray,
              mask: np.ndarray) -> dict[str, Any]:
    """Tied items among ``mask``: count, accuracy, and how often the first tied class won."""
    tied = tied_classes(scores)                                       # (I, C)
    is_tied = (tied.sum(axis=1) > 1) & mask
    first = np.argmax(tied, axis=1)
    n = int(is_tied.sum())
    assert m.gold is not None
    return {"n_tied": n,
            "tied_accuracy": float((labels == m.gold)[is_tied].mean()) if n else None,
            "tied_to_first": float((labels == first)[is_tied].mean()) if n else None}


def measure(m: VoteMatrix, dev: np.ndarray, seed: int) -> dict[str, dict[str, Any]]:
    test = ~dev & m.has_gold()
    out: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        out[method] = {}
        for policy in TIE_BREAKS:
            try:
                d = vote(m, method, dev=dev, tie_break=policy)
                dev_labels = dev_predictions(m, method, dev, policy, seed)
            except EnsembleError as e:
                out[method][policy] = {"error": str(e)}
                continue
            out[method][policy] = {
                "dev_accuracy": accuracy(m, dev_labels, dev),
                "test_accuracy": accuracy(m, d.labels, test),
                "dev_n_tied": tie_facts(m, d.scores, d.labels, dev)["n_tied"],
                "test": tie_facts(m, d.scores, d.labels, test)}
    return out


def policy_means(results: dict[str, dict[str, Any]],
                 methods: list[str]) -> dict[str, dict[str, float]]:
    """Mean dev / test accuracy per policy over ``methods``."""
    return {p: {"dev_accuracy": float(np.mean([results[k][p]["dev_accuracy"] for k in methods])),
                "test_accuracy": float(np.mean([results[k][p]["test_accuracy"] for k in methods]))}
            for p in TIE_BREAKS}


def choose(runs: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The dev winner over the methods that ran under every policy in every repeat."""
    methods = [k for k in runs[0]
               if all("error" not in r[k][p] for r in runs for p in TIE_BREAKS)]
    per_run = [policy_means(r, methods) for r in runs]
    mean = {p: {key: float(np.mean([x[p][key] for x in per_run]))
                for key in ("dev_accuracy", "test_accuracy")} for p in TIE_BREAKS}
    best = max(TIE_BREAKS, key=lambda p: (mean[p]["dev_accuracy"], p == "first"))
    if mean[best]["dev_accuracy"] <= mean["first"]["dev_accuracy"]:
        best = "first"
    wins = {p: sum(max(TIE_BREAKS, key=lambda q: (x[q]["dev_accuracy"], q == "first")) == p
                   for x in per_run) for p in TIE_BREAKS}
    return {"methods_compared": methods, "repeats": len(runs), "mean": mean,
            "dev_wins_per_repeat": wins, "winner_on_dev": best,
            "dev_gain_over_first": mean[best]["dev_accuracy"] - mean["first"]["dev_accuracy"],
            "test_gain_over_first": mean[best]["test_accuracy"] - mean["first"]["test_accuracy"]}


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def pooled(runs: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per method and policy over all splits: mean accuracies, tied test items, their accuracy."""
    out: dict[str, dict[str, Any]] = {}
    for method in runs[0]:
        out[method] = {}
        for policy in TIE_BREAKS:
            rs = [r[method][policy] for r in runs]
            if any("error" in x for x in rs):
                out[method][policy] = {"error": next(x["error"] for x in rs if "error" in x)}
                continue
            n = sum(x["test"]["n_tied"] for x in rs)
            right = sum(x["test"]["n_tied"] * (x["test"]["tied_accuracy"] or 0.0) for x in rs)
            to_first = sum(x["test"]["n_tied"] * (x["test"]["tied_to_first"] or 0.0) for x in rs)
            out[method][policy] = {
                "dev_accuracy": float(np.mean([x["dev_accuracy"] for x in rs])),
                "test_accuracy": float(np.mean([x["test_accuracy"] for x in rs])),
                "dev_n_tied": sum(x["dev_n_tied"] for x in rs),
                "test": {"n_tied": n, "tied_accuracy": right / n if n else None,
                         "tied_to_first": to_first / n if n else None}}
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    header = (f"{'method':<12} {'policy':<11} {'dev acc':>8} {'test acc':>8} {'dev ties':>8} "
              f"{'test ties':>9} {'acc on ties':>11} {'to first':>8}")
    lines = [header]
    for method, by_policy in results.items():
        for policy, r in by_policy.items():
            if "error" in r:
                lines.append(f"{method:<12} {policy:<11} error: {r['error'][:70]}")
                continue
            t = r["test"]
            lines.append(f"{method:<12} {policy:<11} {r['dev_accuracy']:>8.3f} "
                         f"{r['test_accuracy']:>8.3f} {r['dev_n_tied']:>8} {t['n_tied']:>9} "
                         f"{fmt(t['tied_accuracy']):>11} {fmt(t['tied_to_first']):>8}")
    return "\n".join(lines)


def main() -> None:
    ap = parser(__doc__, RESULTS)
    ap.add_argument("--repeats", type=int, default=1, help="hash splits to average (files only)")
    ap.add_argument("--note", default="", help="a sentence stored with the results")
    args = ap.parse_args()
    m, splits, source = load(args, args.repeats)
    runs = [measure(m, dev, seed) for dev, seed in splits]
    summary = choose(runs)
    results = pooled(runs)
    report = {"command": " ".join(["python", "experiments/tie_break.py", *sys.argv[1:]]),
              "source": source, "note": args.note,
              "data": {"n_items": m.n_items, "n_voters": m.n_voters, "n_classes": m.n_classes,
                       "n_dev_per_split": [int(d.sum()) for d, _ in splits],
                       "n_test_per_split": [int((~d & m.has_gold()).sum()) for d, _ in splits],
                       "has_confidence": m.confidence is not None, "has_probs": m.probs is not None,
                       "has_options": m.valid is not None},
              "default_in_code": DEFAULT_TIE_BREAK, "summary": summary,
              "results": results}
    write_report(args.out, report)
    print(f"over {len(runs)} split(s): mean accuracies, tied items summed")
    print(table(results))
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
