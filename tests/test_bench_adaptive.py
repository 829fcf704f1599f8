"""experiments/bench_adaptive.py on a small synthetic generate-mode run folder: the output
contract, the pre-registered dev criterion (at most --max-loss of the dev decisions changed),
and the live helpers (the live config's test limit; the replay measured on the live items)."""
from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import adaptive_live
import bench_adaptive

from ensemble.data.benchmark import ensure_benchmark
from ensemble.data.formats import read_items
from ensemble.predictions.matrix import ABSTAIN

VOTERS = ("a", "b", "c")
SKILL = {"a": 0.8, "b": 0.6, "c": 0.5}
SAMPLES = 4


def _h(*parts: object) -> float:
    return zlib.crc32("\0".join(map(str, parts)).encode()) % 1000 / 1000


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fully asked run folder: data/ (the bundled benchmark) + predictions.jsonl whose voters
    name the gold letter with their SKILL, else a hash-chosen option; confidence and tokens set."""
    run = tmp_path_factory.mktemp("run")
    ensure_benchmark(run / "data", n_train=0, n_dev=20, n_test=20, seed=3, kinds=["arith", "compare"])
    rows = []
    for split in ("dev", "test"):
        for it in read_items(run / "data" / f"{split}.jsonl"):
            for v in VOTERS:
                for s in range(SAMPLES):
                    right = _h(it.id, v, s) < SKILL[v]
                    letter = it.answer if right else it.letters[int(_h(it.id, v, s, "x") * len(it.letters))]
                    rows.append({"item": it.id, "voter": v, "sample": s, "answer": letter,
                                 "confidence": 0.5 + 0.5 * _h(it.id, v, s, "c"), "n_tokens": 3 + s})
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_output_contract_and_dev_criterion(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "adaptive"
    assert bench_adaptive.main(["--generate", str(run_dir), "--max-loss", "0.05", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    for key in ("policy", "calls_saved", "tokens_saved", "accuracy_full", "accuracy_adaptive", "p_value"):
        assert key in result
    g = result["generate"]
    table = {r["policy"]: r for r in g["candidates"]}
    assert len(table) == len(bench_adaptive.CANDIDATES)  # every grid policy replayed, names unique
    assert table["exact"]["dev"]["changed_decisions"] == 0 == table["exact"]["test"]["changed_decisions"]
    assert table["none"]["test"]["calls_saved"] == 0.0
    assert "dirichlet delta=0.1 prior=0.5 min_votes=5" in table
    chosen = g["chosen"]
    assert chosen["dev"]["changed_decisions"] <= 0.05 * g["n_dev"]
    # no admissible policy saves more dev calls than the chosen one
    admissible = [r for r in g["candidates"] if r["dev"]["changed_decisions"] <= 0.05 * r["dev"]["n_items"]]
    assert chosen["dev"]["calls_saved"] == max(r["dev"]["calls_saved"] for r in admissible)
    assert result["policy"] == chosen["policy"] and chosen["delta_ci"] is not None
    assert "bootstrap CI" in out.with_suffix(".md").read_text()


def test_reuse_takes_the_replay_from_an_earlier_json(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    first = tmp_path / "first"
    assert bench_adaptive.main(["--generate", str(run_dir), "--max-loss", "0.05", "--out", str(first)]) == 0
    earlier = json.loads(first.with_suffix(".json").read_text())

    def no_replay(*args: object, **kw: object) -> None:
        raise AssertionError("--reuse replays nothing again")
    monkeypatch.setattr(bench_adaptive, "bench", no_replay)
    again = tmp_path / "again"
    assert bench_adaptive.main(["--generate", str(run_dir), "--max-loss", "0.05", "--out", str(again),
                                "--reuse", str(first.with_suffix(".json"))]) == 0
    reused = json.loads(again.with_suffix(".json").read_text())
    assert reused["generate"] == earlier["generate"] and reused["policy"] == earlier["policy"]
    other = tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(SystemExit):  # another run folder than the json's: refused
        bench_adaptive.main(["--generate", str(other), "--reuse", str(first.with_suffix(".json")),
                             "--out", str(tmp_path / "x")])


def test_min_votes_policies_ask_at_least_that_many(run_dir: Path) -> None:
    m, dev, _tokens = bench_adaptive.load_run(run_dir)
    order = bench_adaptive.asking_order(bench_adaptive.voter_order(m, dev), m.n_samples)
    rule = bench_adaptive.get_stop_rule("dirichlet", {"delta": 0.4, "prior": 0.5, "min_votes": 3})
    asked = bench_adaptive.replay(m, order, rule)
    assert asked.sum(axis=(1, 2)).min() >= 3


def test_replay_on_measures_only_the_given_items(run_dir: Path) -> None:
    m, dev, tokens = bench_adaptive.load_run(run_dir)
    result = bench_adaptive.bench(m, dev, tokens, 0.05)
    chosen = result["chosen"]
    test_ids = [i for i, d in zip(m.items, dev) if not d]
    every = bench_adaptive.replay_on(m, dev, tokens, chosen, set(test_ids))
    assert every["calls_made"] == chosen["calls_made"] and every["n_items"] == result["n_test"]
    some = bench_adaptive.replay_on(m, dev, tokens, chosen, set(test_ids[:5]))
    assert some["n_items"] == 5 and some["calls_possible"] == 5 * len(VOTERS) * SAMPLES


def test_live_config_limits_the_test_problems(run_dir: Path, tmp_path: Path) -> None:
    from ensemble.config.loader import load_config

    base = tmp_path / "full.yaml"
    base.write_text(
        "model: smollm2\nout: runs/x\nprompt: mc_short_auto\n"
        "data:\n  benchmark: {n_train: 0, n_dev: 20, n_test: 20, seed: 3, kinds: [arith, compare]}\n"
        "voters: {a: ad/a, b: ad/b, c: ad/c}\n"
        "run: {engine: hf, mode: generate, samples: 4, temperature: 0.7, splits: [dev, test], methods: [majority]}\n")
    m, dev, tokens = bench_adaptive.load_run(run_dir)
    setting = bench_adaptive.bench(m, dev, tokens, 0.05)
    setting["chosen"] = {**setting["chosen"], "rule": "cisc",
                         "params": {"delta": 0.05, "temperature": 0.1, "min_votes": 3}}
    cfg = load_config(adaptive_live.live_config(base, setting, tmp_path / "live", limit=7))
    assert cfg.data.limit == 7 and list(cfg.run.splits) == ["test"]
    assert cfg.run.adaptive.rule == "cisc" and cfg.run.adaptive.params["min_votes"] == 3
    assert list(cfg.voters) == list(dict.fromkeys(c.split("#")[0] for c in setting["order"]))
    no_limit = load_config(adaptive_live.live_config(base, setting, tmp_path / "live2"))
    assert not no_limit.data.limit


def test_learned_stop_features_and_stopping_point_are_spelled_out() -> None:
    import adaptive_learned

    labels = np.array([0, 0, 1, ABSTAIN])
    conf = np.array([0.9, 0.8, 0.5, np.nan])
    X = adaptive_learned.prefix_features(labels, conf, n_classes=3)
    assert X.shape == (3, 11)
    # after 2 votes (both for class 0), 2 to come: lead/rem, lead/K, top/k, rem/K, third share,
    # leader's mean confidence, others', weighted lead/rem, first voter backs the leader,
    # exact bound (2 > 2: no), log(1 + k)
    np.testing.assert_allclose(X[1], [1.0, 0.5, 1.0, 0.5, 0.0, 0.85, 0.0, 0.85, 1.0, 0.0, np.log(3)])
    # after 3 votes (0, 0, 1), 1 to come: lead 1 is not > 1 vote to come, so no exact bound yet
    np.testing.assert_allclose(X[2][[0, 2, 6, 9]], [1.0, 2 / 3, 0.5, 0.0])
    proba = np.array([[0.5, 0.99, 0.2], [0.1, 0.2, 0.3]])
    assert adaptive_learned.stops(proba, 0.98).tolist() == [2, 4]  # item 2: never sure, every vote asked


def test_learned_stop_rule_is_chosen_on_cross_fitted_dev(run_dir: Path, tmp_path: Path) -> None:
    import adaptive_learned

    out = tmp_path / "learned.json"
    assert adaptive_learned.main(["--generate", str(run_dir), "--max-loss", "0.05", "--out", str(out),
                                  "--bench", str(tmp_path / "absent.json")]) == 0
    result = json.loads(out.read_text())
    assert result["n_dev"] > 0 and "registered_chosen" not in result
    for name in ("logistic", "boosted_trees"):
        chosen, table = result[name]["chosen"], result[name]["candidates"]
        assert len(table) == len(adaptive_learned.THRESHOLDS) + 1  # + never stopping
        assert table[0]["test"]["calls_saved"] == 0.0
        admissible = [r for r in table if r["dev"]["changed_decisions"] <= 0.05 * r["dev"]["n_items"]]
        assert chosen["dev"]["calls_saved"] == max(r["dev"]["calls_saved"] for r in admissible)
        assert 0.0 <= chosen["calls_saved"] < 1.0


def test_halves_vote_each_half_of_the_samples_on_its_own(run_dir: Path, tmp_path: Path) -> None:
    import adaptive_halves

    from ensemble.predictions.rows import build_matrix

    # samples 0-1 vs 2-3 of voters a, b: i1 A,A | B,B; i2 B throughout; i3 B,B | A,A
    says = {"i1": "AABB", "i2": "BBBB", "i3": "BBAA"}
    rows = [{"item": i, "voter": v, "sample": s, "answer": seq[s]} for i, seq in says.items() for v in "ab"
            for s in range(4)]
    m = build_matrix(rows, gold={"i1": "A", "i2": "B", "i3": "A"})
    got = adaptive_halves.halves(m, np.ones(3, dtype=bool))
    assert (got["samples_per_half"], got["decisions_differ"]) == (2, 2)
    assert got["accuracy_first"] == pytest.approx(2 / 3) and got["accuracy_second"] == pytest.approx(2 / 3)
    one = build_matrix([{"item": "i1", "voter": "a", "sample": 0, "answer": "A"}], gold={"i1": "A"})
    with pytest.raises(SystemExit, match="1 sample per voter; it needs at least 2"):
        adaptive_halves.halves(one, np.ones(1, dtype=bool))
    out = tmp_path / "halves.json"
    assert adaptive_halves.main(["--generate", str(run_dir), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n_test"] == len(read_items(run_dir / "data" / "test.jsonl"))
    assert result["samples_per_half"] == SAMPLES // 2 and 0 <= result["decisions_differ"] <= result["n_test"]
