"""Per-group against global weights for weighted / select / stack, chosen on dev, reported on test.

    python experiments/per_group.py --run runs/quickstart          # a `vote run` output folder
    python experiments/per_group.py --predictions P.jsonl --gold G.jsonl --synthetic-groups 4

Data. ``--run DIR`` reads DIR/predictions.jsonl and the run's own dev/test splits
(DIR/data/{dev,test}.jsonl); an item's group is its kind (``item_group``: group,
subject, category or kind), as ``vote run`` builds its matrix. ``--predictions`` +
``--gold`` take the dev split ``vote eval --fit-on dev`` draws (whole problems by a
seeded hash, ``ensemble.evaluation.splits``); files without a ``group`` column can be
given ``--synthetic-groups K`` (group = hash of the problem id mod K: groups that carry
no signal, a check that shrinkage does no harm when there is nothing to find). Loading,
splits and cross-fitting are shared with tie_break.py (experiments/run_data.py).

Choice. For each method the candidates are the global fit and per_group=true with
each ``--priors`` value. Each candidate's dev accuracy is out-of-sample: 2-fold
cross-fit within dev (fit on one half by problem hash, score the other: ``run_data.cross_fit``). The
candidate with the best dev accuracy wins (ties: global, then the larger prior, the
more conservative choice). Its test accuracy (fitted on all of dev) is reported
with a 95% bootstrap interval, and McNemar's exact test against the same method's
global fit on the same test items. Writes experiments/results/per_group.json.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from run_data import accuracy, cross_fit, load, parser, synthetic_groups, write_report

from ensemble.evaluation.metrics import bootstrap_accuracy_ci, paired_test
from ensemble.predictions.matrix import VoteMatrix
from ensemble.voting import vote

RESULTS = Path(__file__).resolve().parent / "results" / "per_group.json"
METHODS = ("weighted", "select", "stack")


def candidates(priors: list[float]) -> list[dict[str, Any]]:
    return [{"per_group": False}] + [{"per_group": True, "group_prior": p} for p in priors]


def label(options: dict[str, Any]) -> str:
    return f"per_group prior={options['group_prior']:g}" if options["per_group"] else "global"


def measure(m: VoteMatrix, dev: np.ndarray, priors: list[float], seed: int,
            n_boot: int) -> dict[str, Any]:
    assert m.gold is not None
    test = ~dev & m.has_gold()
    gold = m.gold[test]
    out: dict[str, Any] = {}
    for method in METHODS:
        rows = []
        for options in candidates(priors):
            labels = vote(m, method, dev=dev, **options).labels
            rows.append({"candidate": label(options), "options": options,
                         "dev_accuracy_cross_fit": accuracy(m, cross_fit(m, method, dev, seed, **options), dev),
                         "test_accuracy": float((labels[test] == gold).mean()),
                         "_labels": labels})
        # best dev; ties -> global (listed first), then the larger prior
        rank = sorted(range(len(rows)), key=lambda r: (-rows[r]["dev_accuracy_cross_fit"],
                                                      0 if r == 0 else 1,
                                                      -rows[r]["options"].get("group_prior", 0)))
        best, glob = rows[rank[0]], rows[0]
        correct = best["_labels"][test] == gold
        out[method] = {
            "chosen_on_dev": best["candidate"],
            "test_accuracy": float(correct.mean()),
            "test_ci95": bootstrap_accuracy_ci(correct, n_boot=n_boot, seed=seed),
            "global_test_accuracy": glob["test_accuracy"],
            "vs_global": paired_test(gold, best["_labels"][test], glob["_labels"][test],
                                     n_boot=n_boot, seed=seed),
            "candidates": [{k: v for k, v in r.items() if k != "_labels"} for r in rows]}
    return out


def table(results: dict[str, Any]) -> str:
    lines = [f"{'method':<9} {'candidate':<22} {'dev (x-fit)':>11} {'test':>6}"]
    for method, r in results.items():
        for c in r["candidates"]:
            mark = " <- chosen on dev" if c["candidate"] == r["chosen_on_dev"] else ""
            lines.append(f"{method:<9} {c['candidate']:<22} {c['dev_accuracy_cross_fit']:>11.3f} "
                         f"{c['test_accuracy']:>6.3f}{mark}")
        t = r["vs_global"]
        lines.append(f"{'':<9} chosen: test {r['test_accuracy']:.3f} CI {r['test_ci95']} vs global "
                     f"{r['global_test_accuracy']:.3f}: +{t['n_a_only']} / -{t['n_b_only']} items, "
                     f"McNemar p = {t['p_value']:.3g}")
    return "\n".join(lines)


def main() -> None:
    ap = parser(__doc__, RESULTS)
    ap.add_argument("--synthetic-groups", type=int, default=0,
                    help="files only: K hash groups of the problem id (no signal)")
    ap.add_argument("--priors", default="0,5,20,80", help="group_prior values to try")
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args()
    m, [(dev, _)], source = load(args)
    if args.run:
        source["groups"] = "each item's kind (item_group of its meta)"
    elif args.synthetic_groups:
        m = synthetic_groups(m, args.synthetic_groups, args.seed)
        source["groups"] = f"synthetic: hash of the problem id mod {args.synthetic_groups}"
    priors = [float(p) for p in args.priors.split(",")]
    results = measure(m, dev, priors, args.seed, args.n_boot)
    groups = sorted(set(m.groups or ()) - {""})
    report = {"command": " ".join(["python", "experiments/per_group.py", *sys.argv[1:]]),
              "source": source,
              "data": {"n_items": m.n_items, "n_voters": m.n_voters, "n_classes": m.n_classes,
                       "n_dev": int(dev.sum()), "n_test": int((~dev & m.has_gold()).sum()),
                       "dev_items_per_group": {g: int(sum(d for d, x in zip(dev, m.groups or ())
                                                          if x == g)) for g in groups}},
              "results": results}
    write_report(args.out, report)
    print(table(results))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
