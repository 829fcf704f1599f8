"""experiments/single_seeds.py: the quickstart's single LoRA over seeds, on the tiny model."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import single_seeds

from ensemble.errors import EnsembleError


def test_summary_spelled_out() -> None:
    rows = [{"steps": 5, "seed": 0, "accuracy": 0.40}, {"steps": 5, "seed": 1, "accuracy": 0.50},
            {"steps": 9, "seed": 0, "accuracy": 0.30}]
    five, nine = single_seeds.summary(rows, ensemble=0.45)
    assert (five["seeds"], five["min"], five["max"], five["ensemble_beats"]) == (2, 0.40, 0.50, 1)
    assert five["mean"] == pytest.approx(0.45) and five["sd"] == pytest.approx(0.0707107, abs=1e-6)
    assert five["ensemble_minus_mean_points"] == pytest.approx(0.0, abs=1e-9)
    assert (nine["seeds"], nine["sd"], nine["ensemble_beats"]) == (1, None, 1)
    assert nine["ensemble_minus_mean_points"] == pytest.approx(15.0)
    assert "ensemble_beats" not in single_seeds.summary(rows, ensemble=None)[0]


def _tiny(tmp_path: Path, tiny_model: Path) -> list[str]:
    sets = [f"model={tiny_model}", "data.benchmark.n_train=40", "data.benchmark.n_dev=6", "data.benchmark.n_test=10",
            "train.batch_size=4", "train.dtype=float32", "train.heldout_fraction=0.2", "run.dtype=float32",
            "run.batch_size=8"]
    return [a for s in sets for a in ("--set", s)]


def test_trains_and_scores_every_seed_and_resumes(tmp_path: Path, tiny_model: Path) -> None:
    run = tmp_path / "ens"
    run.mkdir()
    (run / "report.json").write_text(json.dumps({"selected_on_dev": {"method": "stack", "eval_accuracy": 0.5}}))
    out = tmp_path / "seeds.json"
    args = [*_tiny(tmp_path, tiny_model), "--seeds", "0,1", "--steps", "2", "--root", str(tmp_path / "root"),
            "--ensemble", str(run), "--out", str(out)]
    assert single_seeds.main(args) == 0
    result = json.loads(out.read_text())
    assert [(r["steps"], r["seed"]) for r in result["runs"]] == [(2, 0), (2, 1)]
    assert all(r["n_test"] > 0 and 0 <= r["accuracy"] <= 1 for r in result["runs"])
    assert result["ensemble"] == {"method": "stack", "accuracy": 0.5} and result["summary"][0]["seeds"] == 2
    adapters = [tmp_path / "root" / f"steps2-seed{s}" / "adapters" / "single-lora" for s in (0, 1)]
    weights = [(a / "adapter_model.safetensors").read_bytes() for a in adapters]
    assert weights[0] != weights[1]  # the seed reaches the LoRA init
    assert single_seeds.main(args) == 0  # a rerun resumes: same answers, nothing retrained
    assert json.loads(out.read_text())["runs"][0]["accuracy"] == result["runs"][0]["accuracy"]


def test_ensemble_run_without_a_dev_choice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text(json.dumps({"methods": {}}))
    with pytest.raises(EnsembleError, match=r"report.json: no method chosen on dev; run it with a dev split"):
        single_seeds.main(["--ensemble", str(tmp_path), "--out", str(tmp_path / "x.json")])


def test_ensemble_offsets_retrain_the_ensemble_with_shifted_seeds(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "seeds.json"
    args = [*_tiny(tmp_path, tiny_model), "--set", "train.max_steps=2", "--seeds", "0", "--steps", "2",
            "--root", str(tmp_path / "root"), "--ensemble-offsets", "10", "--out", str(out)]
    assert single_seeds.main(args) == 0
    result = json.loads(out.read_text())
    (e,) = result["ensemble_seeds"]
    assert e["seed_offset"] == 10 and 0 <= e["accuracy"] <= 1 and e["method"]
    assert result["ensemble_spread"]["n"] == 1 and result["ensemble_spread"]["sd"] is None
    manifest = json.loads((tmp_path / "root" / "ensemble-offset10" / "manifest.json").read_text())
    seeds = {name: v["settings"]["seed"] for name, v in manifest["variants"].items()}
    assert seeds == {"v1-r8-attn": 11, "v2-r16-attn": 12, "v3-r8-mlp": 13, "v4-r4-attn": 14, "v5-r8-all": 15}
    assert not (tmp_path / "root" / "ensemble-offset10" / "baseline").exists()  # the ensemble only
