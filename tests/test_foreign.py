"""Foreign prediction inputs: lm-eval --log_samples runs, LLaMA-Factory files, NAME=PATH, mixed inputs.

The fixtures under tests/data/lmeval and tests/data/llamafactory are hand-written in the
formats lm-eval's evaluation_tracker and LLaMA-Factory's save_predictions write.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ensemble.cli.app import main
from ensemble.errors import EnsembleError
from ensemble.predictions.foreign import parse_input
from ensemble.predictions.matrix import ABSTAIN
from ensemble.predictions.rows import load_predictions

DATA = Path(__file__).parent / "data"
RUN_A, RUN_B = DATA / "lmeval" / "run_a", DATA / "lmeval" / "run_b"
LF = DATA / "llamafactory"


def voter_accuracy(m, voter: str, group: str) -> float:
    rows = [i for i, g in enumerate(m.groups) if g == group]
    j = m.voters.index(voter)
    return float(np.mean(m.labels[rows, j, 0] == m.gold[rows]))


def reported(run: Path, task: str, metric: str) -> float:
    (results,) = run.glob("*/results_*.json")
    return float(json.loads(results.read_text())["results"][task][metric])


# -- lm-eval -----------------------------------------------------------------------
def test_lmeval_multiple_choice_accuracy_equals_reported_acc():
    m = load_predictions([RUN_A, RUN_B])
    assert m.voters == ("run_a", "run_b")  # named after the input folders
    for run in (RUN_A, RUN_B):
        assert voter_accuracy(m, run.name, "arc_mini") == reported(run, "arc_mini", "acc,none")
    assert voter_accuracy(m, "run_a", "arc_mini") == 0.75  # the fixtures' numbers, so the check can fail


def test_lmeval_multiple_choice_answer_is_argmax_and_probs_softmax():
    m = load_predictions([RUN_A])
    i, j = m.items.index("arc_mini/0"), 0
    assert m.classes[m.labels[i, j, 0]] == "C"  # lls [-4.1, -3.2, -1.0, -5.0]
    lls = np.array([-4.1, -3.2, -1.0, -5.0])
    want = np.exp(lls) / np.exp(lls).sum()
    got = [m.probs[i, j, 0, m.classes.index(c)] for c in "ABCD"]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert m.classes[m.gold[i]] == "C"  # target "2"


def test_lmeval_generate_until_goes_through_extraction_first_filter():
    m = load_predictions([RUN_A, RUN_B], extract="number")
    j = m.voters.index("run_a")
    # strict-match (the first filter) logged "[invalid]" for doc 1: abstain, not flexible-extract's "3"
    assert m.labels[m.items.index("gsm_mini/1"), j, 0] == ABSTAIN
    assert m.classes[m.gold[m.items.index("gsm_mini/1")]] == "3"
    # with extraction, accuracy over the task equals lm-eval's strict-match exact_match
    for run in (RUN_A, RUN_B):
        assert voter_accuracy(m, run.name, "gsm_mini") == pytest.approx(
            reported(run, "gsm_mini", "exact_match,strict-match"))
    assert m.groups is not None and set(m.groups) == {"arc_mini", "gsm_mini"}


def test_lmeval_single_samples_file_and_name(tmp_path):
    (file,) = RUN_A.glob("*/samples_arc_mini_*.jsonl")
    m = load_predictions([f"mine={file}"])
    assert m.voters == ("mine",) and m.n_items == 4


def test_lmeval_latest_file_per_task_wins(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(RUN_A, run)
    (old,) = run.glob("*/samples_arc_mini_*.jsonl")
    newer = old.with_name("samples_arc_mini_2026-11-21T08-00-00.000001.jsonl")
    lines = old.read_text().splitlines()[:2]  # a newer run over two documents
    newer.write_text("\n".join(lines) + "\n")
    m = load_predictions([run])
    assert [x for x in m.items if x.startswith("arc_mini/")] == ["arc_mini/0", "arc_mini/1"]


def test_lmeval_string_target_maps_to_choice_text(tmp_path):
    (file,) = RUN_A.glob("*/samples_arc_mini_*.jsonl")
    sample = json.loads(file.read_text().splitlines()[0])
    sample["target"] = "leaf"  # a task whose doc_to_target gives the choice text
    out = tmp_path / "r" / "samples_text_target_2026-11-20T09-15-02.481516.jsonl"
    out.parent.mkdir()
    out.write_text(json.dumps(sample) + "\n")
    m = load_predictions([out])
    assert m.classes[m.gold[0]] == "C"
    sample["target"] = "bark"
    out.write_text(json.dumps(sample) + "\n")
    with pytest.raises(EnsembleError, match=r"samples_text_target.*:1.*target.*'bark' is neither a choice"):
        load_predictions([out])


def test_lmeval_logged_acc_disagreeing_is_an_error(tmp_path):
    (file,) = RUN_A.glob("*/samples_arc_mini_*.jsonl")
    sample = json.loads(file.read_text().splitlines()[0])
    sample["acc"] = 0.0  # lm-eval said wrong, but choice 2 has the highest loglikelihood and is the target
    out = tmp_path / "r" / "samples_arc_mini_2026-11-20T09-15-02.481516.jsonl"
    out.parent.mkdir()
    out.write_text(json.dumps(sample) + "\n")
    with pytest.raises(EnsembleError, match=r"samples_arc_mini.*:1: lm-eval logged acc=0.0"):
        load_predictions([out])


def test_lmeval_folder_with_two_runs_is_an_error():
    with pytest.raises(EnsembleError, match=r"lmeval: holds lm-eval samples of 2 runs.*own input"):
        load_predictions([DATA / "lmeval"])


def test_lmeval_same_default_name_is_an_error_name_them_apart(tmp_path):
    (a,) = RUN_A.glob("*/samples_arc_mini_*.jsonl")
    b = tmp_path / a.parent.name / a.name
    b.parent.mkdir()
    shutil.copy(a, b)
    with pytest.raises(EnsembleError, match=r"voter 'local__base-lora-a' comes from both .* NAME=PATH"):
        load_predictions([a, b])
    assert load_predictions([f"x={a}", f"y={b}"]).voters == ("x", "y")


# -- LLaMA-Factory -----------------------------------------------------------------
def lf(name: str) -> Path:
    return LF / name / "generated_predictions.jsonl"


def test_llamafactory_matched_by_prompt():
    m = load_predictions([lf("lora_a"), lf("lora_b"), lf("lora_c")], extract="number")
    assert m.voters == ("lora_a", "lora_b", "lora_c")
    answers = {v: m.decode(m.labels[:, j, 0]) for j, v in enumerate(m.voters)}
    # items follow lora_a's lines; lora_b and lora_c list the prompts in another order
    assert answers["lora_a"] == ["12", "24", "73", None]  # "I am not sure." -> abstain
    assert answers["lora_b"] == ["12", "20", "63", "24"]
    assert answers["lora_c"] == ["13", "24", "63", "24"]
    assert m.decode(m.gold) == ["12", "24", "63", "24"]


def test_llamafactory_repeated_prompts_matched_by_line_order():
    m = load_predictions([lf("rep_a"), lf("rep_b")])  # default extraction: text (strip, normalize)
    assert m.decode(m.labels[:, 0, 0]) == ["yes", "yes", "no"]
    assert m.decode(m.labels[:, 1, 0]) == ["no", "no", "no"]
    assert m.decode(m.gold) == ["yes", "no", "no"]


def test_llamafactory_line_order_mismatch_is_an_error(tmp_path):
    lines = lf("rep_b").read_text().splitlines()
    bad = tmp_path / "rep_x" / "generated_predictions.jsonl"
    bad.parent.mkdir()
    bad.write_text("\n".join([lines[2], lines[0], lines[1]]) + "\n")
    with pytest.raises(EnsembleError, match=r"generated_predictions.jsonl:1: the prompt differs from .*rep_a"):
        load_predictions([lf("rep_a"), bad])
    bad.write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(EnsembleError, match=r"2 lines but .*rep_a.* has 3; prompts repeat"):
        load_predictions([lf("rep_a"), bad])


def test_llamafactory_prompt_mismatch_and_label_mismatch_are_errors(tmp_path):
    rows = [json.loads(x) for x in lf("lora_b").read_text().splitlines()]
    bad = tmp_path / "x" / "generated_predictions.jsonl"
    bad.parent.mkdir()
    rows[1]["prompt"] = "user\nWhat is 7 + 6?\nassistant\n"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(EnsembleError, match=r"x/generated_predictions.jsonl:2: this prompt is not in .*lora_a"):
        load_predictions([lf("lora_a"), bad], extract="number")
    rows = [json.loads(x) for x in lf("lora_b").read_text().splitlines()]
    rows[0]["label"] = "64"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(EnsembleError, match=r":1: field 'label'.*'64' does not match the label"):
        load_predictions([lf("lora_a"), bad], extract="number")


def test_llamafactory_missing_key_names_file_line_and_found_keys(tmp_path):
    bad = tmp_path / "y" / "generated_predictions.jsonl"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"prompt": "p", "predict": "1", "label": "1"}) + "\n"
                   + json.dumps({"prompt": "q", "predict": "2"}) + "\n")
    with pytest.raises(EnsembleError, match=r"generated_predictions.jsonl:2: missing field 'label'.*found: prompt, predict"):
        load_predictions([bad])


# -- naming and mixing ---------------------------------------------------------------
def test_parse_input():
    assert parse_input("a=runs/x") == ("a", Path("runs/x"))
    assert parse_input("runs/x") == (None, Path("runs/x"))
    assert parse_input("runs/k=1/p.jsonl") == (None, Path("runs/k=1/p.jsonl"))  # '=' inside a path


def test_name_renames_native_voter(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"item": "q1", "voter": "v", "answer": "A", "group": "math"}\n'
                 '{"item": "q2", "voter": "v", "answer": "B"}\n')
    m = load_predictions([f"mine={p}"])
    assert m.voters == ("mine",)
    assert m.groups == ("math", "")  # a group column in a predictions file


def test_mixed_inputs_in_one_vote_eval(tmp_path):
    native = tmp_path / "native.jsonl"  # this project's rows for the same lm-eval items
    native.write_text("".join(json.dumps({"item": f"arc_mini/{k}", "voter": "house", "answer": a}) + "\n"
                              for k, a in enumerate("CABB")))
    result = CliRunner().invoke(main, ["eval", str(native), f"alpha={RUN_A}", str(RUN_B), "--json",
                                       "--n-boot", "0", "--method", "majority", "--extract", "number"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert sorted(report["voters"]) == ["alpha", "house", "run_b"] and report["n_items"] == 7
    # alpha is run_a: right on arc 0, 1, 3 and gsm 0, 2 (5 of 7; strict-match abstained on gsm 1)
    assert report["voters"]["alpha"]["accuracy"] == pytest.approx(5 / 7)
    assert report["voters"]["house"]["coverage"] == pytest.approx(4 / 7)


def test_vote_eval_reports_conflicting_gold_between_inputs(tmp_path):
    native = tmp_path / "native.jsonl"
    native.write_text(json.dumps({"item": "arc_mini/0", "voter": "house", "answer": "A", "gold": "A"}) + "\n")
    result = CliRunner().invoke(main, ["eval", str(RUN_A), str(native), "--n-boot", "0"])
    assert result.exit_code == 2
    assert "item 'arc_mini/0': gold 'C'" in result.output and "disagree" in result.output


def test_missing_input_is_an_error():
    result = CliRunner().invoke(main, ["eval", "nope/missing.jsonl"])
    assert result.exit_code == 2 and "nope/missing.jsonl: no such file or folder" in result.output


# -- groups ------------------------------------------------------------------------
def test_groups_argument_overrides_column_and_follows_select_items():
    from ensemble.predictions.rows import build_matrix

    rows = [{"item": "a", "voter": "v", "sample": 0, "answer": "A", "group": "old"},
            {"item": "b", "voter": "v", "sample": 0, "answer": "B"}]
    m = build_matrix(rows, groups={"a": "math"})
    assert m.groups == ("math", "")
    assert m.select_items(np.array([False, True])).groups == ("",)
    assert build_matrix([{**r, "group": None} for r in rows]).groups is None  # no group anywhere


def test_vote_run_matrix_carries_the_items_groups(tmp_path):
    from types import SimpleNamespace

    from ensemble.config.loader import load_config
    from ensemble.data.items import Item
    from ensemble.pipeline import finish

    (tmp_path / "c.yaml").write_text(f"out: {tmp_path / 'out'}\nrun: {{splits: [test], methods: [majority]}}\n")
    cfg = load_config(tmp_path / "c.yaml")
    items = [Item("q1", "?", ("x", "y"), "A", meta={"subject": "law"}),
             Item("q2", "?", ("x", "y"), "B", meta={"kind": "boxes"}), Item("q3", "?", ("x", "y"), "B")]
    store = SimpleNamespace(rows=[{"item": it.id, "voter": "v", "sample": 0, "answer": "A"} for it in items])
    result = finish(cfg, store, {"test": items}, {"v": None}, 0, [])
    assert result.matrix.groups == ("law", "boxes", "")


def test_vote_submit_and_ablate_take_several_inputs(tmp_path):
    out = tmp_path / "answers.csv"
    args = [str(lf("lora_a")), str(lf("lora_b")), str(lf("lora_c")), "--extract", "number"]
    result = CliRunner().invoke(main, ["submit", *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    # majority of the three voters per prompt, in lora_a's line order (ids are its line numbers)
    assert out.read_text().split() == ["id,answer", "1,12", "2,24", "3,63", "4,24"]
    result = CliRunner().invoke(main, ["ablate", *args, "--out", str(tmp_path / "abl"), "--method", "majority"])
    assert result.exit_code == 0, result.output
    assert any((tmp_path / "abl").iterdir())


def test_vote_eval_gold_from_a_parquet_benchmark(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    native = tmp_path / "p.jsonl"
    native.write_text("".join(json.dumps({"item": str(k), "voter": "v", "answer": a}) + "\n" for k, a in enumerate("AB")))
    bench = tmp_path / "mmlu.parquet"  # MMLU layout: ids are row positions, answers choice indices
    pq.write_table(pa.Table.from_pylist([{"question": "q0", "subject": "s", "choices": ["x", "y"], "answer": 0},
                                         {"question": "q1", "subject": "s", "choices": ["x", "y"], "answer": 0}]), bench)
    result = CliRunner().invoke(main, ["eval", str(native), "--gold", str(bench), "--json", "--n-boot", "0",
                                       "--method", "majority"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["voters"]["v"]["accuracy"] == 0.5


def test_lmeval_repeated_document_is_an_error(tmp_path):
    (file,) = RUN_A.glob("*/samples_arc_mini_*.jsonl")
    out = tmp_path / "r" / file.name
    out.parent.mkdir()
    line = file.read_text().splitlines()[0]
    out.write_text(line + "\n" + line + "\n")  # lm-eval appends to a samples file it finds
    with pytest.raises(EnsembleError, match=r"samples_arc_mini.*:2: document 'arc_mini/0' again \(first at .*:1\)"):
        load_predictions([out])
