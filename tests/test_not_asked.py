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
