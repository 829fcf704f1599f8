"""How much does the quickstart's equal-budget single LoRA move with its seed?

    python experiments/single_seeds.py --seeds 0,1,2,3 --steps 78,92 --ensemble runs/quickstart

`vote quickstart` prints ONE single LoRA beside the ensemble: one seed, one step count. If
that single LoRA's test accuracy moves by several points from seed to seed, one comparison
says little, and the number a user should compare with is the single LoRA's mean over seeds
(the ensemble's own voters are five seeds already). This trains the quickstart's baseline
(``ensemble.quickstart.baseline_config``: one plain LoRA on every training row, the train
section's recipe) for every (steps, seed), each in its own folder under ``--root`` (resumable:
a finished one is skipped through its manifest and predictions store), scores it on the test
split, and reports per step count the mean, standard deviation, min and max test accuracy;
with ``--ensemble RUN`` also that run's dev-chosen ensemble accuracy (its report.json) and how
many single seeds it beats. ``--ensemble-offsets 10,20`` also retrains the config's ensemble
with every voter's seed shifted by each offset (same data, steps, recipe; its own folder) and
reports the spread of its dev-chosen accuracy, the --ensemble run counting as offset 0.
Writes experiments/results/single_seeds.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ensemble.cli.jobs import find_config
from ensemble.config.loader import load_config
from ensemble.errors import EnsembleError
from ensemble.quickstart import baseline_config

RESULTS = Path(__file__).resolve().parent / "results"


def single(config: Path, overrides: list[str], root: Path, steps: int, seed: int) -> dict[str, Any]:
    """Train + score one seed of the baseline; its test accuracy and seconds."""
    from ensemble.pipeline import run
    from ensemble.training import train_grid

    cfg = load_config(config, overrides)
    if cfg.baseline is None:
        raise EnsembleError(f"{config}: no 'baseline' section; this study varies the quickstart's single LoRA")
    name = cfg.baseline.name
    cfg = replace(cfg, baseline=replace(cfg.baseline, max_steps=steps, seed=seed))
    one = replace(baseline_config(cfg), out=str(root / f"steps{steps}-seed{seed}"))
    t0 = time.time()
    train_grid(one)
    result = run(one)
    row = result.report.voters[name]
    return {"steps": steps, "seed": seed, "accuracy": row["accuracy"], "ci": row["accuracy_ci"],
            "n_test": int(result.report.eval_mask.sum()) if result.report.eval_mask is not None else None,
            "wall_s": round(time.time() - t0, 1)}


def ensemble_seed(config: Path, overrides: list[str], root: Path, offset: int) -> dict[str, Any]:
    """The config's ensemble again with every voter's seed + ``offset`` (same data, steps and
    recipe): its dev-chosen method's test accuracy, so the ensemble's own seed spread is known."""
    from ensemble.pipeline import run
    from ensemble.training import train_grid

    cfg = load_config(config, overrides)
    grid = cfg.train.grid
    grid = replace(grid, seeds=tuple(s + offset for s in grid.seeds),
                   variants=tuple(replace(v, seed=v.seed + offset) for v in grid.variants))
    cfg = replace(cfg, out=str(root / f"ensemble-offset{offset}"), train=replace(cfg.train, grid=grid),
                  run=replace(cfg.run, submission=None), baseline=None)
    t0 = time.time()
    train_grid(cfg)
    chosen = run(cfg).report.selected_on_dev
    if not chosen:
        raise EnsembleError(f"{config}: the ensemble's run chose no method on dev; keep run.splits: [dev, test]")
    return {"seed_offset": offset, "method": chosen["method"], "accuracy": chosen["eval_accuracy"],
            "dev_accuracy": chosen["dev_accuracy"], "wall_s": round(time.time() - t0, 1)}


def spread(acc: list[float]) -> dict[str, Any]:
    """n, mean, sample sd (None for one value), min and max of some accuracies."""
    return {"n": len(acc), "mean": statistics.fmean(acc), "sd": statistics.stdev(acc) if len(acc) > 1 else None,
            "min": min(acc), "max": max(acc)}


def summary(rows: list[dict[str, Any]], ensemble: float | None) -> list[dict[str, Any]]:
    out = []
    for steps in sorted({r["steps"] for r in rows}):
        acc = [r["accuracy"] for r in rows if r["steps"] == steps]
        sp = spread(acc)
        s: dict[str, Any] = {"steps": steps, "seeds": sp.pop("n"), **sp}
        if ensemble is not None:
            s["ensemble_beats"] = sum(a < ensemble for a in acc)
            s["ensemble_minus_mean_points"] = 100 * (ensemble - s["mean"])
        out.append(s)
    return out


def _spread_text(s: dict[str, Any]) -> str:
    sd = "-" if s["sd"] is None else f"{100 * s['sd']:.1f}"
    return f"mean {100 * s['mean']:.1f}%, sd {sd}, range {100 * s['min']:.1f}-{100 * s['max']:.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=None, help="default: the shipped quickstart.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--steps", default="92", help="comma-separated baseline step counts")
    ap.add_argument("--root", type=Path, default=Path("runs/single_seeds"))
    ap.add_argument("--ensemble", type=Path, help="a finished quickstart run folder, for its dev-chosen accuracy")
    ap.add_argument("--ensemble-offsets", default="",
                    help="also retrain the config's ensemble with every voter's seed + each offset (e.g. 10,20,30)")
    ap.add_argument("--out", type=Path, default=RESULTS / "single_seeds.json")
    args = ap.parse_args(argv)
    config = args.config or find_config("quickstart.yaml")
    seeds, steps = [int(s) for s in args.seeds.split(",")], [int(s) for s in args.steps.split(",")]
    ensemble = None
    if args.ensemble:
        report = json.loads((args.ensemble / "report.json").read_text())
        chosen = report.get("selected_on_dev") or {}
        if "eval_accuracy" not in chosen:
            raise EnsembleError(f"{args.ensemble / 'report.json'}: no method chosen on dev; run it with a dev split")
        ensemble = {"method": chosen["method"], "accuracy": chosen["eval_accuracy"]}
    rows = []
    for n in steps:
        for seed in seeds:
            rows.append(single(config, args.set, args.root, n, seed))
            print(json.dumps(rows[-1]), flush=True)
    ensembles = [ensemble_seed(config, args.set, args.root, int(o)) for o in args.ensemble_offsets.split(",") if o]
    for e in ensembles:
        print(json.dumps(e), flush=True)
    result: dict[str, Any] = {"command": "python experiments/single_seeds.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "config": str(config), "ensemble": ensemble, "runs": rows,
              "summary": summary(rows, ensemble["accuracy"] if ensemble else None), "ensemble_seeds": ensembles}
    if ensembles:  # the --ensemble run counts as offset 0
        result["ensemble_spread"] = spread([e["accuracy"] for e in ensembles]
                                           + ([ensemble["accuracy"]] if ensemble else []))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for s in result["summary"]:
        line = f"{s['steps']} steps, {s['seeds']} seeds: {_spread_text(s)}"
        if ensemble is not None:
            line += (f"; ensemble ({ensemble['method']}) {100 * ensemble['accuracy']:.1f}% beats "
                     f"{s['ensemble_beats']} of {s['seeds']}, {s['ensemble_minus_mean_points']:+.1f} pts vs the mean")
        print(line)
    if ensembles:
        e = result["ensemble_spread"]
        print(f"ensemble over {e['n']} seed sets: {_spread_text(e)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
