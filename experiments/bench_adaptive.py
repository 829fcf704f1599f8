"""Adaptive voting (issue 11): how many calls and generated tokens do the stop rules save,
and what does it cost in accuracy? Offline replay of full runs, many policies side by side.

    # 1. full predictions (every voter, every sample) in generate mode, 5 voters x 4 samples:
    mkdir -p runs/adaptive_generate && cp -r runs/quickstart/adapters runs/adaptive_generate/
    vote run experiments/configs/adaptive_generate.yaml
    # 2. replay every policy on them, and on the quickstart's cloze run:
    python experiments/bench_adaptive.py --generate runs/adaptive_generate --cloze runs/quickstart
    # the same voters x 8 samples (35 wall-minutes on 2 cores), then the chosen policy live:
    vote run experiments/configs/adaptive_generate8.yaml
    python experiments/bench_adaptive.py --generate runs/adaptive_generate8 --out experiments/results/adaptive_s8 \
        --live --config experiments/configs/adaptive_generate8.yaml --live-out runs/adaptive_live8

Method. A run folder gives the full vote matrix (its predictions.jsonl with the gold and
options of its data/dev.jsonl and data/test.jsonl). Voters are asked best dev accuracy
first (ties by name), every voter's sample 0, then every voter's sample 1, ... For every
candidate policy (stop rule x parameters), ``ensemble.voting.adaptive.replay`` gives the
cells the policy would have asked; not-asked cells hold no vote. The adaptive decision is
``majority`` over the asked votes, the full decision ``majority`` over all votes (default
tie policy). The policy is CHOSEN ON DEV items: the most calls saved among the policies
that change at most ``--max-loss`` of the dev decisions (so whatever the gold answers, they
cannot cost more than that much dev accuracy; ties: fewer changes, then table order). It is
REPORTED ON TEST items, with McNemar's exact paired test
(ensemble.evaluation.metrics.paired_test) of adaptive vs full.

Why changed decisions, not dev accuracy: adaptive voting approximates the full vote. A
policy that asks one voter can match the full vote's dev accuracy when the ensemble is no
better than its best voter on dev (the first, 94-dev-item run: majority 0.479); choosing on
net dev accuracy then picked it, and it lost 9.6 points on test. ``chosen_by_dev_accuracy`` in the
json keeps that choice for comparison.

Calls: cells asked (one request per voter per sample). Tokens: the generated tokens of the
asked cells (the rows' ``n_tokens``); cloze scoring generates none (null).
Writes experiments/results/adaptive.json and adaptive.md (--out).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from adaptive_report import markdown, pct, print_summary

from ensemble.evaluation.metrics import paired_test
from ensemble.predictions.matrix import ABSTAIN, VoteMatrix
from ensemble.predictions.rows import build_matrix, read_rows
from ensemble.voting import vote
from ensemble.voting.adaptive import get_stop_rule, replay

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = {"calls_saved": 0.40, "max_accuracy_loss": 0.005}
# The grid, fixed (commit a146c97) before the larger run (n_dev=292) was benched: finer deltas
# than the first (94 dev items) run's, and min_votes (3: a stop needs at least three voters'
# first answers; 5: every voter's first answer) for one prior / temperature each.
DELTAS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4)
MIN_VOTES_DELTAS = (0.02, 0.05, 0.1, 0.2, 0.3)
CANDIDATES: list[tuple[str, dict[str, float]]] = [
    ("none", {}), ("exact", {}),
    *[("dirichlet", {"delta": d, "prior": p}) for p in (1.0, 0.5, 0.25) for d in DELTAS],
    *[("cisc", {"delta": d, "temperature": t}) for t in (0.05, 0.1, 0.2, 0.5) for d in DELTAS],
    *[("dirichlet", {"delta": d, "prior": 0.5, "min_votes": k}) for k in (3, 5) for d in MIN_VOTES_DELTAS],
    *[("cisc", {"delta": d, "temperature": 0.1, "min_votes": k}) for k in (3, 5) for d in MIN_VOTES_DELTAS],
    # the `predictive` rule (commits 5592966, 68222cd at 15:43): added before the larger run was benched
    *[("predictive", {"delta": d, "prior": p}) for p in (1.0, 0.5, 0.25) for d in DELTAS],
    # the `sticky` rule (2026-11-26, 23:50): added AFTER the n_dev=292 table above was seen, before
    # the full-size run (481 dev / 469 test questions) was benched; stick 0 would be `predictive`.
    *[("sticky", {"delta": d, "stick": st, "min_votes": k}) for st in (0.5, 0.8) for k in (1, 5)
      for d in (0.01, 0.02, 0.05, 0.1, 0.2)],
]


def policy_name(rule: str, params: dict[str, float]) -> str:
    return rule + "".join(f" {k}={v:g}" for k, v in params.items())


# -- data -------------------------------------------------------------------------------
def load_run(run: Path) -> tuple[VoteMatrix, np.ndarray, np.ndarray | None]:
    """A `vote run` folder -> (matrix with gold and options, (I,) dev mask, (I, V, S) generated
    tokens per cell or None when the rows have none, as in cloze mode)."""
    from ensemble.data.formats import read_items

    splits = {s: read_items(run / "data" / f"{s}.jsonl") for s in ("dev", "test")}
    items = {it.id: it for part in splits.values() for it in part}
    rows = [r for r in read_rows(run / "predictions.jsonl") if r["item"] in items]
    # Only items with every cell stored (a run still going, or stopped, has partial items).
    cells = {(r["voter"], int(r.get("sample", 0))) for r in rows}
    n_cells = {i: 0 for i in items}
    for r in rows:
        n_cells[r["item"]] += 1
    rows = [r for r in rows if n_cells[r["item"]] == len(cells)]
    m = build_matrix(rows, gold={i: it.answer for i, it in items.items() if it.answer is not None},
                     options={i: it.letters for i, it in items.items() if it.options} or None)
    dev_ids = {it.id for it in splits["dev"]}
    dev = np.array([i in dev_ids for i in m.items])
    tokens = None
    if all("n_tokens" in r for r in rows):
        item_ix, voter_ix = {i: k for k, i in enumerate(m.items)}, {v: k for k, v in enumerate(m.voters)}
        tokens = np.zeros(m.labels.shape)
        for r in rows:
            tokens[item_ix[r["item"]], voter_ix[r["voter"]], int(r.get("sample", 0))] = r["n_tokens"]
    return m, dev, tokens


def voter_order(m: VoteMatrix, dev: np.ndarray) -> list[int]:
    """Voter indices, best dev accuracy first (accuracy over all its dev cells, an abstention
    is wrong), ties by name: the order ``run.adaptive.order: dev_accuracy`` asks in."""
    right = (m.labels[dev] == m.gold[dev][:, None, None]).mean(axis=(0, 2))  # type: ignore[index]
    return sorted(range(m.n_voters), key=lambda j: (-right[j], m.voters[j]))


def asking_order(voters: list[int], n_samples: int) -> list[tuple[int, int]]:
    return [(v, s) for s in range(n_samples) for v in voters]


def masked(m: VoteMatrix, asked: np.ndarray) -> VoteMatrix:
    """What an adaptive run holds: the not-asked cells carry no vote."""
    return replace(m, labels=np.where(asked, m.labels, ABSTAIN).astype(np.int32),
                   confidence=None if m.confidence is None else np.where(asked, m.confidence, np.nan),
                   probs=None if m.probs is None else np.where(asked[..., None], m.probs, np.nan))


# -- measurement ------------------------------------------------------------------------
def measure(m: VoteMatrix, items: np.ndarray, asked: np.ndarray, adaptive: np.ndarray,
            full: np.ndarray, tokens: np.ndarray | None) -> dict[str, Any]:
    """Calls / tokens / accuracy of one policy on the items ``items`` (I,) bool."""
    gold = m.gold[items]  # type: ignore[index]
    made, possible = int(asked[items].sum()), int(asked[items].size)
    out: dict[str, Any] = {"n_items": int(items.sum()), "calls_made": made, "calls_possible": possible,
                           "calls_saved": 1 - made / possible if possible else 0.0}
    if tokens is not None:
        used, total = float(tokens[items][asked[items]].sum()), float(tokens[items].sum())
        out.update(tokens_made=int(used), tokens_possible=int(total),
                   tokens_saved=1 - used / total if total else 0.0)
    else:
        out.update(tokens_made=None, tokens_possible=None, tokens_saved=None)
    test = paired_test(gold, adaptive[items], full[items])
    out.update(accuracy_full=float(np.mean(full[items] == gold)),
               accuracy_adaptive=float(np.mean(adaptive[items] == gold)),
               p_value=test["p_value"], delta=test["delta"], delta_ci=test["delta_ci"],
               n_adaptive_only=test["n_a_only"], n_full_only=test["n_b_only"],
               changed_decisions=int((adaptive[items] != full[items]).sum()))
    return out


def choose(table: list[dict[str, Any]], max_loss: float) -> dict[str, Any]:
    """The most dev calls saved changing at most ``max_loss`` of the dev decisions; ties: fewer
    changes, then table order ("none" changes nothing: there is always a choice)."""
    ok = [r for r in table if r["dev"]["changed_decisions"] <= max_loss * r["dev"]["n_items"] + 1e-9]
    return max(ok, key=lambda r: (round(r["dev"]["calls_saved"], 12), -r["dev"]["changed_decisions"],
                                  -table.index(r)))


def choose_by_accuracy(table: list[dict[str, Any]], max_loss: float) -> dict[str, Any]:
    """For comparison: the most dev calls saved within ``max_loss`` of the full dev accuracy."""
    ok = [r for r in table if r["dev"]["accuracy_adaptive"] >= r["dev"]["accuracy_full"] - max_loss - 1e-12]
    return max(ok, key=lambda r: (round(r["dev"]["calls_saved"], 12), r["dev"]["accuracy_adaptive"],
                                  -table.index(r)))


def bench(m: VoteMatrix, dev: np.ndarray, tokens: np.ndarray | None, max_loss: float) -> dict[str, Any]:
    test = ~dev & m.has_gold()
    order = asking_order(voter_order(m, dev), m.n_samples)
    full = vote(m, "majority").labels
    table = []
    for rule, params in CANDIDATES:
        t0 = time.process_time()
        asked = replay(m, order, get_stop_rule(rule, params))
        adaptive = vote(masked(m, asked), "majority").labels
        table.append({"policy": policy_name(rule, params), "rule": rule, "params": params,
                      "dev": measure(m, dev, asked, adaptive, full, tokens),
                      "test": measure(m, test, asked, adaptive, full, tokens),
                      "replay_cpu_s": round(time.process_time() - t0, 2)})
    chosen, by_accuracy = choose(table, max_loss), choose_by_accuracy(table, max_loss)
    return {"n_dev": int(dev.sum()), "n_test": int(test.sum()), "voters": list(m.voters),
            "samples": m.n_samples, "order": [f"{m.voters[v]}#{s}" for v, s in order],
            "chosen": {"policy": chosen["policy"], "rule": chosen["rule"], "params": chosen["params"],
                       **chosen["test"], "dev": chosen["dev"]},
            "chosen_by_dev_accuracy": {"policy": by_accuracy["policy"], **by_accuracy["test"],
                                       "dev": by_accuracy["dev"]},
            "candidates": table}


def replay_on(m: VoteMatrix, dev: np.ndarray, tokens: np.ndarray | None, chosen: dict[str, Any],
              item_ids: set[str]) -> dict[str, Any]:
    """The chosen policy's replay measured on ``item_ids`` only (the live run's items)."""
    asked = replay(m, asking_order(voter_order(m, dev), m.n_samples), get_stop_rule(chosen["rule"], chosen["params"]))
    items = np.array([i in item_ids for i in m.items])
    return measure(m, items, asked, vote(masked(m, asked), "majority").labels, vote(m, "majority").labels, tokens)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generate", type=Path, help="a generate-mode run folder (several samples)")
    ap.add_argument("--cloze", type=Path, help="a cloze-mode run folder (one vote per voter)")
    ap.add_argument("--max-loss", type=float, default=TARGET["max_accuracy_loss"],
                    help="share of dev decisions a policy may change to be chosen (its worst-case dev accuracy loss)")
    ap.add_argument("--live", action="store_true",
                    help="then run the policy chosen on --generate live (run.adaptive) on its test items")
    ap.add_argument("--config", type=Path, default=Path("experiments/configs/adaptive_generate.yaml"),
                    help="the config of the --generate run (the live run reuses it)")
    ap.add_argument("--live-out", type=Path, default=Path("runs/adaptive_live"))
    ap.add_argument("--live-limit", type=int, default=None,
                    help="live run on only the first N test problems (data.limit; ~1.7 questions each)")
    ap.add_argument("--out", type=Path, default=RESULTS / "adaptive")
    ap.add_argument("--reuse", type=Path, default=None,
                    help="an earlier json of the same runs: take its policies' replay from it, replay nothing again")
    args = ap.parse_args(argv)
    earlier = json.loads(args.reuse.read_text()) if args.reuse else {}
    result: dict[str, Any] = {"command": "python experiments/bench_adaptive.py " + " ".join(sys.argv[1:]
                                                                                           if argv is None else argv),
                              "target": TARGET}
    matrices = {}
    for name, run in (("generate", args.generate), ("cloze", args.cloze)):
        if run is None:
            continue
        if name in earlier and earlier[name]["source"] != str(run):
            ap.error(f"--reuse {args.reuse}: its {name} run is {earlier[name]['source']}, not {run}")
        t0 = time.process_time()
        m, dev, tokens = load_run(run)
        matrices[name] = (m, dev, tokens)
        if name in earlier:
            result[name] = earlier[name]
        else:
            result[name] = {"source": str(run), **bench(m, dev, tokens, args.max_loss),
                            "cpu_s": round(time.process_time() - t0, 1)}
        print_summary(name, result[name], TARGET)
    main_setting = result.get("generate") or result.get("cloze")
    if main_setting is None:
        ap.error("give --generate and/or --cloze")
    if args.live:
        if "generate" not in result:
            ap.error("--live confirms the policy chosen on --generate: give --generate")
        from adaptive_live import run_live

        m, dev, tokens = matrices["generate"]
        live = run_live(args.config, args.generate, m, result["generate"], args.live_out, args.live_limit)
        live["replay"] = replay_on(m, dev, tokens, result["generate"]["chosen"], set(live.pop("items")))
        result["live"] = live
        print(f"[live] {live['policy']} on {live['n_items']} test items: calls {live['calls_made']}/"
              f"{live['calls_possible']} (saved {pct(live['calls_saved'])}; replay {pct(live['replay']['calls_saved'])}), "
              f"tokens saved {pct(live['tokens_saved'])}, accuracy {live['accuracy_adaptive']:.3f} vs full run "
              f"{live['accuracy_full']:.3f} (McNemar p={live['p_value']:.3g}); {live['same_draws']} of "
              f"{live['calls_made']} samples the full run's; {live['cpu_s']} CPU-s, {live['wall_s']} s")
    c = main_setting["chosen"]
    result.update({k: c[k] for k in ("policy", "calls_saved", "tokens_saved", "accuracy_full",
                                     "accuracy_adaptive", "p_value")})
    result["target_met"] = bool(c["calls_saved"] >= TARGET["calls_saved"]
                                and c["accuracy_adaptive"] >= c["accuracy_full"] - TARGET["max_accuracy_loss"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {args.out.with_suffix('.json')} and .md; target met: {result['target_met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
