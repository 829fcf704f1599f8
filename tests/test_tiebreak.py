"""Tie-break policies: hand-written answers per policy, float ties, order-freedom.

Matrices are strings, one per item, one letter per voter over A, B, C ("." abstains);
``letters`` turns answers back into such a string. Item ids default to "0", "1", ...
and the ``random`` policy draws from blake2b(item id): the hashes of the ids used
here are spelled out in HASH so every expected answer can be checked by hand.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from conftest_voting import CLASSES, codes, letters, rows

from ensemble.errors import EnsembleError
from ensemble.predictions.matrix import (
    ABSTAIN,
    VoteMatrix,
    argmax_with_ties,
    from_arrays,
    tied_classes,
)
from ensemble.voting import METHODS, vote
from ensemble.voting.confidence import confidence
from ensemble.voting.dawid_skene import dawid_skene
from ensemble.voting.majority import majority
from ensemble.voting.select import select
from ensemble.voting.tiebreak import (
    DEFAULT_TIE_BREAK,
    TIE_BREAKS,
    break_ties,
    hash_keys,
)
from ensemble.voting.weighted import fit_log_odds_weights, weighted

POLICIES = list(TIE_BREAKS)

# blake2b(id, digest_size=8) read little-endian, mod 2 and mod 3 (which of 2 or 3 tied classes).
HASH = {"0": (0, 1), "1": (0, 2), "2": (1, 2), "3": (0, 1), "4": (1, 1)}


def test_registry_names_and_default():
    assert POLICIES == ["first", "random", "confidence", "abstain"]
    assert "random" in TIE_BREAKS and "rand" not in TIE_BREAKS
    assert DEFAULT_TIE_BREAK in TIE_BREAKS


def test_hash_keys_are_blake2b_and_stable():
    assert hash_keys(["q000"]).tolist() == [17229277463949662564]
    for item, (mod2, mod3) in HASH.items():
        h = int.from_bytes(hashlib.blake2b(item.encode(), digest_size=8).digest(), "little")
        assert (h % 2, h % 3) == (mod2, mod3) == (int(hash_keys([item])[0] % 2),
                                                   int(hash_keys([item])[0] % 3))


# -- hand-written answers --------------------------------------------------------------
# item 0 "AB." ties A/B (hash mod 2 = 0 -> A); item 1 "BA." ties A/B (0 -> A);
# item 2 "CB." ties B/C (1 -> C); item 3 "ABC" ties all three (mod 3 = 1 -> B);
# item 4 "AAB" has no majority tie; item 5 abstains everywhere.
VOTES = ("AB.", "BA.", "CB.", "ABC", "AAB", "...")
CONF = np.array([[0.4, 0.9, np.nan], [0.5, 0.5, np.nan], [0.7, 0.2, np.nan],
                 [0.3, 0.3, 0.8], [0.1, 0.1, 0.99], [np.nan] * 3])


@pytest.mark.parametrize("policy, expected", [
    ("first", "AABAA."),
    ("random", "AACBA."),
    ("confidence", "BACCA."),   # item 1: 0.5 vs 0.5 -> first; item 4 not tied: A
    ("abstain", "....A."),
])
def test_majority_per_policy(policy, expected):
    assert letters(majority(rows(*VOTES, confidence=CONF), tie_break=policy).labels) == expected


@pytest.mark.parametrize("policy, expected", [
    # weights 1, 1, 2: item 3 -> C alone on top; item 4 ties A 2 / B 2 (hash mod 2 = 1 -> B)
    ("first", "AABCA."),
    ("random", "AACCB."),
    ("confidence", "BACCB."),   # item 4: A 0.1 + 0.1 < B 0.99
    ("abstain", "...C.."),
])
def test_weighted_per_policy(policy, expected):
    m = rows(*VOTES, confidence=CONF)
    assert letters(weighted(m, weights=[1, 1, 2], tie_break=policy).labels) == expected


@pytest.mark.parametrize("policy, expected", [
    # scores = summed confidence: only item 1 (0.5 vs 0.5) is tied; its hash picks A
    ("first", "BACCB."),
    ("random", "BACCB."),
    ("confidence", "BACCB."),   # the tie key is the score itself: still tied -> first
    ("abstain", "B.CCB."),
])
def test_confidence_method_per_policy(policy, expected):
    assert letters(confidence(rows(*VOTES, confidence=CONF), tie_break=policy).labels) == expected


@pytest.mark.parametrize("policy, expected", [
    # Two voters; swapping them and A <-> B maps the data set onto itself, so
    # Dawid–Skene's posteriors tie on "AB" (item 1) and "BA" (item 2).
    ("first", "AAABC"),
    ("random", "AABBC"),       # item 1: hash mod 2 = 0 -> A; item 2: 1 -> B
    ("confidence", "ABABC"),   # item 1: A 0.2 < B 0.9; item 2: 0.5 vs 0.5 -> first
    ("abstain", "A..BC"),
])
def test_dawid_skene_per_policy(policy, expected):
    conf = np.array([[0.5, 0.5], [0.2, 0.9], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    m = rows("AA", "AB", "BA", "BB", "CC", confidence=conf)
    assert letters(dawid_skene(m, tie_break=policy).labels) == expected


def test_samples_voter_ties_follow_the_policy():
    # One item, two voters x two samples: v0 = A,B (tied inside), v1 = B,B.
    labels = np.array([[codes("AB"), codes("BB")]])
    conf = np.array([[[0.9, 0.1], [0.5, 0.5]]])
    m = from_arrays(labels, CLASSES, confidence=conf)
    assert letters(majority(m, samples="voter").labels) == "A"          # v0 -> A; A/B tie -> A
    assert letters(majority(m, samples="voter", tie_break="abstain").labels) == "B"  # v0 abstains
    # confidence: v0 -> A (0.9 > 0.1) with confidence 0.9; then A 0.9 vs B 0.5 -> A
    assert letters(majority(m, samples="voter", tie_break="confidence").labels) == "A"


# -- float ties ------------------------------------------------------------------------

def test_float_sums_equal_up_to_rounding_are_ties():
    # B 0.1 + B 0.2 = 0.30000000000000004 > A 0.3 in floating point: a tie by the rule.
    m = rows("BBA", confidence=np.array([[0.1, 0.2, 0.3]]))
    assert 0.1 + 0.2 > 0.3
    assert letters(confidence(m).labels) == "A"
    assert letters(weighted(m, weights=[0.1, 0.2, 0.3]).labels) == "A"
    assert letters(confidence(m, tie_break="abstain").labels) == "."
    assert confidence(m).info["n_tied"] == 1
    probs = np.array([[[0.1, 0.9, 0.0], [0.2, 0.8, 0.0], [0.0, 0.0, 1.0]]])  # soft: A 0.3 vs B 1.7
    assert letters(confidence(rows("BBC", probs=probs)).labels) == "B"


def test_tied_classes_tolerance():
    scores = np.array([[0.1 + 0.2, 0.3, 0.0], [1.0, 1.0 - 1e-6, 0.5], [0.0, 0.0, 0.0],
                       [1e6, 1e6 + 1e-4, 3.0]])
    np.testing.assert_array_equal(tied_classes(scores), [[True, True, False], [True, False, False],
                                                         [False, False, False], [True, True, False]])
    assert argmax_with_ties(scores).tolist() == [0, 0, ABSTAIN, 0]
    assert break_ties(scores, "abstain").tolist() == [ABSTAIN, 0, ABSTAIN, ABSTAIN]


# -- errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", METHODS.names())
def test_unknown_policy_gets_did_you_mean(name):
    with pytest.raises(EnsembleError, match=rf"{name}: Unknown tie_break 'frist'\. Did you mean "
                                            rf"'first'\? Available: first, random, confidence, "
                                            rf"abstain \(option '{name}\.tie_break'\)"):
        vote(rows("AB", "BA", gold="AB"), name, dev=np.array([True, True]), tie_break="frist")


def test_break_ties_rejects_an_unknown_policy_even_without_ties():
    with pytest.raises(EnsembleError, match=r"Unknown tie_break 'abstian'\. Did you mean 'abstain'"):
        break_ties(np.array([[1.0, 0.0]]), "abstian")


def test_confidence_policy_without_confidences_is_first_and_says_so():
    m = rows("AB", "BA", "CB")                                   # labels only
    d = majority(m, tie_break="confidence")
    assert letters(d.labels) == "AAB"
    assert d.info["tie_break"] == "first" and d.info["tie_break_requested"] == "confidence"
    assert "tie_break_requested" not in majority(m, tie_break="random").info


def test_default_policy_is_first():
    # Chosen on the bundled benchmark's dev split by experiments/tie_break.py --run
    # (experiments/results/tie_break.json): first >= every other policy on dev.
    assert DEFAULT_TIE_BREAK == "first"
    m = rows("AB", "BA", confidence=np.array([[0.2, 0.9], [0.6, 0.3]]))
    assert letters(majority(m).labels) == "AA"                  # ties go to the label that sorts first
    assert letters(majority(m, tie_break="confidence").labels) == "BB"  # B's vote is surer both times


# -- every method, every policy ------------------------------------------------------

def symmetric(n_tied: int = 100) -> tuple[VoteMatrix, np.ndarray]:
    """Voters v0 = v1 and v2 = v3 (duplicates); swapping the pairs and A <-> B maps the
    data set onto itself, so every method scores A and B equally on "AABB" / "BBAA".

    dev: 12 unanimous items with gold (every voter right); then n_tied "AABB" and
    n_tied "BBAA" items, then "CCCC" and "AAAA" items without gold.
    """
    dev = ["AAAA", "BBBB", "CCCC"] * 4
    test = ["AABB", "BBAA"] * n_tied + ["CCCC", "AAAA", "BBBB"]
    labels = np.array([codes(r) for r in dev + test])
    gold = np.array(codes("".join(r[0] for r in dev)) + [ABSTAIN] * len(test))
    conf = np.full(labels.shape, 0.6)
    m = from_arrays(labels, CLASSES, gold=gold, confidence=conf,
                    items=[f"d{i}" for i in range(len(dev))] + [f"t{i}" for i in range(len(test))])
    return m, np.arange(len(dev) + len(test)) < len(dev)


# select would pick one voter on this dev set (each alone is perfect); start it from all.
OPTIONS = {"select": {"init": 4}}


def run(m: VoteMatrix, name: str, dev: np.ndarray, policy: str):
    return vote(m, name, dev=dev, tie_break=policy, **OPTIONS.get(name, {}))


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_ties_on_the_symmetric_items(name):
    m, dev = symmetric()
    d = run(m, name, dev, "first")
    tied = np.flatnonzero(tied_classes(d.scores).sum(axis=1) > 1)
    np.testing.assert_array_equal(tied, np.flatnonzero(dev == 0)[:200])  # exactly the AABB/BBAA
    assert letters(d.labels[tied]) == "A" * 200 and d.info["n_tied"] == 200


@pytest.mark.parametrize("name", METHODS.names())
def test_abstain_leaves_exactly_the_ties_unanswered(name):
    m, dev = symmetric()
    d = run(m, name, dev, "abstain")
    n_top = tied_classes(d.scores).sum(axis=1)
    assert (n_top > 1).sum() == 200
    assert (d.labels[n_top > 1] == ABSTAIN).all()
    single = n_top == 1
    np.testing.assert_array_equal(d.labels[single], argmax_with_ties(d.scores[single]))


@pytest.mark.parametrize("name", METHODS.names())
def test_random_is_unbiased_and_free_of_item_and_voter_order(name):
    m, dev = symmetric()
    d = run(m, name, dev, "random")
    tied = d.labels[~dev][:200]
    n_a, n_b = int((tied == 0).sum()), int((tied == 1).sum())
    assert n_a + n_b == 200 and 60 < n_a < 140           # Binomial(200, 1/2): sd 7
    expected = ["AB"[int(k % 2)] for k in hash_keys(m.items[12:212])]
    assert letters(tied) == "".join(expected)              # the hash of the id decides
    perm = np.random.default_rng(0).permutation(m.n_items)
    by_item = run(m.select_items(perm), name, dev[perm], "random")
    np.testing.assert_array_equal(by_item.labels, d.labels[perm])
    by_voter = run(m.select_voters([2, 0, 3, 1]), name, dev, "random")
    np.testing.assert_array_equal(by_voter.labels, d.labels)


def planted(n_items: int = 120, seed: int = 3) -> tuple[VoteMatrix, np.ndarray]:
    """6 voters, 2 samples, 3 classes; confidences on a 0.1 grid (float ties galore)."""
    rng = np.random.default_rng(seed)
    acc = np.array([0.8, 0.7, 0.6, 0.5, 0.45, 0.4])
    gold = rng.integers(0, 3, n_items)
    shape = (n_items, 6, 2)
    labels = np.where(rng.random(shape) < acc[None, :, None], gold[:, None, None],
                      (gold[:, None, None] + rng.integers(1, 3, shape)) % 3)
    labels[rng.random(shape) < 0.1] = ABSTAIN
    conf = rng.integers(1, 10, shape) / 10
    m = from_arrays(labels, CLASSES, gold=gold, confidence=conf)
    return m, np.arange(n_items) < n_items // 2


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", METHODS.names())
def test_voter_order_never_changes_the_decision(name, policy):
    m, dev = planted()
    a = vote(m, name, dev=dev, tie_break=policy)
    for order in ([5, 3, 1, 0, 4, 2], [1, 0, 2, 3, 4, 5]):
        b = vote(m.select_voters(order), name, dev=dev, tie_break=policy)
        np.testing.assert_array_equal(b.labels, a.labels)
        assert b.info["n_tied"] == a.info["n_tied"]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("samples", ["each", "voter"])
def test_uniform_weights_equal_majority_under_every_policy(policy, samples):
    m, _ = planted()
    a = weighted(m, weights=[0.7] * 6, samples=samples, tie_break=policy)
    b = majority(m, samples=samples, tie_break=policy)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.scores, b.scores)
    assert a.info["n_tied"] == b.info["n_tied"] > 0


# -- select: voter ties by name ----------------------------------------------------------

@pytest.mark.parametrize("order", [["b", "a", "c"], ["a", "b", "c"], ["c", "b", "a"]])
def test_select_voter_ties_go_to_the_name_that_sorts_first(order):
    # a and b are duplicates (each alone 3 of 4 right); c gets 1. Whatever the column
    # order, "a" is taken first; adding b or c then gains nothing, so selection stops.
    base = from_arrays(np.array([codes(r) for r in ("AAB", "BBB", "CCA", "AAA")]), CLASSES,
                       gold=np.array(codes("ABCB")), voters=["a", "b", "c"])
    m = base.select_voters(order)
    d = select(m, dev=np.ones(4, dtype=bool))
    assert d.info["chosen"] == ["a"]
    assert d.info["weights"] == {"a": 1, "b": 0, "c": 0}
    assert select(m, dev=np.ones(4, dtype=bool), init=2).info["chosen"] == ["a", "b"]


# -- weighted: chance from each item's own options ---------------------------------------

def coin_flip_matrix(n: int = 400) -> tuple[VoteMatrix, np.ndarray]:
    """4 classes in the file, every item a 2-option (A/B) question; v0 right on every
    other item (a coin flip), v1 right on 3 of 4."""
    gold = np.arange(n) % 2                                   # A, B, A, B ...
    v0 = np.where(np.arange(n) % 4 < 2, gold, 1 - gold)       # right on exactly half
    v1 = np.where(np.arange(n) % 4 < 3, gold, 1 - gold)
    valid = np.zeros((n, 4), dtype=bool)
    valid[:, :2] = True
    m = from_arrays(np.stack([v0, v1], axis=1), ["A", "B", "C", "D"], gold=gold, valid=valid)
    return m, np.ones(n, dtype=bool)


def test_coin_flip_voter_on_two_option_items_gets_weight_zero():
    m, dev = coin_flip_matrix()
    w = fit_log_odds_weights(m, dev)
    # Old rule (chance 1/4 from the 4 labels in the file): log(3 * p / (1 - p)) ~ log 3.
    assert w[0] == pytest.approx(0.0, abs=1e-12)
    p1 = (300 + 1) / (400 + 2)
    assert w[1] == pytest.approx(np.log(p1 / (1 - p1)))
    assert weighted(m, dev=dev).info["weights"]["v0"] == pytest.approx(0.0, abs=1e-12)


def test_chance_is_the_mean_over_the_items_a_voter_answered():
    # Items 0-1 have 2 options, items 2-3 have 4; v0 answers all four (chance
    # (1/2 + 1/2 + 1/4 + 1/4) / 4 = 3/8; right on items 0 and 2), v1 only the
    # 4-option ones (chance 1/4; right on both).
    valid = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=bool)
    labels = np.array([[0, ABSTAIN], [1, ABSTAIN], [2, 2], [0, 3]])
    m = from_arrays(labels, ["A", "B", "C", "D"], gold=np.array([0, 0, 2, 3]), valid=valid)
    w = fit_log_odds_weights(m, np.ones(4, dtype=bool))
    c0, c1 = 3 / 8, 1 / 4
    p0, p1 = (2 + 1) / (4 + 1 / c0), (2 + 1) / (2 + 1 / c1)
    logit = lambda x: np.log(x / (1 - x))
    np.testing.assert_allclose(w, [logit(p0) - logit(c0), logit(p1) - logit(c1)])


# -- fast paths against plain ones ---------------------------------------------------------

def test_tied_classes_equals_the_isclose_rule():
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 4, (2000, 4)) / 10 * rng.choice([1.0, 0.1 + 0.2, 3.0], (2000, 1))
    scores[::7] += rng.normal(0, 1e-13, (len(scores[::7]), 4))      # rounding-size noise
    scores = np.abs(scores)
    plain = np.isclose(scores, scores.max(axis=1, keepdims=True), rtol=1e-9, atol=1e-12) \
        & (scores > 0)
    np.testing.assert_array_equal(tied_classes(scores), plain)
    assert 0 < (plain.sum(axis=1) > 1).sum() < len(scores)


@pytest.mark.parametrize("policy", ["random", "confidence"])
def test_row_functions_equal_full_arrays(policy):
    # decision() computes hash keys and confidence sums for the tied rows only.
    rng = np.random.default_rng(6)
    scores = rng.integers(0, 3, (500, 3)).astype(float)
    second = rng.integers(0, 3, (500, 3)) / 4
    ids = [f"item{i}" for i in range(500)]
    full = break_ties(scores, policy, keys=hash_keys(ids), tie_scores=second)
    lazy = break_ties(scores, policy, keys=lambda r: hash_keys([ids[i] for i in r]),
                      tie_scores=lambda r: second[r])
    np.testing.assert_array_equal(lazy, full)
    assert (full != break_ties(scores, "first")).any()


def test_abstain_policy_makes_the_submission_ask_for_a_fallback(tmp_path):
    # `--option majority.tie_break=abstain`: the tied item has no answer, and writing
    # a submission needs an explicit fallback for it.
    from ensemble.data.items import Item
    from ensemble.evaluation.report import evaluate
    from ensemble.evaluation.submission import write_answers

    m = from_arrays(np.array([codes("AB"), codes("AA")]), CLASSES, items=["q1", "q2"])
    report = evaluate(m, ["majority"], method_options={"majority": {"tie_break": "abstain"}},
                      n_boot=0)
    answers = report.answers("majority")
    assert answers == {"q1": None, "q2": "A"}
    items = [Item(id=i, question="?", options=("x", "y", "z")) for i in ("q1", "q2")]
    with pytest.raises(EnsembleError, match=r"1 item\(s\) abstained \(no answer\): .*q1.*pass a "
                                            r"fallback"):
        write_answers(answers, tmp_path / "sub.csv", items=items)
    assert write_answers(answers, tmp_path / "sub.csv", items=items, fallback="first").n_filled == 1


def test_experiment_reads_a_run_folder_and_writes_the_comparison(tmp_path):
    # experiments/tie_break.py on a `vote run` layout: data/{dev,test}.jsonl (nested
    # problems) + predictions.jsonl; the run's own dev split is used.
    import json
    import subprocess
    import sys
    from pathlib import Path

    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    preds = []
    for split, n in (("dev", 12), ("test", 12)):
        problems = []
        for p in range(n):
            pid = f"{split}_{p}"
            problems.append({"id": pid, "problem": "?", "questions": [
                {"question": f"q{k}", "options": ["x", "y", "z"], "answer": "ABC"[(p + k) % 3]}
                for k in range(2)]})
            for k in range(2):
                gold = (p + k) % 3
                for v in range(3):
                    ans = gold if rng.random() < 0.6 else int(rng.integers(0, 3))
                    probs = np.full(3, 0.2)
                    probs[ans] = 0.6
                    preds.append({"item": f"{pid}#{k + 1}", "voter": f"v{v}", "answer": "ABC"[ans],
                                  "confidence": float(rng.uniform(0.3, 0.9)),
                                  "probs": dict(zip("ABC", probs.tolist()))})
        (run / "data" / f"{split}.jsonl").write_text(
            "".join(json.dumps(x) + "\n" for x in problems), encoding="utf-8")
    (run / "predictions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in preds),
                                           encoding="utf-8")
    out = tmp_path / "tie_break.json"
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "experiments" / "tie_break.py"), "--run",
                           str(run), "--out", str(out)], capture_output=True, text=True,
                          cwd=root, env={"PYTHONPATH": str(root), "PATH": ""}, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["data"]["n_dev_per_split"] == [24] and report["data"]["n_test_per_split"] == [24]
    assert report["data"]["has_options"] and report["source"]["split"].startswith("the run's own")
    assert set(report["results"]) == set(METHODS.names())
    assert set(report["results"]["majority"]) == set(TIE_BREAKS)
    assert report["summary"]["winner_on_dev"] in TIE_BREAKS
