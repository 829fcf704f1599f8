"""The voting study on the bundled benchmark with SmolLM2-135M (issue: train K >= 5 variants).

    python experiments/study.py [--config configs/study.yaml] [--reuse runs/quickstart]

Trains the config's variants (or reuses a finished run with the same train split and
recipe: its manifest + adapters are copied and the resume check re-verifies them),
answers dev + a 2,000-item test split with every voter, and writes
experiments/results/study.json (every voter and method with intervals, calibration,
paired tests, the dev-selected single variant, the test-best single, the oracle,
disagreement and error correlation) plus the ablation table and plot.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from ensemble.ablation import ablate
from ensemble.config import load_config
from ensemble.run import run
from ensemble.training import train_grid

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/study.yaml")
    ap.add_argument("--reuse", help="a finished run dir with the same train split/recipe (e.g. runs/quickstart)")
    args = ap.parse_args()
    cfg = load_config(args.config)
    out = Path(cfg.out)
    if args.reuse and not (out / "manifest.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(args.reuse) / "manifest.json", out / "manifest.json")
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
    dev_acc = {v: float(np.mean(m.labels[dev, j, 0] == m.gold[dev])) for j, v in enumerate(m.voters)}
    dev_pick = max(dev_acc, key=dev_acc.get)
    test_pick = max(voters, key=lambda v: voters[v]["accuracy"])
    scored = {k: v for k, v in report["methods"].items() if "accuracy" in v}
    best_method = max(scored, key=lambda k: scored[k]["accuracy"])
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
        "gain_over_dev_selected_points": 100 * (scored[best_method]["accuracy"] - voters[dev_pick]["accuracy"]),
        "paired_test_vs_dev_selected": scored[best_method].get("vs_best_voter"),
        "ece_best_method": scored[best_method].get("ece"), "ece_dev_selected": voters[dev_pick].get("ece"),
        "seconds": {"train": round(t_train, 1), "run": round(t_run, 1)},
        "ablation_files": {k: str(v) for k, v in paths.items()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "study.json").write_text(json.dumps({"summary": summary, "report": report}, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
