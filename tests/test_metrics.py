"""Metric maths on hand-written cases (ensemble.evaluation.metrics): no voting method involved."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ensemble.evaluation.metrics import (
    bootstrap_accuracy_ci,
    calibration,
    error_correlation,
    jsonable,
    macro_f1,
    mean_pairwise_disagreement,
    oracle,
    paired_test,
    score_decision,
    voter_answers,
    voter_decisions,
)
from ensemble.predictions.matrix import ABSTAIN, from_arrays

X = ABSTAIN

# 5 items, classes A B C. Item 4 abstains.
GOLD = np.array([0, 0, 0, 1, 2])
PRED = np.array([0, 0, 1, 1, X])
# A: support 3, predicted twice (both right)   P=1    R=2/3  F1=2*(2/3)/(5/3)=4/5
# B: support 1, predicted twice (one right)    P=1/2  R=1    F1=2/3
# C: support 1, never predicted (abstained)    P=0    R=0    F1=0
# macro F1 = (4/5 + 2/3 + 0)/3 = 22/45; macro P = 1/2; macro R = 5/9
# micro: 3 right of 4 answered of 5 -> P=3/4, R=3/5, F1=2*3/(4+5)=2/3
# weighted F1 = (3*4/5 + 1*2/3 + 1*0)/5 = 46/75


def test_score_decision_hand_case() -> None:
    s = score_decision(GOLD, PRED, 3, class_names=("A", "B", "C"))
    assert s["n"] == 5
    assert s["accuracy"] == pytest.approx(3 / 5)
    assert s["coverage"] == pytest.approx(4 / 5)
    assert s["macro_f1"] == pytest.approx(22 / 45)
    assert s["precision_macro"] == pytest.approx(1 / 2)
    assert s["recall_macro"] == pytest.approx(5 / 9)
    assert s["precision_micro"] == pytest.approx(3 / 4)
    assert s["recall_micro"] == pytest.approx(3 / 5)
    assert s["micro_f1"] == pytest.approx(2 / 3)
    assert s["weighted_f1"] == pytest.approx(46 / 75)
    assert s["per_class"]["A"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert s["per_class"]["B"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert s["per_class"]["C"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    # rows gold A, B, C; columns predicted A, B, C, abstain
    assert s["confusion"] == [[2, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]
    assert s["confusion_columns"] == ["A", "B", "C", "abstain"]
    assert "ece" not in s  # no scores, no calibration
    lo, hi = s["accuracy_ci"]
    assert lo <= 3 / 5 <= hi
    assert macro_f1(GOLD, PRED) == pytest.approx(22 / 45)


def test_macro_average_skips_classes_absent_from_gold_and_predictions() -> None:
    with_d = score_decision(GOLD, PRED, 4, class_names=("A", "B", "C", "D"))
    assert with_d["macro_f1"] == pytest.approx(22 / 45)  # D is not averaged in as a 0
    assert with_d["per_class"]["D"]["support"] == 0
    assert len(with_d["confusion"]) == 4 and len(with_d["confusion"][0]) == 5


def test_score_decision_all_abstain_and_empty() -> None:
    s = score_decision(np.array([0, 1]), np.array([X, X]), 2)
    assert (s["accuracy"], s["coverage"], s["macro_f1"], s["micro_f1"]) == (0.0, 0.0, 0.0, 0.0)
    assert s["confusion"] == [[0, 0, 1], [0, 0, 1]]
    empty = score_decision(np.array([], int), np.array([], int), 2)
    assert empty == {"n": 0, "coverage": None}


def test_score_decision_rejects_abstain_in_gold() -> None:
    with pytest.raises(ValueError, match="gold contains ABSTAIN"):
        score_decision(np.array([0, X]), np.array([0, 0]), 2)
    with pytest.raises(ValueError, match="must be equal"):
        score_decision(np.array([0, 1]), np.array([0]), 2)


# Calibration: 4 items, 3 classes. Item 3 abstains (all-zero scores).
CAL_GOLD = np.array([0, 1, 2, 0])
CAL_PRED = np.array([0, 0, 2, X])
CAL_SCORES = np.array([[.75, .25, 0], [.78, .22, 0], [.1, .2, .7], [0, 0, 0]])


def test_calibration_hand_case() -> None:
    c = calibration(CAL_GOLD, CAL_PRED, CAL_SCORES)
    # 15 bins of width 1/15: .75 and .78 fall in bin 11 (one right, one wrong), .7 in bin 10 (right).
    # ECE = (|1 - (.75 + .78)| + |1 - .7|) / 3 answered = (.53 + .3) / 3
    assert c["ece"] == pytest.approx(0.83 / 3)
    assert c["ece_n_abstained"] == 1
    # Brier per item: .0625+.0625, .78^2+.78^2, .01+.04+.09, 1 (abstained: all-zero row)
    assert c["brier"] == pytest.approx((0.125 + 1.2168 + 0.14 + 1.0) / 4)
    # log-loss: -log p(gold); the abstained row becomes uniform 1/3 after clipping
    expected = (-math.log(.75) - math.log(.22) - math.log(.7) + math.log(3)) / 4
    assert c["log_loss"] == pytest.approx(expected, abs=1e-9)
    s = score_decision(CAL_GOLD, CAL_PRED, 3, scores=CAL_SCORES)
    assert s["ece"] == pytest.approx(c["ece"]) and s["brier"] == pytest.approx(c["brier"])


def test_calibration_perfect_and_all_abstained() -> None:
    perfect = calibration(np.array([0, 1]), np.array([0, 1]), np.eye(2))
    assert perfect["ece"] == 0.0 and perfect["brier"] == 0.0
    assert perfect["log_loss"] == pytest.approx(0.0, abs=1e-9)
    none = calibration(np.array([0, 1]), np.array([X, X]), np.zeros((2, 2)))
    assert none["ece"] is None and none["ece_n_abstained"] == 2 and none["brier"] == 1.0


def test_mcnemar_hand_case() -> None:
    # 12 items, gold all 0: 8 only a right, 1 only b right, 2 both right, 1 both wrong.
    gold = np.zeros(12, int)
    a = np.array([0] * 8 + [1] + [0, 0] + [1])
    b = np.array([1] * 8 + [0] + [0, 0] + [1])
    t = paired_test(gold, a, b, n_boot=2000, seed=3)
    assert (t["n_a_only"], t["n_b_only"], t["test"]) == (8, 1, "mcnemar-exact")
    assert t["p_value"] == pytest.approx(2 * (1 + 9) / 2**9)  # = 0.0390625
    assert t["delta"] == pytest.approx(7 / 12)
    lo, hi = t["delta_ci"]
    assert lo <= 7 / 12 <= hi and lo > 0
    assert paired_test(gold, a, b, n_boot=2000, seed=3) == t
    swapped = paired_test(gold, b, a, n_boot=2000, seed=3)
    assert swapped["p_value"] == t["p_value"] and swapped["delta"] == pytest.approx(-7 / 12)


def test_paired_test_identical_predictions() -> None:
    t = paired_test(np.array([0, 1, 1]), np.array([0, 0, 1]), np.array([0, 0, 1]))
    assert t["p_value"] == 1.0 and t["delta"] == 0.0 and t["delta_ci"] == [0.0, 0.0]


def test_bootstrap_ci_seeded_and_matches_index_resampling() -> None:
    correct = np.arange(200) % 10 < 7  # accuracy 0.7
    ci = bootstrap_accuracy_ci(correct, n_boot=4000, seed=1)
    assert ci == bootstrap_accuracy_ci(correct, n_boot=4000, seed=1)
    assert ci[0] < 0.7 < ci[1]
    # The count-drawing shortcut has the same distribution as resampling item indices.
    idx = np.random.default_rng(5).integers(0, 200, size=(4000, 200))
    explicit = np.percentile(correct[idx].mean(axis=1), [2.5, 97.5])
    assert ci == pytest.approx(explicit, abs=0.015)
    assert bootstrap_accuracy_ci(correct, n_boot=0) is None  # intervals switched off


def test_n_boot_zero_skips_intervals_only() -> None:
    s = score_decision(GOLD, PRED, 3, n_boot=0)
    assert s["accuracy_ci"] is None and s["accuracy"] == pytest.approx(3 / 5)
    t = paired_test(GOLD, PRED, GOLD, n_boot=0)
    assert t["delta_ci"] is None and t["delta"] == pytest.approx(-2 / 5) and t["n_b_only"] == 2


def test_voter_decisions_plurality_ties_and_probs() -> None:
    # 3 items, 2 voters, 3 samples.
    labels = np.array([[[0, 1, 1], [2, 2, 2]],
                       [[0, 1, X], [1, 1, 0]],
                       [[X, X, X], [X, X, X]]])
    nan = [np.nan] * 3
    probs = np.zeros((3, 2, 3, 3))
    probs[:, 0] = np.nan  # voter 0 has no probabilities: vote shares
    probs[0, 1] = [[.2, .2, .6], [.0, .4, .6], nan]  # mean over the two rows present
    probs[1, 1] = [nan, nan, nan]
    probs[2, 1] = [[.5, .5, 0], nan, nan]
    m = from_arrays(labels, ["a", "b", "c"], voters=["x", "y"], probs=probs)
    d = voter_decisions(m)
    assert d["x"].labels.tolist() == [1, 0, X]  # item 1 ties 0 vs 1: "a" sorts first
    assert d["x"].scores == pytest.approx(np.array([[1 / 3, 2 / 3, 0], [.5, .5, 0], [0, 0, 0]]))
    assert d["y"].labels.tolist() == [2, 1, X]
    assert d["y"].scores == pytest.approx(np.array([[.1, .3, .6], [1 / 3, 2 / 3, 0], [.5, .5, 0]]))
    assert voter_answers(m).tolist() == [[1, 2], [0, 1], [X, X]]


def test_oracle_disagreement_error_correlation() -> None:
    # 4 items, gold all 0; 3 voters with one sample. Error = label 1 (or abstain).
    labels = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1], [0, X, 1]])
    m = from_arrays(labels, gold=np.zeros(4, int))
    assert oracle(m).tolist() == [True, True, True, True]
    # errors: v0 = 1100, v1 = 1101 (abstain is an error), v2 = 0011
    e = np.array([[1, 1, 0, 0], [1, 1, 0, 1], [0, 0, 1, 1]], float)
    c = np.corrcoef(e)
    assert error_correlation(m) == pytest.approx((c[0, 1] + c[0, 2] + c[1, 2]) / 3)
    # pairs: (v0,v1) 3 shared answers, 0 differ; (v0,v2) 4 shared, 4 differ; (v1,v2) 3 shared, 3 differ
    assert mean_pairwise_disagreement(m) == pytest.approx((0 + 1 + 1) / 3)
    no_gold = from_arrays(labels)
    assert not oracle(no_gold).any() and math.isnan(error_correlation(no_gold))
    assert math.isnan(mean_pairwise_disagreement(m.select_voters([0])))
    assert math.isnan(mean_pairwise_disagreement(m.select_items(np.zeros(4, bool))))


def test_oracle_counts_any_sample_and_needs_gold() -> None:
    labels = np.array([[[1, 0], [1, 1]], [[1, 1], [1, 1]], [[0, 0], [0, 0]]])
    m = from_arrays(labels, gold=np.array([0, 0, X]))
    assert oracle(m).tolist() == [True, False, False]


def test_jsonable() -> None:
    x = {"a": np.float32(0.5), "b": np.int64(3), "c": np.array([1.0, np.nan]), "d": (np.bool_(True), None),
         1: math.inf, "e": object}
    out = jsonable(x)
    assert out == {"a": 0.5, "b": 3, "c": [1.0, None], "d": [True, None], "1": None, "e": str(object)}
    json.dumps(out, allow_nan=False)
