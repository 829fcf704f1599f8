"""Does voting pay at equal budget? One LoRA with the whole budget vs K voters that vote (issue 9, point 10).

    nice -n 5 python experiments/equal_budget.py [--a-steps 150] [--k 5] [--root runs/equal_budget]
    python experiments/equal_budget.py --tiny --root /tmp/eb --results /tmp/eb/results   # seconds, tiny model

Data: the bundled benchmark (four kinds arith, compare, sequence, order; seed 0): 1,200
training problems, a dev split (230 problems, 444 items) and a test split (1,100 problems,
2,087 items), disjoint by problem text (checked and recorded). Model: SmolLM2-135M-Instruct.

Arms, each a `vote train` + `vote run` of its own folder under ``--root`` (so each resumes
through the training manifest and the predictions store; a finished arm is skipped):

* ``single`` (baseline A): one plain LoRA on all training problems, the quickstart recipe
  (rank 16 on the attention projections, cloze, lr 2e-3 constant, bf16, batch 8) for
  ``--a-steps`` steps, scored alone. Its train + score CPU seconds are the budget B.
* ``lora`` / ``top`` / ``alora``: K voters of one kind (plain LoRA; LoRA on the top
  ``--top`` layers; activated LoRA) trained together on shared batches, each with its own
  seed and Poisson(1) row weights (online bagging), scored with the HF engine's sharing.
  Steps per voter come from measured pilots (``equal_budget_plan.py``): 3 training steps of
  K voters and the scoring of a few problems, at K = 2 and K = ``--k``, give the per-step and
  per-item costs (a line in K), the per-item cost scaled by baseline A's own pilot/full
  ratio, so that train + score matches B (within ~10%). The largest K <= ``--k`` that leaves
  ``--min-steps`` steps per voter is used.

Costs are this process's CPU time (``time.process_time``) with ``torch.set_num_threads(1)``
(other jobs on the machine change wall time much more than CPU time); wall time is recorded
too. A phase killed and rerun adds the killed attempt's seconds (they were spent).

Evaluation (``equal_budget_report.py``): for each ensemble the voting method and the
tie-break are chosen on dev only (``ensemble.evaluation.protocol.evaluate_run``, fitted
methods cross-fitted within dev), then scored on test with a 95% bootstrap CI, ECE, and
McNemar's exact test against A (``ensemble.evaluation.metrics.paired_test``). Each arm's ECE
is reported raw and after one temperature fitted on dev (``ensemble.evaluation.temperature``).
Writes experiments/results/equal_budget.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import equal_budget_plan as plan
import equal_budget_report as report
import torch

from ensemble.config.loader import from_dict
from ensemble.config.schema import Config
from ensemble.data.benchmark import ensure_benchmark

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ["arith", "compare", "sequence", "order"]
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
METHODS = ["majority", "weighted", "select", "stack", "confidence", "dawid_skene"]
FULL = {"bench": {"n_train": 1200, "n_dev": 230, "n_test": 1100}, "model": "smollm2", "pilot_steps": 3,
        "pilot_problems": 16, "heldout_fraction": 0.02}
TINY = {"bench": {"n_train": 40, "n_dev": 8, "n_test": 12}, "model": None, "pilot_steps": 2,
        "pilot_problems": 3, "heldout_fraction": 0.1}


def config(root: Path, arm: str, s: dict[str, Any], *, steps: int, grid: dict[str, Any], shared: bool,
           limit: int | None = None, out: Path | None = None) -> Config:
    """One arm's `vote train` + `vote run` config (the quickstart recipe; data from ``root/data``)."""
    data = {k: str(root / "data" / f"{k}.jsonl") for k in ("train", "dev", "test")}
    return from_dict(Config, {
        "model": s["model"], "out": str(out or root / arm), "prompt": "mc_short_auto",
        "data": {**data, **({"limit": limit} if limit else {})},
        "train": {"mode": "cloze", "max_steps": steps, "batch_size": 8, "learning_rate": 2e-3,
                  "scheduler": "constant", "dtype": "bfloat16", "heldout_fraction": s["heldout_fraction"],
                  "shared_batches": shared, "checkpoint_every": 10, "grid": grid},
        "run": {"engine": "hf", "mode": "cloze", "dtype": "bfloat16", "batch_size": 32, "splits": ["dev", "test"],
                "methods": METHODS if arm != "single" else ["majority"]},
    }, source=f"equal_budget:{arm}")


ARM_OPTIONS = {"shards": "disjoint shards (shard:K) instead of Poisson(1) bagging", "r": "LoRA rank",
               "l": "top-layer voters: LoRA on the top N layers", "k": "at most N voters",
               "m": "at least N steps per voter"}


def parse_arm(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """One ``--kinds`` entry -> the arm's settings. ``KIND[/OPTION...]``: KIND is alora | top | lora;
    options ``shards``, ``rN`` (rank), ``lN`` (top layers), ``kN`` (most voters), ``mN`` (fewest
    steps per voter) override the defaults (Poisson bagging, rank 16, ``--top``, ``--k``,
    ``--min-steps``). E.g. ``alora/shards``, ``alora/r8``, ``top/l10``, ``alora/k8/m15``."""
    kind, *opts = spec.split("/")
    if kind not in ("alora", "top", "lora"):
        raise SystemExit(f"--kinds: {spec!r}: the kind must be alora, top or lora")
    arm = {"spec": spec, "kind": kind, "data": "poisson", "rank": 16, "top": args.top, "k": args.k,
           "min_steps": args.min_steps}
    for o in opts:
        key = "shards" if o == "shards" else o[:1]
        if key not in ARM_OPTIONS or (key != "shards" and not o[1:].isdigit()):
            raise SystemExit(f"--kinds: {spec!r}: unknown option {o!r}; options: shards, rN, lN, kN, mN "
                             f"({'; '.join(f'{k}: {v}' for k, v in ARM_OPTIONS.items())})")
        if key == "shards":
            arm["data"] = "shards"
        else:
            arm[{"r": "rank", "l": "top", "k": "k", "m": "min_steps"}[key]] = int(o[1:])
    return arm


def describe(arm: dict[str, Any]) -> str:
    """The arm's voters in words, for the report."""
    data = "disjoint shards of the training problems" if arm["data"] == "shards" else \
        "Poisson(1) online bagging of all training problems"
    top = f", LoRA on the top {arm['top']} layers" if arm["kind"] == "top" else ""
    return f"{arm['spec']}: seeds 0..K-1, rank {arm['rank']}, attention projections{top}, {data}"


GRID_KEY = {"flavour": "flavours", "layers": "layers"}  # a variant's field -> the grid product's list


def grid_for(kind: str, k: int, top: int, rank: int = 16, data: str = "poisson") -> dict[str, Any]:
    """K voters of one kind: seeds 0..K-1, rank ``rank`` on the attention projections, Poisson(1)
    bagging of every training row (``data="poisson"``) or K disjoint shards (``"shards"``)."""
    own = {"alora": {"flavour": "alora"}, "top": {"layers": f"top:{top}"}}.get(kind, {})  # per variant
    if data == "shards":
        # One variant per shard: seeds pair up with shards rather than multiply them.
        return {"variants": [{"name": f"s{i}-r{rank}-shard{i}", "seed": i, "rank": rank, "split": f"shard:{k}:{i}",
                              "target_modules": ATTN, **own} for i in range(k)]}
    return {"seeds": list(range(k)), "ranks": [rank], "target_modules": [ATTN], "splits": ["full"],
            "bagging": "poisson", **{GRID_KEY[key]: [v] for key, v in own.items()}}


SINGLE_GRID = {"variants": [{"name": "single-r16-attn", "seed": 0, "rank": 16, "split": "full",
                             "target_modules": ATTN}]}


def run_arm(ledger: plan.Ledger, cfg: Config, report_only: bool = False) -> Any:
    """Train then score one arm, each phase timed into the ledger unless already done; returns
    the pipeline's RunResult (a finished arm only re-evaluates its stored predictions), or
    None for an unfinished arm with ``report_only``."""
    from ensemble.pipeline import run
    from ensemble.training import train_grid

    if report_only and not ledger.done("score"):
        return None
    if not ledger.done("train"):
        with ledger.phase("train") as tick:
            train_grid(cfg, progress=lambda event, **info: tick())
    if ledger.done("score"):
        return run(cfg)
    marks, c0 = plan.Marks(), time.process_time()

    def progress(event: str, **info: Any) -> None:
        marks(event, **info)
        tick()
    with ledger.phase("score") as tick:
        result = run(cfg, progress=progress)
    # The scoring loop alone vs load + evaluation: the pilots' scale (equal_budget_plan.score_pilot).
    ledger.set("score_marks", {"span": round(marks.span(), 3), "rows": marks.rows,
                               "attempt_cpu": round(time.process_time() - c0, 3)})
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="runs/equal_budget")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--a-steps", type=int, default=150, help="baseline A's training steps (sets the budget)")
    ap.add_argument("--k", type=int, default=5, help="voters per ensemble (lowered while it does not fit)")
    ap.add_argument("--min-steps", type=int, default=25, help="fewest steps per voter worth training")
    ap.add_argument("--top", type=int, default=6, help="top-layer voters: LoRA on the top N layers")
    ap.add_argument("--kinds", default="alora,top,lora",
                    help="ensemble arms, in run order: KIND[/OPTION...], e.g. alora,alora/shards,top/l10 "
                         "(options: shards, rN rank, lN top layers, kN most voters, mN fewest steps)")
    ap.add_argument("--tiny", action="store_true", help="tiny random model, a few items: checks the plumbing")
    ap.add_argument("--report-only", action="store_true",
                    help="train and score nothing: report the finished arms, and the seconds spent on the others")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # the budget is CPU time of one core
    s = dict(TINY if args.tiny else FULL)
    root = Path(args.root)
    if args.tiny:
        from ensemble.testing import make_tiny_model

        s["model"] = str(make_tiny_model(root / "tiny-model", num_layers=4))
        # Fixed costs (model load, evaluation) dominate a tiny run: A trains long enough that
        # two voters of each kind fit in its budget.
        args.a_steps, args.min_steps, args.top, args.k = 30, 1, 2, 2
    paths = ensure_benchmark(root / "data", seed=0, kinds=KINDS, **s["bench"])
    started = time.perf_counter()
    # Baseline A: its measured train + score CPU time is every ensemble's budget.
    a_ledger = plan.Ledger(root / "single")
    a_cfg = config(root, "single", s, steps=args.a_steps, grid=SINGLE_GRID, shared=False)
    a_result = run_arm(a_ledger, a_cfg, args.report_only)
    settings = {
        "a_steps": args.a_steps, "k_target": args.k, "min_steps": args.min_steps, "top_layers": args.top,
        "model": "tiny-random" if args.tiny else s["model"], "benchmark": {**s["bench"], "seed": 0, "kinds": KINDS},
        "threads": torch.get_num_threads(), "pilot_steps": s["pilot_steps"], "pilot_problems": s["pilot_problems"],
        "heldout_fraction": s["heldout_fraction"], "tiny": args.tiny,
        "command": "python experiments/equal_budget.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    arms_wanted = [parse_arm(k, args) for k in args.kinds.split(",") if k]
    kinds = [a["spec"] for a in arms_wanted]
    if a_result is None:  # --report-only before baseline A finished: only seconds to report
        out = report.unfinished(root, paths, kinds, settings)
        report.write(out, Path(args.results))
        return out
    budget = a_ledger.seconds()
    a_pilot = a_ledger.data.get("pilot", {}) if args.report_only else plan.score_pilot(
        a_ledger, config(root, "single", s, steps=args.a_steps, grid=SINGLE_GRID, shared=False,
                         limit=s["pilot_problems"], out=root / "single-pilot"), a_cfg)
    print(f"[equal_budget] baseline A: {budget:.0f} CPU s (train {a_ledger.get('train')['cpu']:.0f}, "
          f"score {a_ledger.get('score')['cpu']:.0f})", flush=True)
    arms: list[dict[str, Any]] = []
    for arm in arms_wanted:
        arms.append(ensemble_arm(root, arm, s, args, budget, a_pilot))
    out = report.build(root, paths, a_ledger, a_result, arms, settings=settings, baseline_pilot=a_pilot,
                       methods=METHODS)
    out["wall_seconds_this_invocation"] = round(time.perf_counter() - started, 1)
    report.write(out, Path(args.results))
    return out


def ensemble_arm(root: Path, arm: dict[str, Any], s: dict[str, Any], args: argparse.Namespace, budget: float,
                 a_pilot: dict[str, float]) -> dict[str, Any]:
    """Plan (pilot, steps per voter, K), then train + score one ensemble; returns its record.
    The arm's folder is ``root/<spec>`` with ``/`` as ``-`` (``alora`` -> ``root/alora``)."""
    spec, kind = arm["spec"], arm["kind"]
    name = spec.replace("/", "-")
    ledger = plan.Ledger(root / name)
    record = {"kind": spec, "voters": describe(arm), "plan": None, "ledger": ledger.data}
    chosen = ledger.data.get("plan")
    if args.report_only and (chosen is None or chosen.get("status") != "infeasible") and not ledger.done("score"):
        return {**record, "plan": chosen}  # unfinished: its seconds so far

    def make(k: int, steps: int, out: Path | None = None, limit: int | None = None) -> Config:
        return config(root, kind, s, steps=steps, grid=grid_for(kind, k, arm["top"], arm["rank"], arm["data"]),
                      shared=True, out=out or root / name, limit=limit)
    if chosen is None:
        chosen = plan.choose(root, name, s, argparse.Namespace(k=arm["k"], min_steps=arm["min_steps"]),
                             budget, a_pilot, make, kind=kind)
        ledger.set("plan", chosen)
    print(f"[equal_budget] {spec}: {json.dumps(chosen)}", flush=True)
    if chosen.get("status") == "infeasible":
        return {**record, "plan": chosen}
    cfg = make(chosen["k"], chosen["steps"])
    result = run_arm(ledger, cfg, args.report_only)
    return {**record, "plan": chosen, "result": result, "cfg": cfg}


if __name__ == "__main__":
    main()
