"""The sections of the HTML report (``ensemble.evaluation.html``): each returns an HTML fragment.

Tables read the ``evaluate`` Report and the ``ablate`` result; figures come from
``ensemble.evaluation.plots``. Every user string goes through ``html.escape``.
"""
from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.evaluation import plots
from ensemble.evaluation.ablation import Ablation
from ensemble.evaluation.ablation import plot as ablation_plot
from ensemble.evaluation.calls import voter_asked
from ensemble.evaluation.metrics import error_correlation_matrix, voter_decisions
from ensemble.evaluation.report import Report
from ensemble.evaluation.temperature import ece_text
from ensemble.predictions.matrix import ABSTAIN, VoteMatrix


def sections(m: VoteMatrix, report: Report, ablation: Ablation | None, ablation_note: str | None,
              groups: Sequence[str | None] | None, sources: Sequence[str]) -> list[tuple[str, str, str]]:
    """[(id, heading, HTML body)] in page order (ids: ``html.SECTION_IDS``, plus ``calls`` after the
    summary for an adaptive run's matrix); without eval gold the sections that need it hold a note
    instead."""
    ran = [n for n, row in report.methods.items() if "error" not in row]
    scored = bool(report.n_eval_items)
    no_gold = _note("No item outside dev has a gold answer; pass --gold to score the answers.")
    abl = (_img(plots.png(ablation_plot(ablation)), "Accuracy against the number of voters, per method")
           + _ablation_table(ablation)) if ablation is not None else _note(ablation_note or "No ablation.")
    calls = [("calls", "Calls: votes asked and saved", _calls(report.calls))] if report.calls else []
    return [
        ("summary", "Summary", _summary(report, sources)),
        *calls,
        ("methods", "Voters and methods", _methods_table(report)),
        ("voters-k", "Accuracy against the number of voters", abl),
        ("reliability", "Reliability per method", _reliability(m, report, ran) if scored else no_gold),
        ("agreement", "Voter agreement and error correlation", _agreement(m, report)),
        ("per-class", "Per-class F1 and confusion matrices", _per_class(report, ran) if scored else no_gold),
        ("groups", "Accuracy per item group", _groups(m, report, ran, groups) if scored else no_gold),
    ]


def _summary(report: Report, sources: Sequence[str]) -> str:
    e, d = html.escape, report.diagnostics
    rows = [("inputs", ", ".join(sources) or "–"), ("items", report.n_items),
            ("scored (eval) items", report.n_eval_items), ("dev items (fitting only, not scored)", report.n_dev_items),
            ("items without gold", report.n_items_without_gold), ("classes", ", ".join(report.classes)),
            ("dev split", report.split_how or "none"),
            ("best single voter (baseline)", f"{d.get('best_voter') or '–'} (chosen on {d.get('best_voter_selected_on') or '–'})"),
            ("oracle (some voter's sample right)", _f(d.get("oracle"))),
            ("mean pairwise disagreement", _f(d.get("mean_pairwise_disagreement"))),
            ("mean error correlation", _f(d.get("error_correlation")))]
    sel = report.selected_on_dev
    chosen = (f"<p><b>Method chosen on dev:</b> {e(sel['method'])} (dev accuracy {_f(sel['dev_accuracy'])}, "
              f"eval accuracy {_f(sel.get('eval_accuracy'))} on {report.n_eval_items} items) — the number to quote.</p>"
              if sel else _note("No dev split: no method was chosen on dev (vote report: --fit-on dev; vote run: data.dev)."))
    table = "".join(f'<tr><th class="l">{e(k)}</th><td class="l">{e(str(v))}</td></tr>' for k, v in rows)
    return chosen + f"<table>{table}</table>"


def _calls(calls: Mapping[str, Any]) -> str:
    """The report's ``calls`` section: totals, then per voter its coverage and abstain rate."""
    e = html.escape
    saved = calls.get("saved_fraction")
    totals = [("calls made", calls["made"]), ("calls possible (items × voters × samples)", calls["possible"]),
              ("calls saved", f"{calls['saved']} ({'–' if saved is None else f'{100 * saved:.1f}%'})")]
    head = "".join(f'<tr><th class="l">{e(k)}</th><td>{e(str(v))}</td></tr>' for k, v in totals)
    rates = calls.get("abstain_rate") or {}
    voters = "".join(f'<tr><td class="l">{e(v)}</td><td>{_f(c)}</td><td>{_f(rates.get(v))}</td></tr>'
                     for v, c in calls["coverage"].items())
    return (f"<table>{head}</table>"
            f'<table><tr><th class="l">voter</th><th>coverage (share of its cells asked)</th>'
            f"<th>abstain rate (of asked cells)</th></tr>{voters}</table>" + _note(calls["note"]))


def _methods_table(report: Report) -> str:
    e = html.escape
    cols = ("", "name", "n", "accuracy [95% CI]", "macro-F1", "coverage", "ECE", "ECE (T)", "Brier", "dev acc.",
            "Δ vs best voter [95% CI]", "McNemar p")
    head = "".join(f'<th class="l">{c}</th>' if c in ("", "name") else f"<th>{e(c)}</th>" for c in cols)
    rows = []
    for kind, table in (("method", report.methods), ("voter", report.voters)):
        for name, r in table.items():
            label = e(name) + (" (baseline)" if name == report.diagnostics.get("best_voter") and kind == "voter" else "")
            if "error" in r:
                rows.append(f'<tr class="{kind}"><td class="l">{kind}</td><td class="l">{label}</td>'
                            f'<td class="l err" colspan="{len(cols) - 2}">not applicable: {e(r["error"])}</td></tr>')
                continue
            vs = r.get("vs_best_voter") or {}
            dev_acc = (report.selected_on_dev or {}).get("dev_accuracies", {}).get(name) if kind == "method" \
                else r.get("dev_accuracy")
            cells = [r.get("n"), _with_ci(r.get("accuracy"), r.get("accuracy_ci")), _f(r.get("macro_f1")),
                     _f(r.get("coverage")), _f(r.get("ece")), ece_text(r), _f(r.get("brier")), _f(dev_acc),
                     _with_ci(vs.get("delta"), vs.get("delta_ci"), signed=True), _p(vs.get("p_value"))]
            rows.append(f'<tr class="{kind}"><td class="l">{kind}</td><td class="l">{label}</td>'
                        + "".join(f"<td>{e(str('–' if c is None else c))}</td>" for c in cells) + "</tr>")
    return (f"<table><tr>{head}</tr>{''.join(rows)}</table>"
            + _note("Accuracy CI: 95% bootstrap over items. ECE (T): after temperature scaling, one temperature "
                    "t per row fitted on dev gold (answers unchanged). Δ: accuracy of the method minus the best "
                    "single voter's on the same items, with its paired-bootstrap 95% CI and McNemar's exact p-value."))


def _ablation_table(ab: Ablation) -> str:
    """Rows k, one column per method: mean accuracy over the subsets [2.5%, 97.5%]."""
    cell = {(r["method"], r["k"]): r for r in ab.summary}
    ks = sorted({r["k"] for r in ab.summary})
    head = "".join(f"<th>{html.escape(n)}</th>" for n in ab.methods)
    rows = "".join(f"<tr><td>{k}</td><td>{_subsets(cell[ab.methods[0], k])}</td>"
                   + "".join(f"<td>{_f(cell[n, k]['mean'])} {_ci([cell[n, k]['p2_5'], cell[n, k]['p97_5']])}</td>"
                             if cell[n, k]["mean"] is not None else "<td>–</td>" for n in ab.methods) + "</tr>"
                   for k in ks)
    return (f"<table><tr><th>k</th><th>subsets</th>{head}</tr>{rows}</table>"
            + _note(f"Mean accuracy over the voter subsets of size k on {ab.n_eval_items} eval items [2.5%, 97.5% "
                    "of subsets]; " + (f"* = {ab.cap} subsets drawn at random (seed {ab.seed}), else every subset."
                                       if any(not r["exhaustive"] for r in ab.summary) else "every subset is run.")))


def _subsets(row: Mapping[str, Any]) -> str:
    return f"{row['n_subsets']}" + ("" if row["exhaustive"] else "*")


def _reliability(m: VoteMatrix, report: Report, methods: Sequence[str]) -> str:
    gold, mask = _gold(m), _eval_mask(report)
    figs = []
    for name in methods:
        d = report.decisions[name]
        bins = plots.reliability_bins(gold[mask], d.labels[mask], d.scores[mask])
        fig = plots.reliability_figure(name, bins, report.methods[name].get("ece"))
        figs.append(_img(plots.png(fig), f"Reliability diagram of {name}"))
    if not figs:
        return _note("No voting method ran.")
    return (f'<div class="figs">{"".join(figs)}</div>'
            + _note("Eval items binned by the score of the answer given (abstentions left out). Bars: accuracy "
                    "per bin; dots: (mean score, accuracy) of the bin; dashed: perfect calibration."))


def _agreement(m: VoteMatrix, report: Report) -> str:
    if m.n_voters < 2:
        return _note("One voter: nothing to compare.")
    sub = m.select_items(_eval_mask(report) if report.n_eval_items else np.ones(m.n_items, dtype=bool))
    agree = plots.heatmap_figure(plots.agreement_matrix(sub), m.voters, m.voters, "Answer agreement",
                                 vmin=0.0, vmax=1.0, cmap="viridis", colorbar="share of items answered alike")
    figs = [_img(plots.png(agree), "Voter by voter answer agreement heatmap")]
    if report.n_eval_items:
        corr = plots.heatmap_figure(error_correlation_matrix(sub), m.voters, m.voters,
                                    "Error correlation", vmin=-1.0, vmax=1.0, cmap="RdBu_r",
                                    colorbar="Pearson correlation of errors")
        figs.append(_img(plots.png(corr), "Voter by voter error correlation heatmap"))
    return (f'<div class="figs">{"".join(figs)}</div>'
            + _note("Agreement: share of the items both voters answered with the same answer. Error correlation: "
                    "correlation of 'voter is wrong' indicators on the eval items (– : a voter never or always wrong). "
                    "Voting gains most from voters whose errors are uncorrelated."))


def _per_class(report: Report, methods: Sequence[str]) -> str:
    e, best = html.escape, report.diagnostics.get("best_voter")
    rows = {n: report.methods[n] for n in methods}
    if best in report.voters:
        rows[f"voter {best}"] = report.voters[best]
    classes = list(report.classes)
    head = "".join(f"<th>{e(n)}</th>" for n in rows)
    body = "".join(f'<tr><td class="l">{e(c)}</td><td>{next(iter(rows.values()))["per_class"][c]["support"]}</td>'
                   + "".join(f"<td>{_f(r['per_class'][c]['f1'])}</td>" for r in rows.values()) + "</tr>"
                   for c in classes) if rows else ""
    bars = plots.bars_figure({n: [r["per_class"][c]["f1"] for c in classes] for n, r in rows.items()}, classes,
                             "F1 per class", "F1")
    figs = [_img(plots.png(bars), "F1 per class, per method")]
    for n, r in rows.items():
        cm = np.array(r["confusion"], dtype=float)  # (C, C+1): gold rows, predicted columns + abstain
        fig = plots.heatmap_figure(cm, classes, r["confusion_columns"], f"Confusion: {n}", vmin=0.0,
                                   vmax=max(1.0, float(cm.max())), cmap="Blues", colorbar="items", integers=True)
        figs.append(_img(plots.png(fig), f"Confusion matrix of {n}"))
    return (f'<table><tr><th class="l">class</th><th>support</th>{head}</tr>{body}</table>'
            f'<div class="figs">{"".join(figs)}</div>'
            + _note("Confusion rows: gold class; columns: the answer given (last column: abstained)."))


def _groups(m: VoteMatrix, report: Report, methods: Sequence[str], groups: Sequence[str | None] | None) -> str:
    if groups is None:
        return _note("The items have no groups (add a 'group' column to the predictions rows to see accuracy "
                     "per group here).")
    if len(groups) != m.n_items:
        raise EnsembleError(f"report groups: {len(groups)} given for {m.n_items} items; give one per item")
    e, gold, mask = html.escape, _gold(m), _eval_mask(report)
    best = report.diagnostics.get("best_voter")
    acc = {n: plots.group_accuracy(groups, mask, gold, report.decisions[n].labels) for n in methods}
    if best in m.voters:  # on the eval items it was asked (a vote never asked is absent)
        own = mask & voter_asked(m)[:, m.voters.index(best)]
        acc[f"voter {best}"] = plots.group_accuracy(groups, own, gold, voter_decisions(m)[best].labels)
    names = sorted({g for a in acc.values() for g in a})
    if not names:
        return _note("No eval item has a group.")
    first = next(iter(acc.values()))
    head = "".join(f"<th>{e(n)}</th>" for n in acc)
    body = "".join(f'<tr><td class="l">{e(g)}</td><td>{first[g][0]}</td>'
                   + "".join(f"<td>{_f(a[g][1] if g in a else None)}</td>" for a in acc.values()) + "</tr>"
                   for g in names)
    fig = plots.bars_figure({n: [a[g][1] if g in a else None for g in names] for n, a in acc.items()}, names,
                            "Accuracy per group", "accuracy")
    return (f'<table><tr><th class="l">group</th><th>eval items</th>{head}</tr>{body}</table>'
            + _img(plots.png(fig), "Accuracy per item group, per method"))


# -- helpers ---------------------------------------------------------------------------------
def _gold(m: VoteMatrix) -> np.ndarray:
    return np.full(m.n_items, ABSTAIN, dtype=np.int32) if m.gold is None else m.gold


def _eval_mask(report: Report) -> np.ndarray:
    mask = report.eval_mask
    return np.zeros(report.n_items, dtype=bool) if mask is None else mask


def _img(data: bytes, alt: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<figure><img src="{uri}" alt="{html.escape(alt)}"></figure>'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _f(x: Any, digits: int = 3, signed: bool = False) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
    return str(x)


def _ci(ci: Sequence[float] | None, signed: bool = False) -> str:
    return "–" if not ci else f"[{_f(ci[0], signed=signed)}, {_f(ci[1], signed=signed)}]"


def _with_ci(x: float | None, ci: Sequence[float] | None, signed: bool = False) -> str:
    """'0.821 [0.714, 0.911]'; the value alone without an interval; '–' without a value."""
    return _f(x, signed=signed) + ("" if x is None or not ci else " " + _ci(ci, signed=signed))


def _p(p: float | None) -> str:
    return "–" if p is None else ("<0.0001" if p < 1e-4 else f"{p:.4f}")
