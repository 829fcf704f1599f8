"""Rich rendering for the CLI: tables for reports and ablations, progress bars. CLI layer only."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ensemble.evaluation.temperature import ece_text


def _width(stream: Any) -> int | None:
    """Rich lays out a pipe or a log file 80 columns wide, which cuts the report tables'
    method names to "majo…"; use 140 there unless COLUMNS says otherwise (a terminal
    keeps its own width)."""
    return None if os.environ.get("COLUMNS") or getattr(stream, "isatty", lambda: False)() else 140


console = Console(stderr=False, width=_width(sys.stdout))
err_console = Console(stderr=True, width=_width(sys.stderr))


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _ci(m: dict[str, Any]) -> str:
    ci = m.get("accuracy_ci")
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "–"


def report_tables(report: dict[str, Any]) -> list[Table]:
    """The evaluation report (Report.to_dict()) as rich tables: methods, voters, diagnostics."""
    title = (f"{report['n_eval_items']} evaluated items"
             + (f" ({report['n_dev_items']} dev items used for fitting, not scored)" if report.get("n_dev_items") else "")
             + (f"; {report['n_items_without_gold']} without gold" if report.get("n_items_without_gold") else ""))
    methods = Table(title=f"Voting methods — {title}")
    for col in ("method", "accuracy", "95% CI", "macro-F1", "precision", "recall", "coverage", "ECE",
                "ECE (T)", "Δ vs best voter", "p"):
        methods.add_column(col, justify="left" if col == "method" else "right")
    for name, m in report["methods"].items():
        if "error" in m:
            methods.add_row(name, f"[red]not applicable: {m['error']}[/]")
            continue
        vs = m.get("vs_best_voter") or {}
        methods.add_row(name, _f(m.get("accuracy")), _ci(m), _f(m.get("macro_f1")), _f(m.get("precision_macro")),
                        _f(m.get("recall_macro")), _f(m.get("coverage")), _f(m.get("ece")), ece_text(m),
                        _f(vs.get("delta"), 3) if vs else "–", _f(vs.get("p_value"), 4) if vs else "–")
    voters = Table(title="Single voters")
    for col in ("voter", "accuracy", "95% CI", "macro-F1", "coverage", "ECE", "ECE (T)"):
        voters.add_column(col, justify="left" if col == "voter" else "right")
    for name, m in report["voters"].items():
        voters.add_row(name, _f(m.get("accuracy")), _ci(m), _f(m.get("macro_f1")), _f(m.get("coverage")),
                       _f(m.get("ece")), ece_text(m))
    diag = Table(title="Diagnostics", show_header=False)
    for key, value in (report.get("diagnostics") or {}).items():
        diag.add_row(key.replace("_", " "), _f(value))
    return [methods, voters, diag] + ([calls_table(report["calls"])] if report.get("calls") else [])


def calls_table(calls: dict[str, Any]) -> Table:
    """An adaptive run's ``calls`` section: made / possible / saved, per-voter coverage."""
    saved = calls.get("saved_fraction")
    title = (f"Calls: {calls['made']} made of {calls['possible']} possible, {calls['saved']} saved"
             + ("" if saved is None else f" ({100 * saved:.1f}%)"))
    table = Table(title=title, caption=calls.get("note"), min_width=len(title) + 2)  # title on one line
    for col in ("voter", "coverage", "abstain rate"):
        table.add_column(col, justify="left" if col == "voter" else "right")
    rates = calls.get("abstain_rate") or {}
    for name, cov in calls["coverage"].items():
        table.add_row(name, _f(cov), _f(rates.get(name)))
    return table


def ablation_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Accuracy by number of voters")
    for col in ("method", "k", "subsets", "mean", "min", "max", "2.5%", "97.5%", "macro-F1"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        table.add_row(str(r["method"]), str(r["k"]), str(r["n_subsets"]) + ("" if r.get("exhaustive") else "*"),
                      _f(r["mean"]), _f(r["min"]), _f(r["max"]), _f(r.get("p2_5")), _f(r.get("p97_5")),
                      _f(r.get("macro_f1_mean")))
    return table


def equal_budget_lines(cmp: dict[str, Any]) -> tuple[Table, str]:
    """``ensemble.quickstart``'s comparison dict as a table (ensemble vs the single LoRA) and a verdict."""
    ens, one, test = cmp["ensemble"], cmp["single"], cmp["mcnemar"]
    table = Table(title=f"Ensemble vs one LoRA at the same cost — {cmp['n_items']} test items")
    for col in ("", "accuracy", "95% CI", "train s", "score s", "total s"):
        table.add_column(col, justify="left" if not col else "right")
    for label, side in ((f"ensemble: {ens['n_voters']} voters, {ens['method']} (chosen on dev)", ens),
                        (f"single LoRA: {one['name']}, {one['max_steps']} steps", one)):
        sec = side["seconds"]
        table.add_row(label, _f(side["accuracy"]), _ci({"accuracy_ci": side["ci"]}), f"{sec['train']:.0f}",
                      f"{sec['score']:.0f}", f"{sec['total']:.0f}")
    delta = test["delta"]
    verdict = (f"ensemble − single: {'–' if delta is None else f'{delta:+.3f}'}; McNemar exact p = "
               f"{test['p_value']:.3g} ({test['ensemble_only']} items only the ensemble got right, "
               f"{test['single_only']} only the single LoRA)")
    return table, verdict


@contextmanager
def progress_bar(description: str) -> Iterator[Any]:
    """A progress callback ``emit(event, **info)`` rendered as a rich bar with items/s and ETA."""
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn(), console=err_console, transient=False)
    state: dict[str, Any] = {}

    def emit(event: str, **info: Any) -> None:
        if event == "start":
            state["task"] = bar.add_task(info.get("description", description), total=info["total"] + info.get("done", 0),
                                         completed=info.get("done", 0), rate="")
        elif event == "advance" and "task" in state:
            bar.advance(state["task"], info.get("n", 1))
            task = bar.tasks[-1]
            if task.speed:
                bar.update(state["task"], rate=f"{task.speed:.1f}/s")
        elif event == "train_start":  # one bar per variant, in optimizer steps
            state["task"] = bar.add_task(f"training {info['name']}", total=info.get("total") or None, rate="")
        elif event == "step" and "task" in state:
            loss = info.get("loss")
            bar.update(state["task"], completed=info["step"], rate="" if loss is None else f"loss {loss:.3f}")
        elif event == "train_done":
            acc = info.get("heldout_accuracy")
            bar.console.print(f"{info['name']}: held-out accuracy "
                              f"{'–' if acc is None else f'{acc:.3f}'} ({info.get('seconds', 0):.0f} s)")
        elif event == "variant_skipped":
            bar.console.print(f"[dim]{info['name']}: already trained, skipped[/]")
        elif event in ("status", "warning"):
            style = "yellow" if event == "warning" else "dim"
            bar.console.print(f"[{style}]{'warning: ' if event == 'warning' else ''}{info['message']}[/]")

    with bar:
        yield emit
