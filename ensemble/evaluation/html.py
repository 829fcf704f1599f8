"""`vote report`: one self-contained HTML page of an evaluation (images embedded, no network).

Everything on the page comes from one ``evaluate`` Report and one ``ablate`` result
(``ensemble.evaluation.report`` / ``.ablation``) on the same matrix and dev split, so
the page and `vote eval --json` never disagree. Figures are matplotlib (Agg) PNGs
inlined as ``data:`` URIs; there is no external CSS, JS or font. Every user string
(voter, method, class, group, file names, error messages) goes through ``html.escape``.

Sections (each a ``<section id=...>`` with a heading; ``SECTION_IDS``): summary,
methods (voters and methods, accuracy CIs, paired test against the best voter),
voters-k (accuracy against the number of voters), reliability (one diagram per
method), agreement (voter x voter agreement and error correlation), per-class (F1
per class, confusion matrices), groups (accuracy per item group; a note when the
items have none). A matrix from an adaptive run adds calls (``CALLS_ID``, after the
summary): calls made and saved, per-voter coverage, and that a vote never asked is
treated as absent. An inline script sets ``body[data-images-ok]`` to "<loaded>/<total>"
once the page has loaded, so a headless browser can check that every image decoded.
"""
from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.evaluation.ablation import Ablation, ablate
from ensemble.evaluation.html_sections import sections
from ensemble.evaluation.report import Report
from ensemble.evaluation.splits import Split
from ensemble.io import atomic_write_text
from ensemble.predictions.matrix import VoteMatrix

SECTION_IDS = ("summary", "methods", "voters-k", "reliability", "agreement", "per-class", "groups")
CALLS_ID = "calls"  # only for a matrix with an asked mask (adaptive runs), right after "summary"
REPORT_CAP = 50  # voter subsets per k in the page's ablation: a readable curve without minutes of voting
MAX_KS = 8  # voter counts k in the page's ablation; more voters: spaced out from 1 to K

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1250px;
padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em;display:block;max-width:100%;overflow-x:auto}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right;white-space:nowrap}
figure{margin:0}td.err,#summary td{white-space:normal}
th{background:#f3f3f3}td.l,th.l{text-align:left}tr.method td{background:#f7fbff}
.figs{display:flex;flex-wrap:wrap;gap:1em}img{max-width:100%;height:auto;border:1px solid #eee}
.note{color:#555;font-style:italic}.err{color:#a00}code{background:#f3f3f3;padding:0 .2em}
"""
IMAGES_OK_JS = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; } }
  document.body.dataset.imagesOk = ok + "/" + imgs.length;
});
"""


# -- inputs ---------------------------------------------------------------------------
def load_inputs(paths: Sequence[str | Path], gold: str | Path | None = None
                ) -> tuple[VoteMatrix, list[str | None] | None]:
    """Predictions files (their rows concatenated) -> (VoteMatrix, item groups or None).

    A vote (item, voter, sample) given in two files is an EnsembleError naming both.
    """
    from ensemble.predictions.rows import build_matrix, read_rows

    if not paths:
        raise EnsembleError("vote report: give at least one predictions file")
    rows: list[dict[str, Any]] = []
    first: dict[tuple[str, str, int], int] = {}  # vote -> position of the input that gave it
    for n, path in enumerate(paths):
        for r in read_rows(path):  # duplicates within one file are refused there
            key = (r["item"], r["voter"], r["sample"])
            if first.setdefault(key, n) != n:
                raise EnsembleError(f"{path}: vote for item '{key[0]}', voter '{key[1]}', sample {key[2]} is "
                                    f"also in input {first[key] + 1} ({paths[first[key]]}); give each vote "
                                    "in one file only")
            rows.append(r)
    gold_map = None
    if gold is not None:
        from ensemble.data.formats import read_gold

        gold_map = read_gold(gold)
    m = build_matrix(rows, gold=gold_map)
    return m, item_groups(rows, m.items)


def item_groups(rows: Sequence[Mapping[str, Any]], items: Sequence[str]) -> list[str | None] | None:
    """(I,) the ``group`` column of the predictions rows per item; None when no row has one.

    Every row of an item must name the same group (or none): EnsembleError otherwise.
    """
    seen: dict[str, str] = {}
    for r in rows:
        g = r.get("group")
        if g is None or str(g).strip() == "":
            continue
        g = str(g).strip()
        item = str(r["item"])
        if seen.setdefault(item, g) != g:
            raise EnsembleError(f"predictions: item '{item}' has rows in group '{seen[item]}' and in group "
                                f"'{g}'; give every row of an item the same group")
    if not seen:
        return None
    return [seen.get(i) for i in items]


# -- the page ---------------------------------------------------------------------------
def page_ablation(m: VoteMatrix, report: Report, dev: np.ndarray | Split | None,
                  method_options: Mapping[str, Mapping[str, Any]] | None, *, cap: int = REPORT_CAP,
                  seed: int = 0) -> tuple[Ablation | None, str | None]:
    """``ablate`` over the report's methods that ran: (Ablation, None) or (None, why not)."""
    methods = [n for n, row in report.methods.items() if "error" not in row]
    if not report.n_eval_items:
        return None, "No item outside dev has a gold answer, so there is no accuracy to plot (pass --gold)."
    if not methods:
        return None, "No voting method ran on these predictions."
    options = {k: dict(v) for k, v in (method_options or {}).items() if k in methods}
    try:
        return ablate(m, methods, dev=dev, method_options=options, cap=cap, seed=seed, ks=page_ks(m.n_voters),
                      on_error="record"), None
    except EnsembleError as exc:
        return None, f"The ablation could not run: {exc}"


def page_ks(n_voters: int, most: int = MAX_KS) -> list[int]:
    """The voter counts the page's ablation runs: every k up to ``most`` voters, else ``most``
    counts spaced geometrically from 1 to K (1 and K always in)."""
    if n_voters <= most:
        return list(range(1, n_voters + 1))
    return sorted(set(np.rint(np.geomspace(1, n_voters, most)).astype(int).tolist()))


def render(m: VoteMatrix, report: Report, *, ablation: Ablation | None = None, ablation_note: str | None = None,
           groups: Sequence[str | None] | None = None, title: str = "Ensemble report",
           sources: Sequence[str] = ()) -> str:
    """The whole page as one HTML string."""
    e = html.escape
    body = [f"<h1>{e(title)}</h1>"]
    for sid, heading, content in sections(m, report, ablation, ablation_note, groups, sources):
        body.append(f'<section id="{sid}"><h2>{e(heading)}</h2>\n{content}\n</section>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{e(title)}</title><style>{CSS}</style><script>{IMAGES_OK_JS}</script></head>\n"
            "<body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(path: str | Path, page: str) -> Path:
    """Write the page atomically (a reader never sees half of it)."""
    path = Path(path)
    if path.is_dir():
        raise EnsembleError(f"{path}: is a folder; give the report a file name, e.g. --out report.html")
    return atomic_write_text(path, page)


def html_report(m: VoteMatrix, report: Report, out: str | Path, *, dev: np.ndarray | Split | None = None,
                method_options: Mapping[str, Mapping[str, Any]] | None = None,
                groups: Sequence[str | None] | None = None, cap: int = REPORT_CAP, seed: int = 0,
                title: str = "Ensemble report", sources: Sequence[str] = ()) -> Path:
    """Ablate (same dev split and options as the report), render, write ``out``; returns its path."""
    ablation, note = page_ablation(m, report, dev, method_options, cap=cap, seed=seed)
    return write_report(out, render(m, report, ablation=ablation, ablation_note=note, groups=groups,
                                    title=title, sources=sources))


# -- `vote run` / `vote quickstart` ------------------------------------------------------------
RUN_CAP = 20  # fewer subsets per k than `vote report`: the page must not add minutes to a run


def run_html(cfg: Any, m: VoteMatrix, report: Report, split: Split | None, rows: Sequence[Mapping[str, Any]],
             item_meta: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """`vote run`'s ``<out>/report.html``: the same dev split and method options as its report.json.

    Groups: the predictions rows' ``group`` column, else the items' ``meta["group"]``.
    """
    from ensemble.evaluation.protocol import manifest_weights

    options = {k: dict(v) for k, v in cfg.run.method_options.items()}
    if "weighted" in cfg.run.methods and cfg.run.weights_from == "manifest":
        options.setdefault("weighted", {})["weights"] = manifest_weights(cfg.out, m)
    groups = item_groups(rows, m.items)
    if groups is None and item_meta:
        found = [None if item_meta.get(i, {}).get("group") is None else str(item_meta[i]["group"]) for i in m.items]
        groups = found if any(g is not None for g in found) else None
    out = Path(cfg.out)
    return html_report(m, report, out / "report.html", dev=split, method_options=options, groups=groups,
                       cap=RUN_CAP, title=f"vote run — {out}", sources=[str(out / "predictions.jsonl")])
