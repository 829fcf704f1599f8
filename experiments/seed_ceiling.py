"""What could voting buy if every voter had baseline A's whole budget? (issue 9's ceiling)

    python experiments/seed_ceiling.py --root runs/equal_budget --seeds 1,2,3 [--a320 runs/equal_budget_a320]
    python experiments/seed_ceiling.py --root runs/equal_budget --seeds 1 --train-only   # one seed, no report

The equal-budget study (``equal_budget.py``) gives K voters A's budget *together*. This is the
other end: K copies of baseline A's own recipe (one plain LoRA, all training problems, the same
steps), differing only by seed (LoRA init and batch order), each trained and scored like A, so
the ensemble costs K x A's budget. Its vote is the most that K voters of A's recipe can give,
whatever sharing saves; if even it is not >= 3 points over A, no equal-budget ensemble of them
is. Seed 0 is the study's own baseline A (``ROOT/single``); seed s trains in ``ROOT/single-seed<s>``
(resumable through the manifest and the predictions store; a finished seed is skipped, and its
CPU seconds are kept in its ``budget.json`` as for every arm).

Report (after all seeds are scored): each seed's test accuracy (the spread of baseline A
itself), the K-seed vote with method and tie-break chosen on dev (``equal_budget_report.
choose_on_dev``), its 95% CI, ECE and McNemar against A (seed 0), and, with ``--a320``, against
one LoRA trained 4 x as long (the a320 study's A: about the same training compute as K = 4 seeds,
a quarter of their scoring). Writes experiments/results/seed_ceiling.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import equal_budget as eb
import equal_budget_plan as plan
import equal_budget_report as report
import numpy as np
import torch

from ensemble.data.benchmark import ensure_benchmark
from ensemble.data.formats import read_gold, read_items
from ensemble.evaluation.metrics import voter_decisions
from ensemble.predictions.matrix import VoteMatrix
from ensemble.predictions.rows import build_matrix, load_predictions, read_rows

RESULTS = Path(__file__).resolve().parent / "results"


def seed_folder(root: Path, seed: int) -> Path:
    return root / ("single" if seed == 0 else f"single-seed{seed}")


def train_seed(root: Path, seed: int, a_steps: int, s: dict[str, Any]) -> None:
    """Baseline A's recipe with another seed: train + score, timed into its ledger like A."""
    grid = {"variants": [{**eb.SINGLE_GRID["variants"][0], "seed": seed,
                          "name": f"single-r16-attn-seed{seed}"}]}
    cfg = eb.config(root, "single", s, steps=a_steps, grid=grid, shared=False, out=seed_folder(root, seed))
    eb.run_arm(plan.Ledger(seed_folder(root, seed)), cfg)


def _gold(root: Path) -> dict[str, str]:
    return {**read_gold(root / "data" / "dev.jsonl"), **read_gold(root / "data" / "test.jsonl")}


def seeds_matrix(root: Path, seeds: list[int]) -> VoteMatrix:
    """The seeds' stored votes as one matrix (voter ``seed<s>``), each item's option letters its
    valid classes, as ``vote run`` builds it (temperature scaling spreads mass over those only)."""
    rows = [{**r, "voter": f"seed{s}"} for s in seeds for r in read_rows(seed_folder(root, s) / "predictions.jsonl")]
    options = {it.id: it.letters for split in ("dev", "test") for it in read_items(root / "data" / f"{split}.jsonl")}
    return build_matrix(rows, gold=_gold(root), options=options)


def build(root: Path, seeds: list[int], a320: Path | None) -> dict[str, Any]:
    m = seeds_matrix(root, seeds)
    dev_ids = [i for i in m.items if i.startswith("dev_")]
    rep, method, tie, dev_acc = report.choose_on_dev(m, dev_ids, eb.METHODS)
    mask = rep.eval_mask
    singles = voter_decisions(m)
    a_labels = singles[m.voters[0]].labels
    a_answers = report.answers_by_item(m, a_labels)
    row = rep.methods[method]
    test = report.vs_baseline(m, mask, rep.decisions[method].labels, a_answers)
    seeds_acc = {v: rep.voters[v]["accuracy"] for v in m.voters}
    out: dict[str, Any] = {
        "command": "python experiments/seed_ceiling.py " + " ".join(sys.argv[1:]),
        "n_test": int(mask.sum()), "n_dev": len(dev_ids), "k": len(seeds),
        "seed_accuracies": seeds_acc,
        "seed_mean": round(statistics.mean(seeds_acc.values()), 4),
        "seed_sd": round(statistics.stdev(seeds_acc.values()), 4) if len(seeds) > 1 else None,
        "baseline": {"voter": m.voters[0], "accuracy": rep.voters[m.voters[0]]["accuracy"],
                     **report.ece_fields(rep.voters[m.voters[0]])},
        "ensemble": {"method": method, "tie_break": tie, "accuracy": row["accuracy"], "ci": row.get("accuracy_ci"),
                     **report.ece_fields(row), "delta_vs_baseline_points": round(100 * (row["accuracy"] -
                                                                                   rep.voters[m.voters[0]]["accuracy"]), 2),
                     "delta_ci": test["delta_ci"], "p_vs_baseline": test["p_value"],
                     "dev_accuracy": dev_acc[f"{method}/{tie}"]},
        "oracle": rep.diagnostics["oracle"], "mean_pairwise_disagreement": rep.diagnostics["mean_pairwise_disagreement"],
        "error_correlation": rep.diagnostics["error_correlation"],
        "cpu_seconds": {f"seed{s}": round(plan.Ledger(seed_folder(root, s)).seconds(), 1) for s in seeds},
    }
    # Fewer seeds (0..k-1): how the ceiling grows with K, each vote chosen on dev the same way.
    out["by_k"] = []
    for k in range(2, len(seeds)):
        sub = m.select_voters(list(range(k)))
        r, name, t, _ = report.choose_on_dev(sub, dev_ids, eb.METHODS)
        vs = report.vs_baseline(sub, mask, r.decisions[name].labels, a_answers)
        out["by_k"].append({"k": k, "method": name, "tie_break": t, "accuracy": r.methods[name]["accuracy"],
                            "delta_vs_baseline_points": round(100 * vs["delta"], 2), "p_vs_baseline": vs["p_value"]})
    if a320 is not None:
        long = load_predictions([f"a320={a320 / 'single' / 'predictions.jsonl'}"], gold=_gold(a320))
        if sorted(long.items) != sorted(m.items):
            raise SystemExit(f"--a320 {a320}: its items are not this study's items")
        long_answers = report.answers_by_item(long, voter_decisions(long)["a320"].labels)
        vs = report.vs_baseline(m, mask, rep.decisions[method].labels, long_answers)
        right = np.array([long_answers[i] == m.classes[g] for i, g, keep in zip(m.items, m.gold, mask) if keep])
        out["a320"] = {"accuracy": round(float(right.mean()), 4), "cpu_seconds": round(plan.Ledger(a320 / "single").seconds(), 1),
                       "ensemble_delta_points": round(100 * vs["delta"], 2), "ensemble_delta_ci": vs["delta_ci"],
                       "ensemble_p": vs["p_value"]}
    return out


def markdown(out: dict[str, Any]) -> str:
    e, a = out["ensemble"], out["baseline"]
    title = (f"# Ceiling: K = {out['k']} copies of baseline A (seeds), each with A's whole budget "
             f"({out['n_test']} test / {out['n_dev']} dev items)")
    a_row = (f"| A (seed 0) | {100 * a['accuracy']:.1f} | {100 * a['ece']:.1f} ({100 * a['ece_raw']:.1f}) | | "
             f"{out['cpu_seconds']['seed0']:.0f} |")
    lines = [title, "",
             f"Command: `{out['command']}`.", "",
             "| | test accuracy % | ECE % (raw) | vs A: points [95% CI], McNemar p | CPU s |", "|---|---|---|---|---|",
             a_row]
    for v, acc in out["seed_accuracies"].items():
        if v != a["voter"]:
            lines.append(f"| A's recipe, {v} | {100 * acc:.1f} | | | {out['cpu_seconds'].get(v, 0):.0f} |")
    ci = e["ci"] or [float("nan")] * 2
    dci = e["delta_ci"] or [float("nan")] * 2
    lines.append(f"| **vote of the {out['k']} seeds**: {e['method']} ({e['tie_break']}), chosen on dev | "
                 f"**{100 * e['accuracy']:.1f}** [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}] | {100 * e['ece']:.1f} "
                 f"({100 * e['ece_raw']:.1f}) | {e['delta_vs_baseline_points']:+.1f} [{100 * dci[0]:+.1f}, "
                 f"{100 * dci[1]:+.1f}], p = {e['p_vs_baseline']:.3g} | {sum(out['cpu_seconds'].values()):.0f} |")
    if "a320" in out:
        b = out["a320"]
        lines.append(f"| one LoRA, 4 x A's steps (a320) | {100 * b['accuracy']:.1f} | | vote vs it: "
                     f"{b['ensemble_delta_points']:+.1f} [{100 * b['ensemble_delta_ci'][0]:+.1f}, "
                     f"{100 * b['ensemble_delta_ci'][1]:+.1f}], p = {b['ensemble_p']:.3g} | {b['cpu_seconds']:.0f} |")
    for row in out["by_k"]:
        lines.append(f"| vote of seeds 0..{row['k'] - 1}: {row['method']} ({row['tie_break']}) | "
                     f"{100 * row['accuracy']:.1f} | | {row['delta_vs_baseline_points']:+.1f}, "
                     f"p = {row['p_vs_baseline']:.3g} | |")
    sd = out["seed_sd"]
    lines += ["", f"Seeds of A's recipe: mean {100 * out['seed_mean']:.1f}%"
              + (f", sd {100 * sd:.1f} points" if sd is not None else "")
              + f"; oracle {100 * out['oracle']:.1f}%, disagreement {out['mean_pairwise_disagreement']:.3f}, "
              f"error correlation {out['error_correlation']:.3f}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="runs/equal_budget", help="the equal-budget study's root (A = ROOT/single)")
    ap.add_argument("--seeds", default="1,2,3", help="seeds to add to A's seed 0")
    ap.add_argument("--a-steps", type=int, default=80, help="A's steps (must be the study's --a-steps)")
    ap.add_argument("--a320", default=None, help="the 4x-budget study's root, to compare with its A")
    ap.add_argument("--train-only", action="store_true", help="train + score the seeds, write no report")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--tiny", action="store_true", help="the tiny study (equal_budget.py --tiny): checks the plumbing")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # A's budget is CPU time of one core: the seeds are timed the same way
    root = Path(args.root)
    s = dict(eb.TINY if args.tiny else eb.FULL)
    if args.tiny:
        from ensemble.testing import make_tiny_model

        s["model"] = str(make_tiny_model(root / "tiny-model", num_layers=4))  # as equal_budget --tiny
        args.a_steps = 30
    ensure_benchmark(root / "data", seed=0, kinds=eb.KINDS, **s["bench"])
    seeds = [int(x) for x in args.seeds.split(",") if x]
    for seed in seeds:
        train_seed(root, seed, args.a_steps, s)
    if args.train_only:
        return None
    out = build(root, [0, *seeds], Path(args.a320) if args.a320 else None)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "seed_ceiling.json").write_text(json.dumps(out, indent=1))
    (results / "seed_ceiling.md").write_text(markdown(out))
    print(markdown(out))
    return out


if __name__ == "__main__":
    main()
