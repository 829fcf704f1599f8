"""Voting methods: hand-written cases with spelled-out answers, invariances, errors.

Matrices are written as strings, one per item, one letter per voter over the
classes A, B, C; "." is an abstention. ``letters(decision.labels)`` turns the
answers back into such a string, so every expectation reads as "AAB.".
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest_voting import CLASSES, codes, letters, rows

from ensemble.errors import EnsembleError
from ensemble.predictions.matrix import ABSTAIN, VoteMatrix, from_arrays
from ensemble.voting import METHODS, vote
from ensemble.voting.confidence import confidence, top_share
from ensemble.voting.dawid_skene import dawid_skene
from ensemble.voting.majority import majority
from ensemble.voting.select import select
from ensemble.voting.stack import stack
from ensemble.voting.weighted import fit_log_odds_weights, log_odds_weights, weighted


def planted(accuracy, n_items: int, n_classes: int = 3, n_samples: int = 1, abstain=0.05,
            seed: int = 0, probs: bool = False) -> VoteMatrix:
    """Voter j is right with probability accuracy[j], else uniform over the wrong classes."""
    rng = np.random.default_rng(seed)
    V = len(accuracy)
    gold = rng.integers(0, n_classes, n_items)
    shape = (n_items, V, n_samples)
    right = rng.random(shape) < np.asarray(accuracy)[None, :, None]
    wrong = (gold[:, None, None] + rng.integers(1, n_classes, shape)) % n_classes
    labels = np.where(right, gold[:, None, None], wrong)
    labels[rng.random(shape) < abstain] = ABSTAIN
    conf = np.round(rng.uniform(0.05, 1.0, shape), 2)
    p = None
    if probs:
        p = rng.dirichlet(np.ones(n_classes), shape)
        p = 0.5 * p + 0.5 * np.eye(n_classes)[np.maximum(labels, 0)]  # leans to the vote
        p[labels == ABSTAIN] = np.nan
    classes = [str(c) for c in range(n_classes)]
    return from_arrays(labels, classes, gold=gold, confidence=conf, probs=p)


# -- majority ------------------------------------------------------------------------

def test_majority_hand_written():
    m = rows("AAB", "BA.", "AB.", "CCB", "...", "BCC", ".B.")
    d = majority(m)
    assert letters(d.labels) == "AAAC.CB"
    np.testing.assert_allclose(d.scores[0], [2 / 3, 1 / 3, 0])
    np.testing.assert_allclose(d.scores[4], [0, 0, 0])


def test_tie_rule_lowest_class_wins_everywhere():
    m = rows("AB", "BA", "CB", "BC")
    assert letters(majority(m).labels) == "AABB"
    assert letters(weighted(m, weights={"v0": 1.0, "v1": 1.0}).labels) == "AABB"
    # A heavier second voter breaks the tie its way.
    assert letters(weighted(m, weights={"v0": 1.0, "v1": 2.0}).labels) == "BABC"
    equal = np.full((4, 2), 0.6)
    assert letters(confidence(rows("AB", "BA", "CB", "BC", confidence=equal)).labels) == "AABB"


def test_samples_voter_differs_from_each():
    # One item, voters x samples: v0 = AAA, v1 = BBA, v2 = BBA.
    labels = np.array([[codes("AAA"), codes("BBA"), codes("BBA")]])
    m = from_arrays(labels, CLASSES)
    assert letters(majority(m, samples="each").labels) == "A"    # A: 5 votes, B: 4
    assert letters(majority(m, samples="voter").labels) == "B"   # voters say A, B, B
    np.testing.assert_allclose(majority(m, samples="voter").scores, [[1 / 3, 2 / 3, 0]])


def test_samples_voter_tie_within_a_voter_and_all_abstaining_voter():
    # v0 samples A,B (tie -> A), v1 samples B,. (-> B), v2 abstains twice.
    labels = np.array([[codes("AB"), codes("B."), codes("..")],
                       [codes("CB"), codes("CB"), codes("..")]])
    m = from_arrays(labels, CLASSES)
    assert letters(majority(m, samples="voter").labels) == "AB"  # A,B tie -> A; B,B -> B


def test_unknown_samples_mode():
    with pytest.raises(EnsembleError, match=r"Unknown samples mode 'eech'\. Did you mean 'each'\?"):
        majority(rows("AB"), samples="eech")


# -- weighted ------------------------------------------------------------------------

def test_weighted_hand_written():
    m = rows("AAB", "ABC", "CC.", "..B", "...")
    d = weighted(m, weights={"v0": 1.0, "v1": 1.0, "v2": 3.0})
    assert letters(d.labels) == "BCCB."
    np.testing.assert_allclose(d.scores[0], [0.4, 0.6, 0])
    assert d.info["weights"] == {"v0": 1.0, "v1": 1.0, "v2": 3.0}
    # A sequence aligned with m.voters means the same.
    assert letters(weighted(m, weights=[1, 1, 3]).labels) == "BCCB."


def test_zero_weight_votes_do_not_count():
    d = weighted(rows("AB", "A.", ".B"), weights={"v0": 0.0, "v1": 1.0})
    assert letters(d.labels) == "B.B"   # item 1: only v0 voted, with weight 0


@pytest.mark.parametrize("samples", ["each", "voter"])
def test_uniform_weights_equal_majority(samples):
    m = planted([0.8, 0.6, 0.5, 0.4], 200, n_samples=3, seed=1)
    a = weighted(m, weights=[2.5] * 4, samples=samples)
    b = majority(m, samples=samples)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.scores, b.scores)


def test_fit_log_odds_weights_hand_computed():
    # Classes A, B, C; dev = first 5 items. v0 right 3 of 4 votes (1 abstains),
    # v1 right 1 of 5. Laplace: p = (right + 1) / (votes + C).
    m = rows("AB", "BB", "CA", ".A", "AB", "BA", gold="ABCCCB")
    dev = np.array([True] * 5 + [False])
    w = fit_log_odds_weights(m, dev)
    p0, p1 = (3 + 1) / (4 + 3), (1 + 1) / (5 + 3)
    assert p1 < 1 / 3                                                  # below chance (3 classes)
    np.testing.assert_allclose(w, [np.log(2 * p0 / (1 - p0)), 0.0])   # v1 below chance -> 0
    d = weighted(m, dev=dev)
    assert d.info["weights"]["v1"] == 0.0
    assert letters(d.labels) == "ABC.AB"   # only v0 counts; item 3: v0 abstains, v1 weighs 0


def test_log_odds_weights_values():
    w = log_odds_weights([0.25, 0.5, 0.1, 1.0, 0.0], 4)
    np.testing.assert_allclose(w[:3], [0.0, np.log(3.0), 0.0])
    assert np.isfinite(w[3]) and w[3] > 14 and w[4] == 0.0
    np.testing.assert_allclose(log_odds_weights([0.75], 2), [np.log(3.0)])


def test_weighted_fit_prefers_the_more_accurate_voter():
    m = planted([0.9, 0.5, 0.4], 600, seed=2)
    dev = np.arange(600) < 300
    w = weighted(m, dev=dev).info["weights"]
    assert w["v0"] > w["v1"] > w["v2"] >= 0
    assert w["v0"] > 1.5


def test_weighted_errors():
    m = rows("AB", "BA", gold="AB")
    with pytest.raises(EnsembleError, match=r"Weights name unknown voter 'x'\. Voters: v0, v1"):
        weighted(m, weights={"v0": 1.0, "v1": 1.0, "x": 1.0})
    with pytest.raises(EnsembleError, match=r"Weights miss voter\(s\) v1: give every voter a "):
        weighted(m, weights={"v0": 1.0})
    with pytest.raises(EnsembleError, match=r"Got 3 weights for 2 voters \(v0, v1\)"):
        weighted(m, weights=[1, 2, 3])
    with pytest.raises(EnsembleError, match=r"Weight of voter 'v1' is -1\.0: weights must be "):
        weighted(m, weights={"v0": 1.0, "v1": -1.0})
    with pytest.raises(EnsembleError, match=r"Weight of voter 'v0' is nan"):
        weighted(m, weights=[float("nan"), 1.0])
    with pytest.raises(EnsembleError, match=r"weights must map voter -> number, got the string"):
        weighted(m, weights="v0")
    with pytest.raises(EnsembleError, match=r"weights must be numbers"):
        weighted(m, weights=["a", "b"])
    with pytest.raises(EnsembleError, match=r"every weight is 0, so no vote would count"):
        weighted(m, weights=[0, 0])


def test_weighted_fit_errors():
    m = rows("AB", "BA", gold="AB")
    with pytest.raises(EnsembleError, match=r"weighted fits on dev items but got dev=None: pass "
                                            r"weights=\{voter: weight\} or dev items"):
        weighted(m)
    with pytest.raises(EnsembleError, match=r"weighted: none of the 2 dev items has a gold"):
        weighted(rows("AB", "BA"), dev=np.array([True, True]))
    with pytest.raises(EnsembleError, match=r"dev must be a bool mask of shape \(2,\)"):
        weighted(m, dev=np.array([0, 1]))
    # Both voters right on 1 of 2 votes with 3 classes: p = 2/5, log(2 * 2/3) > 0 ...
    # so make them wrong everywhere: p = 1/5 < 1/3 -> every weight 0.
    with pytest.raises(EnsembleError, match=r"every voter is at or below chance \(1 / the options"):
        weighted(rows("BB", "AA", gold="AB"), dev=np.array([True, True]))
    with pytest.raises(EnsembleError, match=r"accuracy at position 1 is 1\.5; accuracies must"):
        log_odds_weights([0.5, 1.5], 3)
    with pytest.raises(EnsembleError, match=r"log-odds weights need at least 2 classes, got 1"):
        log_odds_weights([0.5], 1)


# -- confidence ----------------------------------------------------------------------

def test_confidence_hand_written():
    conf = np.array([[0.2, 0.3, 0.9], [0.5, 0.5, 0.5], [0.1, 0.0, 0.0], [0.0, 0.0, 0.0]])
    d = confidence(rows("AAB", "CBB", "AB.", "AB.", confidence=conf))
    assert letters(d.labels) == "BBA."   # item 3: every vote has confidence 0
    np.testing.assert_allclose(d.scores[0], [0.5 / 1.4, 0.9 / 1.4, 0])


def test_equal_confidences_equal_majority():
    m = planted([0.8, 0.6, 0.5, 0.4, 0.3], 300, n_samples=2, seed=3)
    m_eq = from_arrays(m.labels, m.classes, confidence=np.full(m.labels.shape, 0.7))
    a, b = confidence(m_eq), majority(m_eq)   # same votes and confidences, ties included
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.scores, b.scores)


def test_top_fraction_keeps_the_most_confident_votes():
    # One item: A 0.9, B 0.8, B 0.7, B 0.1. All votes: B (1.6 > 0.9); top half: A 0.9 vs B 0.8.
    m = rows("ABBB", confidence=np.array([[0.9, 0.8, 0.7, 0.1]]))
    assert letters(confidence(m).labels) == "B"
    assert letters(confidence(m, top_fraction=0.5).labels) == "A"
    keep = top_share(m.confidence, m.labels != ABSTAIN, 0.5)
    np.testing.assert_array_equal(keep[0, :, 0], [True, True, False, False])


def test_top_fraction_keeps_ties_and_counts_only_votes():
    conf = np.array([[0.9, 0.5, 0.5, 0.5, 0.99]])
    m = rows("ABCC.", confidence=conf)   # the abstaining v4 is not a vote despite 0.99
    keep = top_share(m.confidence, m.labels != ABSTAIN, 0.5)[0, :, 0]
    np.testing.assert_array_equal(keep, [True, True, True, True, False])   # k=2, cut 0.5
    assert letters(confidence(m, top_fraction=0.5).labels) == "C"           # C 1.0 > A 0.9


def test_top_fraction_exact_products_are_not_rounded_up():
    conf = np.linspace(0.1, 1.0, 10)[None, :]
    m = from_arrays(np.zeros((1, 10), dtype=int), CLASSES, confidence=conf)
    keep = top_share(m.confidence, m.labels != ABSTAIN, 0.3)   # 0.3 * 10 = 3.0000000000000004
    assert int(keep.sum()) == 3


def test_soft_voting_uses_probabilities():
    # Two A votes at 0.55 lose to one confident B vote once probabilities are summed.
    probs = np.array([[[0.55, 0.45, 0], [0.55, 0.45, 0], [0.05, 0.95, 0]]])
    m = rows("AAB", probs=probs)
    assert letters(majority(m).labels) == "A"
    d = confidence(m)
    assert letters(d.labels) == "B" and d.info["soft"] is True
    np.testing.assert_allclose(d.scores, [[1.15 / 3, 1.85 / 3, 0]])
    m_conf = rows("AAB", probs=probs, confidence=np.array([[0.9, 0.9, 0.2]]))
    assert letters(confidence(m_conf, soft=False).labels) == "A"   # 1.8 vs 0.2


def test_soft_top_fraction_ranks_by_top_probability_without_confidences():
    # Keys 0.9 (A), 0.8 (B), 0.6 (B). All: A 1.15 < B 1.5. Top 2: A 1.1 > B 0.9.
    probs = np.array([[[0.9, 0.1, 0], [0.2, 0.8, 0], [0.05, 0.6, 0.35]]])
    m = rows("ABB", probs=probs)
    assert letters(confidence(m).labels) == "B"
    assert letters(confidence(m, top_fraction=0.6).labels) == "A"
    nan_conf = rows("ABB", probs=probs, confidence=np.array([[0.9, np.nan, 0.6]]))
    assert letters(confidence(nan_conf).labels) == "B"   # ranking not needed at 1.0
    with pytest.raises(EnsembleError, match=r"1 of 3 votes have no confidence \(NaN\): give "
                                            r"every vote a confidence or top_fraction=1"):
        confidence(nan_conf, top_fraction=0.6)


def test_confidence_errors():
    with pytest.raises(EnsembleError, match=r"neither confidences nor probabilities: add a "
                                            r"'confidence' column or use majority"):
        confidence(rows("AB"))
    with pytest.raises(EnsembleError, match=r"soft=True needs per-class probabilities"):
        confidence(rows("AB", confidence=np.array([[0.5, 0.5]])), soft=True)
    with pytest.raises(EnsembleError, match=r"top_fraction must be in \(0, 1\], got 0"):
        confidence(rows("AB", confidence=np.array([[0.5, 0.5]])), top_fraction=0)
    with pytest.raises(EnsembleError, match=r"top_fraction must be in \(0, 1\], got 1\.5"):
        confidence(rows("AB", confidence=np.array([[0.5, 0.5]])), top_fraction=1.5)
    nan = np.array([[0.5, np.nan, np.nan], [np.nan, 0.5, 0.5]])
    with pytest.raises(EnsembleError, match=r"confidence: 2 of 5 votes have no confidence \(NaN\)"):
        confidence(rows("AB.", "ABB", confidence=nan))   # the abstention's NaN is fine
    with pytest.raises(EnsembleError, match=r"1 votes have a confidence outside \[0, 1\]"):
        confidence(rows("AB", confidence=np.array([[0.5, 1.5]])))
    probs = np.array([[[0.6, 0.4, 0.0], [np.nan] * 3]])
    with pytest.raises(EnsembleError, match=r"1 of 2 votes have no probabilities \(NaN rows\): "
                                            r"pass soft=False"):
        confidence(rows("AB", probs=probs))


# -- select --------------------------------------------------------------------------

def test_select_hand_written_order_and_tie_break():
    # gold AAAA. Round 1: v0 (3 right) beats v1, v2 (2 each). Round 2: v0+v1 and v0+v2
    # both reach 4 (A,B ties go to A) -> lower index v1. Round 3: nothing beats 4 -> stop.
    m = rows("ABA", "ABB", "AAB", "BAA", "CCB", gold="AAAA.")
    dev = np.array([True] * 4 + [False])
    d = select(m, dev=dev)
    assert d.info["chosen"] == ["v0", "v1"]
    assert d.info["weights"] == {"v0": 1, "v1": 1, "v2": 0}
    assert letters(d.labels) == "AAAAC"   # v2's vote on item 4 does not count
    assert select(m, dev=dev, max_rounds=1).info["chosen"] == ["v0"]


def test_select_sorted_initialization():
    # Same fixture. Alone on dev: v0 3 right, v1 2, v2 2. init=3 starts from all three
    # (item 1: A1 B2 -> B, wrong: 3 right); adding v0 again fixes item 1 (A2 B2 -> A): 4.
    m = rows("ABA", "ABB", "AAB", "BAA", "CCB", gold="AAAA.")
    dev = np.array([True] * 4 + [False])
    d = select(m, dev=dev, init=3)
    assert d.info["chosen"] == ["v0", "v1", "v2", "v0"]
    assert d.info["weights"] == {"v0": 2, "v1": 1, "v2": 1}
    assert letters(d.labels) == "AAAAC"
    # init=2 starts from v0 + v1 (stable order among equals: v1 before v2), already 4 right.
    assert select(m, dev=dev, init=2).info["chosen"] == ["v0", "v1"]
    assert select(m, dev=dev, init=99).info["chosen"][:3] == ["v0", "v1", "v2"]  # more than V: all
    with pytest.raises(EnsembleError, match=r"select: init must be a whole number >= 0 \(voters to start from\), got -1"):
        select(m, dev=dev, init=-1)


def test_select_picks_the_good_voters():
    m = planted([0.85, 0.35, 0.8, 0.3, 0.35, 0.75], 600, seed=4)
    d = select(m, dev=np.arange(600) < 300)
    assert set(d.info["chosen"]) <= {"v0", "v2", "v5"}
    assert d.info["chosen"][0] == "v0"
    assert d.info["weights"]["v1"] == d.info["weights"]["v3"] == d.info["weights"]["v4"] == 0


def test_select_errors():
    m = rows("AB", "BA", gold="AB")
    with pytest.raises(EnsembleError, match=r"select fits on dev items but got dev=None"):
        select(m)
    with pytest.raises(EnsembleError, match=r"max_rounds must be a whole number >= 1, got 0"):
        select(m, dev=np.array([True, True]), max_rounds=0)
    with pytest.raises(EnsembleError, match=r"no voter gets any of the 2 dev items right"):
        select(rows("BB", "AA", gold="AB"), dev=np.array([True, True]))


# -- stack ---------------------------------------------------------------------------

def test_stack_weights_the_reliable_voter_higher():
    m = planted([0.9, 0.55, 0.5], 600, seed=5)
    d = stack(m, dev=np.arange(600) < 300)
    w = d.info["weights"]
    assert w["v0"] > w["v1"] and w["v0"] > w["v2"] and d.info["features"] == "votes"
    assert (d.labels[300:] == m.gold[300:]).mean() > (majority(m).labels[300:] == m.gold[300:]).mean()


def test_stack_binary_equals_logistic_regression():
    # Two classes, all valid: P(1) = sigmoid(sum_j w_j (x_j1 - x_j0)), the penalty
    # ||w||^2/(2C) is sklearn's, so the weights are LogisticRegression's coefficients.
    from sklearn.linear_model import LogisticRegression

    m = planted([0.8, 0.65, 0.55], 400, n_classes=2, seed=6, probs=True, abstain=0.0)
    dev = np.arange(400) < 250
    d = stack(m, dev=dev, C=0.5)
    logp = np.log(np.clip(m.probs[dev, :, 0], 1e-6, 1))            # (D, V, 2)
    lr = LogisticRegression(C=0.5, fit_intercept=False, tol=1e-10, max_iter=10_000)
    lr.fit(logp[:, :, 1] - logp[:, :, 0], m.gold[dev])
    np.testing.assert_allclose(list(d.info["weights"].values()), lr.coef_[0], rtol=1e-3)
    assert d.info["features"] == "probs"


def test_stack_respects_valid_options():
    m = planted([0.8, 0.7, 0.6], 90, seed=7)
    valid = np.ones((90, 3), dtype=bool)
    valid[np.arange(90) % 3 == 0, 2] = False                      # class 2 not an option there
    valid[m.gold == 2, 2] = True
    m = from_arrays(m.labels, m.classes, gold=m.gold, valid=valid)
    d = stack(m, dev=np.arange(90) < 45)
    assert (d.scores[~valid] == 0).all()
    np.testing.assert_allclose(d.scores.sum(axis=1)[(m.labels != ABSTAIN).any(axis=(1, 2))], 1.0)


def test_stack_errors():
    m = rows("AB", "BA", gold="AB")
    dev = np.array([True, True])
    with pytest.raises(EnsembleError, match=r"stack fits on dev items but got dev=None"):
        stack(m)
    with pytest.raises(EnsembleError, match=r"C \(inverse regularisation strength\) must be > 0"):
        stack(m, dev=dev, C=0)
    with pytest.raises(EnsembleError, match=r"Unknown stack features 'prob'\. Did you mean "):
        stack(m, dev=dev, features="prob")
    with pytest.raises(EnsembleError, match=r"features='probs' needs per-class probabilities"):
        stack(m, dev=dev, features="probs")
    probs = np.array([[[0.6, 0.4, 0.0], [np.nan] * 3], [[0.2, 0.8, 0.0], [0.7, 0.3, 0.0]]])
    with pytest.raises(EnsembleError, match=r"stack: 1 of 4 votes have no probabilities "
                                            r"\(NaN rows\): pass features='votes'"):
        stack(rows("AB", "BA", gold="AB", probs=probs), dev=dev)
    valid = np.array([[True, True, False], [True, False, True]])
    with pytest.raises(EnsembleError, match=r"1 dev items have a gold answer that is not one of"):
        stack(rows("AB", "BA", gold="AB", valid=valid), dev=dev)


# -- Dawid–Skene ---------------------------------------------------------------------

def test_dawid_skene_hand_written():
    m = rows("AAA", "BBB", "CCC", "AA.", "...", "BBC")
    d = dawid_skene(m)
    assert letters(d.labels) == "ABCA.B"
    assert set(d.info) >= {"iterations", "converged", "priors", "confusions", "elbo"}
    assert d.info["converged"] and set(d.info["priors"]) == set(CLASSES)


def test_dawid_skene_recovers_planted_structure():
    rng = np.random.default_rng(8)
    I, C = 2000, 3
    gold = rng.integers(0, C, I)
    good = np.where(rng.random((I, 3)) < 0.9, gold[:, None], rng.integers(0, C, (I, 3)))
    # Two adversaries answer "the next class" 80% of the time; three answer at random.
    adversary = np.where(rng.random((I, 2)) < 0.8, (gold[:, None] + 1) % C, rng.integers(0, C, (I, 2)))
    noise = rng.integers(0, C, (I, 3))
    m = from_arrays(np.concatenate([good, adversary, noise], axis=1), ["0", "1", "2"], gold=gold)
    d, mv = dawid_skene(m), majority(m)
    assert (d.labels == gold).mean() > (mv.labels == gold).mean() + 0.05
    assert d.info["converged"]
    diag = {v: np.mean(np.diag(np.array(c))) for v, c in d.info["confusions"].items()}
    assert min(diag[f"v{j}"] for j in range(3)) > max(diag[f"v{j}"] for j in range(3, 8)) + 0.3


def _reference_dawid_skene(m: VoteMatrix, n_iter: int, smoothing: float) -> np.ndarray:
    """Plain dense EM with the same init and smoothing, n_iter E-steps, no stopping rule."""
    I, V, S = m.labels.shape
    C = m.n_classes
    onehot = np.zeros((I, V, C))
    for s in range(S):
        lab = m.labels[:, :, s]
        onehot += (lab[..., None] == np.arange(C)) & (lab[..., None] != ABSTAIN)
    T = majority(m).scores
    for _ in range(n_iter + 1):
        counts = np.einsum("ik,ivl->vkl", T, onehot) + smoothing
        pi = counts / counts.sum(axis=2, keepdims=True)
        prior = (T.sum(axis=0) + smoothing) / (I + C * smoothing)
        if _ == n_iter:
            return T
        logj = np.log(prior) + np.einsum("ivl,vkl->ik", onehot, np.log(pi))
        T = np.exp(logj - logj.max(axis=1, keepdims=True))
        T /= T.sum(axis=1, keepdims=True)


def test_dawid_skene_block_codes_match_dense_em():
    # 7 voters x 2 samples = 14 columns over 4 classes -> 3 blocks of codes.
    m = planted([0.8, 0.6, 0.5, 0.4, 0.3, 0.7, 0.35], 300, n_classes=4, n_samples=2, seed=9,
                abstain=0.2)
    d = dawid_skene(m, max_iter=7, tol=0.0)
    assert d.info["iterations"] == 7 and not d.info["converged"]
    np.testing.assert_allclose(d.scores, _reference_dawid_skene(m, 7, 0.01), atol=1e-9)


def test_dawid_skene_matches_crowdkit_iteration_for_iteration():
    # Same init (majority shares), same EM steps: with the stopping rules switched
    # off (their tol=-inf, ours tol=0) the posteriors agree to rounding. Smoothing
    # 1e-10 stands in for crowd-kit's clipping of the confusion cells at 1e-10.
    pd = pytest.importorskip("pandas")
    crowdkit = pytest.importorskip("crowdkit.aggregation")
    m = planted([0.85, 0.7, 0.6, 0.5, 0.45, 0.4], 1500, n_classes=4, seed=10, abstain=0.1)
    item, voter = np.nonzero(m.labels[:, :, 0] != ABSTAIN)
    df = pd.DataFrame({"task": item, "worker": voter, "label": m.labels[item, voter, 0]})
    ds = crowdkit.DawidSkene(n_iter=12, tol=-np.inf).fit(df)
    theirs = ds.probas_.sort_index()[[0, 1, 2, 3]]
    ours = dawid_skene(m, max_iter=12, tol=0.0, smoothing=1e-10)
    voted = np.flatnonzero((m.labels != ABSTAIN).any(axis=(1, 2)))
    np.testing.assert_allclose(ours.scores[voted], theirs.loc[voted].to_numpy(), atol=1e-8)
    np.testing.assert_array_equal(ours.labels[voted], ds.labels_.sort_index().loc[voted].to_numpy())


def test_dawid_skene_errors():
    m = rows("AB")
    with pytest.raises(EnsembleError, match=r"max_iter must be a whole number >= 1, got 0"):
        dawid_skene(m, max_iter=0)
    with pytest.raises(EnsembleError, match=r"tol must be >= 0, got -1"):
        dawid_skene(m, tol=-1)
    with pytest.raises(EnsembleError, match=r"smoothing must be > 0 \(a zero count would give"):
        dawid_skene(m, smoothing=0)


# -- every method --------------------------------------------------------------------

@pytest.fixture(scope="module", params=[False, True], ids=["labels", "probs"])
def generic(request) -> tuple[VoteMatrix, np.ndarray]:
    """Planted 5-voter matrix; item 0 all-abstain; dev = first half."""
    m = planted([0.9, 0.75, 0.6, 0.45, 0.35], 80, n_samples=2, seed=11, probs=request.param)
    labels = m.labels.copy()
    labels[0] = ABSTAIN
    probs = None if m.probs is None else np.where(labels[..., None] == ABSTAIN, np.nan, m.probs)
    m = from_arrays(labels, m.classes, gold=m.gold, confidence=m.confidence, probs=probs)
    return m, np.arange(80) < 40


@pytest.mark.parametrize("name", METHODS.names())
def test_output_shapes_and_scores(name, generic):
    m, dev = generic
    d = vote(m, name, dev=dev)
    assert d.labels.shape == (80,) and d.labels.dtype == np.int32
    assert d.scores.shape == (80, 3) and d.scores.dtype == np.float64
    assert d.labels[0] == ABSTAIN and (d.scores[0] == 0).all()
    sums = d.scores.sum(axis=1)
    np.testing.assert_allclose(sums[d.labels != ABSTAIN], 1.0)
    np.testing.assert_array_equal(sums[d.labels == ABSTAIN], 0.0)
    assert (d.scores >= 0).all()
    assert isinstance(d.info, dict)


@pytest.mark.parametrize("name", METHODS.names())
def test_permuting_items_permutes_outputs(name, generic):
    m, dev = generic
    perm = np.random.default_rng(12).permutation(m.n_items)
    a, b = vote(m, name, dev=dev), vote(m.select_items(perm), name, dev=dev[perm])
    np.testing.assert_array_equal(b.labels, a.labels[perm])
    np.testing.assert_allclose(b.scores, a.scores[perm], atol=1e-6)


@pytest.mark.parametrize("name", METHODS.names())
def test_permuting_voters_keeps_the_decision(name, generic):
    # select ranks voters tied on dev by name, so neither its decision nor its
    # order of addition may change (tests/test_tiebreak.py covers every policy).
    m, dev = generic
    order = [3, 0, 4, 2, 1]
    a, b = vote(m, name, dev=dev), vote(m.select_voters(order), name, dev=dev)
    np.testing.assert_array_equal(b.labels, a.labels)
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-5)
    if "weights" in a.info:
        for v in m.voters:
            assert b.info["weights"][v] == pytest.approx(a.info["weights"][v], abs=1e-4)


@pytest.mark.parametrize("name", METHODS.names())
def test_all_abstain_matrix_stays_abstain(name, generic):
    m, _ = generic
    empty = from_arrays(np.full((4, 2), ABSTAIN), m.classes[:2], confidence=np.full((4, 2), 0.5),
                        gold=np.array([0, 1, 0, 1]))
    if name in ("select", "weighted"):   # nothing to fit: their own errors say so
        with pytest.raises(EnsembleError):
            vote(empty, name, dev=np.ones(4, bool))
        return
    d = vote(empty, name, dev=np.ones(4, bool))
    assert (d.labels == ABSTAIN).all() and (d.scores == 0).all()
