"""`vote report`: the self-contained HTML page, its figures' numbers, and the page in headless Chromium."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ensemble.cli.app import main
from ensemble.errors import EnsembleError
from ensemble.evaluation import plots
from ensemble.evaluation.html import (
    CALLS_ID,
    SECTION_IDS,
    html_report,
    item_groups,
    load_inputs,
    render,
    write_report,
)
from ensemble.evaluation.metrics import (
    error_correlation,
    error_correlation_matrix,
    mean_pairwise_disagreement,
)
from ensemble.evaluation.protocol import choose_split
from ensemble.evaluation.report import evaluate
from ensemble.predictions.matrix import from_arrays

EXAMPLES = Path(str(resources.files("ensemble") / "examples"))
PRED, GOLD = EXAMPLES / "predictions.jsonl", EXAMPLES / "gold.jsonl"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def grouped_predictions(tmp_path: Path, voters: set[str] | None = None, name: str = "pred.jsonl") -> Path:
    """The bundled predictions with a `group` column (item number mod 3), optionally some voters only."""
    out = tmp_path / name
    rows = [json.loads(x) for x in PRED.read_text().splitlines()]
    rows = [{**r, "group": f"g{int(r['item'][1:]) % 3}"} for r in rows if voters is None or r["voter"] in voters]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


@pytest.fixture(scope="module")
def example():
    m, _ = load_inputs([PRED], GOLD)
    split = choose_split(m, fit_on="dev", fraction=0.3, dev_items=None, seed=0)
    report = evaluate(m, ["majority", "weighted", "stack", "confidence", "dawid_skene"], dev=split, n_boot=200)
    return m, split, report


def sections_of(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"><h2>[^<]+</h2>', page)


# -- the page in a browser ---------------------------------------------------------------------
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but chromium is not installed: .ci/run installs Debian's chromium package")
        pytest.skip("chromium not installed (apt-get install chromium); required when CI is set")
    return found


def test_chromium_renders_every_section_and_image(tmp_path):
    out = tmp_path / "report.html"
    res = CliRunner().invoke(main, ["report", str(grouped_predictions(tmp_path)), "--gold", str(GOLD),
                                    "--fit-on", "dev", "--n-boot", "100", "--out", str(out)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert f"report: {out}" in res.output
    page = out.read_text(encoding="utf-8")
    n_images = page.count("<img ")
    # accuracy-vs-K + one reliability diagram per method (6) + 2 heatmaps + F1 bars + 7 confusions + groups
    assert n_images == 18
    dom = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=5000", "--dump-dom", out.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in dom, sid
    # set by the page's own script after load: images whose naturalWidth > 0 / all images
    assert f'data-images-ok="{n_images}/{n_images}"' in dom
    assert "The items have no groups" not in dom and "g0" in dom


def adaptive_example(tmp_path: Path) -> tuple:
    """The bundled predictions as an adaptive run that stopped after the first three voters on
    the 24 items where they agree: 48 of 400 votes never asked (rows absent)."""
    from ensemble.data.formats import read_gold
    from ensemble.predictions.rows import build_matrix, read_rows

    rows = read_rows(PRED)
    first = ("lora-s0-r8", "lora-s1-r8", "lora-s2-r16")
    answers: dict[str, set] = {}
    for r in rows:
        if r["voter"] in first:
            answers.setdefault(r["item"], set()).add(r["answer"])
    settled = {i for i, a in answers.items() if len(a) == 1 and None not in a}
    kept = [r for r in rows if r["voter"] in first or r["item"] not in settled]
    m = build_matrix(kept, gold=read_gold(GOLD), adaptive=True)
    split = choose_split(m, fit_on="dev", fraction=0.3, dev_items=None, seed=0)
    return m, split, evaluate(m, ["majority", "weighted", "dawid_skene"], dev=split, n_boot=100)


def test_chromium_renders_the_calls_section_of_an_adaptive_run(tmp_path):
    m, split, report = adaptive_example(tmp_path)
    calls = report.to_dict()["calls"]
    assert {k: calls[k] for k in ("made", "possible", "saved")} == {"made": 352, "possible": 400, "saved": 48}
    assert calls["coverage"] == {"lora-s0-r8": 1.0, "lora-s1-r8": 1.0, "lora-s2-r16": 1.0,
                                 "lora-s3-r4": 0.7, "lora-s4-r4": 0.7}
    out = html_report(m, report, tmp_path / "adaptive.html", dev=split, cap=5)
    page = out.read_text(encoding="utf-8")
    ids = list(SECTION_IDS)
    assert sections_of(page) == [ids[0], CALLS_ID, *ids[1:]]
    n_images = page.count("<img ")
    dom = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=5000", "--dump-dom", out.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    section = re.search(r'<section id="calls">(.*?)</section>', dom, re.DOTALL)
    assert section is not None and f'data-images-ok="{n_images}/{n_images}"' in dom
    text = re.sub(r"<[^>]+>", " ", section.group(1))
    for expected in ("calls made 352", "calls saved 48 (12.0%)", "lora-s3-r4 0.700",
                     "treated as absent: never counted as a vote, an abstention or an error"):
        assert expected in " ".join(text.split()), expected


def test_a_broken_image_is_caught_by_the_browser_check(tmp_path):
    """The check above can fail: a corrupt PNG leaves naturalWidth at 0."""
    out = tmp_path / "broken.html"
    good = render(*_tiny())
    out.write_text(good.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1), encoding="utf-8")
    dom = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=5000", "--dump-dom", out.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    n = good.count("<img ")
    assert f'data-images-ok="{n - 1}/{n}"' in dom


# -- the page's structure (no browser) ---------------------------------------------------------
def _tiny():
    """A small matrix whose names need escaping -> (m, report) for render()."""
    labels = np.array([[0, 0, 1], [1, 1, 1], [0, 1, 0], [2, 2, 2], [1, 0, 1], [2, 2, 0]])
    gold = np.array([0, 1, 0, 2, 1, 2])
    m = from_arrays(labels, ["<b>A</b>", "B&B", "C"], voters=["v<1>", "v2", "v\"3\""], gold=gold)
    return m, evaluate(m, ["majority"], n_boot=50)


def test_page_is_self_contained_and_escapes_user_strings():
    m, report = _tiny()
    page = render(m, report, groups=["x<y>", "x<y>", "z", "z", "z", None], sources=["p<&>.jsonl"])
    assert sections_of(page) == list(SECTION_IDS)
    imgs = re.findall(r"<img [^>]*>", page)
    assert imgs and all(re.fullmatch(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+" alt="[^"<>]+">', i)
                        for i in imgs)
    assert not re.search(r"(src|href)=\"(?!data:)|<link|@import|url\(", page)  # nothing fetched from outside
    for raw in ("<b>A</b>", "v<1>", 'v"3"', "x<y>", "p<&>"):
        assert raw not in page
    for escaped in ("&lt;b&gt;A&lt;/b&gt;", "v&lt;1&gt;", "v&quot;3&quot;", "x&lt;y&gt;", "p&lt;&amp;&gt;.jsonl"):
        assert escaped in page


def test_no_gold_and_no_groups_leave_notes_not_gaps(tmp_path):
    out = tmp_path / "r.html"
    res = CliRunner().invoke(main, ["report", str(PRED), "--n-boot", "0", "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    page = out.read_text(encoding="utf-8")
    assert sections_of(page) == list(SECTION_IDS)
    assert page.count("pass --gold to score the answers") == 3  # reliability, per-class, groups
    assert "there is no accuracy to plot (pass --gold)" in page
    assert page.count("<img ") == 1  # only the agreement heatmap: nothing else is defined without gold


def test_report_out_must_be_a_file(tmp_path):
    res = CliRunner().invoke(main, ["report", str(PRED), "--out", str(tmp_path)], catch_exceptions=False)
    assert res.exit_code == 2 and "is a folder; give the report a file name" in res.output
    with pytest.raises(EnsembleError, match="is a folder"):
        write_report(tmp_path, "<html></html>")


# -- inputs -------------------------------------------------------------------------------------
def test_several_inputs_are_concatenated(tmp_path, example):
    m, _, _ = example
    a = grouped_predictions(tmp_path, {"lora-s0-r8", "lora-s1-r8"}, "a.jsonl")
    b = grouped_predictions(tmp_path, set(m.voters) - {"lora-s0-r8", "lora-s1-r8"}, "b.jsonl")
    both, groups = load_inputs([a, b], GOLD)
    assert sorted(both.voters) == sorted(m.voters) and both.items == m.items
    ref = m.select_voters(list(both.voters))
    assert np.array_equal(both.labels, ref.labels) and np.array_equal(both.gold, ref.gold)
    assert groups == [f"g{int(i[1:]) % 3}" for i in both.items]
    with pytest.raises(EnsembleError, match=r"a\.jsonl: vote for item 'q000', voter 'lora-s0-r8', sample 0 is also in"):
        load_inputs([a, a], GOLD)


def test_item_groups_must_agree_within_an_item():
    rows = [{"item": "q1", "group": "x"}, {"item": "q1", "group": " x "}, {"item": "q2"}]
    assert item_groups(rows, ["q1", "q2"]) == ["x", None]
    assert item_groups([{"item": "q1"}], ["q1"]) is None
    with pytest.raises(EnsembleError, match="item 'q1' has rows in group 'x' and in group 'y'"):
        item_groups([*rows, {"item": "q1", "group": "y"}], ["q1", "q2"])


# -- the figures' numbers agree with the report's ----------------------------------------------------
def test_reliability_bins_reproduce_the_reported_ece(example):
    m, _, report = example
    mask = report.eval_mask
    for name, row in report.methods.items():
        d = report.decisions[name]
        bins = plots.reliability_bins(m.gold[mask], d.labels[mask], d.scores[mask])
        full = bins["count"] > 0
        gap = np.abs(bins["accuracy"][full] - bins["confidence"][full]) * bins["count"][full]
        assert math.isclose(gap.sum() / bins["count"].sum(), row["ece"], rel_tol=1e-9), name
        assert bins["count"].sum() == round(row["n"] * row["coverage"]) - 0  # abstentions left out


def test_voter_matrices_reproduce_the_reported_diagnostics(example):
    m, _, report = example
    sub = m.select_items(report.eval_mask)
    upper = np.triu_indices(m.n_voters, k=1)
    agree = plots.agreement_matrix(sub)
    assert np.allclose(np.diag(agree), 1.0) and np.allclose(agree, agree.T)
    assert math.isclose(1 - agree[upper].mean(), report.diagnostics["mean_pairwise_disagreement"], rel_tol=1e-9)
    assert math.isclose(1 - agree[upper].mean(), mean_pairwise_disagreement(sub), rel_tol=1e-9)
    corr = error_correlation_matrix(sub)
    assert math.isclose(corr[upper].mean(), report.diagnostics["error_correlation"], rel_tol=1e-9)
    # a voter that is always right has no error variance: NaN row, skipped by the summary too
    labels = np.stack([sub.gold, *(sub.labels[:, j, 0] for j in range(sub.n_voters))], axis=1)
    perfect = from_arrays(labels, sub.classes, gold=sub.gold)
    corr2 = error_correlation_matrix(perfect)
    assert np.isnan(corr2[0]).all() and np.isnan(corr2[:, 0]).all()
    keep = np.triu_indices(sub.n_voters, k=1)
    assert math.isclose(corr2[1:, 1:][keep].mean(), error_correlation(perfect), rel_tol=1e-9)


def test_group_accuracy_weights_back_to_the_overall_accuracy(example):
    m, _, report = example
    groups = [f"g{int(i[1:]) % 3}" for i in m.items]
    for name in report.methods:
        acc = plots.group_accuracy(groups, report.eval_mask, m.gold, report.decisions[name].labels)
        assert sum(n for n, _ in acc.values()) == report.n_eval_items
        overall = sum(n * a for n, a in acc.values()) / report.n_eval_items
        assert math.isclose(overall, report.methods[name]["accuracy"], rel_tol=1e-12)
    some = [g if g != "g1" else None for g in groups]
    acc = plots.group_accuracy(some, report.eval_mask, m.gold, report.decisions["majority"].labels)
    assert set(acc) == {"g0", "g2"}


def test_html_report_writes_the_page_with_the_ablation(tmp_path, example):
    m, split, report = example
    path = html_report(m, report, tmp_path / "sub" / "r.html", dev=split, cap=3)
    page = path.read_text(encoding="utf-8")
    assert sections_of(page) == list(SECTION_IDS)
    assert "3 subsets drawn at random (seed 0)" in page and "stack" in page
    assert 'alt="Accuracy against the number of voters, per method"' in page
    assert "The items have no groups (add a &#x27;group&#x27; column" in page  # the bundled rows have none


# -- `vote run` writes one ------------------------------------------------------------------------
def write_run_config(tmp_path: Path, tiny_model: Path, adapters: dict[str, Path]) -> Path:
    """Two dev and four test questions with a `group` in each item (read from the items' meta)."""
    def rows(prefix: str, count: int):
        for i in range(count):
            yield {"id": f"{prefix}{i}", "question": f"Which is larger? ({i})", "options": ["3", "7"],
                   "answer": "B", "group": "even" if i % 2 == 0 else "odd"}

    for name, n in (("dev", 2), ("test", 4)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(name[0], n)))
    voters = "\n".join(f"  {k}: {v}" for k, v in adapters.items())
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {tiny_model}\nout: {tmp_path / 'out'}\nprompt: mc\n"
                   f"data: {{dev: {tmp_path / 'dev.jsonl'}, test: {tmp_path / 'test.jsonl'}}}\n"
                   f"voters:\n{voters}\nrun:\n  batch_size: 4\n  methods: [majority, weighted]\n")
    return cfg


def test_vote_run_writes_the_html_report_and_prints_its_path(tmp_path, tiny_model, tiny_adapters, monkeypatch):
    cfg = write_run_config(tmp_path, tiny_model, tiny_adapters)
    res = CliRunner().invoke(main, ["run", str(cfg)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    html_path = tmp_path / "out" / "report.html"
    assert f"html report: {html_path}" in res.output and "report.html not written" not in res.output
    page = html_path.read_text(encoding="utf-8")
    assert sections_of(page) == list(SECTION_IDS)
    assert "data.dev" in page and "every subset is run" in page  # 3 voters: no sampling
    assert re.search(r'<td class="l">even</td><td>2</td>', page)  # the items' groups, 2 test items each

    # A page that cannot be drawn is a warning: the run's report.json and tables still come out.
    def broken(*args, **kwargs):
        raise RuntimeError("no canvas")

    monkeypatch.setattr("ensemble.evaluation.html.run_html", broken)
    html_path.unlink()
    res = CliRunner().invoke(main, ["run", str(cfg)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "warning: report.html not written: RuntimeError: no canvas" in res.output
    assert not html_path.exists() and (tmp_path / "out" / "report.json").is_file()


@pytest.mark.parametrize("n_voters", [1, 2, 8, 9, 16, 64])
def test_page_ablation_voter_counts_span_one_to_all(n_voters):
    from ensemble.evaluation.html import MAX_KS, page_ks

    ks = page_ks(n_voters)
    assert ks[0] == 1 and ks[-1] == n_voters and len(ks) <= MAX_KS and ks == sorted(set(ks))
    assert ks == list(range(1, n_voters + 1)) if n_voters <= MAX_KS else len(ks) >= MAX_KS - 2
