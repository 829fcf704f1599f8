"""The output of experiments/bench_adaptive.py: its markdown report and console summary."""
from __future__ import annotations

import json
from typing import Any


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ci(ci: list[float] | None) -> str:
    return "-" if ci is None else f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}] points"


def markdown(result: dict[str, Any]) -> str:
    target = result["target"]
    lines = ["# Adaptive voting: calls saved vs accuracy (experiments/bench_adaptive.py)", "",
             f"Command: `{result['command']}`", "",
             (f"Target: {pct(target['calls_saved'])} calls saved at <= {100 * target['max_accuracy_loss']:g} "
             "accuracy points lost. Policy chosen on dev (most calls saved changing at most that share of the dev "
              "decisions), reported on test; changed: test decisions that differ from the full vote; p: McNemar "
              "exact, adaptive vs full."), ""]
    for name in ("generate", "cloze"):
        s = result.get(name)
        if not s:
            continue
        c, a = s["chosen"], s["chosen_by_dev_accuracy"]
        lines += [f"## {name}: {s['source']}", "",
                  (f"{len(s['voters'])} voters x {s['samples']} samples, n_dev={s['n_dev']}, n_test={s['n_test']}; "
                  f"order: {', '.join(s['order'][:len(s['voters'])])}"), "",
                  (f"**Chosen on dev: `{c['policy']}`** - test: calls saved {pct(c['calls_saved'])}, tokens saved "
                  f"{pct(c['tokens_saved'])}, accuracy {c['accuracy_full']:.3f} (full) -> "
                  f"{c['accuracy_adaptive']:.3f} (adaptive), p = {c['p_value']:.3g}, difference 95% bootstrap CI "
                  f"{_ci(c['delta_ci'])}; {c['changed_decisions']} test decisions changed, dev: "
                  f"{c['dev']['changed_decisions']} of {c['dev']['n_items']}"), "",
                  (f"Chosen on net dev accuracy instead (for comparison): `{a['policy']}` - test: calls saved "
                   f"{pct(a['calls_saved'])}, accuracy {a['accuracy_full']:.3f} -> {a['accuracy_adaptive']:.3f}, "
                   f"p = {a['p_value']:.3g}"), "",
                  ("| policy | dev changed | dev calls saved | dev acc full -> adaptive | test calls saved | test tokens saved "
                  "| test acc full -> adaptive | changed | p |"), "|---|---|---|---|---|---|---|---|---|"]
        for r in s["candidates"]:
            d, t = r["dev"], r["test"]
            lines.append(f"| {r['policy']} | {d['changed_decisions']} | {pct(d['calls_saved'])} | {d['accuracy_full']:.3f} -> "
                         f"{d['accuracy_adaptive']:.3f} | {pct(t['calls_saved'])} | {pct(t['tokens_saved'])} | "
                         f"{t['accuracy_full']:.3f} -> {t['accuracy_adaptive']:.3f} | {t['changed_decisions']} | "
                         f"{t['p_value']:.3g} |")
        lines.append("")
    if result.get("live"):
        lines += ["## live confirmation", "", "```", json.dumps(result["live"], indent=1), "```", ""]
    return "\n".join(lines)


def print_summary(name: str, s: dict[str, Any], target: dict[str, float]) -> None:
    c = s["chosen"]
    print(f"[{name}] chosen on dev: {c['policy']}")
    print(f"  test n={c['n_items']}: calls {c['calls_made']}/{c['calls_possible']} "
          f"(ratio {c['calls_made'] / c['calls_possible']:.3f}, saved {pct(c['calls_saved'])}); tokens saved "
          f"{pct(c['tokens_saved'])}; accuracy full {c['accuracy_full']:.3f} adaptive {c['accuracy_adaptive']:.3f} "
          f"(delta {c['delta']:+.3f}, McNemar p={c['p_value']:.3g}, {c['changed_decisions']} decisions changed)")
    best = {}
    for r in s["candidates"]:
        best.setdefault(r["rule"], r)
        if r["test"]["calls_saved"] > best[r["rule"]]["test"]["calls_saved"] and \
                r["test"]["accuracy_adaptive"] >= r["test"]["accuracy_full"] - target["max_accuracy_loss"]:
            best[r["rule"]] = r
    for rule, r in best.items():
        t = r["test"]
        print(f"  {rule:9s} best on TEST within target (reference, selected on test): {r['policy']:32s} calls saved {pct(t['calls_saved'])}, "
              f"acc {t['accuracy_full']:.3f} -> {t['accuracy_adaptive']:.3f}")
