"""The evaluation protocol (ensemble.evaluation.protocol / splits): row-order invariance,
whole-problem dev splits, gold masking, baseline voter, the method chosen on dev."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from ensemble.errors import EnsembleError
from ensemble.evaluation import protocol
from ensemble.evaluation.ablation import ablate
from ensemble.evaluation.report import evaluate
from ensemble.evaluation.splits import (
    Split,
    choose_split,
    problem_group,
    split_dev,
    straddling,
)
from ensemble.predictions.matrix import ABSTAIN, decide, from_arrays, support
from ensemble.predictions.rows import load_predictions
from ensemble.voting import METHODS

CLASSES = "ABCD"
# alpha and beta answer identically (a duplicated voter: tied on dev, tied everywhere);
# gamma and delta have equal skill; omega is below chance half the time.
SKILL = {"alpha": 0.75, "gamma": 0.6, "delta": 0.6, "omega": 0.3}


def fixture_rows(seed: int = 0) -> list[dict]:
    """Nested problems p00..p23 with 1-3 sub-questions <id>#k, plus flat items q0..q5."""
    rng = random.Random(seed)
    items = [f"p{k:02d}#{j}" for k in range(24) for j in range(1, 2 + k % 3)] + [f"q{k}" for k in range(6)]
    rows = []
    for item in items:
        gold = rng.choice(CLASSES)
        for voter, skill in SKILL.items():
            if rng.random() < 0.05:
                rows.append({"item": item, "voter": voter, "answer": "", "gold": gold})
                continue
            answer = gold if rng.random() < skill else rng.choice([c for c in CLASSES if c != gold])
            conf = round(0.4 + 0.5 * rng.random(), 3)
            probs = {c: (conf if c == answer else round((1 - conf) / 3, 6)) for c in CLASSES}
            probs[answer] = round(1 - sum(v for c, v in probs.items() if c != answer), 6)
            rows.append({"item": item, "voter": voter, "answer": answer, "confidence": conf,
                         "probs": probs, "gold": gold})
    rows += [{**r, "voter": "beta"} for r in rows if r["voter"] == "alpha"]
    return rows


def write(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def evaluated(path: Path, methods: list[str]):
    m = load_predictions(path)
    split = choose_split(m, fit_on="dev", fraction=0.4, seed=3)
    report = evaluate(m, methods, dev=split, n_boot=50, seed=1)
    return split, report


@pytest.mark.parametrize("method", METHODS.names())
def test_permuting_rows_changes_nothing(tmp_path, method):
    rows = fixture_rows()
    split, report = evaluated(write(rows, tmp_path / "p.jsonl"), [method])
    text = json.dumps(report.to_dict())
    for seed in (1, 2, 3):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        split2, report2 = evaluated(write(shuffled, tmp_path / f"p{seed}.jsonl"), [method])
        assert split2 == split
        # decisions, chosen voters, weights (info), every metric, the baseline: the same, bit for bit
        assert json.dumps(report2.to_dict()) == text
        assert report2.answers(method) == report.answers(method)


def test_permuting_rows_keeps_the_method_chosen_on_dev(tmp_path):
    rows = fixture_rows()
    _, report = evaluated(write(rows, tmp_path / "p.jsonl"), METHODS.names())
    random.Random(9).shuffle(rows)
    _, again = evaluated(write(rows, tmp_path / "q.jsonl"), METHODS.names())
    assert again.to_dict()["selected_on_dev"] == report.to_dict()["selected_on_dev"] is not None
    assert again.to_dict() == report.to_dict()


def test_fixture_has_the_ties_it_claims(tmp_path):
    m = load_predictions(write(fixture_rows(), tmp_path / "p.jsonl"))
    a, b = m.voters.index("alpha"), m.voters.index("beta")
    assert np.array_equal(m.labels[:, a], m.labels[:, b])
    assert any("#" in i for i in m.items) and any("#" not in i for i in m.items)


# -- the dev split -----------------------------------------------------------------------
def test_problem_group() -> None:
    assert problem_group("p7#2") == "p7" and problem_group("a#b#10") == "a#b"
    assert problem_group("q1") == "q1" and problem_group("x#y") == "x#y" and problem_group("#3") == "#3"


def test_dev_split_keeps_problems_together_and_ignores_order() -> None:
    ids = [f"p{k}#{j}" for k in range(40) for j in range(1, 1 + k % 4 + 1)] + [f"flat{k}" for k in range(20)]
    dev = split_dev(ids, 0.3, seed=5)
    assert straddling(ids, dev) == []
    assert dev == split_dev(list(reversed(ids)), 0.3, seed=5) == split_dev(sorted(ids), 0.3, seed=5)
    assert split_dev(ids, 0.3, seed=6) != dev
    n = len(ids)
    assert round(0.3 * n) <= len(dev) < round(0.3 * n) + 4  # whole problems: at most 3 over
    # with singleton groups the size is exact
    flat = [f"i{k}" for k in range(80)]
    assert len(split_dev(flat, 0.25, seed=0)) == 20


def test_drawn_dev_split_never_straddles_a_problem(tmp_path) -> None:
    m = load_predictions(write(fixture_rows(), tmp_path / "p.jsonl"))
    for seed in range(10):
        split = choose_split(m, fit_on="dev", fraction=0.3, seed=seed)
        assert straddling(m.items, split.dev) == []
        assert set(split.dev).isdisjoint(split.eval) and set(split.dev) | set(split.eval) == set(m.items)


def test_explicit_dev_ids_that_split_a_problem_fail(tmp_path) -> None:
    m = load_predictions(write(fixture_rows(), tmp_path / "p.jsonl"))
    with pytest.raises(EnsembleError, match=r"split problem\(s\) p01: some of their sub-questions"):
        Split.of(m, ["p01#1", "q0"], "listed in dev.txt")
    ids = tmp_path / "dev.txt"
    ids.write_text("p01#1\np01#2\nq0\n")
    split = choose_split(m, fit_on="dev", dev_items=ids)
    assert split.dev == ("p01#1", "p01#2", "q0") and split.how == "listed in dev.txt"


@pytest.mark.parametrize("ids, fraction, message", [
    (["a", "b"], 0.0, r"dev fraction 0.0 \(--dev-fraction\): use a value in \(0, 1\)"),
    (["a#1", "a#2"], 0.5, "a dev split needs at least 2 groups"),
    (["a#1", "a#2", "a#3", "b"], 0.9, "would take every one of the 4 items"),
])
def test_split_dev_errors(ids, fraction, message) -> None:
    with pytest.raises(EnsembleError, match=message):
        split_dev(ids, fraction)


# -- what methods see ----------------------------------------------------------------------
LABELS = np.array([[0, 0, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0], [2, 2, 1], [1, 1, 1]])
GOLD = np.array([0, 1, 1, 0, 2, ABSTAIN])
DEV = np.array([True, True, False, False, False, False])


def test_methods_never_see_eval_gold(monkeypatch) -> None:
    seen: list[np.ndarray | None] = []

    def spy(m, *, dev=None):
        seen.append(None if m.gold is None else m.gold.copy())
        return decide(support(m.labels, m.n_classes))

    monkeypatch.setitem(METHODS._items, "spy", spy)
    m = from_arrays(LABELS, list("ABC"), gold=GOLD)
    evaluate(m, ["spy"], dev=DEV, n_boot=0)
    assert seen[-1].tolist() == [0, 1, ABSTAIN, ABSTAIN, ABSTAIN, ABSTAIN]
    evaluate(m, ["spy"], n_boot=0)  # no dev: no gold at all
    assert seen[-1] is None
    ablate(m, ["spy"], dev=DEV)
    assert all(g.tolist() == [0, 1, ABSTAIN, ABSTAIN, ABSTAIN, ABSTAIN] for g in seen[2:]) and len(seen) > 2


def test_baseline_voter_ties_go_to_the_name_not_the_position() -> None:
    labels = np.array([[0, 0, 1], [1, 1, 1], [1, 1, 0], [0, 0, 0]])  # zed == amy everywhere
    gold = np.array([0, 1, 0, 1])
    for voters in (["zed", "amy", "bob"], ["amy", "zed", "bob"]):
        m = from_arrays(labels, ["A", "B"], gold=gold, voters=voters)
        d = evaluate(m, ["majority"], dev=np.array([True, True, False, False]), n_boot=0).to_dict()
        assert d["diagnostics"]["best_voter"] == "amy"
        assert d["methods"]["majority"]["vs_best_voter"]["voter"] == "amy"


def test_cross_fit_never_uses_an_items_own_gold(tmp_path) -> None:
    m = load_predictions(write(fixture_rows(), tmp_path / "p.jsonl"))
    split = choose_split(m, fit_on="dev", fraction=0.5, seed=0)
    dev = split.dev_mask(m)
    for method in ("weighted", "select", "stack"):
        base = protocol.cross_fit(protocol.mask_gold(m, dev), method, {}, dev)
        i = int(np.flatnonzero(dev)[0])
        flipped_gold = m.gold.copy()
        flipped_gold[i] = (flipped_gold[i] + 1) % m.n_classes
        from dataclasses import replace
        flipped = protocol.cross_fit(protocol.mask_gold(replace(m, gold=flipped_gold), dev), method, {}, dev)
        assert flipped[i] == base[i], method  # item i's own gold never fits its prediction
        assert (base[~dev] == ABSTAIN).all() and (base[dev] != ABSTAIN).any()


def test_best_on_dev_picks_the_highest_dev_accuracy_ties_by_name() -> None:
    rows = {"majority": {"accuracy": 0.5}, "dawid_skene": {"accuracy": 0.6}, "select": {"accuracy": 0.9}}
    sel = protocol.best_on_dev({"majority": 0.7, "dawid_skene": 0.7, "select": None}, rows, 10)
    assert (sel["method"], sel["dev_accuracy"], sel["eval_accuracy"]) == ("dawid_skene", 0.7, 0.6)
    assert protocol.best_on_dev({"majority": None}, rows, 10) is None


def test_report_selects_on_dev_only(tmp_path) -> None:
    m = load_predictions(write(fixture_rows(), tmp_path / "p.jsonl"))
    split = choose_split(m, fit_on="dev", fraction=0.4, seed=3)
    d = evaluate(m, METHODS.names(), dev=split, n_boot=0).to_dict()
    sel = d["selected_on_dev"]
    accs = {k: v for k, v in sel["dev_accuracies"].items() if v is not None}
    assert sel["method"] == min(accs, key=lambda k: (-accs[k], k))
    assert sel["eval_accuracy"] == d["methods"][sel["method"]]["accuracy"]
    assert sel["n_dev_items"] == len(split.dev) and d["split"] == split.how
    # dev accuracies of unfitted methods are their decisions on the dev items
    dev = split.dev_mask(m)
    maj = evaluate(m, ["majority"], dev=split, n_boot=0)
    assert accs["majority"] == pytest.approx(np.mean(maj.decisions["majority"].labels[dev] == m.gold[dev]))
    assert evaluate(m, ["majority"], n_boot=0).to_dict()["selected_on_dev"] is None
    # each voter's dev accuracy (what the baseline is chosen on) is reported with it
    best = d["diagnostics"]["best_voter"]
    assert d["voters"][best]["dev_accuracy"] == max(r["dev_accuracy"] for r in d["voters"].values())
    assert d["voters"]["alpha"]["dev_accuracy"] == d["voters"]["beta"]["dev_accuracy"]


# -- which methods run ----------------------------------------------------------------------
def test_fitted_methods_without_dev_are_an_error_not_a_skip() -> None:
    m = from_arrays(LABELS, list("ABC"), gold=GOLD)
    for method in ("weighted", "select", "stack"):
        with pytest.raises(EnsembleError, match=f"method\\(s\\) {method} fit on dev items, but there is no dev split"):
            evaluate(m, ["majority", method], on_error="record")
    nogold = from_arrays(LABELS, list("ABC"), gold=np.array([ABSTAIN] * 2 + [1, 0, 2, ABSTAIN]))
    with pytest.raises(EnsembleError, match="none of the 2 dev items has a gold answer"):
        evaluate(nogold, ["select"], dev=DEV)
    # weighted with given weights does not fit: it runs without dev
    evaluate(m, ["weighted"], method_options={"weighted": {"weights": [1, 1, 2]}}, n_boot=0)
    with pytest.raises(EnsembleError, match=r"select fit on dev items, .*: answer a dev split with gold \(data.dev"):
        protocol.evaluate_run(m, ["majority", "select"], {}, None)


def test_runnable_methods_defaults() -> None:
    m = from_arrays(LABELS, list("ABC"), gold=GOLD)
    assert protocol.runnable_methods(m, [], {}, None) == ["majority", "dawid_skene"]
    assert protocol.runnable_methods(m, [], {}, DEV) == ["majority", "weighted", "select", "stack", "dawid_skene"]
    assert protocol.runnable_methods(m, [], {"weighted": {"weights": {"v0": 1}}}, None) == \
        ["majority", "weighted", "dawid_skene"]


def test_evaluate_run_uses_the_dev_items(tmp_path) -> None:
    m = load_predictions(write(fixture_rows(), tmp_path / "p.jsonl"))
    report, split = protocol.evaluate_run(m, ["majority", "stack"], {}, ["q0", "q1", "p00#1", "p03#1", "p06#1"])
    assert split.how == "data.dev" and report.n_dev_items == 5
    assert report.to_dict()["selected_on_dev"]["method"] in ("majority", "stack")


def test_options_naming_voters_follow_the_voters() -> None:
    opts = {"weighted": {"weights": {"a": 2.0, "b": 1.0, "c": 0.5}}, "x": {"voters": ["a", "c"], "k": 3}}
    assert protocol.restrict_options(opts, ["a", "b", "c"], ["a", "b"]) == \
        {"weighted": {"weights": {"a": 2.0, "b": 1.0}}, "x": {"voters": ["a"], "k": 3}}
    unknown = {"weighted": {"weights": {"a": 1, "nobody": 1}}}
    assert protocol.restrict_options(unknown, ["a", "b"], ["a"]) == unknown  # weighted names the culprit
    assert protocol.by_voter_name({"weighted": {"weights": [3, 1]}}, ["z", "y"]) == \
        {"weighted": {"weights": {"z": 3, "y": 1}}}


def test_positional_weights_follow_their_voters_through_the_sorting() -> None:
    m = from_arrays(LABELS, list("ABC"), gold=GOLD, voters=["z", "y", "x"])
    info = evaluate(m, ["weighted"], method_options={"weighted": {"weights": [3.0, 1.0, 0.0]}},
                    n_boot=0).to_dict()["methods"]["weighted"]["info"]
    assert info["weights"] == {"x": 0.0, "y": 1.0, "z": 3.0}
