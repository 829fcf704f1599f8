"""experiments/equal_budget.py: the equal-budget study's output contract and its budget accounting.

One ``--tiny`` run (tiny random model, a few items): the JSON has the documented keys, every
arm's seconds are its ledger's train + score CPU seconds, the markdown table is written, and
a rerun skips the finished arms (same ledgers, nothing retrained).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import equal_budget
import equal_budget_plan as plan


def test_ledger_adds_the_seconds_of_a_killed_attempt(tmp_path: Path) -> None:
    ledger = plan.Ledger(tmp_path)
    with pytest.raises(RuntimeError), ledger.phase("train") as tick:
        time.sleep(0.01)
        plan.TICK_S, saved = 0.0, plan.TICK_S
        try:
            tick()  # saved while running: what a kill -9 leaves behind
        finally:
            plan.TICK_S = saved
        raise RuntimeError("killed")
    first = plan.Ledger(tmp_path).get("train")
    assert first["attempts"] == 1 and not first["done"] and first["wall"] > 0
    again = plan.Ledger(tmp_path)
    with again.phase("train"):
        time.sleep(0.01)
    second = plan.Ledger(tmp_path).get("train")
    assert second["done"] and second["attempts"] == 2 and second["wall"] >= first["wall"] + 0.01
    with again.phase("score"):
        pass
    assert again.seconds("wall") == pytest.approx(second["wall"] + again.get("score")["wall"])


def test_tiny_study_schema_and_budget_accounting(tmp_path: Path) -> None:
    root, results = tmp_path / "root", tmp_path / "results"
    argv = ["--tiny", "--root", str(root), "--results", str(results), "--kinds", "alora"]
    out = equal_budget.main(argv)
    saved = json.loads((results / "equal_budget.json").read_text())
    assert saved["n_test"] == out["n_test"] > 0
    base = saved["baseline"]
    assert {"accuracy", "ece", "seconds"} <= set(base)
    ledger = json.loads((root / "single" / "budget.json").read_text())
    assert base["seconds"] == pytest.approx(ledger["train"]["cpu"] + ledger["score"]["cpu"], abs=0.06)
    assert base["seconds"] == pytest.approx(base["seconds_train"] + base["seconds_score"], abs=0.06)
    (row,) = saved["ensembles"]
    assert {"kind", "k", "method", "accuracy", "ci", "ece", "seconds", "p_vs_baseline"} <= set(row)
    assert row["kind"] == "alora" and row["k"] == 2 and row["method"] in saved["methods_considered"]
    assert 0 <= row["accuracy"] <= 1 and row["ci"][0] <= row["accuracy"] <= row["ci"][1]
    assert 0 <= row["p_vs_baseline"] <= 1
    # ECE after temperature scaling fitted on dev, beside the raw one, for A and the ensemble
    for r in (base, row):
        assert r["temperature"] > 0 and 0 <= r["ece"] <= 1 and 0 <= r["ece_raw"] <= 1
    arm = json.loads((root / "alora" / "budget.json").read_text())
    assert row["seconds"] == pytest.approx(arm["train"]["cpu"] + arm["score"]["cpu"], abs=0.06)
    # From the unrounded ledgers: the json's seconds are rounded, and the tiny arms last ~1 s.
    a_total = ledger["train"]["cpu"] + ledger["score"]["cpu"]
    assert row["budget_ratio"] == pytest.approx((arm["train"]["cpu"] + arm["score"]["cpu"]) / a_total, abs=0.002)
    assert row["plan"]["predicted_total_cpu"] <= row["plan"]["budget_cpu"]
    assert "| A: one LoRA |" in (results / "equal_budget.md").read_text()
    # A rerun skips every finished arm: the ledgers (and so the seconds) do not change.
    again = equal_budget.main(argv)
    assert json.loads((root / "alora" / "budget.json").read_text()) == arm
    assert again["ensembles"][0]["accuracy"] == row["accuracy"]


def test_report_only_before_the_baseline_finished_reports_seconds_spent(tmp_path: Path) -> None:
    root, results = tmp_path / "root", tmp_path / "results"
    ledger = plan.Ledger(root / "single")
    ledger.set("train", {"cpu": 12.5, "wall": 40.0, "attempts": 1, "done": False})  # a run stopped mid-training
    out = equal_budget.main(["--tiny", "--root", str(root), "--results", str(results), "--report-only"])
    assert out["status"] == "unfinished" and out["n_test"] > 0
    assert out["baseline"]["accuracy"] is None and out["baseline"]["seconds_so_far"] == 12.5
    assert [r["status"] for r in out["ensembles"]] == ["not started"] * 3
    assert not (root / "single" / "adapters").exists()  # nothing was trained
    assert "Baseline A has not finished: 12.5 CPU s" in (results / "equal_budget.md").read_text()


def test_plan_fits_costs_linear_in_k_and_picks_the_largest_k_that_fits(tmp_path: Path, monkeypatch) -> None:
    """Pilots at K = 2 and K = 5 only; costs = shared + K x per voter; K = 3 is the largest that
    leaves min_steps steps inside the budget."""
    def pilot(root, kind, k, s, make_cfg):
        seen.append(k)
        return {"step_cpu": 1.0 + k, "train_fixed_cpu": 10.0 + 2 * k, "train_cpu": 0.0, "item_cpu": 0.1 + 0.05 * k,
                "score_fixed_cpu": 5.0, "score_cpu": 0.0}
    seen: list[int] = []
    monkeypatch.setattr(plan, "_pilot", pilot)
    a_pilot = {"full_items": 1000, "full_item_cpu": 0.1, "scale": 1.0, "full_fixed_cpu": 8.0, "pilot_fixed_cpu": 5.0}
    args = type("Args", (), {"k": 5, "min_steps": 20})()
    # K=3: score 5 + 3 + 250 = 258, train fixed 16, step 4 -> (400 - 274) // 4 = 31 steps (K=4: 300 + 18 -> 16 < 20)
    out = plan.choose(tmp_path, "alora", {}, args, 400.0, a_pilot, lambda *a, **k: None)
    assert seen == [2, 5]
    assert out["status"] == "planned" and out["k"] == 3 and out["steps"] == 31
    assert out["predicted_total_cpu"] == pytest.approx(258 + 16 + 31 * 4)
    assert [t["k"] for t in out["tried"]] == [5, 4, 3]
    # Plain LoRA voters share no scoring: a K whose K x A's scoring loop exceeds the budget gets no pilot.
    seen.clear()
    out = plan.choose(tmp_path, "lora", {}, args, 150.0, a_pilot, lambda *a, **k: None)
    assert seen == [] and out["status"] == "infeasible" and all("skipped" in t for t in out["tried"])


def _args(**kw):
    import argparse
    return argparse.Namespace(**{"top": 6, "k": 5, "min_steps": 25, **kw})


def test_arm_specs_parse_and_unknown_options_are_refused() -> None:
    assert equal_budget.parse_arm("alora", _args()) == {
        "spec": "alora", "kind": "alora", "data": "poisson", "rank": 16, "top": 6, "k": 5, "min_steps": 25}
    arm = equal_budget.parse_arm("top/shards/r8/l10/k3/m15", _args())
    assert (arm["kind"], arm["data"], arm["rank"], arm["top"], arm["k"], arm["min_steps"]) == \
        ("top", "shards", 8, 10, 3, 15)
    assert "disjoint shards" in equal_budget.describe(arm) and "top 10 layers" in equal_budget.describe(arm)
    with pytest.raises(SystemExit, match=r"unknown option 'x8'; options: shards, rN"):
        equal_budget.parse_arm("alora/x8", _args())
    with pytest.raises(SystemExit, match=r"unknown option 'rank'"):
        equal_budget.parse_arm("alora/rank", _args())
    with pytest.raises(SystemExit, match="the kind must be alora, top or lora"):
        equal_budget.parse_arm("dora/r8", _args())


@pytest.mark.parametrize("kind", ["alora", "top", "lora"])
def test_shard_arms_give_one_voter_per_disjoint_shard_with_its_own_seed(kind: str) -> None:
    from ensemble.config.loader import from_dict
    from ensemble.config.schema import GridConfig
    from ensemble.training.grid import expand_grid

    grid = from_dict(GridConfig, equal_budget.grid_for(kind, 3, 4, rank=8, data="shards"), source="test")
    variants = expand_grid(grid)
    assert [(v.seed, v.rank, v.split_spec) for v in variants] == \
        [(0, 8, "shard:3:0"), (1, 8, "shard:3:1"), (2, 8, "shard:3:2")]
    assert {v.flavour for v in variants} == {"alora" if kind == "alora" else "lora"}
    assert {v.layers for v in variants} == {"top:4" if kind == "top" else "all"}
    assert all(v.bagging == "none" for v in variants)
    bagged = expand_grid(from_dict(GridConfig, equal_budget.grid_for(kind, 3, 4), source="test"))
    assert [v.bagging for v in bagged] == ["poisson"] * 3 and {v.split_spec for v in bagged} == {"full"}


def test_tried_lists_every_k_in_words_and_each_arms_voters() -> None:
    import equal_budget_report as report

    rows = [{"kind": "top/l10", "voters": "top/l10: seeds 0..K-1, rank 16, attention projections, LoRA on the top "
                                          "10 layers, Poisson(1) online bagging of all training problems",
             "plan": {"tried": [{"k": 5, "steps": -49}, {"k": 2, "steps": 89}]}},
            {"kind": "lora", "plan": {"tried": [{"k": 3, "skipped": "K x baseline A's scoring loop alone exceeds "
                                                               "the budget"}]}}]
    assert report.tried({"a_steps": 80, "top_layers": 6}, rows) == [
        "baseline A: one rank-16 attention LoRA, 80 steps on all training problems",
        "top/l10 K=5: does not fit: scoring alone leaves -49 steps per voter",
        "top/l10 K=2: 89 steps per voter predicted to fit",
        "lora K=3: K x baseline A's scoring loop alone exceeds the budget",
        ("voters of top/l10: seeds 0..K-1, rank 16, attention projections, LoRA on the top 10 layers, Poisson(1) "
         "online bagging of all training problems")]


def test_seed_ceiling_votes_copies_of_baseline_a(tmp_path: Path) -> None:
    """experiments/seed_ceiling.py: seeds 1, 2 of A's recipe beside the tiny study's A (seed 0),
    each timed into its own ledger; the vote is chosen on dev; a rerun retrains nothing; and
    ``--a320`` given the same study compares the vote with A itself (the same numbers twice)."""
    import seed_ceiling

    root, results = tmp_path / "root", tmp_path / "results"
    equal_budget.main(["--tiny", "--root", str(root), "--results", str(results), "--kinds", ""])
    argv = ["--tiny", "--root", str(root), "--results", str(results), "--seeds", "1,2"]
    out = seed_ceiling.main(argv)
    assert out is not None and out["k"] == 3 and set(out["seed_accuracies"]) == {"seed0", "seed1", "seed2"}
    base = json.loads((results / "equal_budget.json").read_text())["baseline"]
    assert out["baseline"]["accuracy"] == base["accuracy"]  # seed 0 is the study's own A
    assert out["baseline"]["ece"] == pytest.approx(base["ece"])  # the same valid classes, the same temperature
    adapters = [(root / f / "adapters").rglob("adapter_model.safetensors") for f in ("single", "single-seed1")]
    first, second = (next(a).read_bytes() for a in adapters)
    assert first != second  # another seed, another LoRA
    for s in (1, 2):
        ledger = json.loads((root / f"single-seed{s}" / "budget.json").read_text())
        assert ledger["train"]["done"] and ledger["score"]["done"]
        assert out["cpu_seconds"][f"seed{s}"] == pytest.approx(ledger["train"]["cpu"] + ledger["score"]["cpu"], abs=0.06)
    e = out["ensemble"]
    assert e["method"] in equal_budget.METHODS and e["ci"][0] <= e["accuracy"] <= e["ci"][1]
    assert 0 <= e["p_vs_baseline"] <= 1
    (two,) = out["by_k"]  # seeds 0, 1 alone: the same dev-chosen protocol on fewer voters
    assert two["k"] == 2 and two["method"] in equal_budget.METHODS and 0 <= two["p_vs_baseline"] <= 1
    text = (results / "seed_ceiling.md").read_text()
    assert "vote of the 3 seeds" in text and "vote of seeds 0..1" in text
    ledger1 = (root / "single-seed1" / "budget.json").read_text()
    again = seed_ceiling.main([*argv, "--a320", str(root)])
    assert (root / "single-seed1" / "budget.json").read_text() == ledger1
    assert again is not None and again["a320"]["accuracy"] == pytest.approx(out["baseline"]["accuracy"], abs=1e-4)
    assert again["a320"]["ensemble_delta_points"] == pytest.approx(e["delta_vs_baseline_points"], abs=0.01)
