"""The predictions long table: reading, validation errors, encoding into the vote matrix."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ensemble.errors import EnsembleError
from ensemble.predictions.matrix import ABSTAIN
from ensemble.predictions.rows import (
    build_matrix,
    load_predictions,
    read_rows,
    rows_from_matrix,
)

ROWS = [
    {"item": "q1", "voter": "a", "answer": "B", "confidence": 0.9},
    {"item": "q1", "voter": "b", "answer": "A", "confidence": 0.6},
    {"item": "q2", "voter": "a", "answer": ""},
    {"item": "q2", "voter": "b", "answer": "C", "sample": 1, "confidence": 0.5},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_build_matrix_encodes_sorted_classes_and_abstains(tmp_path):
    m = build_matrix(read_rows(write_jsonl(tmp_path / "p.jsonl", ROWS)), gold={"q1": "B", "q2": "C"})
    assert m.items == ("q1", "q2") and m.voters == ("a", "b")
    assert m.classes == ("A", "B", "C")
    assert m.labels.shape == (2, 2, 2)  # sample 1 exists for one voter -> S = 2
    expected = np.array([[[1, -1], [0, -1]], [[-1, -1], [-1, 2]]])
    np.testing.assert_array_equal(m.labels, expected)
    np.testing.assert_array_equal(m.gold, [1, 2])
    assert m.confidence[0, 0, 0] == 0.9 and np.isnan(m.confidence[1, 0, 0])
    assert m.probs is None


def test_select_samples_keeps_those_samples_of_every_voter(tmp_path):
    m = build_matrix(read_rows(write_jsonl(tmp_path / "p.jsonl", ROWS)), adaptive=True)
    second = m.select_samples([1])
    np.testing.assert_array_equal(second.labels, [[[-1], [-1]], [[-1], [2]]])
    assert second.confidence[1, 1, 0] == 0.5 and np.isnan(second.confidence[0, 0, 0])
    np.testing.assert_array_equal(second.asked, [[[False], [False]], [[False], [True]]])
    swapped = m.select_samples([1, 0])
    np.testing.assert_array_equal(swapped.labels, m.labels[:, :, ::-1])
    assert swapped.items == m.items and swapped.voters == m.voters


def test_label_codes_do_not_depend_on_row_order(tmp_path):
    a = build_matrix(read_rows(write_jsonl(tmp_path / "a.jsonl", ROWS)))
    b = build_matrix(read_rows(write_jsonl(tmp_path / "b.jsonl", ROWS[::-1])))
    assert a.classes == b.classes


def test_csv_and_probs(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('item,voter,answer,probs\nq1,a,A,"{""A"": 0.75, ""B"": 0.25}"\nq1,b,B,\n', encoding="utf-8")
    m = build_matrix(read_rows(path))
    np.testing.assert_allclose(m.probs[0, 0, 0], [0.75, 0.25])
    assert np.isnan(m.probs[0, 1, 0]).all()


def test_gold_file_and_items_without_votes(tmp_path):
    pred = write_jsonl(tmp_path / "p.jsonl", ROWS)
    gold = write_jsonl(tmp_path / "g.jsonl", [{"item": "q1", "answer": "A"}, {"item": "q9", "answer": "B"}])
    m = load_predictions(pred, gold=gold)
    np.testing.assert_array_equal(m.gold, [0, ABSTAIN])
    assert m.meta["n_gold_without_votes"] == 1


def test_options_give_valid_mask():
    rows = [{"item": "x", "voter": "a", "answer": "A", "sample": 0}, {"item": "y", "voter": "a", "answer": "C", "sample": 0}]
    m = build_matrix(rows, options={"x": ("A", "B"), "y": ("A", "B", "C")})
    np.testing.assert_array_equal(m.valid, [[True, True, False], [True, True, True]])


def test_rows_round_trip(tmp_path):
    m = build_matrix(read_rows(write_jsonl(tmp_path / "p.jsonl", ROWS)))
    again = build_matrix([dict(r) for r in rows_from_matrix(m)])
    np.testing.assert_array_equal(again.labels, m.labels)


@pytest.mark.parametrize("content, message", [
    ("", r"p.jsonl: no prediction rows \(the file is empty\)"),
    ('{"item": "q1", "voter": "a", "answer": "A"}\n{"item": "q1"\n', r"p.jsonl:2: invalid JSON"),
    ('"text"\n', r"p.jsonl:1: expected a JSON object \{\.\.\.\}, got str"),
    ('[{"item": "q", "voter": "a"},\n 7]\n', r"p.jsonl:2: expected a JSON object \{\.\.\.\}, got int"),
    ('{"voter": "a", "answer": "A"}\n', r"p.jsonl:1: field 'item' is missing"),
    ('{"item": "q", "voter": "a", "answer": "A", "sample": "x"}\n', r"p.jsonl:1: field 'sample' is 'x'; use a whole number"),
    ('{"item": "q", "voter": "a", "answer": "A", "sample": -1}\n', r"p.jsonl:1: field 'sample' is -1; use 0 or more"),
    ('{"item": "q", "voter": "a", "answer": "A", "confidence": 1.5}\n', r"p.jsonl:1: field 'confidence' is 1.5; use a number in \[0, 1\]"),
    ('{"item": "q", "voter": "a", "answer": "A", "confidence": "hi"}\n', r"field 'confidence' is 'hi'"),
    ('{"item": "q", "voter": "a", "answer": "A", "probs": [0.5]}\n', r"p.jsonl:1: field 'probs' must be an object"),
    ('{"item": "q", "voter": "a", "answer": "A", "probs": {"A": 0.5}}\n', r"field 'probs' sums to 0.5000; probabilities must sum to 1"),
    ('{"item": "q", "voter": "a", "answer": "A", "probs": {"A": -0.5, "B": 1.5}}\n', r"field 'probs' has a negative"),
    ('{"item": "q", "voter": "a", "answer": "A"}\n{"item": "q", "voter": "a", "answer": "B"}\n',
     r"p.jsonl:2: duplicate vote for item 'q', voter 'a', sample 0 \(first at line 1\)"),
])
def test_bad_rows_are_reported_with_file_and_line(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(EnsembleError, match=message):
        read_rows(path)


def test_missing_file_and_bad_csv_probs(tmp_path):
    with pytest.raises(EnsembleError, match=r"nope.jsonl: predictions file not found"):
        read_rows(tmp_path / "nope.jsonl")
    path = tmp_path / "p.csv"
    path.write_text("item,voter,answer,probs\nq1,a,A,notjson\n", encoding="utf-8")
    with pytest.raises(EnsembleError, match=r"p.csv:2: field 'probs' is not a JSON object"):
        read_rows(path)
