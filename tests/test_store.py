"""The resumable store: partial-line repair, no duplicates, settings mismatch refused."""
from __future__ import annotations

import json

import pytest

from ensemble.errors import EnsembleError
from ensemble.predictions.store import PredictionStore, fingerprint, stored_rows

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


def test_stored_rows_skips_a_torn_last_line_without_touching_the_file(tmp_path):
    from ensemble.quickstart import score_seconds

    path = tmp_path / "predictions.jsonl"
    PredictionStore.open(path, SETTINGS).append(
        [{"item": "q1", "voter": "a", "sample": 0, "answer": "A", "latency_s": 1.5},
         {"item": "q1", "voter": "b", "sample": 0, "answer": "B", "latency_s": 2.0},
         {"item": "q2", "voter": "a", "sample": 0, "answer": "C", "latency_s": 4.0}])
    with path.open("a") as fh:
        fh.write('{"item": "q3", "voter": "a", "latency_s": 100')  # a writer still (or killed) mid-line
    before = path.read_bytes()
    assert [r["item"] for r in stored_rows(path)] == ["q1", "q1", "q2"]
    assert path.read_bytes() == before  # read-only: the torn line is the writer's to repair
    assert score_seconds(tmp_path, ["a"], ["q1", "q2", "q3"]) == 5.5
    assert score_seconds(tmp_path, ["a", "b"], ["q1"]) == 3.5


def test_stored_rows_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(EnsembleError, match=r"nope.jsonl: no predictions store here; run `vote run`"):
        stored_rows(tmp_path / "nope.jsonl")
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"item": "q1", "voter": "a"}\nnot json\n{"item": "q2", "voter": "a"}\n')
    with pytest.raises(EnsembleError, match=r"predictions.jsonl:2: corrupt line .*delete that line"):
        stored_rows(path)


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


def test_a_voter_whose_adapter_changed_is_refused_new_voters_join(tmp_path):
    path = tmp_path / "predictions.jsonl"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-1")
    first = fingerprint(adapter)
    assert first == fingerprint(adapter) != fingerprint(None) == "base"
    PredictionStore.open(path, SETTINGS, voters={"a": first}).append(
        [{"item": "q1", "voter": "a", "sample": 0, "answer": "A"}])
    # Same adapter + a new voter: fine, and the new voter is recorded.
    PredictionStore.open(path, SETTINGS, voters={"a": first, "b": "base"})
    meta = json.loads((tmp_path / "predictions.jsonl.meta.json").read_text())
    assert meta["voter_fingerprints"] == {"a": first, "b": "base"} and meta["mode"] == "cloze"
    # Retrained under the same name: refused, whatever else is unchanged.
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-2")
    assert fingerprint(adapter) != first
    with pytest.raises(EnsembleError, match=r"voter 'a' changed since its predictions were stored.*--restart"):
        PredictionStore.open(path, SETTINGS, voters={"a": fingerprint(adapter)})
    # 'b' has no stored rows yet, so its adapter may change freely.
    PredictionStore.open(path, SETTINGS, voters={"a": first, "b": "other"})
    assert len(PredictionStore.open(path, SETTINGS, voters={"a": fingerprint(adapter)}, restart=True).rows) == 0
