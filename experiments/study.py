"""The voting study on the bundled benchmark with SmolLM2-135M (issue: train K >= 5 variants).

    python experiments/study.py [--config ensemble/configs/study.yaml] [--reuse runs/quickstart]

Trains the config's variants (or reuses a finished run with the same train split and
recipe: its manifest + adapters are copied and the resume check re-verifies them),
answers dev + a 2,000-item test split with every voter, and writes
experiments/results/study.json (every voter and method with intervals, calibration,
paired tests, the dev-selected single variant, the test-best single, the oracle,
disagreement and error correlation) plus the ablation table and plot.

Everything chosen is chosen on dev by the library's protocol
(ensemble.evaluation.protocol): the single-variant baseline (best dev accuracy, ties by
name) and the method quoted (best dev accuracy, fitted methods cross-fitted within dev).
The test split only scores them.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from ensemble.config.loader import load_config
from ensemble.evaluation.ablation import ablate
from ensemble.pipeline import run
from ensemble.training import train_grid
from ensemble.training.manifest import MANIFEST

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="ensemble/configs/study.yaml")
    ap.add_argument("--reuse", help="a finished run dir with the same train split/recipe (e.g. runs/quickstart)")
    args = ap.parse_args()
    cfg = load_config(args.config)
    out = Path(cfg.out)
    if args.reuse and not (out / MANIFEST).exists():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(args.reuse) / MANIFEST, out / MANIFEST)
        shutil.copytree(Path(args.reuse) / "adapters", out / "adapters", dirs_exist_ok=True)
    t0 = time.time()
    manifest = train_grid(cfg)
    t_train = time.time() - t0
    result = run(cfg)
    t_run = time.time() - t0 - t_train
    report = result.report.to_dict()
    m, dev = result.matrix, result.dev
    test = ~dev & m.has_gold()
    voters = report["voters"]
    dev_acc = {v: r["dev_accuracy"] for v, r in voters.items()}
    dev_pick = report["diagnostics"]["best_voter"]  # the protocol's baseline, chosen on dev
    test_pick = max(voters, key=lambda v: (voters[v]["accuracy"], v))  # hindsight, for reference only
    scored = report["methods"]
    chosen = report["selected_on_dev"]  # the method quoted: chosen on dev, scored on test
    best_method = chosen["method"]
    abl = ablate(m, ["majority", "confidence", "dawid_skene"], dev=dev, seed=0)
    paths = abl.write(RESULTS / "study_ablation")
    summary = {
        "n_test_items": int(test.sum()), "n_dev_items": int(dev.sum()),
        "variants": {n: {"heldout_accuracy": v.get("heldout_accuracy"), "seconds": v.get("seconds")}
                     for n, v in manifest.variants.items()},
        "dev_selected_single": {"voter": dev_pick, "dev_accuracy": dev_acc[dev_pick], **voters[dev_pick]},
        "test_best_single": {"voter": test_pick, "accuracy": voters[test_pick]["accuracy"]},
        "mean_single_accuracy": float(np.mean([v["accuracy"] for v in voters.values()])),
        "best_method": best_method, "best_method_accuracy": scored[best_method]["accuracy"],
        "best_method_selected_on": "dev", "best_method_dev_accuracy": chosen["dev_accuracy"],
        "method_dev_accuracies": chosen["dev_accuracies"],
        "gain_over_dev_selected_points": 100 * (scored[best_method]["accuracy"] - voters[dev_pick]["accuracy"]),
        "paired_test_vs_dev_selected": scored[best_method].get("vs_best_voter"),
        "ece_best_method": scored[best_method].get("ece"), "ece_dev_selected": voters[dev_pick].get("ece"),
        "seconds": {"train": round(t_train, 1), "run": round(t_run, 1)},
        "ablation_files": {k: str(v) for k, v in paths.items()},
        "diagnostics": report["diagnostics"],
        "config": str(args.config),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "study.json").write_text(json.dumps({"summary": summary, "report": report}, indent=2))
    (RESULTS / "study.md").write_text(markdown(summary, report, dev_acc, abl.to_rows()), encoding="utf-8")
    print(json.dumps(summary, indent=2))
    print(f"wrote {RESULTS / 'study.json'}, {RESULTS / 'study.md'}, {paths.get('png')}")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _row(name: str, r: dict, extra: str) -> str:
    lo, hi = r.get("accuracy_ci") or (None, None)
    return (f"| {name} | {_pct(r.get('accuracy'))} [{_pct(lo)}, {_pct(hi)}] | {_pct(r.get('macro_f1'))} | "
            f"{_pct(r.get('ece'))} | {r.get('brier', float('nan')):.3f} | {extra} |")


def markdown(summary: dict, report: dict, dev_acc: dict, ablation_rows: list) -> str:
    """The study's table: every voter and every method on the test split, side by side."""
    pick = summary["dev_selected_single"]["voter"]
    lines = [f"# Voting study: {summary['n_test_items']} test items, {summary['n_dev_items']} dev items",
             "", (f"Dev-selected single variant (the honest baseline): **{pick}**. Method chosen on dev: "
             f"**{summary['best_method']}** (dev accuracy {_pct(summary['best_method_dev_accuracy'])}). "
             f"Test-best single: {summary['test_best_single']['voter']}. Oracle (some voter right): "
             f"{_pct(report['diagnostics']['oracle'])}. Mean pairwise disagreement: "
             f"{_pct(report['diagnostics']['mean_pairwise_disagreement'])}; error correlation "
             f"{report['diagnostics']['error_correlation']:.3f}."), "",
             "| voter / method | accuracy % [95% CI] | macro-F1 % | ECE % | Brier | vs dev-selected single |",
             "|---|---|---|---|---|---|"]
    for v, r in report["voters"].items():
        lines.append(_row(v, r, f"dev acc {_pct(dev_acc[v])}" + (" (selected)" if v == pick else "")))
    for name, r in report["methods"].items():
        if "accuracy" not in r:
            lines.append(f"| {name} | error: {r.get('error')} | | | | |")
            continue
        t = r.get("vs_best_voter") or {}
        lo, hi = t.get("delta_ci") or (None, None)
        extra = (f"{100 * t['delta']:+.1f} pts [{_pct(lo)}, {_pct(hi)}], McNemar p={t['p_value']:.3g}"
                 if t.get("delta") is not None else "-")
        lines.append(_row(name + (" (chosen on dev)" if name == summary["best_method"] else ""), r, extra))
    lines += ["", "Ablation over the number of voters (mean accuracy over voter subsets, test items):", "",
              "| method | k | mean | min | max |", "|---|---|---|---|---|"]
    for row in ablation_rows:
        if "k" in row and row.get("mean") is not None:
            lines.append(f"| {row['method']} | {row['k']} | {_pct(row['mean'])} | "
                         f"{_pct(row.get('min'))} | {_pct(row.get('max'))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
