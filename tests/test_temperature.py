"""Temperature scaling (ensemble.evaluation.temperature): fitted on dev gold, never changes an
answer, read on the eval items; in every method's and voter's report row."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ensemble.evaluation import protocol
from ensemble.evaluation.metrics import calibration
from ensemble.evaluation.report import evaluate
from ensemble.evaluation.temperature import (
    FLOOR,
    T_BOUNDS,
    ece_text,
    fit_temperature,
    nll,
    scale,
    tempered_calibration,
)
from ensemble.predictions.matrix import ABSTAIN
from ensemble.predictions.rows import load_predictions
from ensemble.voting import METHODS, vote
from tests.test_protocol import fixture_rows, write


def test_scale_spelled_out() -> None:
    s = np.array([[0.6, 0.4, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    valid = np.array([[True, True, True], [True, True, True], [True, True, False]])
    got = scale(s, 1.0, valid)
    # t = 1: the scores themselves, a class without support lifted to FLOOR, renormalised
    assert got[0] == pytest.approx(np.array([0.6, 0.4, FLOOR]) / (1 + FLOOR), abs=1e-12)
    assert got[1].tolist() == [0.0, 0.0, 0.0]          # no support: stays all zeros (abstained)
    assert got[2].tolist() == [0.5, 0.5, 0.0]          # not an option: no mass, whatever t
    # t = 2 on [0.6, 0.4]: square roots, renormalised
    two = scale(np.array([[0.6, 0.4]]), 2.0)
    r = math.sqrt(0.6) / (math.sqrt(0.6) + math.sqrt(0.4))
    assert two[0] == pytest.approx([r, 1 - r], abs=1e-12)


def test_scale_never_reorders_classes() -> None:
    rng = np.random.default_rng(0)
    s = rng.dirichlet(np.ones(5), size=200) * (rng.random((200, 5)) > 0.3)
    s = s / np.maximum(s.sum(1, keepdims=True), 1e-300)
    for t in (0.1, 0.7, 1.0, 3.0, 40.0):
        out = scale(s, t)
        live = s.sum(1) > 0
        assert np.allclose(out[live].sum(1), 1.0)
        # the order of the supported classes in each row is unchanged, so argmax is too
        for row_in, row_out in zip(s[live], out[live]):
            keep = row_in > 0
            assert np.array_equal(np.argsort(row_in[keep], kind="stable"), np.argsort(row_out[keep], kind="stable"))


def test_fit_matches_the_closed_form_for_two_classes() -> None:
    # every row says 0.8 for class 0; class 0 is right 60% of the time. The NLL optimum puts
    # the tempered probability at 0.6: 0.8^(1/t) / (0.8^(1/t) + 0.2^(1/t)) = 0.6 -> t = ln 4 / ln 1.5.
    scores = np.tile([0.8, 0.2], (10, 1))
    gold = np.array([0] * 6 + [1] * 4)
    t = fit_temperature(scores, gold)
    assert t == pytest.approx(math.log(4) / math.log(1.5), rel=1e-3)
    assert scale(scores, t)[0, 0] == pytest.approx(0.6, abs=1e-4)


def test_fit_is_the_minimum_and_within_bounds() -> None:
    rng = np.random.default_rng(1)
    scores = rng.dirichlet(np.ones(4) * 0.3, size=300)
    gold = rng.integers(0, 4, size=300)
    t = fit_temperature(scores, gold)
    assert t is not None and T_BOUNDS[0] <= t <= T_BOUNDS[1]
    best = nll(scores, gold, t)
    for other in np.exp(np.linspace(np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1]), 60)):
        assert best <= nll(scores, gold, float(other)) + 1e-9


def test_fit_skips_rows_without_gold_or_support_and_none_when_nothing_left() -> None:
    scores = np.array([[0.8, 0.2], [0.8, 0.2], [0.0, 0.0], [0.8, 0.2]])
    gold = np.array([0, 1, 0, ABSTAIN])
    only = fit_temperature(scores[:2], gold[:2])
    assert fit_temperature(scores, gold) == pytest.approx(only)
    assert fit_temperature(scores[2:], gold[2:]) is None


def test_tempered_calibration_fits_on_dev_only() -> None:
    dev = np.tile([0.8, 0.2], (10, 1))
    dev_gold = np.array([0] * 6 + [1] * 4)
    ev = np.tile([0.8, 0.2], (5, 1))
    ev_pred = np.zeros(5, dtype=int)
    out_a = tempered_calibration(dev, dev_gold, ev, np.zeros(5, dtype=int), ev_pred)
    out_b = tempered_calibration(dev, dev_gold, ev, np.ones(5, dtype=int), ev_pred)
    assert out_a is not None and out_b is not None
    assert out_a["t"] == out_b["t"] and out_a["n_fit"] == 10 and out_a["fitted_on"] == "dev"
    # eval all right at tempered confidence 0.6: ECE 0.4; all wrong: ECE 0.6
    assert out_a["ece"] == pytest.approx(0.4, abs=1e-4) and out_b["ece"] == pytest.approx(0.6, abs=1e-4)
    assert calibration(np.zeros(5, dtype=int), ev_pred, ev)["ece"] == pytest.approx(0.2)  # raw: 0.8 vs 1.0
    assert tempered_calibration(dev, np.full(10, ABSTAIN), ev, np.zeros(5, dtype=int), ev_pred) is None


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = write(fixture_rows(), tmp_path_factory.mktemp("t") / "p.jsonl")
    m = load_predictions(path)
    dev = np.array([protocol.problem_group(i) < "p12" for i in m.items])
    return m, dev, evaluate(m, METHODS.names(), dev=dev)


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_row_has_a_dev_fitted_temperature(report, method: str) -> None:
    m, dev, rep = report
    row = rep.methods[method]
    t = row["temperature"]
    assert t["fitted_on"] == "dev" and t["n_fit"] > 0 and T_BOUNDS[0] <= t["t"] <= T_BOUNDS[1]
    assert 0.0 <= t["ece"] <= 1.0 and {"brier", "log_loss"} <= set(t)
    # refit by hand on the canonical matrix: methods that fit on dev are judged on their
    # cross-fitted dev scores, the others on their own decision
    c, order = protocol.canonical(m)
    cdev = dev[order]
    seen = protocol.mask_gold(c, cdev)
    fair, _ = protocol.dev_decisions(seen, [method], {}, cdev, {method: vote(seen, method, dev=cdev)})
    rows = c.has_gold() & cdev
    assert c.valid is None  # no options in the fixture: every class is a candidate
    assert t["t"] == pytest.approx(fit_temperature(fair[method].scores[rows], c.gold[rows]), rel=1e-9)


def test_temperature_does_not_change_answers_or_accuracy(report) -> None:
    m, _, rep = report
    for name, row in rep.methods.items():
        d = rep.decisions[name]
        tempered = scale(d.scores, row["temperature"]["t"], m.valid)
        live = d.labels != ABSTAIN
        assert np.all(tempered[live, d.labels[live]] >= tempered[live].max(1) - 1e-12)


def test_eval_gold_never_moves_the_temperature(report, tmp_path) -> None:
    m, dev, rep = report
    flipped = [dict(r, gold="ABCD"[("ABCD".index(r["gold"]) + 1) % 4]) if protocol.problem_group(r["item"]) >= "p12"
               else r for r in fixture_rows()]
    m2 = load_predictions(write(flipped, tmp_path / "f.jsonl"))
    rep2 = evaluate(m2, METHODS.names(), dev=dev)
    for name in METHODS.names():
        assert rep2.methods[name]["temperature"]["t"] == rep.methods[name]["temperature"]["t"]
    for voter in m.voters:
        assert rep2.voters[voter]["temperature"]["t"] == rep.voters[voter]["temperature"]["t"]


def test_no_dev_no_temperature(report) -> None:
    m, _, _ = report
    rep = evaluate(m, ["majority", "confidence"])
    assert rep.methods["majority"]["temperature"] is None
    assert rep.voters[m.voters[0]]["temperature"] is None
    assert ece_text(rep.voters[m.voters[0]]) == "–"


def test_ece_text() -> None:
    assert ece_text({"temperature": {"ece": 0.04123, "t": 2.3149}}) == "0.041 (t=2.31)"
    assert ece_text({}) == "–"
