"""experiments/per_group.py and experiments/tie_break.py on a small `vote run` folder and on
prediction + gold files: both read data through experiments/run_data.py, whose files split is
the one ``vote eval --fit-on dev`` draws (ensemble.evaluation.splits.choose_split)."""
from __future__ import annotations

import json
import os
import runpy
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ensemble.evaluation.splits import choose_split, straddling
from ensemble.predictions.rows import load_predictions

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("add", "order")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A `vote run` layout: 10 dev + 10 test problems of 2 questions (ids p#1, p#2), kinds
    alternating; voter v0 is right on "add" problems, v1 on "order", v2 on 60% of items."""
    run = tmp_path_factory.mktemp("run")
    (run / "data").mkdir()
    rng = np.random.default_rng(1)
    preds, gold = [], []
    for split in ("dev", "test"):
        problems = []
        for p in range(10):
            pid, kind = f"{split}{p}", KINDS[p % 2]
            answers = ["ABC"[(p + k) % 3] for k in range(2)]
            problems.append({"id": pid, "kind": kind, "problem": "?", "questions": [
                {"question": f"q{k}", "options": ["x", "y", "z"], "answer": a} for k, a in enumerate(answers)]})
            for k, answer in enumerate(answers):
                item = f"{pid}#{k + 1}"
                gold.append({"item": item, "answer": answer})
                right = [kind == "add", kind == "order", rng.random() < 0.6]
                for v, ok in enumerate(right):
                    says = answer if ok else "ABC"[("ABC".index(answer) + 1 + v % 2) % 3]
                    preds.append({"item": item, "voter": f"v{v}", "answer": says,
                                  "confidence": float(rng.uniform(0.3, 0.9))})
        (run / "data" / f"{split}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in problems))
    (run / "predictions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in preds))
    (run / "gold.jsonl").write_text("".join(json.dumps(x) + "\n" for x in gold))
    return run


def experiment(monkeypatch: pytest.MonkeyPatch, name: str, *args: str | Path | int) -> dict:
    """Run experiments/<name>.py as a script (in this process: no interpreter start-up)."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    monkeypatch.setattr(sys, "argv", [f"experiments/{name}.py", *map(str, args)])
    runpy.run_path(str(ROOT / "experiments" / f"{name}.py"), run_name="__main__")
    out = Path(args[args.index("--out") + 1])
    return json.loads(out.read_text())


def test_per_group_on_a_run_folder_uses_the_runs_split_and_kinds(run_folder, tmp_path, monkeypatch):
    report = experiment(monkeypatch, "per_group", "--run", run_folder, "--n-boot", 50, "--priors", "0,5",
                        "--out", tmp_path / "pg.json")
    assert report["data"]["n_dev"] == 20 and report["data"]["n_test"] == 20
    assert report["data"]["dev_items_per_group"] == {"add": 10, "order": 10}
    assert report["source"]["groups"].startswith("each item's kind")
    stack = report["results"]["stack"]
    assert [c["candidate"] for c in stack["candidates"]] == ["global", "per_group prior=0", "per_group prior=5"]
    # per kind one voter is always right: a per-group fit finds it, a global one cannot
    assert stack["chosen_on_dev"].startswith("per_group") and stack["test_accuracy"] == 1.0


def test_files_are_split_as_vote_eval_splits_them(run_folder, tmp_path, monkeypatch):
    # The experiments' old hash-threshold split took 10, 8 and 8 dev items here.
    seeds = (0, 1, 2)
    files = ("--predictions", run_folder / "predictions.jsonl", "--gold", run_folder / "gold.jsonl",
             "--dev-fraction", "0.3")
    m = load_predictions(run_folder / "predictions.jsonl", run_folder / "gold.jsonl")
    splits = [choose_split(m, fit_on="dev", fraction=0.3, seed=s) for s in seeds]
    assert all(s is not None and not straddling(m.items, s.dev) for s in splits)
    want = [len(s.dev) for s in splits if s is not None]
    assert want == [12, 12, 12]  # round(0.3 * 40) = 12: six whole problems
    tie = experiment(monkeypatch, "tie_break", *files, "--repeats", 3, "--out", tmp_path / "tb.json")
    assert tie["data"]["n_dev_per_split"] == want and tie["data"]["n_test_per_split"] == [40 - n for n in want]
    assert "vote eval --fit-on dev" in tie["source"]["split"]
    pg = experiment(monkeypatch, "per_group", *files, "--seed", seeds[-1], "--synthetic-groups", 2, "--n-boot", 20,
                    "--out", tmp_path / "pg.json")
    assert pg["data"]["n_dev"] == want[-1] and set(pg["data"]["dev_items_per_group"]) == {"g0", "g1"}


def test_quickstart_memory_reads_the_phase_rules_and_sums_the_process_tree():
    """experiments/quickstart_memory.py: the phase is the rule `vote quickstart` printed last, and the
    memory counted is the whole tree's (a child's RSS is added to its parent's)."""
    import subprocess

    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import quickstart_memory as qm
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    rules = {"──────── 2/5 training the voters ────────": "2/5 training the voters",
             "─── 5/5 the same budget spent on one LoRA ───": "5/5 the same budget spent on one LoRA",
             "4/4 ablation over the number of voters": "4/4 ablation over the number of voters"}
    for line, phase in rules.items():
        match = qm.RULE.search(line)
        assert match is not None and match.group(1) == phase
    assert qm.RULE.search("v1-r8-attn: held-out accuracy 0.425") is None
    alone, n_alone = qm.tree_rss_mb(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; b = b'x' * (200 << 20); time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            total, n = qm.tree_rss_mb(os.getpid())
            if n == n_alone + 1 and total >= alone + 200:
                break
            time.sleep(0.05)
        assert n == n_alone + 1 and total >= alone + 200  # the child's 200 MB string is counted
    finally:
        child.kill()
        child.wait()


def test_bench_samples_on_the_tiny_model(tiny_model, tmp_path, monkeypatch, one_thread):
    """experiments/bench_samples.py end to end: both paths draw the same samples, and the
    speedup is the per-sample-prefill time over the shared time."""
    report = experiment(monkeypatch, "bench_samples", "--model", tiny_model, "--ns", "1,3", "--questions", 2,
                        "--voters", 2, "--new-tokens", 3, "--repeats", 1, "--dtype", "float32",
                        "--out", tmp_path / "bs.json")
    assert [r["n"] for r in report["results"]] == [1, 3]
    assert [r["rows"] for r in report["results"]] == [4, 12]  # questions x voters x n
    assert all(r["texts_differ"] == 0 for r in report["results"])
    for r in report["results"]:
        # (the times in the json are rounded to ms: a few % on the tiny model's)
        assert r["speedup"] == pytest.approx(r["per_sample_prefill_s"] / r["shared_s"], rel=0.1)
    assert set(report["summary"]) == {"n1_speedup", "n3_speedup"}


def test_adaptive_exact_on_the_tiny_model(tiny_model, tiny_adapters, tmp_path, monkeypatch, one_thread):
    """experiments/adaptive_exact.py end to end: a full and an adaptive run of the same config
    per dtype, every cell asked by both; in float32 every sample is the same text."""
    from test_run import write_config

    cfg = write_config(tmp_path, tiny_model, tiny_adapters, tmp_path / "base", n=8, run_extra=(
        "  mode: generate\n  temperature: 1.0\n  max_new_tokens: 5\n  probe: false\n"))
    report = experiment(monkeypatch, "adaptive_exact", "--config", cfg, "--limit", 3, "--samples", 2,
                        "--root", tmp_path / "runs", "--out", tmp_path / "ae.json")
    f32 = report["float32"]
    assert f32["samples"] == 3 * 3 * 2 and f32["differ"] == 0 and f32["same"] == f32["samples"]
    assert report["bfloat16"]["samples"] == f32["samples"]
    for dtype in ("float32", "bfloat16"):
        assert (tmp_path / "runs" / f"{dtype}-adaptive" / "predictions.jsonl.meta.json").exists()
        meta = json.loads((tmp_path / "runs" / f"{dtype}-adaptive" / "predictions.jsonl.meta.json").read_text())
        assert meta["adaptive"]["rule"] == "none" and meta["dtype"] == dtype
