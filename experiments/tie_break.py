"""Which tie-break policy should be the default? Every method x every policy, measured.

    python experiments/tie_break.py --run runs/quickstart          # a `vote run` output folder
    python experiments/tie_break.py --predictions P.jsonl --gold G.jsonl [--dev-fraction 0.3]
                                    [--repeats 20]

Data. ``--run DIR`` reads DIR/predictions.jsonl (the run's store) and the run's own
splits DIR/data/dev.jsonl and DIR/data/test.jsonl (gold answers and each item's
options, as ``vote run`` builds its matrix). ``--predictions`` + ``--gold`` split
the gold items by a seeded blake2b hash of the problem id (the part before "#",
so the sub-questions of one problem stay together): the split never depends on
row order. On small files one split is noisy: ``--repeats R`` measures R splits
(seeds seed .. seed+R-1) and averages them.

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

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.predictions.matrix import VoteMatrix, tied_classes
from ensemble.predictions.rows import build_matrix, load_predictions, read_rows
from ensemble.voting import METHODS, vote
from ensemble.voting.tiebreak import DEFAULT_TIE_BREAK, TIE_BREAKS

RESULTS = Path(__file__).resolve().parent / "results" / "tie_break.json"
FITTED = {"weighted", "select", "stack"}


def hash_unit(key: str, seed: int) -> float:
    """A uniform number in [0, 1) from blake2b(seed:key): order-free and stable."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def problem(item: str) -> str:
    return item.split("#", 1)[0]


def load_run(run: Path) -> tuple[VoteMatrix, np.ndarray, dict[str, Any]]:
    """A `vote run` folder -> (matrix with gold and options, dev mask, source facts)."""
    from ensemble.data.formats import read_items

    splits = {s: read_items(run / "data" / f"{s}.jsonl") for s in ("dev", "test")}
    items = {it.id: it for part in splits.values() for it in part}
    rows = [r for r in read_rows(run / "predictions.jsonl") if r["item"] in items]
    gold = {i: it.answer for i, it in items.items() if it.answer is not None}
    options = {i: it.letters for i, it in items.items() if it.options}
    m = build_matrix(rows, gold=gold, options=options or None)
    dev_ids = {it.id for it in splits["dev"]}
    dev = np.array([i in dev_ids for i in m.items])
    return m, dev, {"run": str(run), "split": "the run's own dev/test splits"}


def hash_dev(m: VoteMatrix, fraction: float, seed: int) -> np.ndarray:
    """(I,) bool: gold items whose problem id hashes below ``fraction``."""
    below = np.array([hash_unit(problem(i), seed) < fraction for i in m.items])
    dev: np.ndarray = below & m.has_gold()
    return dev


def dev_predictions(m: VoteMatrix, method: str, dev: np.ndarray, policy: str,
                    seed: int) -> np.ndarray:
    """(I,) labels whose dev entries are out-of-sample (2-fold cross-fit for fitted methods)."""
    if method not in FITTED:
        return vote(m, method, dev=dev, tie_break=policy).labels
    fold = np.array([hash_unit(problem(i), seed + 1) < 0.5 for i in m.items])
    labels = np.full(m.n_items, -1, dtype=np.int32)
    for half in (fold, ~fold):
        scored = dev & ~half
        labels[scored] = vote(m, method, dev=dev & half, tie_break=policy).labels[scored]
    return labels


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


def accuracy(m: VoteMatrix, labels: np.ndarray, mask: np.ndarray) -> float:
    assert m.gold is not None
    return float((labels == m.gold)[mask].mean())


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
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, help="a `vote run` output folder (predictions + data/)")
    ap.add_argument("--predictions", type=Path)
    ap.add_argument("--gold", type=Path)
    ap.add_argument("--dev-fraction", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="hash splits to average (files only)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--note", default="", help="a sentence stored with the results")
    args = ap.parse_args()
    if args.run:
        m, dev, source = load_run(args.run)
        splits = [(dev, args.seed)]
    elif args.predictions and args.gold:
        m = load_predictions(args.predictions, args.gold)
        seeds = range(args.seed, args.seed + max(args.repeats, 1))
        splits = [(hash_dev(m, args.dev_fraction, seed), seed) for seed in seeds]
        source = {"predictions": str(args.predictions), "gold": str(args.gold),
                  "split": f"blake2b hash of the problem id, dev fraction {args.dev_fraction}, "
                           f"seeds {seeds[0]}..{seeds[-1]}"}
    else:
        sys.exit("give --run DIR, or --predictions and --gold")
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"over {len(runs)} split(s): mean accuracies, tied items summed")
    print(table(results))
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
