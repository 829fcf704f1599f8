"""`vote eval / ablate / submit` through click's CliRunner on the shipped example."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ensemble.cli.app import main

ROOT = Path(__file__).resolve().parents[1]
PRED = str(ROOT / "ensemble" / "examples" / "predictions.jsonl")
GOLD = str(ROOT / "ensemble" / "examples" / "gold.jsonl")
SAMPLES = ROOT / "tests" / "data"  # copies of the shared competition-format samples


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_eval_json_contract():
    res = invoke("eval", PRED, "--gold", GOLD, "--json", "--n-boot", "200")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["n_items"] == 80 and report["n_eval_items"] == 80
    assert list(report["methods"]) == ["majority", "confidence", "dawid_skene"]
    for m in report["methods"].values():
        assert {"accuracy", "macro_f1", "coverage"} <= set(m)
        assert 0 <= m["accuracy"] <= 1
    assert set(report["voters"]) == {"lora-s0-r8", "lora-s1-r8", "lora-s2-r16", "lora-s3-r4", "lora-s4-r4"}


def test_eval_fit_on_dev_scores_only_the_rest():
    res = invoke("eval", PRED, "--gold", GOLD, "--fit-on", "dev", "--dev-fraction", "0.25", "--json",
                 "--n-boot", "100")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["n_dev_items"] == 20 and report["n_eval_items"] == 60
    assert {"weighted", "select", "stack"} <= set(report["methods"])
    assert report["methods"]["select"]["info"]["chosen"]


def test_eval_tables_render():
    res = invoke("eval", PRED, "--gold", GOLD, "-m", "majority", "--n-boot", "100")
    assert res.exit_code == 0 and "Voting methods" in res.output and "lora-s0-r8" in res.output


def test_explicit_weights_on_the_command_line():
    w = "lora-s0-r8=3,lora-s1-r8=1,lora-s2-r16=1,lora-s3-r4=1,lora-s4-r4=1"
    res = invoke("eval", PRED, "--gold", GOLD, "-m", "weighted", "--weights", w, "--json", "--n-boot", "50")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["methods"]["weighted"]["info"]["weights"]["lora-s0-r8"] == 3.0


@pytest.mark.parametrize("args, message", [
    (["-m", "majorty"], "Unknown voting method 'majorty'. Did you mean 'majority'? Available: majority"),
    (["-m", "weighted", "--weights", "nobody=1"], "Weights name unknown voter 'nobody'"),
    (["-m", "weighted", "--weights", "abc"], "--weights: 'abc' is not VOTER=WEIGHT"),
    (["-m", "weighted", "--weights", "lora-s0-r8=x"], "--weights: every weight must be a number"),
    (["--fit-on", "dev", "--dev-fraction", "1.5"], "dev fraction 1.5 (--dev-fraction): use a value in (0, 1)"),
    (["-m", "select"], "method(s) select fit on dev items, but there is no dev split: pass --fit-on dev"),
    (["--option", "confidence"], "--option 'confidence': expected METHOD.KEY=VALUE"),
    (["-m", "majority", "--option", "majority.samplez=voter"],
     "Unknown option for majority 'samplez'. Did you mean 'samples'? Available: samples"),
])
def test_eval_errors_exit_2_with_one_line(args, message):
    res = invoke("eval", PRED, "--gold", GOLD, *args)
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output


def test_eval_errors_on_bad_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    res = invoke("eval", str(empty))
    assert res.exit_code == 2 and "no prediction rows" in res.output
    res = invoke("eval", PRED, "--fit-on", "dev")
    assert res.exit_code == 2 and "--fit-on dev needs gold answers" in res.output


def test_partial_gold_is_counted(tmp_path):
    gold = tmp_path / "g.jsonl"
    gold.write_text("".join(Path(GOLD).read_text().splitlines(keepends=True)[:50]))
    report = json.loads(invoke("eval", PRED, "--gold", str(gold), "-m", "majority", "--json", "--n-boot", "50").output)
    assert report["n_eval_items"] == 50 and report["n_items_without_gold"] == 30


def test_ablate_writes_table_csv_json_and_plot(tmp_path):
    res = invoke("ablate", PRED, "--gold", GOLD, "-m", "majority", "-m", "dawid_skene", "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    for name in ("ablation.csv", "ablation.json", "ablation.png", "leave_one_out.csv"):
        assert (tmp_path / name).stat().st_size > 0
    assert "Accuracy by number of voters" in res.output


def test_submit_generic_csv(tmp_path):
    out = tmp_path / "answers.csv"
    res = invoke("submit", PRED, "-m", "majority", "--out", str(out))
    assert res.exit_code == 0, res.output
    lines = out.read_text().splitlines()
    assert lines[0] == "id,answer" and len(lines) == 81


def test_submit_into_nested_template_and_abstain_policy(tmp_path):
    rows = [{"item": "sample_000#1", "voter": "a", "answer": "A"}, {"item": "sample_000#2", "voter": "a", "answer": "B"},
            {"item": "sample_001#1", "voter": "a", "answer": "C"}, {"item": "sample_002#1", "voter": "a", "answer": "A"},
            {"item": "sample_002#2", "voter": "a", "answer": ""}]
    pred = tmp_path / "p.jsonl"
    pred.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "sub.jsonl"
    template = str(SAMPLES / "logic_nested_test.jsonl")
    res = invoke("submit", str(pred), "-m", "majority", "--template", template, "--out", str(out))
    assert res.exit_code == 2 and "sample_002#2" in res.output and not out.exists()
    res = invoke("submit", str(pred), "-m", "majority", "--template", template, "--out", str(out), "--fallback", "first")
    assert res.exit_code == 0, res.output
    filled = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [[q["answer"] for q in p["questions"]] for p in filled] == [["A", "B"], ["C"], ["A", "A"]]
    assert filled[0]["problem"].startswith("有三个盒子")


def test_submit_takes_one_method(tmp_path):
    res = invoke("submit", PRED, "-m", "majority", "-m", "stack", "--out", str(tmp_path / "x.csv"))
    assert res.exit_code == 2 and "takes one --method" in res.output


W5 = "lora-s0-r8=3,lora-s1-r8=1,lora-s2-r16=1,lora-s3-r4=1,lora-s4-r4=1"


def test_ablate_with_weights_restricts_them_to_each_subset(tmp_path):
    res = invoke("ablate", PRED, "--gold", GOLD, "-m", "weighted", "--weights", W5, "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "ablation.json").read_text())
    assert [r["n_failed"] for r in data["summary"]] == [0] * 5
    assert all(s["accuracy"] is not None for s in data["subsets"])
    # a single voter alone under weighted equals that voter alone
    singles = {s["voters"][0]: s["accuracy"] for s in data["subsets"] if s["k"] == 1}
    assert singles == pytest.approx(data["single_voters"])


def test_ablate_fails_when_a_subset_fails_and_says_why(tmp_path):
    zero = "lora-s0-r8=1,lora-s1-r8=0,lora-s2-r16=0,lora-s3-r4=0,lora-s4-r4=0"
    res = invoke("ablate", PRED, "--gold", GOLD, "-m", "weighted", "--weights", zero, "--out", str(tmp_path))
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "method 'weighted' failed on the voter subset {lora-s1-r8}: weighted: every weight is 0" in res.output


def test_eval_reports_the_method_best_on_dev():
    res = invoke("eval", PRED, "--gold", GOLD, "--fit-on", "dev", "--json", "--n-boot", "0")
    report = json.loads(res.output)
    sel = report["selected_on_dev"]
    assert sel["method"] in report["methods"] and set(sel["dev_accuracies"]) == set(report["methods"])
    assert sel["dev_accuracy"] == max(a for a in sel["dev_accuracies"].values() if a is not None)
    assert sel["eval_accuracy"] == report["methods"][sel["method"]]["accuracy"]
    assert report["split"].startswith("drawn: 0.3 of the gold items by whole problem, seed 0")
    text = invoke("eval", PRED, "--gold", GOLD, "--fit-on", "dev", "--n-boot", "0").output
    assert f"best method on dev: {sel['method']} (dev accuracy {sel['dev_accuracy']:.3f}" in text
    assert "best method on dev: – (no dev split" in invoke("eval", PRED, "--gold", GOLD, "--n-boot", "0").output


def test_eval_fit_on_dev_is_independent_of_row_order(tmp_path):
    lines = Path(PRED).read_text().splitlines(keepends=True)
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("".join(lines[::-1]))
    args = ("--gold", GOLD, "--fit-on", "dev", "--json", "--n-boot", "100", "--seed", "4")
    assert invoke("eval", str(shuffled), *args).output == invoke("eval", PRED, *args).output
