"""evaluate() / Report (ensemble.evaluation.report): protocol, contract keys, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest_metrics import synthetic

from ensemble.errors import EnsembleError
from ensemble.evaluation.report import evaluate
from ensemble.predictions.matrix import ABSTAIN, from_arrays
from ensemble.voting import METHODS

X = ABSTAIN
# 6 items, 3 voters, classes A B C. Items 0-1 are dev, item 5 has no gold.
LABELS = np.array([[0, 0, 1],   # majority A  gold A (dev)
                   [1, 1, 0],   # majority B  gold B (dev)
                   [1, 0, 0],   # majority A  gold B  wrong
                   [0, 0, 0],   # majority A  gold A  right
                   [2, 2, 1],   # majority C  gold C  right
                   [1, 1, 1]])  # majority B  no gold
GOLD = np.array([0, 1, 1, 0, 2, X])
DEV = np.array([True, True, False, False, False, False])
M = from_arrays(LABELS, ["A", "B", "C"], gold=GOLD, voters=["v0", "v1", "v2"])

METHOD_KEYS = {"n", "accuracy", "accuracy_ci", "coverage", "macro_f1", "micro_f1", "weighted_f1",
               "precision_macro", "recall_macro", "precision_micro", "recall_micro",
               "precision_weighted", "recall_weighted", "per_class", "confusion", "ece", "brier",
               "log_loss", "info", "vs_best_voter"}
TEST_KEYS = {"delta", "delta_ci", "p_value", "n_a_only", "n_b_only", "test", "voter", "selected_on"}


def test_evaluate_hand_case_with_dev() -> None:
    r = evaluate(M, ["majority"], dev=DEV)
    d = r.to_dict()
    assert (d["n_items"], d["n_dev_items"], d["n_items_without_gold"], d["n_eval_items"]) == (6, 2, 1, 3)
    assert d["classes"] == ["A", "B", "C"]
    maj = d["methods"]["majority"]
    assert maj["n"] == 3 and maj["accuracy"] == pytest.approx(2 / 3) and maj["coverage"] == 1.0
    # eval accuracies: v0 3/3, v1 2/3, v2 1/3. On dev v0 and v1 are both 2/2: the first listed wins.
    assert {v: s["accuracy"] for v, s in d["voters"].items()} == pytest.approx({"v0": 1, "v1": 2 / 3, "v2": 1 / 3})
    vs = maj["vs_best_voter"]
    assert (vs["voter"], vs["selected_on"], vs["n_a_only"], vs["n_b_only"]) == ("v0", "dev", 0, 1)
    assert vs["delta"] == pytest.approx(-1 / 3) and vs["p_value"] == 1.0
    assert d["diagnostics"]["best_voter"] == "v0" and d["diagnostics"]["best_voter_selected_on"] == "dev"
    assert d["diagnostics"]["oracle"] == 1.0
    assert r.eval_mask.tolist() == [False, False, True, True, True, False]
    # answers cover every item, decoded
    assert r.answers("majority") == {"0": "A", "1": "B", "2": "A", "3": "A", "4": "C", "5": "B"}


def test_evaluate_without_dev_selects_best_voter_on_eval() -> None:
    d = evaluate(M, ["majority"]).to_dict()
    assert (d["n_eval_items"], d["n_dev_items"]) == (5, 0)
    assert d["methods"]["majority"]["accuracy"] == pytest.approx(4 / 5)
    assert d["methods"]["majority"]["vs_best_voter"]["selected_on"] == "eval"
    assert d["diagnostics"]["best_voter_selected_on"] == "eval"


def test_dev_items_do_not_change_metrics() -> None:
    flipped = LABELS.copy()
    flipped[:2] = 2  # every dev vote now wrong
    m2 = from_arrays(flipped, ["A", "B", "C"], gold=GOLD, voters=["v0", "v1", "v2"])
    a = evaluate(M, ["majority"], dev=DEV).to_dict()["methods"]["majority"]
    b = evaluate(m2, ["majority"], dev=DEV).to_dict()["methods"]["majority"]
    assert a["accuracy"] == b["accuracy"] and a["confusion"] == b["confusion"]


def test_evaluate_without_any_gold_keeps_decisions_and_coverage() -> None:
    m = from_arrays(np.array([[0, 0], [1, X], [X, X]]), ["A", "B"])
    r = evaluate(m, ["majority"])
    d = r.to_dict()
    assert d["n_eval_items"] == 0 and d["n_items_without_gold"] == 3
    assert d["methods"]["majority"]["coverage"] == pytest.approx(2 / 3)
    assert "accuracy" not in d["methods"]["majority"] and "vs_best_voter" not in d["methods"]["majority"]
    assert d["voters"]["v1"] == {"n": 3, "coverage": pytest.approx(1 / 3)}
    assert d["diagnostics"]["oracle"] is None and d["diagnostics"]["best_voter"] is None
    assert d["diagnostics"]["mean_pairwise_disagreement"] == 0.0
    assert r.answers("majority") == {"0": "A", "1": "B", "2": None}


def test_dev_covering_every_gold_item_leaves_no_metrics() -> None:
    dev = np.array([True] * 5 + [False])  # item 5 (no gold) is the only item left
    d = evaluate(M, ["majority"], dev=dev).to_dict()
    assert (d["n_eval_items"], d["n_dev_items"]) == (0, 5)
    assert d["methods"]["majority"] == {"n": 1, "coverage": 1.0, "info": d["methods"]["majority"]["info"]}
    assert d["diagnostics"]["best_voter_selected_on"] == "dev"  # chosen, but nothing to test it on
    everything = evaluate(M, ["majority"], dev=np.ones(6, bool)).to_dict()
    assert everything["methods"]["majority"]["coverage"] is None
    assert everything["diagnostics"]["mean_pairwise_disagreement"] is None


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_meets_the_contract(method: str) -> None:
    m = synthetic(300, [0.8, 0.6, 0.5, 0.4], n_samples=2, no_gold=0.1, seed=1)
    dev = np.arange(m.n_items) < 100
    d = evaluate(m, [method], dev=dev, n_boot=200).to_dict()
    assert set(d) >= {"n_items", "n_eval_items", "n_dev_items", "n_items_without_gold", "classes",
                      "methods", "voters", "diagnostics"}
    row = d["methods"][method]
    assert set(row) >= METHOD_KEYS and set(row["vs_best_voter"]) >= TEST_KEYS
    assert d["n_eval_items"] == int((m.has_gold() & ~dev).sum()) == row["n"]
    assert set(d["voters"]) == {"v0", "v1", "v2", "v3"}
    assert set(d["diagnostics"]) >= {"oracle", "mean_pairwise_disagreement", "error_correlation",
                                     "best_voter", "best_voter_selected_on"}
    assert d["diagnostics"]["best_voter"] == "v0"
    assert json.loads(json.dumps(d, allow_nan=False)) == d


def test_all_methods_together_and_method_options() -> None:
    m = synthetic(200, [0.7, 0.6, 0.5], seed=2)
    dev = np.arange(200) < 80
    r = evaluate(m, METHODS.names(), dev=dev, n_boot=100,
                 method_options={"weighted": {"weights": {"v0": 2.0, "v1": 1.0, "v2": 1.0}}})
    assert list(r.to_dict()["methods"]) == METHODS.names()
    assert all(len(r.answers(n)) == 200 for n in METHODS.names())
    # options reach the method: a bad one raises the method's own error
    with pytest.raises(EnsembleError, match="samples mode"):
        evaluate(m, ["majority"], method_options={"majority": {"samples": "evry"}})


def test_evaluate_errors() -> None:
    with pytest.raises(EnsembleError, match="Unknown voting method 'majorty'. Did you mean 'majority'"):
        evaluate(M, ["majorty"])
    with pytest.raises(EnsembleError, match="No voting method given"):
        evaluate(M, [])
    with pytest.raises(EnsembleError, match="listed twice"):
        evaluate(M, ["majority", "majority"])
    with pytest.raises(EnsembleError, match="options given for 'weighted', which is not among"):
        evaluate(M, ["majority"], method_options={"weighted": {}})
    with pytest.raises(EnsembleError, match=r"dev mask: expected a bool array of shape \(6,\)"):
        evaluate(M, ["majority"], dev=np.array([0, 1]))
    with pytest.raises(EnsembleError, match="Unknown evaluated method 'weighted'.*Add it to the methods"):
        evaluate(M, ["majority"]).answers("weighted")


def test_evaluate_is_reachable_from_metrics() -> None:
    from ensemble.evaluation.metrics import Report
    from ensemble.evaluation.metrics import evaluate as evaluate_from_metrics
    assert evaluate_from_metrics is evaluate and isinstance(evaluate(M), Report)


def test_n_boot_zero_as_vote_submit_calls_it() -> None:
    d = evaluate(M, ["majority"], dev=DEV, n_boot=0).to_dict()
    assert d["methods"]["majority"]["accuracy_ci"] is None
    assert d["methods"]["majority"]["vs_best_voter"]["delta_ci"] is None
    assert d["methods"]["majority"]["accuracy"] == pytest.approx(2 / 3)


def test_on_error_record_keeps_the_other_methods():
    """`vote run` records a method that cannot apply instead of losing the whole report."""
    import numpy as np

    from ensemble.errors import EnsembleError
    from ensemble.evaluation.report import evaluate
    from ensemble.predictions.matrix import from_arrays

    # Both voters always wrong on the dev items -> every fitted log-odds weight is 0.
    labels = np.array([[1, 1], [0, 0], [1, 0], [0, 1]])
    m = from_arrays(labels, ["A", "B"], gold=np.array([0, 1, 1, 0]))
    dev = np.array([True, True, False, False])
    with pytest.raises(EnsembleError, match="every voter is at or below chance"):
        evaluate(m, ["majority", "weighted"], dev=dev, n_boot=10)
    report = evaluate(m, ["weighted", "majority"], dev=dev, n_boot=10, on_error="record").to_dict()
    assert list(report["methods"]) == ["weighted", "majority"]
    assert "every voter is at or below chance" in report["methods"]["weighted"]["error"]
    # eval items: votes (B, A) and (A, B) both tie -> "A" (sorts first); gold B, A -> 1 of 2 right
    assert report["methods"]["majority"]["accuracy"] == 0.5
