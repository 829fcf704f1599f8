"""The resumable store: partial-line repair, no duplicates, settings mismatch refused."""
from __future__ import annotations

import json

import pytest

from ensemble.errors import EnsembleError
from ensemble.store import PredictionStore

SETTINGS = {"model": "m", "mode": "cloze"}


def test_append_skips_known_keys_and_survives_reopen(tmp_path):
    path = tmp_path / "predictions.jsonl"
    store = PredictionStore.open(path, SETTINGS)
    assert store.append([{"item": "q1", "voter": "a", "sample": 0, "answer": "A"}]) == 1
    assert store.append([{"item": "q1", "voter": "a", "sample": 0, "answer": "B"},
                         {"item": "q2", "voter": "a", "sample": 0, "answer": "C"}]) == 1
    again = PredictionStore.open(path, SETTINGS)
    assert [r["answer"] for r in again.rows] == ["A", "C"]
    assert again.has("q2", "a") and not again.has("q3", "a")


def test_partial_last_line_from_a_killed_writer_is_cut(tmp_path):
    path = tmp_path / "predictions.jsonl"
    PredictionStore.open(path, SETTINGS).append([{"item": "q1", "voter": "a", "sample": 0, "answer": "A"}])
    with path.open("a") as fh:
        fh.write('{"item": "q2", "voter": "a", "sam')  # killed mid-line
    store = PredictionStore.open(path, SETTINGS)
    assert store.n_dropped_partial == 1 and [r["item"] for r in store.rows] == ["q1"]
    store.append([{"item": "q2", "voter": "a", "sample": 0, "answer": "B"}])
    lines = path.read_text().splitlines()
    assert [json.loads(x)["item"] for x in lines] == ["q1", "q2"]


def test_other_settings_are_refused_unless_restart(tmp_path):
    path = tmp_path / "predictions.jsonl"
    PredictionStore.open(path, SETTINGS).append([{"item": "q1", "voter": "a", "sample": 0, "answer": "A"}])
    with pytest.raises(EnsembleError, match=r"made with other settings \(mode: 'cloze' -> 'letter'\).*--restart"):
        PredictionStore.open(path, {**SETTINGS, "mode": "letter"})
    fresh = PredictionStore.open(path, {**SETTINGS, "mode": "letter"}, restart=True)
    assert fresh.rows == []


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "predictions.jsonl"
    PredictionStore.open(path, SETTINGS)
    path.write_text('{"item": "q1", "voter": "a", "sample": 0}\nGARBAGE\n{"item": "q2", "voter": "a", "sample": 0}\n')
    with pytest.raises(EnsembleError, match=r"predictions.jsonl:2: corrupt line"):
        PredictionStore.open(path, SETTINGS)
