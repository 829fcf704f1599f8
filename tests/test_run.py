"""`vote run` end to end on the tiny model: results, resume after kill -9, probe, CLI."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ensemble.cli.app import main
from ensemble.config.loader import load_config
from ensemble.pipeline import run

QUESTIONS = [
    ("Which number is larger?", ["3", "7"], "B"),
    ("Which number is smaller?", ["9", "2", "5"], "B"),
    ("Can Tom fly?", ["yes", "no"], "A"),
    ("2 + 2 = ?", ["3", "4", "5", "6"], "B"),
]


def write_data(tmp_path: Path, n: int) -> tuple[Path, Path]:
    def rows(prefix: str, count: int):
        for i in range(count):
            q, opts, ans = QUESTIONS[i % len(QUESTIONS)]
            yield {"id": f"{prefix}{i}", "question": f"{q} ({i})", "options": opts, "answer": ans}

    dev, test = tmp_path / "dev.jsonl", tmp_path / "test.jsonl"
    dev.write_text("".join(json.dumps(r) + "\n" for r in rows("d", n // 2)))
    test.write_text("".join(json.dumps(r) + "\n" for r in rows("t", n)))
    return dev, test


def write_config(tmp_path: Path, tiny_model: Path, adapters: dict[str, Path], out: Path, *, n: int = 8,
                 run_extra: str = "") -> Path:
    dev, test = write_data(tmp_path, n)
    voters = "\n".join(f"  {k}: {v}" for k, v in adapters.items())
    cfg = tmp_path / f"{out.name}.yaml"
    cfg.write_text(f"""model: {tiny_model}
out: {out}
prompt: mc
data: {{dev: {dev}, test: {test}}}
voters:
{voters}
run:
  batch_size: 4
  methods: [majority, weighted, dawid_skene]
{run_extra}""")
    return cfg


def test_run_cloze_end_to_end(tmp_path, tiny_model, tiny_adapters):
    cfg = load_config(write_config(tmp_path, tiny_model, tiny_adapters, tmp_path / "out"))
    result = run(cfg)
    m = result.matrix
    assert m.voters == ("v1", "v2", "v3") and m.n_items == 12
    report = result.report.to_dict()
    assert report["n_dev_items"] == 4 and report["n_eval_items"] == 8
    assert set(report["methods"]) == {"majority", "weighted", "dawid_skene"}
    # the method is chosen on the data.dev items only, and its test result is reported
    sel = report["selected_on_dev"]
    assert sel["n_dev_items"] == 4 and report["split"] == "data.dev"
    assert sel["eval_accuracy"] == report["methods"][sel["method"]]["accuracy"]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["selected_on_dev"] == sel
    rows = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 36 and all(set(r["probs"]) == set("ABCD"[:len(r["probs"])]) for r in rows)
    assert all(abs(sum(r["probs"].values()) - 1) < 1e-6 for r in rows)
    assert result.n_new_rows == 36
    # A rerun recomputes nothing.
    again = run(cfg)
    assert again.n_new_rows == 0
    assert again.report.to_dict()["methods"] == report["methods"]


def test_probe_warns_about_an_adapter_that_changes_nothing(tmp_path, tiny_model):
    from ensemble.testing import make_tiny_adapters

    dead = make_tiny_adapters(tiny_model, tmp_path / "ad", ["dead"], scale=0.0)
    cfg = load_config(write_config(tmp_path, tiny_model, dead, tmp_path / "out", n=4))
    result = run(cfg)
    assert any("voter 'dead'" in w and "equal the base model" in w for w in result.warnings)


DRIVER = """
import sys, time
from ensemble.config.loader import load_config
from ensemble.pipeline import run
def slow(event, **info):
    if event == "advance":
        time.sleep(0.3)  # give the test time to kill us between appends
run(load_config(sys.argv[1]), progress=slow)
"""


@pytest.mark.parametrize("mode", ["cloze", "generate"])
def test_kill_9_and_resume_equals_uninterrupted(tmp_path, tiny_model, tiny_adapters, mode):
    extra = "  mode: generate\n  samples: 2\n  temperature: 0.8\n  max_new_tokens: 6\n" if mode == "generate" else ""
    killed = write_config(tmp_path, tiny_model, tiny_adapters, tmp_path / "killed", n=16, run_extra=extra)
    clean = write_config(tmp_path, tiny_model, tiny_adapters, tmp_path / "clean", n=16, run_extra=extra)
    store = tmp_path / "killed" / "predictions.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(killed)], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if store.exists() and store.read_text().count("\n") >= 8:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = store.read_text().count("\n")
    total = 24 * 3 * (2 if mode == "generate" else 1)
    assert 0 < n_before < total
    resumed = run(load_config(killed))
    assert resumed.n_new_rows == total - n_before
    reference = run(load_config(clean))

    def table(path: Path):
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        keys = [(r["item"], r["voter"], r["sample"]) for r in rows]
        assert len(keys) == len(set(keys)) == total  # nothing lost, nothing duplicated
        return {k: (r["answer"], r.get("text")) for k, r in zip(keys, rows)}

    assert table(store) == table(tmp_path / "clean" / "predictions.jsonl")
    assert resumed.report.to_dict()["methods"] == reference.report.to_dict()["methods"]


def test_cli_run_prints_tables_and_errors(tmp_path, tiny_model, tiny_adapters):
    cfg = write_config(tmp_path, tiny_model, tiny_adapters, tmp_path / "out", n=4)
    res = CliRunner().invoke(main, ["run", str(cfg)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "Voting methods" in res.output and "predictions.jsonl" in res.output
    assert "best method on dev: " in res.output and "(dev accuracy" in res.output
    res = CliRunner().invoke(main, ["run", str(cfg), "--set", "run.mode=letter"], catch_exceptions=False)
    assert res.exit_code == 2 and "made with other settings (mode: 'cloze' -> 'letter')" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text().replace("v1: ", "v1: /nowhere/"))
    res = CliRunner().invoke(main, ["run", str(bad)], catch_exceptions=False)
    assert res.exit_code == 2 and "voter 'v1'" in res.output and "is not a PEFT adapter folder" in res.output


@pytest.mark.parametrize("mode", ["cloze", "generate"])
def test_vote_run_through_http_equals_in_process(tmp_path, tiny_model, tiny_adapters, mode):
    """The openai engine against `vote serve`'s real local server gives the in-process answers."""
    import threading

    from ensemble.engines.base import EngineSpec, build_engine
    from ensemble.serve.app import EnsembleHTTPServer

    extra = "  mode: generate\n  samples: 2\n  temperature: 0.8\n  max_new_tokens: 6\n" if mode == "generate" else ""
    local = load_config(write_config(tmp_path, tiny_model, tiny_adapters, tmp_path / "local", n=6, run_extra=extra))
    reference = run(local)
    engine = build_engine(EngineSpec(engine="hf", model=str(tiny_model), adapters={k: str(v) for k, v in tiny_adapters.items()}))
    server = EnsembleHTTPServer(engine, "127.0.0.1", 0, base_model="tiny")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        names = {k: k for k in tiny_adapters}
        remote_cfg = write_config(tmp_path, tiny_model, names, tmp_path / "remote", n=6,
                                  run_extra=extra + f"  engine: openai\n  probe: false\n"
                                  f"  engine_options: {{base_url: '{server.url}'}}\n")
        remote_cfg.write_text(remote_cfg.read_text().replace(f"model: {tiny_model}", "model: tiny"))
        remote = run(load_config(remote_cfg))
    finally:
        server.shutdown()
        server.close()

    def answers(result):
        rows = [json.loads(x) for x in (result.out / "predictions.jsonl").read_text().splitlines()]
        return {(r["item"], r["voter"], r["sample"]): (r["answer"], r.get("text")) for r in rows}

    assert answers(remote) == answers(reference)
    assert remote.report.to_dict()["methods"] == reference.report.to_dict()["methods"]


@pytest.mark.parametrize("options", [(["a", "b"], ["c", "d"]), (["a", "b"], ["c", "d", "e"])])
def test_probe_compares_item_by_item(options):
    """Equal and unequal option counts (equal ones once crashed the probe)."""
    from ensemble.data.items import Item
    from ensemble.engines.base import ChoiceOutput
    from ensemble.pipeline import probe_adapters
    from ensemble.prompts import get_template

    class Fake:
        def score_choices(self, reqs):
            return [ChoiceOutput(r, tuple(0.0 if r.adapter in (None, "same") else -float(i)
                                          for i, _ in enumerate(r.options)), ()) for r in reqs]

    items = [Item(id=str(k), question="q", options=tuple(o)) for k, o in enumerate(options)]
    warnings = probe_adapters(Fake(), items, {"same": "p", "diff": "p"}, get_template("mc"), "cloze")
    assert len(warnings) == 1 and "voter 'same'" in warnings[0]


def test_a_split_asked_for_but_not_given_is_an_error(tmp_path, tiny_model, tiny_adapters):
    """`vote run` once skipped a configured split with no data and dropped the fitted methods."""
    from dataclasses import replace

    from ensemble.errors import EnsembleError
    from ensemble.pipeline import load_split_items

    cfg = load_config(write_config(tmp_path, tiny_model, tiny_adapters, tmp_path / "out", n=4))
    # the config check refuses it before any work starts (the pipeline would refuse it too)
    with pytest.raises(EnsembleError, match=r"field 'run.splits' is 'dev'; data.dev is not set"):
        replace(cfg, data=replace(cfg.data, dev=None))
    only_test = replace(cfg, data=replace(cfg.data, dev=None), run=replace(cfg.run, splits=("test",),
                        methods=("majority",)))
    assert set(load_split_items(only_test, ["test"])) == {"test"}


def test_run_in_a_child_process_equals_the_run_in_process(tmp_path, tiny_model, tiny_adapters, monkeypatch):
    """`vote quickstart` runs `vote run` in a child (ensemble.isolate): same rows, same report."""
    from ensemble.isolate import IN_PROCESS_ENV, in_child

    monkeypatch.delenv(IN_PROCESS_ENV, raising=False)
    here = run(load_config(write_config(tmp_path, tiny_model, tiny_adapters, tmp_path / "here")))
    events: list[str] = []
    child = in_child(run, load_config(write_config(tmp_path, tiny_model, tiny_adapters, tmp_path / "child")),
                     progress=lambda event, **info: events.append(event))
    assert events and "start" in events  # the child's progress came back
    assert child.n_new_rows == here.n_new_rows == 36
    assert (child.matrix.labels == here.matrix.labels).all()
    assert child.report.to_dict()["methods"] == here.report.to_dict()["methods"]
    assert child.report.to_dict()["voters"] == here.report.to_dict()["voters"]

    def rows(out: str) -> list[dict]:
        drop = ("latency_s",)  # wall time, the only field that may differ
        return sorted(({k: v for k, v in json.loads(x).items() if k not in drop}
                       for x in (tmp_path / out / "predictions.jsonl").read_text().splitlines()),
                      key=lambda r: (r["item"], r["voter"], r.get("sample", 0)))
    assert rows("child") == rows("here")
