"""Benchmark: every voting method on a large synthetic vote matrix, and crowd-kit.

    python experiments/bench_voting.py [--items 1000000 --voters 16]

Synthetic votes: gold uniform over C classes; voter j is right with a planted
accuracy, and when wrong picks gold + offset (mod C) with voter-specific offset
probabilities (so confusion matrices carry structure for Dawid–Skene); each voter
abstains on a few percent of items; confidences are higher for right votes.

Times every registered method (fitted ones on a dev mask of --dev items) and
crowd-kit's MajorityVote and DawidSkene on the same labels as a pandas DataFrame
(task, worker, label; only ``fit_predict`` is timed, not the DataFrame build).
crowd-kit's DS is first run on a --probe subset; if its time scaled to the full
size exceeds --ck-max-seconds, DS is compared on that subset only (both ours and
theirs) and the report says so. Prints a table and writes
experiments/results/bench_voting.json.
"""
from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ensemble.predictions.matrix import ABSTAIN, VoteMatrix, from_arrays, support
from ensemble.voting import METHODS, vote

RESULTS = Path(__file__).resolve().parent / "results" / "bench_voting.json"
FITTED = {"weighted", "select", "stack"}


def synthetic(n_items: int, n_voters: int, n_classes: int, seed: int,
              accuracy_range: tuple[float, float]) -> VoteMatrix:
    """(I, V) planted votes with confidences; see the module docstring."""
    rng = np.random.default_rng(seed)
    accuracy = rng.permutation(np.linspace(*accuracy_range, n_voters))      # (V,)
    offset_p = rng.dirichlet(np.ones(n_classes - 1), n_voters)              # (V, C-1)
    abstain = rng.uniform(0.0, 0.1, n_voters)                               # (V,)
    gold = rng.integers(0, n_classes, n_items)
    labels = np.empty((n_items, n_voters), dtype=np.int32)
    conf = np.empty((n_items, n_voters))
    for j in range(n_voters):  # per voter keeps the temporaries at (I,)
        right = rng.random(n_items) < accuracy[j]
        offset = rng.choice(np.arange(1, n_classes), n_items, p=offset_p[j])
        labels[:, j] = np.where(right, gold, (gold + offset) % n_classes)
        conf[:, j] = np.where(right, rng.beta(5, 2, n_items), rng.beta(2, 3, n_items))
        labels[rng.random(n_items) < abstain[j], j] = ABSTAIN
    classes = [str(c) for c in range(n_classes)]
    return from_arrays(labels, classes, gold=gold, confidence=conf,
                       voters=[f"voter{j:02d}" for j in range(n_voters)])


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def crowdkit_frame(m: VoteMatrix):
    """Long DataFrame (task, worker, label) of the non-abstaining votes."""
    import pandas as pd

    item, voter = np.nonzero(m.labels[:, :, 0] != ABSTAIN)
    return pd.DataFrame({"task": item, "worker": voter, "label": m.labels[item, voter, 0]})


def crowdkit_labels(series, n_items: int) -> np.ndarray:
    """crowd-kit's task -> label Series as (I,) codes, ABSTAIN for items it never saw."""
    out = np.full(n_items, ABSTAIN, dtype=np.int64)
    out[series.index.to_numpy()] = series.to_numpy()
    return out


def agreement(ours: np.ndarray, theirs: np.ndarray, mask: np.ndarray) -> float:
    return float((ours[mask] == theirs[mask]).mean())


def run_ours(m: VoteMatrix, dev: np.ndarray) -> dict[str, dict[str, Any]]:
    test = ~dev
    out = {}
    for name in METHODS.names():
        d, seconds = timed(lambda name=name: vote(m, name, dev=dev if name in FITTED else None))
        out[name] = {"seconds": seconds, "decision": d,
                     "test_accuracy": float((d.labels[test] == m.gold[test]).mean())}
    return out


def compare_ds(m: VoteMatrix, ds_iter: int, tol: float) -> dict[str, Any]:
    """Our DS and crowd-kit's on the same matrix: seconds, iterations, label agreement."""
    from crowdkit.aggregation import DawidSkene

    ours, t_ours = timed(lambda: vote(m, "dawid_skene", max_iter=ds_iter, tol=tol))
    df = crowdkit_frame(m)
    model = DawidSkene(n_iter=ds_iter, tol=tol)
    theirs, t_theirs = timed(lambda: model.fit_predict(df))
    seen = (m.labels != ABSTAIN).any(axis=(1, 2))
    theirs = crowdkit_labels(theirs, m.n_items)
    return {"items": m.n_items, "ours_seconds": t_ours, "crowdkit_seconds": t_theirs,
            "speedup": t_theirs / t_ours, "ours_iterations": ours.info["iterations"],
            "crowdkit_iterations": len(model.loss_history_),
            "agreement": agreement(ours.labels, theirs, seen),
            "ours_accuracy": float((ours.labels == m.gold).mean()),
            "crowdkit_accuracy": float((theirs == m.gold).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--voters", type=int, default=16)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--dev", type=int, default=10_000, help="dev items for fitted methods")
    ap.add_argument("--probe", type=int, default=100_000, help="items for the first crowd-kit DS run")
    ap.add_argument("--ck-max-seconds", type=float, default=300.0)
    ap.add_argument("--ds-iter", type=int, default=100)
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--accuracy", type=float, nargs=2, default=(0.3, 0.7),
                    help="lowest and highest planted voter accuracy")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    m, t_build = timed(lambda: synthetic(args.items, args.voters, args.classes, args.seed,
                                             tuple(args.accuracy)))
    dev = np.zeros(m.n_items, dtype=bool)
    dev[np.random.default_rng(args.seed + 1).choice(m.n_items, min(args.dev, m.n_items), False)] = True
    print(f"{m.n_items:,} items x {m.n_voters} voters x {m.n_classes} classes "
          f"({int((m.labels != ABSTAIN).sum()):,} votes, built in {t_build:.1f} s); "
          f"fitted methods use {int(dev.sum()):,} dev items")

    ours = run_ours(m, dev)

    # crowd-kit majority vote on everything.
    from crowdkit.aggregation import MajorityVote

    df, t_frame = timed(lambda: crowdkit_frame(m))
    mv, t_mv = timed(functools.partial(MajorityVote().fit_predict, df))
    del df  # the frame is large; free it before the next method
    mv = crowdkit_labels(mv, m.n_items)
    seen = (m.labels != ABSTAIN).any(axis=(1, 2))
    top = np.sort(support(m.labels, m.n_classes), axis=1)
    untied = seen & (top[:, -1] > top[:, -2])
    ours_mv = ours["majority"]["decision"].labels
    majority_cmp = {"crowdkit_seconds": t_mv, "ours_seconds": ours["majority"]["seconds"],
                    "speedup": t_mv / ours["majority"]["seconds"],
                    "agreement": agreement(ours_mv, mv, seen),
                    "agreement_untied": agreement(ours_mv, mv, untied),
                    "tied_items": int((seen & ~untied).sum()), "frame_seconds": t_frame}

    # crowd-kit DS: probe on a subset, then full size if that fits the time budget.
    probe_n = min(args.probe, m.n_items)
    ds_probe = compare_ds(m.select_items(np.arange(probe_n)), args.ds_iter, args.tol)
    projected = ds_probe["crowdkit_seconds"] * m.n_items / probe_n
    ds_full = None
    if probe_n == m.n_items:
        ds_full = ds_probe
    elif projected <= args.ck_max_seconds:
        ds_full = compare_ds(m, args.ds_iter, args.tol)
    ds_main = ds_full or ds_probe

    print(f"\n{'method':<14}{'seconds':>9}{'test acc':>10}   info")
    for name, r in ours.items():
        info = r["decision"].info
        extra = {k: info[k] for k in ("iterations", "converged", "chosen") if k in info}
        print(f"{name:<14}{r['seconds']:>9.3f}{r['test_accuracy']:>10.4f}   {extra or ''}")
    print(f"{'ck majority':<14}{t_mv:>9.3f}{'':>10}   (DataFrame build {t_frame:.1f} s, not timed)")
    for label, cmp in (("probe", ds_probe), ("full", ds_full)):
        if cmp is not None and (label == "full" or ds_full is not ds_probe):
            print(f"{'ck DS ' + label:<14}{cmp['crowdkit_seconds']:>9.3f}{'':>10}   "
                  f"on {cmp['items']:,} items, {cmp['crowdkit_iterations']} iterations")
    print(f"\nmajority vs crowd-kit: agreement {majority_cmp['agreement']:.5f} "
          f"({majority_cmp['agreement_untied']:.6f} on {int(untied.sum()):,} untied items), "
          f"crowd-kit / ours time = {majority_cmp['speedup']:.1f}x")
    for label, cmp in (("probe", ds_probe), ("full", ds_full)):
        if cmp is not None and (label == "full" or ds_full is not ds_probe):
            print(f"DS vs crowd-kit on {cmp['items']:,} items: agreement {cmp['agreement']:.5f}, "
                  f"ours {cmp['ours_seconds']:.2f} s / {cmp['ours_iterations']} it, crowd-kit "
                  f"{cmp['crowdkit_seconds']:.1f} s / {cmp['crowdkit_iterations']} it, "
                  f"speed-up {cmp['speedup']:.1f}x")
    if ds_full is None:
        print(f"crowd-kit DS on {m.n_items:,} items would take about {projected:.0f} s "
              f"(> {args.ck_max_seconds:.0f} s): DS compared on {probe_n:,} items only")

    targets = {"majority_under_1s": ours["majority"]["seconds"] < 1.0,
               "weighted_under_1s": ours["weighted"]["seconds"] < 1.0,
               "ds_10x_faster": ds_main["speedup"] >= 10.0,
               "ds_agreement_999": ds_main["agreement"] >= 0.999}
    print("targets:", ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in targets.items()))

    result = {
        "config": vars(args) | {"votes": int((m.labels != ABSTAIN).sum())},
        "methods": {n: {"seconds": r["seconds"], "test_accuracy": r["test_accuracy"]}
                    for n, r in ours.items()},
        "majority_vs_crowdkit": majority_cmp,
        "ds_vs_crowdkit_probe": ds_probe,
        "ds_vs_crowdkit_full": ds_full,
        "crowdkit_ds_projected_seconds_full": projected,
        "targets": targets,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
