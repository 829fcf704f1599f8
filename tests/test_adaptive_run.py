"""`run.adaptive` end to end on a fake engine: the live asking loop against the offline replay,
against asking everyone, and against itself when killed and resumed."""
from __future__ import annotations

import json
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest_serve import FakeEngine

from ensemble.config.loader import ConfigError, load_config
from ensemble.engines.base import (
    ChoiceOutput,
    ChoiceRequest,
    GenOutput,
    GenRequest,
    Sample,
    softmax,
)
from ensemble.errors import EnsembleError
from ensemble.pipeline import run
from ensemble.predictions.matrix import ABSTAIN, VoteMatrix
from ensemble.voting import METHODS
from ensemble.voting.adaptive import get_stop_rule, replay
from ensemble.voting.weighted import fit_log_odds_weights

VOTERS = ("v1", "v2", "v3", "v4", "v5")
SKILL = {"v1": 0.55, "v2": 0.9, "v3": 0.7, "v4": 0.8, "v5": 0.6}  # chance a voter names the item's answer


@pytest.fixture(autouse=True)
def no_html(request, monkeypatch):
    """Most runs here skip drawing report.html (about 3 s of plots each, and not what is tested);
    the CLI test draws it."""
    if "cli" not in request.node.name:
        import ensemble.evaluation.html

        monkeypatch.setattr(ensemble.evaluation.html, "run_html", lambda *args, **kwargs: None)


def _h(*parts: Any) -> int:
    return zlib.crc32("\0".join(map(str, parts)).encode())


def _question(messages: Any) -> str:
    return json.dumps(list(messages or ()))


class SkilledEngine(FakeEngine):
    """Deterministic voters that name each item's "true" option with their SKILL, else a
    hash-chosen one: items where they agree and items where they split, reproducibly and
    independently of the batch. Counts the requests it answers; ``fail_after`` batches
    raise (a run killed between batches)."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__(VOTERS)
        self.fail_after, self.batches, self.requests = fail_after, 0, 0

    def _count(self, requests: Sequence[Any]) -> None:
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.batches += 1
        self.requests += len(requests)

    def _pick(self, adapter: str | None, source: str, n: int, seed: Any) -> int:
        truth = int(re.findall(r"\[key (\d+)\]", source)[0])  # the gold answer, planted in the question
        draw = _h(adapter, source, seed) % 1000 / 1000
        return truth if draw < SKILL.get(adapter or "", 0.5) else _h(adapter, source, seed, "x") % n

    def score_choices(self, requests: Sequence[ChoiceRequest]) -> list[ChoiceOutput]:
        self._count(requests)
        outs = []
        for r in requests:
            best = self._pick(r.adapter, _question(r.messages), len(r.options), "cloze")
            logliks = tuple(-0.1 if k == best else -1.0 - _h(r.adapter, k) % 7 / 10 for k in range(len(r.options)))
            outs.append(ChoiceOutput(request=r, logliks=logliks, probs=softmax(logliks)))
        return outs

    def generate(self, requests: Sequence[GenRequest]) -> list[GenOutput]:
        self._count(requests)
        outs = []
        for r in requests:
            source = _question(r.messages)
            n_opts = source.count("option ")  # the prompt lists the item's options (none: open answer)
            samples = []
            for j in range(r.sampling.n):
                seed = (r.sampling.seed, r.sampling.first_sample + j)  # as the HF engine seeds sample rows
                if n_opts:
                    text = f"The answer is {'ABCD'[self._pick(r.adapter, source, n_opts, seed)]}"
                else:
                    text = f"#### {self._pick(r.adapter, source, 3, seed) + 40}"
                lps = tuple(-(_h(r.adapter, source, seed, t) % 100) / 400 for t in range(3))
                samples.append(Sample(text=text, token_logprobs=lps, n_tokens=3))
            outs.append(GenOutput(request=r, samples=tuple(samples)))
        return outs


def write_config(tmp_path: Path, name: str, *, adaptive: str | None, mode: str = "cloze", samples: int = 1,
                 n_dev: int = 12, n_test: int = 30, open_answers: bool = False, extra: str = "") -> Path:
    """Fake model folder, five fake adapter folders, dev/test files and a config using them."""
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    for v in VOTERS:
        (tmp_path / "adapters" / v).mkdir(parents=True, exist_ok=True)
        (tmp_path / "adapters" / v / "adapter_config.json").write_text(json.dumps({"name": v}))
    for split, n in (("dev", n_dev), ("test", n_test)):
        rows = []
        for i in range(n):
            n_opts = 3 if open_answers else 2 + i % 3
            key = _h(split, i) % n_opts
            row = {"id": f"{split}{i}", "question": f"Pick one ({split} {i}) [key {key}]",
                   "options": [f"option {k} of {split} {i}" for k in range(n_opts)], "answer": "ABCD"[key]}
            if open_answers:
                del row["options"]
                row["answer"] = str(40 + key)
            rows.append(row)
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    voters = "".join(f"  {v}: {tmp_path / 'adapters' / v}\n" for v in VOTERS)
    sampling = f"  samples: {samples}\n  temperature: 0.7\n" if samples > 1 else ""
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(f"""model: {model}
out: {tmp_path / name}
prompt: {'open' if open_answers else 'mc'}
data: {{dev: {tmp_path / 'dev.jsonl'}, test: {tmp_path / 'test.jsonl'}}}
voters:
{voters}run:
  mode: {mode}
  batch_size: 4
  probe: false
  extractor: {'number' if open_answers else 'mc'}
  methods: [majority, weighted]
{sampling}{'  adaptive: ' + adaptive + chr(10) if adaptive else ''}{extra}""")
    return cfg


def stored(out: Path) -> dict[tuple[str, str, int], tuple[Any, Any]]:
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    keys = [(r["item"], r["voter"], r["sample"]) for r in rows]
    assert len(keys) == len(set(keys))
    return {k: (r["answer"], r.get("text")) for k, r in zip(keys, rows)}


def aligned(m: VoteMatrix, items: Sequence[str], voters: Sequence[str]) -> VoteMatrix:
    """``m`` with its items and voters in the given order (matrices order them by first row)."""
    return m.select_items(np.array([m.items.index(i) for i in items])).select_voters(
        np.array([m.voters.index(v) for v in voters]))


def test_rows_match_replay_of_the_full_run_cloze(tmp_path):
    live = run(load_config(write_config(tmp_path, "live", adaptive="{rule: dirichlet, params: {delta: 0.1}}")),
               engine=SkilledEngine())
    full = run(load_config(write_config(tmp_path, "full", adaptive="{rule: none}")), engine=SkilledEngine())
    check_live_equals_replay(live, full, "dirichlet", {"delta": 0.1}, samples=1)


@pytest.mark.parametrize("open_answers, rule, params, weights", [
    (False, "dirichlet", {"delta": 0.1}, "dev"),
    (True, "dirichlet", {"delta": 0.1}, "none"),  # open answers: classes = answers seen so far + 1
    (False, "cisc", {"delta": 0.1, "temperature": 0.5}, "none"),  # confidence-weighted counts
    (False, "predictive", {"delta": 0.05}, "dev"),  # weighted race, posterior on votes
    (False, "sticky", {"delta": 0.05, "stick": 0.7}, "none"),  # the live run tells voters apart as replay does
])
def test_rows_match_replay_of_the_full_run_generate(tmp_path, open_answers, rule, params, weights):
    kw = {"mode": "generate", "samples": 3, "open_answers": open_answers}
    section = json.dumps({"rule": rule, "params": params, "weights": weights})
    live = run(load_config(write_config(tmp_path, "live", adaptive=section, **kw)), engine=SkilledEngine())
    full = run(load_config(write_config(tmp_path, "full", adaptive="{rule: none}", **kw)), engine=SkilledEngine())
    check_live_equals_replay(live, full, rule, params, samples=3, weighted=weights == "dev")


def check_live_equals_replay(live: Any, full: Any, rule: str, params: dict[str, Any], *, samples: int,
                             weighted: bool = False) -> None:
    test = [i for i in full.matrix.items if i.startswith("test")]
    dev = full.dev
    assert dev is not None and full.matrix.asked is not None and full.matrix.asked.all()
    # the live run's asking order, recomputed from the full run's dev votes
    m_dev = full.matrix.select_items(dev)
    acc = {v: float((m_dev.labels[:, j] == m_dev.gold[:, None]).mean()) for j, v in enumerate(m_dev.voters)}
    order = sorted(VOTERS, key=lambda v: (-acc[v], v))
    f = aligned(full.matrix, test, order)
    cells = [(j, s) for s in range(samples) for j in range(len(order))]
    weights = None
    if weighted:  # the `weighted` method's log-odds weights, fitted on the dev votes
        w = dict(zip(m_dev.voters, fit_log_odds_weights(m_dev, np.ones(m_dev.n_items, dtype=bool))))
        weights = np.array([w[v] for v in order])
    expected = replay(f, cells, get_stop_rule(rule, params), weights)
    got = aligned(live.matrix, test, order)
    assert got.asked is not None
    np.testing.assert_array_equal(got.asked, expected)
    # the asked cells hold the full run's votes; the rest are absent, not abstentions
    np.testing.assert_array_equal(np.array(got.classes)[got.labels[got.asked]],
                                  np.array(f.classes)[f.labels[expected]])
    assert (got.labels[~got.asked] == ABSTAIN).all()
    assert 0 < live.calls["made"] < full.calls["made"] == full.calls["possible"] == live.calls["possible"]
    assert live.calls["saved"] == live.calls["possible"] - live.calls["made"]


@pytest.mark.parametrize("mode, samples", [("cloze", 1), ("generate", 3)])
def test_rule_none_gives_the_plain_runs_answers(tmp_path, mode, samples):
    """Generate mode too: an adaptive run asks sample s alone, with the plain run's seed and
    ``first_sample=s``, so it gets the plain run's sample s (the fake seeds samples as HF does)."""
    kw = {"mode": mode, "samples": samples}
    plain = run(load_config(write_config(tmp_path, "plain", adaptive=None, **kw)), engine=SkilledEngine())
    every = run(load_config(write_config(tmp_path, "every", adaptive="{rule: none, order: given}", **kw)),
                engine=SkilledEngine())
    assert stored(tmp_path / "plain") == stored(tmp_path / "every")
    m = aligned(every.matrix, plain.matrix.items, plain.matrix.voters)
    np.testing.assert_array_equal(m.labels, plain.matrix.labels)
    assert every.calls == {**every.calls, "saved": 0, "made": (12 * 5 + 30 * 5) * samples} and plain.calls is None
    assert every.report.to_dict()["methods"]["majority"]["accuracy"] == \
        plain.report.to_dict()["methods"]["majority"]["accuracy"]


def test_exact_rule_keeps_every_majority_decision(tmp_path):
    exact = run(load_config(write_config(tmp_path, "exact", adaptive="{rule: exact}", n_test=60)),
                engine=SkilledEngine())
    full = run(load_config(write_config(tmp_path, "full", adaptive=None, n_test=60)), engine=SkilledEngine())
    majority = METHODS.get("majority")
    for tie_break in ("first", "abstain"):
        a = majority(exact.matrix, tie_break=tie_break)
        b = majority(aligned(full.matrix, exact.matrix.items, exact.matrix.voters), tie_break=tie_break)
        assert [exact.matrix.classes[c] if c >= 0 else None for c in a.labels] == \
            [full.matrix.classes[c] if c >= 0 else None for c in b.labels]
    assert exact.calls["saved"] > 0


@pytest.mark.parametrize("mode, samples, kills", [("cloze", 1, (3, 9)), ("generate", 2, (3, 17))])
def test_killed_and_resumed_equals_uninterrupted(tmp_path, mode, samples, kills):
    adaptive = "{rule: dirichlet, params: {delta: 0.2}}"
    clean_engine = SkilledEngine()
    clean = run(load_config(write_config(tmp_path, "clean", adaptive=adaptive, mode=mode, samples=samples)),
                engine=clean_engine)
    cfg = load_config(write_config(tmp_path, "killed", adaptive=adaptive, mode=mode, samples=samples))
    # killed in the dev phase, then in the rounds: each rerun resumes from the stored rows only
    engines = [SkilledEngine(fail_after=n) for n in kills]
    for engine in engines:
        with pytest.raises(KeyboardInterrupt):
            run(cfg, engine=engine)
    last = SkilledEngine()
    resumed = run(cfg, engine=last)
    assert stored(tmp_path / "killed") == stored(tmp_path / "clean")
    assert sum(e.requests for e in [*engines, last]) == clean_engine.requests == clean.calls["made"]
    assert resumed.calls == clean.calls
    m = aligned(resumed.matrix, clean.matrix.items, clean.matrix.voters)
    np.testing.assert_array_equal(m.asked, clean.matrix.asked)
    np.testing.assert_array_equal(m.labels, clean.matrix.labels)
    assert resumed.report.to_dict()["methods"] == clean.report.to_dict()["methods"]
    again = SkilledEngine()
    assert run(cfg, engine=again).n_new_rows == 0 and again.requests == 0  # a finished run asks nothing


def test_not_asked_is_absent_from_the_store_and_not_an_abstention(tmp_path):
    result = run(load_config(write_config(tmp_path, "out", adaptive="{rule: dirichlet, params: {delta: 0.2}}")),
                 engine=SkilledEngine())
    m = result.matrix
    keys = set(stored(tmp_path / "out"))
    asked = {(m.items[i], m.voters[j], s) for i, j, s in zip(*np.nonzero(m.asked))}
    assert keys == asked and len(keys) == result.calls["made"] < result.calls["possible"]
    dev = result.dev
    assert m.asked[dev].all() and not m.asked[~dev].all()  # dev items are asked fully
    assert result.abstain_counts == dict.fromkeys(VOTERS, 0)  # the fake voters always answer
    # the best dev voter is asked first, so it answers every test item
    assert result.calls["coverage"][max(VOTERS, key=SKILL.get)] == 1.0
    assert min(result.calls["coverage"].values()) < 1.0
    settings = json.loads((tmp_path / "out" / "predictions.jsonl.meta.json").read_text())
    assert settings["adaptive"] == {"rule": "dirichlet", "params": {"delta": 0.2}, "order": "dev_accuracy",
                                    "weights": "none"}


def test_vote_eval_reads_an_adaptive_store_as_not_asked(tmp_path):
    from ensemble.predictions.rows import load_predictions

    result = run(load_config(write_config(tmp_path, "out", adaptive="{rule: dirichlet, params: {delta: 0.2}}")),
                 engine=SkilledEngine())
    path = tmp_path / "out" / "predictions.jsonl"
    m = load_predictions(path)  # adaptive read from the store's meta
    assert m.asked is not None and int(m.asked.sum()) == result.calls["made"]
    plain = load_predictions(path, adaptive=False)  # forced: missing votes become abstentions
    assert plain.asked is None and int((plain.labels < 0).sum()) == result.calls["saved"]
    copy = tmp_path / "copy.jsonl"  # a predictions file without a store meta is plain
    copy.write_text(path.read_text())
    assert load_predictions(copy).asked is None


def test_a_generate_store_of_the_earlier_per_sample_seeds_is_refused(tmp_path):
    """Before 2026-11-27 adaptive runs seeded each sample as a request of its own; such a store
    (its meta lacks the ``sample_seeds`` mark) must not be resumed with the new draws."""
    cfg = write_config(tmp_path, "out", adaptive="{rule: exact}", mode="generate", samples=2)
    run(load_config(cfg), engine=SkilledEngine())
    meta = tmp_path / "out" / "predictions.jsonl.meta.json"
    settings = json.loads(meta.read_text())
    assert settings["adaptive"]["sample_seeds"] == "first_sample"
    del settings["adaptive"]["sample_seeds"]
    meta.write_text(json.dumps(settings))
    with pytest.raises(EnsembleError, match=r"made with other settings \(adaptive: .*sample_seeds.*--restart"):
        run(load_config(cfg), engine=SkilledEngine())


def test_changing_the_rule_refuses_the_store(tmp_path):
    run(load_config(write_config(tmp_path, "out", adaptive="{rule: exact}")), engine=SkilledEngine())
    with pytest.raises(EnsembleError, match=r"made with other settings \(adaptive: .*exact.*dirichlet"):
        run(load_config(write_config(tmp_path, "out", adaptive="{rule: dirichlet}")), engine=SkilledEngine())


def test_cli_reports_calls_made_and_saved(tmp_path, monkeypatch):
    import ensemble.pipeline
    from ensemble.cli.app import main

    monkeypatch.setattr(ensemble.pipeline, "build_engine", lambda spec: SkilledEngine())
    cfg = write_config(tmp_path, "out", adaptive="{rule: exact}")
    res = CliRunner().invoke(main, ["run", str(cfg)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    result = run(load_config(cfg), engine=SkilledEngine())
    c = result.calls
    assert f"Calls: {c['made']} made of {c['possible']} possible, {c['saved']} saved" in res.output
    assert 0 < c["saved"] == c["possible"] - c["made"]


# -- config (the names: tests/test_config_checks.py) ------------------------------------
def test_dev_fitted_order_needs_the_dev_split(tmp_path):
    cfg = write_config(tmp_path, "out", adaptive="{rule: exact}", extra="  splits: [test]\n")
    with pytest.raises(ConfigError, match=r"field 'run.adaptive.order' is 'dev_accuracy'; it is fitted on the dev "
                                          r"split's gold answers, but run.splits is \['test'\]: add dev to "
                                          r"run.splits, or set run.adaptive.order: given"):
        load_config(cfg)
    with pytest.raises(ConfigError, match=r"field 'run.adaptive.weights' is 'dev'; .*set run.adaptive.weights: none"):
        load_config(cfg, ["run.adaptive.order=given", "run.adaptive.weights=dev"])
    # asked in the given order with weight 1, a run without dev works: every item is adaptive
    result = run(load_config(cfg, ["run.adaptive.order=given", "run.methods=[majority]"]), engine=SkilledEngine())
    assert result.calls["saved"] > 0 and result.matrix.n_items == 30


def test_tiny_model_cloze_live_equals_replay(tmp_path, tiny_model, tiny_adapters):
    """The real HF engine (batches of other compositions than the full run's) decides like the replay."""
    from test_run import write_config as tiny_config

    live = run(load_config(tiny_config(tmp_path, tiny_model, tiny_adapters, tmp_path / "live", n=16,
                                       run_extra="  adaptive: {rule: dirichlet, params: {delta: 0.3}}\n")))
    full = run(load_config(tiny_config(tmp_path, tiny_model, tiny_adapters, tmp_path / "full", n=16,
                                       run_extra="  adaptive: {rule: none}\n")))
    test = [i for i in full.matrix.items if i.startswith("t")]
    m_dev = full.matrix.select_items(full.dev)
    acc = {v: float((m_dev.labels[:, j] == m_dev.gold[:, None]).mean()) for j, v in enumerate(m_dev.voters)}
    order = sorted(m_dev.voters, key=lambda v: (-acc[v], v))
    expected = replay(aligned(full.matrix, test, order), [(j, 0) for j in range(len(order))],
                      get_stop_rule("dirichlet", {"delta": 0.3}))
    np.testing.assert_array_equal(aligned(live.matrix, test, order).asked, expected)
    assert live.calls["saved"] > 0


def test_tiny_model_generate_adaptive_draws_the_full_runs_samples(tmp_path, tiny_model, tiny_adapters):
    """The real HF engine: every sample an adaptive run asks is the plain full run's sample, text
    for text (one request per sample, other batches, seeded by first_sample)."""
    from test_run import write_config as tiny_config

    sampling = "  mode: generate\n  samples: 3\n  temperature: 1.0\n  max_new_tokens: 6\n  probe: false\n"
    plain = run(load_config(tiny_config(tmp_path, tiny_model, tiny_adapters, tmp_path / "plain", n=6,
                                        run_extra=sampling)))
    texts = {(r["item"], r["voter"], r["sample"]): r["text"]
             for r in map(json.loads, (tmp_path / "plain" / "predictions.jsonl").read_text().splitlines())}
    assert len(set(texts.values())) > len(texts) // 2  # sampled: the draws differ
    live = run(load_config(tiny_config(tmp_path, tiny_model, tiny_adapters, tmp_path / "live", n=6,
                                       run_extra=sampling + "  adaptive: {rule: none, order: given}\n")))
    rows = [json.loads(x) for x in (tmp_path / "live" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == len(texts) == live.calls["made"] and plain.matrix.n_samples == 3
    assert {(r["item"], r["voter"], r["sample"]): r["text"] for r in rows} == texts


def test_item_votes_codes_options_and_open_answers():
    """The rule's view of one item: option letters (an answer outside them is no vote, as in
    replay), or open answers by sorted name with n_classes left to walk_item (seen + 1)."""
    from ensemble.adaptive import item_votes
    from ensemble.data.items import Item

    rows = [{"answer": "B", "confidence": 0.9}, {"answer": "E"}, {"answer": None}, None]
    votes, n = item_votes(Item(id="x", question="q", options=("yes", "no")), rows)
    assert n == 2 and votes(0) == (1, 0.9) and votes(1)[0] == votes(2)[0] == ABSTAIN and votes(3) is None
    assert np.isnan(votes(1)[1])
    votes, n = item_votes(Item(id="y", question="q"), [{"answer": "41"}, {"answer": "40"}, {"answer": "41"}])
    assert n is None and [votes(k)[0] for k in range(3)] == [1, 0, 1]
