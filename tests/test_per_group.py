"""Per-group fits of weighted / select / stack (``per_group=True``, ensemble.voting.groups).

Fixture ``two_groups``: classes A, B, C; voters a, b; one sample each.
  group X: gold A, a votes A (right), b votes B (wrong)
  group Y: gold C, a votes A (wrong), b votes C (right)
10 dev + 5 test items per group. Globally a and b are equally good (10 / 20), so the
global vote ties on every item and tie_break="first" answers A: right on X, wrong on Y
(test accuracy 0.5). Per group, a wins on X and b on Y: 1.0.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from ensemble.cli.app import main
from ensemble.config.checks import check_method_options
from ensemble.config.loader import ConfigError
from ensemble.errors import EnsembleError
from ensemble.predictions.matrix import VoteMatrix, from_arrays
from ensemble.voting import vote
from ensemble.voting.weighted import fit_log_odds_weights

A, B, C = 0, 1, 2
METHODS = ("weighted", "select", "stack")


def matrix(spec: list[tuple[str, str, int, int, int]]) -> tuple[VoteMatrix, np.ndarray]:
    """spec rows (item, group, gold, vote of a, vote of b) -> (matrix, dev mask: ids 'd*')."""
    m = from_arrays(np.array([[r[3], r[4]] for r in spec]), ["A", "B", "C"],
                    items=[r[0] for r in spec], voters=["a", "b"],
                    gold=np.array([r[2] for r in spec]))
    m = replace(m, groups=tuple(r[1] for r in spec))
    return m, np.array([r[0].startswith("d") for r in spec])


def two_groups(extra: list[tuple[str, str, int, int, int]] | None = None):
    spec = []
    for split, n in (("d", 10), ("t", 5)):
        spec += [(f"{split}x{i}", "X", A, A, B) for i in range(n)]
        spec += [(f"{split}y{i}", "Y", C, A, C) for i in range(n)]
    return matrix(spec + (extra or []))


def eval_accuracy(m: VoteMatrix, dev: np.ndarray, labels: np.ndarray) -> float:
    assert m.gold is not None
    return float((labels[~dev] == m.gold[~dev]).mean())


@pytest.mark.parametrize("method", METHODS)
def test_per_group_beats_global_on_groups_with_opposite_experts(method):
    m, dev = two_groups()
    glob = vote(m, method, dev=dev, tie_break="first")
    off = vote(m, method, dev=dev, tie_break="first", per_group=False)
    per = vote(m, method, dev=dev, tie_break="first", per_group=True, group_prior=5)
    # per_group=false is the global fit: A everywhere (the tie's first class)
    assert glob.labels.tolist() == off.labels.tolist() == [A] * m.n_items
    assert "group_weights" not in off.info
    assert eval_accuracy(m, dev, glob.labels) == 0.5
    assert eval_accuracy(m, dev, per.labels) == 1.0
    assert per.info["per_group"] is True and per.info["group_dev_items"] == {"X": 10, "Y": 10}
    gw = per.info["group_weights"]
    assert gw["X"]["a"] > gw["X"]["b"] and gw["Y"]["b"] > gw["Y"]["a"]


def test_weighted_group_weights_follow_the_shrunk_accuracy():
    # X: a 10/10, b 0/10; global p = (10 + 1) / (20 + 3) for both, chance 1/3.
    m, dev = two_groups()
    d = vote(m, "weighted", dev=dev, per_group=True, group_prior=5)
    p_all = 11 / 23
    p_a = (10 + 5 * p_all + 1) / (10 + 5 + 3)
    assert (0 + 5 * p_all + 1) / (10 + 5 + 3) < 1 / 3       # b: below chance -> weight 0
    w_a = math.log(p_a / (1 - p_a)) + math.log(2)          # - logit(1/3) = + log 2
    assert d.info["group_weights"]["X"]["a"] == pytest.approx(w_a, rel=1e-12)
    assert d.info["group_weights"]["X"]["b"] == 0.0


def test_one_dev_item_group_stays_close_to_the_global_weights():
    # Z: one dev item, a right and b wrong. Globally a is 11/21 right, b 10/21.
    m, dev = two_groups([("dz0", "Z", A, A, B), ("tz0", "Z", B, A, B)])
    d = vote(m, "weighted", dev=dev, per_group=True)        # default group_prior=20
    glob = fit_log_odds_weights(m, dev)
    p_b = 11 / 24                                 # global smoothed accuracy of b (a: 12/24)
    assert glob.tolist() == pytest.approx([math.log(2), math.log(p_b / (1 - p_b)) + math.log(2)])
    z = d.info["group_weights"]["Z"]
    p_bz = (0 + 20 * p_b + 1) / (1 + 20 + 3)                # own fit alone: 1/4 -> weight 0
    assert z["a"] == pytest.approx(math.log(2))             # (1 + 20 * 1/2 + 1) / 24 = 1/2
    assert z["b"] == pytest.approx(math.log(p_bz / (1 - p_bz)) + math.log(2))
    assert 0.7 * glob[1] < z["b"] < glob[1]                # moved a little toward 0, not to 0
    own = vote(m, "weighted", dev=dev, per_group=True, group_prior=0).info["group_weights"]["Z"]
    assert own["b"] == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_infinite_prior_is_exactly_the_global_fit(method):
    m, dev = two_groups([("dz0", "Z", A, A, B), ("tz0", "Z", B, A, B), ("tn0", "", B, B, A)])
    glob = vote(m, method, dev=dev)
    per = vote(m, method, dev=dev, per_group=True, group_prior=math.inf)
    assert np.array_equal(glob.labels, per.labels)
    assert np.array_equal(glob.scores, per.scores)
    for g in ("X", "Y", "Z"):
        assert per.info["group_weights"][g] == pytest.approx(glob.info["weights"], abs=0)


@pytest.mark.parametrize("method", METHODS)
def test_zero_prior_is_an_independent_fit_per_group(method):
    m, dev = two_groups([("dz0", "Z", B, A, B), ("dz1", "Z", B, B, A), ("tz0", "Z", B, B, A)])
    per = vote(m, method, dev=dev, per_group=True, group_prior=0)
    groups = np.array(m.groups)
    for g in ("X", "Y", "Z"):
        rows = np.flatnonzero(groups == g)
        alone = vote(m.select_items(rows), method, dev=dev[rows])
        assert per.labels[rows].tolist() == alone.labels.tolist(), g
        if method == "stack":
            assert per.info["group_weights"][g] == pytest.approx(alone.info["weights"], rel=1e-12)
            assert np.allclose(per.scores[rows], alone.scores)


def test_items_without_group_use_the_global_fit():
    # An ungrouped test item where only b is right: global weights (equal) tie -> A, wrong.
    m, dev = two_groups([("tn0", "", B, A, B)])
    per = vote(m, "weighted", dev=dev, tie_break="first", per_group=True, group_prior=0)
    assert per.labels[-1] == A and "" not in per.info["group_weights"]


@pytest.mark.parametrize("method", METHODS)
def test_row_and_voter_order_do_not_matter(method):
    m, dev = two_groups([("dz0", "Z", B, A, B), ("dz1", "Z", A, A, B), ("tz0", "Z", B, B, A)])
    base = vote(m, method, dev=dev, per_group=True, group_prior=3)
    by_item = dict(zip(m.items, base.labels.tolist()))
    perm = np.random.default_rng(0).permutation(m.n_items)
    shuffled = m.select_items(perm).select_voters(["b", "a"])
    again = vote(shuffled, method, dev=dev[perm], per_group=True, group_prior=3)
    assert dict(zip(shuffled.items, again.labels.tolist())) == by_item
    for g, w in base.info["group_weights"].items():
        assert again.info["group_weights"][g] == pytest.approx(w, rel=1e-6)
    assert list(again.info["group_weights"]) == ["X", "Y", "Z"]       # sorted groups


@pytest.mark.parametrize("method", METHODS)
def test_per_group_without_groups_says_how_to_give_them(method):
    m, dev = two_groups()
    for no_groups in (replace(m, groups=None), replace(m, groups=("",) * m.n_items)):
        with pytest.raises(EnsembleError, match=rf"{method}: per_group=true, but the items carry "
                           r"no group: give each item a group: a 'group' column in the "
                           r"predictions rows, or a subject / category / kind field"):
            vote(no_groups, method, dev=dev, per_group=True)
    # per_group=false needs no groups
    vote(replace(m, groups=None), method, dev=dev)


@pytest.mark.parametrize("options, message", [
    ({"per_group": "yes"}, r"weighted: per_group must be true or false, got 'yes'"),
    ({"per_group": True, "group_prior": -1}, r"group_prior must be a number of dev items >= 0"),
    ({"per_group": True, "group_prior": math.nan}, r"group_prior must be a number"),
    ({"per_group": True, "weights": [1, 1]}, r"per_group=true fits weights on dev, but weights="),
])
def test_bad_options(options, message):
    m, dev = two_groups()
    with pytest.raises(EnsembleError, match=message):
        vote(m, "weighted", dev=dev, **options)


def test_config_accepts_the_new_options_by_signature():
    check_method_options({m: {"per_group": True, "group_prior": 5} for m in METHODS})
    with pytest.raises(ConfigError, match=r"per_grup.*Did you mean 'per_group'"):
        check_method_options({"stack": {"per_grup": True}})


def test_cli_eval_per_group_option(tmp_path):
    m, dev = two_groups()
    pred = tmp_path / "pred.jsonl"
    names = m.classes
    with pred.open("w") as f:
        for i, item in enumerate(m.items):
            for j, voter in enumerate(m.voters):
                f.write(json.dumps({"item": item, "voter": voter, "group": m.groups[i],
                                    "answer": names[m.labels[i, j, 0]]}) + "\n")
    assert m.gold is not None
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps({"item": it, "answer": names[g]}) + "\n"
                            for it, g in zip(m.items, m.gold)))
    dev_file = tmp_path / "dev.txt"
    dev_file.write_text("\n".join(it for it, d in zip(m.items, dev) if d) + "\n")
    args = ["eval", str(pred), "--gold", str(gold), "--fit-on", "dev", "--dev-items", str(dev_file),
            "-m", "weighted", "--json", "--n-boot", "0", "--option", "weighted.tie_break=first"]
    runner = CliRunner()
    glob = json.loads(runner.invoke(main, args, catch_exceptions=False).output)
    res = runner.invoke(main, args + ["--option", "weighted.per_group=true",
                                      "--option", "weighted.group_prior=5"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    per = json.loads(res.output)
    assert per["n_eval_items"] == 10
    assert glob["methods"]["weighted"]["accuracy"] == 0.5
    assert per["methods"]["weighted"]["accuracy"] == 1.0
    assert per["methods"]["weighted"]["info"]["group_dev_items"] == {"X": 10, "Y": 10}


@pytest.mark.parametrize("tie_break", ["first", "confidence", "random", "abstain"])
def test_weighted_per_group_under_every_tie_policy_and_one_vote_per_voter(tie_break):
    # 2 samples per voter (the same vote twice): samples="voter" reduces them to one
    m, dev = two_groups()
    m2 = replace(m, labels=np.repeat(m.labels, 2, axis=2))
    for samples in ("each", "voter"):
        d = vote(m2, "weighted", dev=dev, samples=samples, tie_break=tie_break, per_group=True,
                 group_prior=5)
        assert eval_accuracy(m2, dev, d.labels) == 1.0 and d.info["n_tied"] == 0
