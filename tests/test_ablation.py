"""ablate() / Ablation (ensemble.evaluation.ablation): subsets, sampling, leave-one-out, files."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest_metrics import synthetic

from ensemble.errors import EnsembleError
from ensemble.evaluation.ablation import ablate, choose_subsets
from ensemble.predictions.matrix import from_arrays
from ensemble.voting import METHODS

# 4 items, gold all A; v2 is always wrong (the planted bad voter).
HAND = from_arrays(np.array([[0, 0, 1], [0, 0, 1], [0, 1, 1], [1, 1, 1]]), ["A", "B"],
                   gold=np.zeros(4, int))
# Majority accuracy per subset (ties go to A):
#   k=1: v0 .75, v1 .5, v2 0                      -> mean 5/12
#   k=2: {v0,v1} .75, {v0,v2} .75, {v1,v2} .5     -> mean 2/3
#   k=3: votes A, A, B, B                        -> .5
# leave-one-out (all = .5): without v0 .5 (delta 0), without v1 .75 (+.25), without v2 .75 (+.25)


def row(ab, method: str, k: int) -> dict:
    return next(r for r in ab.summary if r["method"] == method and r["k"] == k)


def test_hand_case_numbers() -> None:
    ab = ablate(HAND, ["majority"])
    r1, r2, r3 = (row(ab, "majority", k) for k in (1, 2, 3))
    assert (r1["mean"], r1["min"], r1["max"]) == pytest.approx((5 / 12, 0, .75))
    assert r1["std"] == pytest.approx(np.std([.75, .5, 0]))
    assert (r2["mean"], r2["min"], r2["max"]) == pytest.approx((2 / 3, .5, .75))
    assert r3["mean"] == r3["p2_5"] == r3["p97_5"] == 0.5
    assert r3["macro_f1_mean"] == pytest.approx(1 / 3)  # A: P=1 R=1/2 F1=2/3; B predicted, no gold: 0
    assert ab.single_voters == pytest.approx({"v0": .75, "v1": .5, "v2": 0.0})
    loo = {r["voter"]: r for r in ab.leave_one_out}
    assert {v: r["delta"] for v, r in loo.items()} == pytest.approx({"v0": 0.0, "v1": .25, "v2": .25})
    assert loo["v2"]["accuracy_all"] == .5 and loo["v2"]["accuracy_without"] == .75
    assert ab.to_rows() == list(ab.summary)


def test_exhaustive_counts_are_binomials() -> None:
    m = synthetic(120, [.7, .6, .6, .5, .4], seed=3)
    ab = ablate(m, ["majority", "weighted"], dev=np.arange(120) < 40, on_error="record")  # {v4}: at chance
    for method in ("majority", "weighted"):
        for k in range(1, 6):
            r = row(ab, method, k)
            assert r["n_subsets"] == r["n_possible"] == math.comb(5, k) and r["exhaustive"]
            assert r["min"] <= r["p2_5"] <= r["mean"] <= r["p97_5"] <= r["max"]
    assert len(ab.subsets) == 2 * (2**5 - 1)
    assert len(ab.leave_one_out) == 2 * 5
    assert ab.n_eval_items == 80


def test_a_subset_the_method_refuses_fails_the_ablation_with_the_reason() -> None:
    # v4 is below chance on dev (9 of 40 right, chance 1/4): fitted weighted refuses {v4} alone.
    m = synthetic(120, [.7, .6, .6, .5, .4], seed=3)
    with pytest.raises(EnsembleError, match=r"method 'weighted' failed on the voter subset \{v4\}: .*at or below chance"):
        ablate(m, ["weighted"], dev=np.arange(120) < 40, ks=[1])


def test_a_subset_the_method_refuses_is_recorded_when_asked() -> None:
    m = synthetic(120, [.7, .6, .6, .5, .4], seed=3)
    ab = ablate(m, ["weighted"], dev=np.arange(120) < 40, ks=[1], on_error="record")
    r = row(ab, "weighted", 1)
    assert (r["n_subsets"], r["n_failed"]) == (5, 1)
    failed = [s for s in ab.subsets if s["error"]]
    assert [s["voters"] for s in failed] == [["v4"]] and failed[0]["accuracy"] is None
    assert "at or below chance" in failed[0]["error"]
    ok = [s["accuracy"] for s in ab.subsets if not s["error"]]
    assert r["mean"] == pytest.approx(np.mean(ok))
    with pytest.raises(EnsembleError, match="method 'majority' failed on every voter subset; first error: .*samples"):
        ablate(m, ["majority"], method_options={"majority": {"samples": "evry"}}, on_error="record")
    with pytest.raises(EnsembleError, match="ablation on_error='skip': use 'raise' or 'record'"):
        ablate(m, ["majority"], on_error="skip")


def test_sampled_when_above_cap_and_seeded() -> None:
    m = synthetic(60, [.7, .6, .6, .5, .4], seed=4)
    ab = ablate(m, ["majority"], cap=3, seed=7)
    for k in range(1, 6):
        r = row(ab, "majority", k)
        assert r["n_subsets"] == min(3, math.comb(5, k))
        assert r["exhaustive"] == (math.comb(5, k) <= 3)
        chosen = [tuple(s["voters"]) for s in ab.subsets if s["k"] == k]
        assert len(set(chosen)) == len(chosen) == r["n_subsets"]  # distinct
        assert all(len(s) == k and list(s) == sorted(s) for s in chosen)
    again = ablate(m, ["majority"], cap=3, seed=7)
    assert again.subsets == ab.subsets and again.summary == ab.summary
    other = ablate(m, ["majority"], cap=3, seed=8)
    assert [s["voters"] for s in other.subsets] != [s["voters"] for s in ab.subsets]
    # a k's subsets do not depend on which other ks were asked for
    only2 = ablate(m, ["majority"], cap=3, seed=7, ks=[2])
    assert [s["voters"] for s in only2.subsets] == [s["voters"] for s in ab.subsets if s["k"] == 2]
    assert [r["k"] for r in only2.summary] == [2]


def test_choose_subsets_near_cap() -> None:
    subsets, exhaustive = choose_subsets(7, 3, 34, seed=0)  # C(7,3) = 35: all but one, distinct
    assert not exhaustive and len(set(subsets)) == 34
    assert choose_subsets(4, 2, 6, seed=0) == ([(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)], True)


def test_planted_bad_voter_has_the_largest_positive_delta() -> None:
    m = synthetic(400, [.65, .65, .65, .65, .02], n_classes=3, seed=5)
    loo = {r["voter"]: r["delta"] for r in ablate(m, ["majority"]).leave_one_out}
    assert loo["v4"] > 0 and max(loo, key=loo.get) == "v4"
    assert all(d < 0 for v, d in loo.items() if v != "v4")


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_ablates(method: str) -> None:
    m = synthetic(150, [.7, .6, .5], n_samples=2, seed=6)
    ab = ablate(m, [method], dev=np.arange(150) < 50)
    assert [r["k"] for r in ab.summary] == [1, 2, 3]
    assert all(0 <= s["accuracy"] <= 1 for s in ab.subsets)
    assert json.loads(json.dumps(ab.to_dict(), allow_nan=False))["methods"] == [method]


def test_write_files(tmp_path: Path) -> None:
    m = synthetic(100, [.7, .6, .5, .4], seed=7)
    ab = ablate(m, ["majority", "dawid_skene"])
    paths = ab.write(tmp_path / "out")
    assert set(paths) == {"csv", "leave_one_out", "json", "png"}
    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 4 and rows[0]["method"] == "majority" and rows[0]["k"] == "1"
    with paths["leave_one_out"].open() as f:
        assert len(list(csv.DictReader(f))) == 2 * 4
    data = json.loads(paths["json"].read_text())
    assert data["summary"] == json.loads(json.dumps(ab.to_dict()))["summary"]
    assert data["single_voter_mean"] == pytest.approx(np.mean(list(ab.single_voters.values())))
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths.values())
    ab.write(tmp_path / "out")  # overwriting is fine
    with pytest.raises(EnsembleError, match="exists and is not a folder"):
        ab.write(paths["csv"])


def test_ablate_errors() -> None:
    with pytest.raises(EnsembleError, match=r"ablation ks: \[0, 4\] has \[0, 4\] voter counts out of range"):
        ablate(HAND, ["majority"], ks=[0, 4])
    with pytest.raises(EnsembleError, match="ablation ks: .* has no voter counts"):
        ablate(HAND, ["majority"], ks=[])
    with pytest.raises(EnsembleError, match="ablation cap: got 0"):
        ablate(HAND, ["majority"], cap=0)
    with pytest.raises(EnsembleError, match="no item outside dev has a gold answer"):
        ablate(HAND, ["majority"], dev=np.ones(4, bool))
    with pytest.raises(EnsembleError, match="Did you mean 'majority'"):
        ablate(HAND, ["majorty"])
