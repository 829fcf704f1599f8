"""Issue 11: a vote that was never asked is absent, not an abstention.

Hand-written matrices with spelled-out expectations: the asked mask is carried by the
matrix helpers and ``build_matrix(adaptive=True)``, every voting method decides as if the
not-asked cells did not exist, and no metric counts them as votes or abstentions.
"""
from __future__ import annotations

import numpy as np
import pytest

from ensemble.predictions.matrix import ABSTAIN, abstained, asked_mask, from_arrays
from ensemble.predictions.rows import build_matrix, rows_from_matrix

A = ABSTAIN

# 3 items x 3 voters x 2 samples, classes 0/1. v2 was not asked its second sample on
# items 0 and 1; v1 was not asked item 2 at all. v0 abstained (asked) on item 1 sample 1.
LABELS = np.array([
    [[0, 0], [0, 1], [1, A]],
    [[1, A], [1, 1], [0, A]],
    [[0, 1], [A, A], [0, 0]],
], dtype=np.int32)
ASKED = np.array([
    [[1, 1], [1, 1], [1, 0]],
    [[1, 1], [1, 1], [1, 0]],
    [[1, 1], [0, 0], [1, 1]],
], dtype=bool)


def small() -> object:
    return from_arrays(LABELS, ["A", "B"], gold=np.array([0, 1, 0]), asked=ASKED,
                       confidence=np.full(LABELS.shape, 0.8))


# -- the matrix carries the mask ----------------------------------------------------------

def test_asked_mask_and_abstained_split_the_abstain_cells() -> None:
    m = small()
    assert asked_mask(m).tolist() == ASKED.tolist()
    # ABSTAIN cells: (0,2,1) (1,0,1) (1,2,1) (2,1,0) (2,1,1); only (1,0,1) was asked.
    assert np.argwhere(abstained(m)).tolist() == [[1, 0, 1]]
    assert np.isnan(m.confidence[~ASKED]).all() and (m.confidence[ASKED] == 0.8).all()


def test_no_mask_means_every_cell_asked() -> None:
    m = from_arrays(LABELS, ["A", "B"])
    assert m.asked is None
    assert asked_mask(m).all()
    assert int(abstained(m).sum()) == 5


def test_from_arrays_blanks_not_asked_cells() -> None:
    labels = np.array([[0, 1], [1, 1]])
    m = from_arrays(labels, ["A", "B"], asked=np.array([[True, False], [True, True]]),
                    confidence=np.array([[0.9, 0.7], [0.6, 0.5]]))
    assert m.labels[:, :, 0].tolist() == [[0, A], [1, 1]]
    assert m.confidence[0, 1, 0] != m.confidence[0, 1, 0]  # NaN
    with pytest.raises(ValueError, match=r"asked has shape \(1, 2, 1\); it must match labels \(2, 2, 1\)"):
        from_arrays(labels, ["A", "B"], asked=np.ones((1, 2), bool))


def test_select_items_and_voters_carry_the_mask() -> None:
    m = small()
    sub = m.select_items(np.array([2, 0]))
    assert sub.asked is not None
    assert sub.asked.tolist() == [ASKED[2].tolist(), ASKED[0].tolist()]
    assert np.argwhere(abstained(sub)).tolist() == []
    sub = m.select_items(np.array([False, True, False]))
    assert sub.asked.tolist() == [ASKED[1].tolist()]
    vs = m.select_voters(["v2", "v1"])
    assert vs.asked is not None
    assert vs.asked.tolist() == ASKED[:, [2, 1]].tolist()
    assert np.argwhere(abstained(vs)).tolist() == []        # the one abstention was v0's
    assert m.select_voters([0]).asked.tolist() == ASKED[:, [0]].tolist()


# -- build_matrix(adaptive=True) ------------------------------------------------------------

ROWS = [
    {"item": "q1", "voter": "a", "sample": 0, "answer": "B", "confidence": 0.9},
    {"item": "q1", "voter": "b", "sample": 0, "answer": "B", "confidence": 0.8},
    {"item": "q2", "voter": "a", "sample": 0, "answer": "A", "confidence": 0.6},
    {"item": "q2", "voter": "b", "sample": 0, "answer": None},              # asked, abstained
    {"item": "q2", "voter": "c", "sample": 0, "answer": "A", "confidence": 0.7},
    {"item": "q2", "voter": "a", "sample": 1, "answer": "B", "confidence": 0.5},
]


def test_build_matrix_adaptive_marks_cells_without_a_row() -> None:
    m = build_matrix([dict(r) for r in ROWS], gold={"q1": "B", "q2": "A"}, adaptive=True)
    assert m.items == ("q1", "q2") and m.voters == ("a", "b", "c") and m.classes == ("A", "B")
    assert m.asked is not None
    # (item, voter, sample): q1 has a0 b0; q2 has a0 b0 c0 a1.
    assert m.asked.tolist() == [
        [[True, False], [True, False], [False, False]],
        [[True, True], [True, False], [True, False]],
    ]
    assert m.labels.tolist() == [
        [[1, A], [1, A], [A, A]],
        [[0, 1], [A, A], [0, A]],
    ]
    assert np.argwhere(abstained(m)).tolist() == [[1, 1, 0]]    # q2/b: asked, no answer
    assert m.confidence[1, 0].tolist() == [0.6, 0.5]
    assert np.isnan(m.confidence[0, 2]).all()


def test_build_matrix_without_adaptive_is_unchanged() -> None:
    m = build_matrix([dict(r) for r in ROWS])
    assert m.asked is None
    assert int(abstained(m).sum()) == 7   # 12 cells, 5 answers: a missing row is an abstention


def test_rows_from_matrix_round_trips_the_mask() -> None:
    m = build_matrix([dict(r) for r in ROWS], adaptive=True)
    rows = list(rows_from_matrix(m))
    assert len(rows) == 6                          # one row per asked cell, none for the rest
    again = build_matrix(rows, adaptive=True)
    assert again.asked is not None and again.asked.tolist() == m.asked.tolist()
    assert again.labels.tolist() == m.labels.tolist()


# -- (a) every method: not asked = absent ----------------------------------------------------------

def planted(n_samples: int = 3, seed: int = 0) -> tuple[np.ndarray, dict]:
    """40 items x 4 voters x S samples over 3 classes: labels (some abstaining) plus the arrays
    every method may read (gold, confidence, probs leaning to the vote, two groups)."""
    rng = np.random.default_rng(seed)
    I, V, C = 40, 4, 3
    gold = rng.integers(0, C, I)
    shape = (I, V, n_samples)
    right = rng.random(shape) < np.array([0.8, 0.65, 0.55, 0.45])[None, :, None]
    labels = np.where(right, gold[:, None, None], (gold[:, None, None] + rng.integers(1, C, shape)) % C)
    labels[rng.random(shape) < 0.08] = A
    probs = 0.5 * rng.dirichlet(np.ones(C), shape) + 0.5 * np.eye(C)[np.maximum(labels, 0)]
    probs[labels == A] = np.nan
    arrays = {"gold": gold, "confidence": np.round(rng.uniform(0.05, 1.0, shape), 2), "probs": probs}
    return labels, arrays


def matrix(labels: np.ndarray, arrays: dict, asked: np.ndarray | None = None) -> object:
    from dataclasses import replace
    m = from_arrays(labels, ["A", "B", "C"], asked=asked, **arrays)
    return replace(m, groups=tuple("g0" if i % 2 else "g1" for i in range(m.n_items)))


DEV = np.arange(40) < 20
# (method, options): every registered method, and the options that change how votes are read.
CASES = [
    ("majority", {}), ("majority", {"samples": "voter"}), ("majority", {"tie_break": "confidence"}),
    ("majority", {"tie_break": "random"}),
    ("weighted", {}), ("weighted", {"samples": "voter"}), ("weighted", {"per_group": True, "group_prior": 2.0}),
    ("weighted", {"weights": [1.0, 0.5, 2.0, 1.0]}),
    ("select", {}), ("select", {"per_group": True, "group_prior": 2.0}), ("select", {"tie_break": "confidence"}),
    ("stack", {}), ("stack", {"features": "votes"}), ("stack", {"per_group": True, "group_prior": 2.0}),
    ("confidence", {}), ("confidence", {"soft": False}), ("confidence", {"top_fraction": 0.5}),
    ("confidence", {"soft": False, "top_fraction": 0.5, "tie_break": "confidence"}),
    ("dawid_skene", {}), ("dawid_skene", {"tie_break": "confidence"}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for n, o in CASES]


def run(m: object, method: str, options: dict) -> object:
    from ensemble.evaluation.protocol import mask_gold
    from ensemble.voting import vote
    return vote(mask_gold(m, DEV), method, dev=DEV, **options)


def same(a: object, b: object) -> None:
    assert a.labels.tolist() == b.labels.tolist()
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-7, atol=1e-9)


def test_every_registered_method_is_covered() -> None:
    from ensemble.voting import METHODS
    assert set(METHODS.names()) == {n for n, _ in CASES}


@pytest.mark.parametrize(("method", "options"), CASES, ids=IDS)
def test_samples_never_asked_equal_a_matrix_without_them(method: str, options: dict) -> None:
    """S = 4 where samples 2 and 3 were never asked decides exactly like S = 2."""
    labels, arrays = planted(n_samples=4)
    asked = np.zeros(labels.shape, dtype=bool)
    asked[:, :, :2] = True
    short = {**arrays, "confidence": arrays["confidence"][:, :, :2], "probs": arrays["probs"][:, :, :2]}
    same(run(matrix(labels, arrays, asked), method, options), run(matrix(labels[:, :, :2], short), method, options))


@pytest.mark.parametrize(("method", "options"), CASES, ids=IDS)
def test_a_voter_never_asked_equals_the_matrix_without_it(method: str, options: dict) -> None:
    labels, arrays = planted()
    asked = np.ones(labels.shape, dtype=bool)
    asked[:, 2] = False                                                  # v2 never asked
    opts = dict(options)
    kept = [0, 1, 3]
    if "weights" in opts:                                                # a weight per voter kept
        opts_without = {**opts, "weights": [opts["weights"][j] for j in kept]}
    else:
        opts_without = opts
    without = {**arrays, "confidence": arrays["confidence"][:, kept], "probs": arrays["probs"][:, kept]}
    with_mask = run(matrix(labels, arrays, asked), method, opts)
    same(with_mask, run(matrix(labels[:, kept], without), method, opts_without))


@pytest.mark.parametrize(("method", "options"), CASES, ids=IDS)
def test_scattered_cells_not_asked_equal_those_rows_missing(method: str, options: dict) -> None:
    """A third of the cells not asked == the same rows absent from a non-adaptive file (where a
    missing row is an abstention) for every method that skips abstentions: all but stack, whose
    votes/probs features divide a voter's support by the samples it was asked."""
    labels, arrays = planted()
    asked = np.random.default_rng(1).random(labels.shape) > 0.33
    asked[:, 0, 0] = True                                                # every item keeps a vote
    absent = matrix(labels, arrays, asked)
    abstaining = matrix(np.where(asked, labels, A), {**arrays, "confidence": absent.confidence,
                                                     "probs": absent.probs})
    assert abstaining.asked is None and int(abstained(abstaining).sum()) > int(abstained(absent).sum())
    a, b = run(absent, method, options), run(abstaining, method, options)
    if method == "stack":
        assert not np.allclose(a.scores, b.scores)    # abstentions dilute; never-asked samples do not
    else:
        same(a, b)


def test_stack_features_count_asked_samples_only() -> None:
    """The method that penalises abstention: a voter asked 2 of 4 samples (A, B) has shares
    1/2, 1/2; the same 2 answers with 2 abstentions have 1/4, 1/4."""
    from ensemble.voting.stack import _features
    labels = np.array([[[0, 1, A, A]]])
    absent = from_arrays(labels, ["A", "B"], asked=np.array([[[True, True, False, False]]]))
    abstaining = from_arrays(labels, ["A", "B"])
    assert _features(absent, np.array([0]), "votes").tolist() == [[[0.5, 0.5]]]
    assert _features(abstaining, np.array([0]), "votes").tolist() == [[[0.25, 0.25]]]
    never = from_arrays(labels, ["A", "B"], asked=np.zeros((1, 1, 4), bool))
    assert _features(never, np.array([0]), "votes").tolist() == [[[0.0, 0.0]]]


# -- (b) never a vote, never an abstention: spelled-out numbers ------------------------------------
# 6 items, gold A B A B A B. Voter a answers everything (wrong on item 3); b was asked items 0
# and 1 only (right on both); c was asked everything and abstained on item 5.
#            item:   0  1  2  3  4  5
GOLD6 = np.array([0, 1, 0, 1, 0, 1])
VOTES6 = np.array([[0, 0, 0], [1, 1, 0], [0, A, 0], [0, A, 1], [0, A, 0], [1, A, A]])
ASKED6 = np.array([[1, 1, 1], [1, 1, 1], [1, 0, 1], [1, 0, 1], [1, 0, 1], [1, 0, 1]], dtype=bool)


def six(asked: bool = True) -> object:
    return from_arrays(VOTES6, ["A", "B"], voters=["a", "b", "c"], gold=GOLD6,
                       asked=ASKED6 if asked else None)


def test_calls_and_abstain_counts() -> None:
    from ensemble.evaluation.calls import ABSENT_NOTE, abstain_counts, calls
    m = six()
    assert abstain_counts(m) == {"a": 0, "b": 0, "c": 1}
    assert abstain_counts(six(asked=False)) == {"a": 0, "b": 4, "c": 1}
    assert calls(m) == {"made": 14, "possible": 18, "saved": 4, "saved_fraction": 4 / 18,
                        "coverage": {"a": 1.0, "b": 2 / 6, "c": 1.0},
                        "abstain_rate": {"a": 0.0, "b": 0.0, "c": 1 / 6}, "note": ABSENT_NOTE}
    assert calls(six(asked=False)) is None


def test_report_scores_each_voter_on_the_items_it_was_asked() -> None:
    from ensemble.evaluation.report import evaluate
    report = evaluate(six(), ["majority"], n_boot=0)
    v = report.voters
    assert (v["a"]["n"], v["a"]["accuracy"], v["a"]["coverage"]) == (6, 5 / 6, 1.0)
    assert (v["b"]["n"], v["b"]["accuracy"], v["b"]["coverage"]) == (2, 1.0, 1.0)
    assert (v["c"]["n"], v["c"]["accuracy"], v["c"]["coverage"]) == (6, 4 / 6, 5 / 6)
    # b's 2 of 2 beats a's 5 of 6: b is the baseline, compared on the 2 items it was asked
    assert report.diagnostics["best_voter"] == "b"
    maj = report.methods["majority"]
    assert maj["accuracy"] == 5 / 6 and maj["coverage"] == 1.0      # item 3: A/B tie -> A (first)
    assert report.decisions["majority"].labels.tolist() == [0, 1, 0, 0, 0, 1]
    assert {k: maj["vs_best_voter"][k] for k in ("n", "n_a_only", "n_b_only", "delta")} == \
        {"n": 2, "n_a_only": 0, "n_b_only": 0, "delta": 0.0}
    # b with its unasked items as abstentions: 2 of 6, and a becomes the baseline
    plain = evaluate(six(asked=False), ["majority"], n_boot=0)
    assert (plain.voters["b"]["n"], plain.voters["b"]["accuracy"], plain.voters["b"]["coverage"]) == (6, 2 / 6, 2 / 6)
    assert plain.diagnostics["best_voter"] == "a"
    assert "calls" not in plain.to_dict() and report.to_dict()["calls"]["saved"] == 4


def test_error_correlation_pairs_items_both_were_asked() -> None:
    """Errors a = 000100, c = 010001 over all items: corr -2 / sqrt(40) = -1 / sqrt(10). Pairs
    with b (asked items 0, 1, both right) have no variance and are skipped."""
    from ensemble.evaluation.metrics import error_correlation, error_correlation_matrix
    corr = error_correlation_matrix(six())
    assert corr[0, 2] == pytest.approx(-1 / np.sqrt(10)) and corr[2, 0] == corr[0, 2]
    assert np.isnan(corr[0, 1]) and np.isnan(corr[1, 2]) and np.isnan(corr[1, 1])
    assert error_correlation(six()) == pytest.approx(-1 / np.sqrt(10))
    # as abstentions, b's errors are 001111 and every pair counts
    assert np.isfinite(error_correlation_matrix(six(asked=False))[0, 1])


def test_ablation_single_voters_use_asked_items() -> None:
    from ensemble.evaluation.ablation import ablate
    ab = ablate(six(), ["majority"])
    assert ab.single_voters == {"a": 5 / 6, "b": 1.0, "c": 4 / 6}
    assert ablate(six(asked=False), ["majority"]).single_voters["b"] == 2 / 6


def test_fitted_weights_count_asked_votes_only() -> None:
    """weighted on dev = all six items: b cast 2 votes (both right), not 6: p = (2 + 1) / (2 + 2),
    weight log(0.75 / 0.25) = log 3; a: (5 + 1) / (6 + 2) -> log 3 too; c: (4 + 1) / (5 + 2)."""
    from ensemble.voting.weighted import weighted
    w = weighted(six(), dev=np.ones(6, bool)).info["weights"]
    assert w["a"] == pytest.approx(np.log(3)) and w["b"] == pytest.approx(np.log(3))
    assert w["c"] == pytest.approx(np.log((5 / 7) / (2 / 7)))


def test_dawid_skene_confusions_count_asked_votes_only() -> None:
    """A voter never asked anything keeps the smoothing-only (uniform) confusion rows and
    leaves every other number unchanged."""
    from ensemble.voting.dawid_skene import dawid_skene
    labels = np.concatenate([VOTES6, VOTES6[:, :1]], axis=1)          # d: a copy of a ...
    asked = np.concatenate([ASKED6, np.zeros((6, 1), bool)], axis=1)   # ... never asked
    with_d = dawid_skene(from_arrays(labels, ["A", "B"], voters=["a", "b", "c", "d"], asked=asked))
    without = dawid_skene(six())
    assert with_d.info["confusions"]["d"] == [[0.5, 0.5], [0.5, 0.5]]
    assert with_d.labels.tolist() == without.labels.tolist()
    np.testing.assert_allclose(with_d.scores, without.scores, rtol=1e-9)


def test_text_report_prints_the_calls_table() -> None:
    from rich.console import Console

    from ensemble.cli.console import report_tables
    from ensemble.evaluation.report import evaluate
    tables = report_tables(evaluate(six(), ["majority"], n_boot=0).to_dict())
    out = Console(width=200, record=True)
    for t in tables:
        out.print(t)
    text = out.export_text()
    assert "Calls: 14 made of 18 possible, 4 saved (22.2%)" in text
    assert "treated as absent: never counted as a vote, an abstention or an error" in " ".join(text.split())
    calls_part = text[text.index("Calls:"):]
    assert [" ".join(x.strip("│ ").split()) for x in calls_part.splitlines() if x.startswith("│")] == \
        ["a │ 1.000 │ 0.000", "b │ 0.333 │ 0.000", "c │ 1.000 │ 0.167"]   # voter, coverage, abstain rate
    plain = report_tables(evaluate(six(asked=False), ["majority"], n_boot=0).to_dict())
    assert len(plain) == len(tables) - 1                                 # no calls table without a mask


def test_report_does_not_depend_on_voter_or_item_order() -> None:
    """The protocol sorts items and voters (select_items / select_voters): the mask must follow."""
    from ensemble.evaluation.report import evaluate
    m = six()
    shuffled = m.select_voters(["c", "a", "b"]).select_items(np.array([5, 3, 1, 0, 2, 4]))
    a = evaluate(m, ["majority", "dawid_skene"], n_boot=0).to_dict()
    b = evaluate(shuffled, ["majority", "dawid_skene"], n_boot=0).to_dict()
    assert a["voters"] == b["voters"] and a["methods"] == b["methods"]
    assert a["calls"]["made"] == b["calls"]["made"] == 14
    assert {v: b["calls"]["coverage"][v] for v in "abc"} == a["calls"]["coverage"]


def test_a_mask_with_every_cell_asked_changes_nothing_but_adds_calls() -> None:
    """The asked-aware paths (voter rows, baseline, paired test, error correlation, stack's
    divisor) reduce exactly to the plain ones when every cell was asked."""
    from ensemble.evaluation.report import evaluate
    labels, arrays = planted()
    methods = ["majority", "weighted", "select", "stack", "confidence", "dawid_skene"]
    full = evaluate(matrix(labels, arrays, np.ones(labels.shape, bool)), methods, dev=DEV, n_boot=50).to_dict()
    plain = evaluate(matrix(labels, arrays), methods, dev=DEV, n_boot=50).to_dict()
    calls = full.pop("calls")
    assert full == plain
    assert (calls["made"], calls["possible"], calls["saved"], calls["saved_fraction"]) == (480, 480, 0, 0.0)
