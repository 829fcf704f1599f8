"""Evaluation and output of experiments/equal_budget.py: choose on dev, report on test.

For each ensemble: every (method, tie-break) pair runs through ``protocol.evaluate_run``
(methods that fit on dev are cross-fitted within dev); the pair with the best dev accuracy
is chosen (ties: the default tie policy, then the method name), and only then read on test:
accuracy with its 95% bootstrap CI, ECE, and McNemar's exact test against baseline A on the
same test items (``metrics.paired_test``). Baseline B is the ensemble's dev-selected single
voter (``protocol.baseline_voter``), compared with A the same way.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ensemble.data.formats import read_items
from ensemble.evaluation.metrics import paired_test, voter_decisions
from ensemble.evaluation.protocol import evaluate_run
from ensemble.predictions.matrix import ABSTAIN, VoteMatrix
from ensemble.voting.tiebreak import DEFAULT_TIE_BREAK, TIE_BREAKS

TARGET = {"points": 3.0, "p": 0.01}


def _codes(m: VoteMatrix, answers: dict[str, str | None]) -> np.ndarray:
    """(I,) another run's answers as ``m``'s class codes (ABSTAIN where none)."""
    index = {c: i for i, c in enumerate(m.classes)}
    return np.array([index.get(answers.get(i) or "", ABSTAIN) for i in m.items], dtype=np.int32)


def answers_by_item(m: VoteMatrix, labels: np.ndarray) -> dict[str, str | None]:
    return {i: (m.classes[c] if c != ABSTAIN else None) for i, c in zip(m.items, labels.tolist())}


def _per_kind(m: VoteMatrix, labels: np.ndarray, mask: np.ndarray, kinds: dict[str, str]) -> dict[str, float]:
    right = labels == m.gold
    out = {}
    for kind in sorted(set(kinds.values())):
        sel = mask & np.array([kinds.get(i) == kind for i in m.items])
        if sel.any():
            out[kind] = round(float(right[sel].mean()), 4)
    return out


def vs_baseline(m: VoteMatrix, mask: np.ndarray, labels: np.ndarray, a_answers: dict[str, str | None]) -> dict[str, Any]:
    gold = m.gold[mask]
    return paired_test(gold, labels[mask], _codes(m, a_answers)[mask])


def ece_fields(row: dict[str, Any]) -> dict[str, Any]:
    """A report row's ECE after temperature scaling fitted on dev (``ece``; the raw one when the
    row has no dev to fit on), the raw ECE (``ece_raw``) and the temperature ``t``."""
    t = row.get("temperature") or {}
    return {"ece": t.get("ece", row.get("ece")), "ece_raw": row.get("ece"), "temperature": t.get("t")}


def baseline(a_ledger: Any, result: Any, kinds: dict[str, str]) -> tuple[dict[str, Any], dict[str, str | None]]:
    """Baseline A's test row and its answers by item id."""
    m, rep = result.matrix, result.report
    voter = m.voters[0]
    labels = voter_decisions(m)[voter].labels
    row = rep.voters[voter]
    mask = rep.eval_mask
    return ({"voter": voter, "accuracy": row["accuracy"], "ci": row.get("accuracy_ci"), **ece_fields(row),
             "brier": row.get("brier"), "dev_accuracy": row.get("dev_accuracy"),
             "seconds": round(a_ledger.seconds("cpu"), 1), "wall_seconds": round(a_ledger.seconds("wall"), 1),
             "seconds_train": a_ledger.get("train")["cpu"], "seconds_score": a_ledger.get("score")["cpu"],
             "per_kind_accuracy": _per_kind(m, labels, mask, kinds), "n_test": int(mask.sum())},
            answers_by_item(m, labels))


def choose_on_dev(m: VoteMatrix, dev_ids: list[str], methods: list[str]) -> tuple[Any, str, str, dict[str, Any]]:
    """(report, method, tie policy, {method/tie: dev accuracy}) with the best dev accuracy."""
    reports, dev_acc = {}, {}
    for tie in TIE_BREAKS.names():
        rep, _ = evaluate_run(m, methods, {name: {"tie_break": tie} for name in methods}, dev_ids)
        reports[tie] = rep
        for name, acc in (rep.selected_on_dev or {}).get("dev_accuracies", {}).items():
            if acc is not None:
                dev_acc[(name, tie)] = acc
    name, tie = min(dev_acc, key=lambda k: (-dev_acc[k], k[1] != DEFAULT_TIE_BREAK, k[1], k[0]))
    return reports[tie], name, tie, {f"{n}/{t}": round(a, 4) for (n, t), a in sorted(dev_acc.items())}


def ensemble_row(arm: dict[str, Any], a: dict[str, Any], a_answers: dict[str, str | None],
                 kinds: dict[str, str], methods: list[str]) -> dict[str, Any]:
    """One ensemble's test row (method chosen on dev), its single-voter baseline B and diagnostics."""
    plan, ledger = arm["plan"], arm["ledger"]
    seconds = {"seconds": round(ledger.get("train", {}).get("cpu", 0) + ledger.get("score", {}).get("cpu", 0), 1)
               if "train" in ledger else None}
    if plan is not None and plan.get("status") == "infeasible":
        return {"kind": arm["kind"], "k": None, "method": None, "accuracy": None, "ci": None, "ece": None,
                **seconds, "p_vs_baseline": None, "status": "infeasible", "reason": plan["reason"], "plan": plan}
    if "result" not in arm:  # --report-only: not finished yet
        return _unfinished_row(arm["kind"], ledger, plan)
    result = arm["result"]
    m = result.matrix
    dev_ids = [i for i, d in zip(m.items, result.dev) if d]
    rep, method, tie, dev_acc = choose_on_dev(m, dev_ids, methods)
    row, mask = rep.methods[method], rep.eval_mask
    labels = rep.decisions[method].labels
    test = vs_baseline(m, mask, labels, a_answers)
    b = rep.diagnostics["best_voter"]
    b_labels = voter_decisions(m)[b].labels
    b_test = vs_baseline(m, mask, b_labels, a_answers)
    train, score = ledger["train"], ledger["score"]
    total = train["cpu"] + score["cpu"]
    delta = 100 * (row["accuracy"] - a["accuracy"])
    ece = ece_fields(row)
    ece_lower = ece["ece"] is not None and a["ece"] is not None and ece["ece"] < a["ece"]
    return {
        "kind": arm["kind"], "k": plan["k"], "steps_per_voter": plan["steps"], "method": method, "tie_break": tie,
        "accuracy": row["accuracy"], "ci": row.get("accuracy_ci"), **ece, "brier": row.get("brier"),
        "seconds": round(total, 1), "wall_seconds": round(train["wall"] + score["wall"], 1),
        "seconds_train": train["cpu"], "seconds_score": score["cpu"], "budget_ratio": round(total / (a["seconds_train"] + a["seconds_score"]), 3),
        "p_vs_baseline": test["p_value"], "delta_vs_baseline_points": round(delta, 2),
        "delta_ci": test["delta_ci"], "dev_accuracy": dev_acc[f"{method}/{tie}"], "dev_accuracies": dev_acc,
        "target_met": bool(delta >= TARGET["points"] and test["p_value"] < TARGET["p"] and ece_lower),
        "single_selected_on_dev": {"voter": b, "accuracy": rep.voters[b]["accuracy"],
                                   "ci": rep.voters[b].get("accuracy_ci"), **ece_fields(rep.voters[b]),
                                   "dev_accuracy": rep.voters[b].get("dev_accuracy"),
                                   "p_vs_baseline": b_test["p_value"], "delta_vs_baseline": b_test["delta"]},
        "voter_accuracies": {v: r["accuracy"] for v, r in rep.voters.items()},
        "mean_voter_accuracy": float(np.mean([r["accuracy"] for r in rep.voters.values()])),
        "per_kind_accuracy": _per_kind(m, labels, mask, kinds),
        "oracle": rep.diagnostics["oracle"], "mean_pairwise_disagreement": rep.diagnostics["mean_pairwise_disagreement"],
        "error_correlation": rep.diagnostics["error_correlation"], "plan": plan,
        "pilot_cpu": plan.get("pilot_cpu"),
    }


def _unfinished_row(kind: str, ledger: dict[str, Any], plan: dict[str, Any] | None) -> dict[str, Any]:
    spent = {p: ledger[p] for p in ("train", "score") if p in ledger}
    return {"kind": kind, "k": (plan or {}).get("k"), "steps_per_voter": (plan or {}).get("steps"), "method": None,
            "accuracy": None, "ci": None, "ece": None, "p_vs_baseline": None,
            "seconds": round(sum(v["cpu"] for v in spent.values()), 1) if spent else None,
            "status": "unfinished" if spent or plan else "not started", "reason": "the run was stopped before it "
            "finished this arm (rerun the command: it resumes)", "spent": spent, "plan": plan}


def unfinished(root: Path, paths: dict[str, Path], kinds: list[str], settings: dict[str, Any]) -> dict[str, Any]:
    """The report of a run stopped before baseline A finished scoring: the seconds spent so far."""
    ledger = json.loads((root / "single" / "budget.json").read_text()) if (root / "single" / "budget.json").exists() \
        else {}
    spent = {p: ledger[p] for p in ("train", "score") if p in ledger}
    arms = [_unfinished_row(k, {}, None) for k in kinds]
    return {"n_test": len(read_items(paths["test"])), "n_dev": len(read_items(paths["dev"])), "status": "unfinished",
            "baseline": {"accuracy": None, "ci": None, "ece": None, "seconds": None,
                         "seconds_so_far": round(sum(v["cpu"] for v in spent.values()), 1), "spent": spent},
            "ensembles": arms, "target_met": False, "settings": settings,
            "split_overlap_problem_texts": _disjoint(paths), "tried": []}


def _disjoint(paths: dict[str, Path]) -> dict[str, int]:
    """Problems whose text appears in two splits (0 expected: the generator splits by problem text)."""
    text = {k: {it.meta.get("problem_id", it.id): it.context or it.question for it in read_items(paths[k])}
            for k in ("train", "dev", "test")}
    sets = {k: set(v.values()) for k, v in text.items()}
    return {"train_dev": len(sets["train"] & sets["dev"]), "train_test": len(sets["train"] & sets["test"]),
            "dev_test": len(sets["dev"] & sets["test"])}


def build(root: Path, paths: dict[str, Path], a_ledger: Any, a_result: Any, arms: list[dict[str, Any]],
          settings: dict[str, Any], baseline_pilot: dict[str, Any], methods: list[str]) -> dict[str, Any]:
    kinds = {it.id: str(it.meta.get("kind")) for it in read_items(paths["test"])}
    a, a_answers = baseline(a_ledger, a_result, kinds)
    rows = [{**ensemble_row(arm, a, a_answers, kinds, methods), "voters": arm.get("voters")} for arm in arms]
    done = [r for r in rows if r.get("accuracy") is not None]
    return {
        "n_test": a["n_test"], "n_dev": int(a_result.dev.sum()), "baseline": {**a, "pilot": baseline_pilot},
        "ensembles": rows, "target": {**TARGET, "ece": "lower than baseline A"},
        "target_met": any(r.get("target_met") for r in rows),
        "winner": max(done, key=lambda r: r["accuracy"])["kind"] if done else None,
        "split_overlap_problem_texts": _disjoint(paths), "settings": settings,
        "temperature_scaling": ("one temperature per arm (A, each ensemble's chosen method, each B), fitted on dev "
                                "by NLL and applied to the test scores: `ece` is after scaling, `ece_raw` before; "
                                "answers and accuracy are unchanged"),
        "methods_considered": methods, "tie_breaks_considered": TIE_BREAKS.names(),
        "tried": tried(settings, rows),
    }


def tried(settings: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """What this run varied, in words (for the report when the target is missed)."""
    out = [f"baseline A: one rank-16 attention LoRA, {settings['a_steps']} steps on all training problems"]
    for r in rows:
        for t in (r.get("plan") or {}).get("tried", []):
            what = t.get("skipped") or ("" if "steps" not in t else
                                        f"{t['steps']} steps per voter predicted to fit" if t["steps"] > 0 else
                                        f"does not fit: scoring alone leaves {t['steps']} steps per voter")
            out.append(f"{r['kind']} K={t['k']}: {what}")
    described = [r["voters"] for r in rows if r.get("voters")]
    if described:
        out += [f"voters of {d}" for d in described]
    else:
        top = (f"; top-layer voters on the top {settings['top_layers']} layers"
               if any(str(r["kind"]).startswith("top") for r in rows) else "")
        out.append(f"voters: seeds 0..K-1, rank 16, attention projections, Poisson(1) online bagging of all "
                   f"training problems{top}")
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f" [{_pct(ci[0])}, {_pct(ci[1])}]"


def _ece_cell(row: dict[str, Any]) -> str:
    """ "4.1 (13.7)": ECE % after temperature scaling (fitted on dev), the raw ECE % in brackets."""
    return f"{_pct(row.get('ece'))} ({_pct(row.get('ece_raw'))})"


def markdown(out: dict[str, Any]) -> str:
    a = out["baseline"]
    if a.get("accuracy") is None:
        return (f"# Equal budget: unfinished ({out['n_test']} test items, {out['n_dev']} dev items)\n\n"
                f"Baseline A has not finished: {a['seconds_so_far']} CPU s spent ({json.dumps(a['spent'])}). "
                f"Rerun `{out['settings']['command'].replace(' --report-only', '')}` to resume.\n")
    lines = [(f"# Equal budget: one LoRA with the whole budget, or K voters that vote? ({out['n_test']} test items, "
             f"{out['n_dev']} dev items)"), "",
             (f"Budget = baseline A's measured train + score CPU seconds (1 thread): **{a['seconds']:.0f} s**. "
             f"Command: `{out['settings']['command']}`."), "",
             ("| arm | K | steps/voter | method (tie-break), chosen on dev | test accuracy % [95% CI] | ECE % (raw) | "
             "vs A: points, McNemar p | CPU s (train + score) | wall s |"), "|---|---|---|---|---|---|---|---|---|",
             (f"| A: one LoRA | 1 | {out['settings']['a_steps']} | - | {_pct(a['accuracy'])}{_ci(a['ci'])} | "
             f"{_ece_cell(a)} | - | {a['seconds']:.0f} ({a['seconds_train']:.0f} + {a['seconds_score']:.0f}) | "
             f"{a['wall_seconds']:.0f} |")]
    for r in out["ensembles"]:
        if r.get("accuracy") is None:
            spent = "" if r.get("seconds") is None else f"{r['seconds']:.0f} so far"
            lines.append(f"| {r['kind']} | {r.get('k') or '-'} | {r.get('steps_per_voter') or '-'} | "
                         f"{r.get('status')}: {r.get('reason')} | | | | {spent} | |")
            continue
        b = r["single_selected_on_dev"]
        lines.append(f"| {r['kind']} ensemble | {r['k']} | {r['steps_per_voter']} | {r['method']} ({r['tie_break']}) | "
                     f"{_pct(r['accuracy'])}{_ci(r['ci'])} | {_ece_cell(r)} | {r['delta_vs_baseline_points']:+.1f}, "
                     f"p = {r['p_vs_baseline']:.3g} | {r['seconds']:.0f} ({r['seconds_train']:.0f} + "
                     f"{r['seconds_score']:.0f}) | {r['wall_seconds']:.0f} |")
        lines.append(f"| B: {r['kind']}'s dev-selected voter | 1 | {r['steps_per_voter']} | {b['voter']} | "
                     f"{_pct(b['accuracy'])}{_ci(b['ci'])} | {_ece_cell(b)} | "
                     f"{100 * (b['delta_vs_baseline'] or 0):+.1f}, p = {b['p_vs_baseline']:.3g} | | |")
    lines += ["", (f"Target (an ensemble >= {TARGET['points']:g} points over A, p < {TARGET['p']:g}, lower ECE): "
              f"**{'met' if out['target_met'] else 'not met'}**. Temperature scaling: {out['temperature_scaling']}."),
              "", "| arm | per-kind accuracy % | mean voter acc % | disagreement | error corr. | oracle % |",
              "|---|---|---|---|---|---|",
              f"| A | {', '.join(f'{k} {_pct(v)}' for k, v in a['per_kind_accuracy'].items())} | | | | |"]
    for r in out["ensembles"]:
        if r.get("accuracy") is not None:
            lines.append(f"| {r['kind']} | {', '.join(f'{k} {_pct(v)}' for k, v in r['per_kind_accuracy'].items())} | "
                         f"{_pct(r['mean_voter_accuracy'])} | {r['mean_pairwise_disagreement']:.3f} | "
                         f"{r['error_correlation']:.3f} | {_pct(r['oracle'])} |")
    lines += ["", "What was tried:", ""] + [f"- {t}" for t in out["tried"]]
    return "\n".join(lines) + "\n"


def write(out: dict[str, Any], results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / "equal_budget.json").write_text(json.dumps(out, indent=1, default=str))
    (results / "equal_budget.md").write_text(markdown(out), encoding="utf-8")
    print(markdown(out))
    print(f"wrote {results / 'equal_budget.json'}, {results / 'equal_budget.md'}")
