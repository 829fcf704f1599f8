"""Adaptive voting (issue 11): does a LEARNED stop rule save more calls than the registered ones?

    python experiments/bench_adaptive.py --generate runs/adaptive_generate ...   # first: adaptive.json
    python experiments/adaptive_learned.py --generate runs/adaptive_generate   # 5 voters x 4 samples

A classifier reads what a stop rule sees after k of an item's K votes (same asking order as
bench_adaptive: best dev voter first, every voter's sample 0, then sample 1, ...) and predicts
whether the current leader is the full vote's decision. The rule stops at the first k with
predicted probability >= t. Features (all from the k votes so far, none from the gold):
leader's lead over the runner-up per vote still to come and per vote in all, the leader's
share, the share still to come, the share of third-or-lower votes, mean confidence of the
leader's and of the other votes, the confidence-weighted lead per vote to come, whether the
first (best) voter backs the leader, whether the exact bound already holds, log(1 + k).

Honest selection, as in bench_adaptive: the threshold t is CHOSEN ON DEV with 5-fold
cross-fitting by item (each dev item is walked by a model that never saw it) and the same rule
(most dev calls saved changing at most 0.5% of the dev decisions); the model is then refitted
on all dev items and REPORTED ON TEST beside bench_adaptive's chosen policy.
Writes experiments/results/adaptive_learned.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_adaptive import (
    RESULTS,
    TARGET,
    asking_order,
    choose,
    load_run,
    masked,
    measure,
    voter_order,
)

from ensemble.predictions.matrix import ABSTAIN, VoteMatrix
from ensemble.voting import vote

THRESHOLDS = (0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999)
FOLDS = 5


def prefix_leaders(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(K-1,) the leading class after k = 1..K-1 votes (lowest code on a tie; ABSTAIN while no
    vote counts), labels (K,) in asking order."""
    out = np.full(len(labels) - 1, ABSTAIN)
    for k in range(1, len(labels)):
        ok = labels[:k] != ABSTAIN
        if ok.any():
            out[k - 1] = int(np.argmax(np.bincount(labels[:k][ok], minlength=n_classes)))
    return out


def prefix_features(labels: np.ndarray, conf: np.ndarray, n_classes: int) -> np.ndarray:
    """(K-1, F) features after k = 1..K-1 votes of one item (labels, conf: (K,) in asking order)."""
    K, out = len(labels), []
    for k, lead in zip(range(1, K), prefix_leaders(labels, n_classes)):
        lab, cf, rem = labels[:k], np.nan_to_num(conf[:k]), K - k
        ok = lab != ABSTAIN
        counts = np.bincount(lab[ok], minlength=n_classes).astype(float)
        weighted = np.bincount(lab[ok], weights=cf[ok], minlength=n_classes)
        top, runner_up = np.sort(counts)[::-1][:2] if n_classes > 1 else (counts[0], 0.0)
        w_top, w_runner_up = np.sort(weighted)[::-1][:2] if n_classes > 1 else (weighted[0], 0.0)
        lead = max(int(lead), 0)  # no counted vote yet: class 0, as argmax of all-zero counts
        mine, others = cf[ok & (lab == lead)], cf[ok & (lab != lead)]
        out.append([(top - runner_up) / rem, (top - runner_up) / K, top / k, rem / K,
                    (ok.sum() - top - runner_up) / k, mine.mean() if len(mine) else 0.0,
                    others.mean() if len(others) else 0.0, (w_top - w_runner_up) / rem,
                    float(lab[0] == lead), float(top - runner_up > rem), np.log1p(k)])
    return np.array(out)


def dataset(m: VoteMatrix, order: list[tuple[int, int]], full: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(I, K-1, F) features and (I, K-1) targets: after k votes, is the leader the full decision?"""
    cells = np.array(order)
    labels, conf = m.labels[:, cells[:, 0], cells[:, 1]], m.confidence[:, cells[:, 0], cells[:, 1]]  # type: ignore[index]
    n_classes = m.valid.sum(axis=1) if m.valid is not None else labels.max(axis=1) + 2
    X = np.stack([prefix_features(labels[i], conf[i], int(n_classes[i])) for i in range(len(labels))])
    leaders = np.stack([prefix_leaders(labels[i], int(n_classes[i])) for i in range(len(labels))])  # (I, K-1)
    y = ((leaders == full[:, None]) & (leaders != ABSTAIN)).astype(int)
    return X, y


def stops(proba: np.ndarray, threshold: float) -> np.ndarray:
    """(I,) votes asked: the first k (1..K-1) whose probability >= threshold, else K."""
    hit = proba >= threshold
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, proba.shape[1] + 1)


def asked_cells(m: VoteMatrix, order: list[tuple[int, int]], n_asked: np.ndarray) -> np.ndarray:
    asked = np.zeros(m.labels.shape, dtype=bool)
    for i, k in enumerate(n_asked):
        for v, s in order[:k]:
            asked[i, v, s] = True
    return asked


def models() -> dict[str, Any]:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    return {"logistic": lambda: LogisticRegression(C=1.0, max_iter=2000),
            "boosted_trees": lambda: HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05,
                                                                     max_leaf_nodes=15, random_state=0)}


def learned(m: VoteMatrix, dev: np.ndarray, tokens: np.ndarray | None, max_loss: float) -> dict[str, Any]:
    order = asking_order(voter_order(m, dev), m.n_samples)
    full = vote(m, "majority").labels
    test = ~dev & m.has_gold()
    X, y = dataset(m, order, full)
    F = X.shape[2]
    dev_ix = np.flatnonzero(dev)
    fold = np.random.default_rng(0).permutation(len(dev_ix)) % FOLDS
    out: dict[str, Any] = {}
    for name, make in models().items():
        crossfit = np.zeros(y.shape)  # out-of-fold probabilities for the dev items
        for f in range(FOLDS):
            fit_ix, held_ix = dev_ix[fold != f], dev_ix[fold == f]
            model = make().fit(X[fit_ix].reshape(-1, F), y[fit_ix].ravel())
            crossfit[held_ix] = model.predict_proba(X[held_ix].reshape(-1, F))[:, 1].reshape(len(held_ix), -1)
        model = make().fit(X[dev_ix].reshape(-1, F), y[dev_ix].ravel())
        refit = model.predict_proba(X.reshape(-1, F))[:, 1].reshape(y.shape)
        table = []
        for t in (np.inf, *THRESHOLDS):  # inf: never stops (asks everyone), so choose() always has a choice
            row: dict[str, Any] = {"policy": f"{name} t={t:g}"}
            for split, items, proba in (("dev", dev, crossfit), ("test", test, refit)):
                asked = asked_cells(m, order, stops(proba, t))
                row[split] = measure(m, items, asked, vote(masked(m, asked), "majority").labels, full, tokens)
            table.append(row)
        chosen = choose(table, max_loss)
        out[name] = {"chosen": {"policy": chosen["policy"], **chosen["test"], "dev": chosen["dev"]},
                     "candidates": table}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generate", type=Path, required=True, help="a full generate-mode run folder")
    ap.add_argument("--max-loss", type=float, default=TARGET["max_accuracy_loss"])
    ap.add_argument("--bench", type=Path, default=RESULTS / "adaptive.json",
                    help="bench_adaptive's json of the same --generate run, for its choice")
    ap.add_argument("--out", type=Path, default=RESULTS / "adaptive_learned.json")
    args = ap.parse_args(argv)
    m, dev, tokens = load_run(args.generate)
    out = {"command": "python experiments/adaptive_learned.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "n_dev": int(dev.sum()), "n_test": int((~dev & m.has_gold()).sum()), **learned(m, dev, tokens, args.max_loss)}
    if args.bench.exists():
        registered = json.loads(args.bench.read_text())["generate"]["chosen"]
        out["registered_chosen"] = {k: registered[k] for k in ("policy", "calls_saved", "changed_decisions",
                                                               "accuracy_full", "accuracy_adaptive", "p_value")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    for name in models():
        c = out[name]["chosen"]
        print(f"{name:14s} chosen on dev: {c['policy']:22s} dev {c['dev']['calls_saved']:.1%} saved, "
              f"{c['dev']['changed_decisions']} changed | test {c['calls_saved']:.1%} saved, "
              f"{c['changed_decisions']} changed, {c['accuracy_full']:.3f} -> {c['accuracy_adaptive']:.3f}")
    if "registered_chosen" in out:
        r = out["registered_chosen"]
        print(f"{'registered':14s} chosen on dev: {r['policy']} | test {r['calls_saved']:.1%} saved, "
              f"{r['changed_decisions']} changed, {r['accuracy_full']:.3f} -> {r['accuracy_adaptive']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
