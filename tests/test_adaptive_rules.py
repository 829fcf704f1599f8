"""Stop rules of adaptive voting (ensemble.voting.adaptive): the exact bound never changes a
majority / weighted decision, posterior rules stop earlier on unanimous items than on split
ones, replay on hand-written matrices, errors, determinism and resume."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from ensemble.errors import EnsembleError
from ensemble.predictions.matrix import ABSTAIN, VoteMatrix, from_arrays
from ensemble.voting import vote
from ensemble.voting.adaptive import (
    STOP_RULES,
    VotesSoFar,
    check_stop_rule,
    default_order,
    get_stop_rule,
    replay,
    walk_item,
)
from ensemble.voting.dirichlet import (
    _flip_probability,
    _leader_probability,
    _sticky,
    flip_probability,
    leader_probability,
    sticky_flip_probability,
)
from ensemble.voting.tiebreak import TIE_BREAKS


def _walk(seq: list[int], rule_name: str, params: dict[str, float] | None = None,
          conf: list[float] | None = None, n_classes: int | None = 3,
          weights: list[float] | None = None, voters: list[int] | None = None) -> tuple[int, bool]:
    """Walk one fully-known item."""
    c = conf or [float("nan")] * len(seq)
    return walk_item(lambda k: (seq[k], c[k]), weights or [1.0] * len(seq),
                     get_stop_rule(rule_name, params), n_classes, voters)


def _all_sequences(n: int, n_classes: int) -> np.ndarray:
    """(n_classes + 1) ** n rows: every vote sequence of n voters, ABSTAIN included."""
    values = [ABSTAIN, *range(n_classes)]
    return np.array(list(itertools.product(values, repeat=n)), dtype=np.int32)


def _masked(m: VoteMatrix, asked: np.ndarray) -> VoteMatrix:
    """The matrix an adaptive run would have: not-asked cells hold no vote."""
    labels = np.where(asked, m.labels, ABSTAIN).astype(np.int32)
    conf = None if m.confidence is None else np.where(asked, m.confidence, np.nan)
    return from_arrays(labels, m.classes, items=m.items, voters=m.voters, confidence=conf)


def _same_decisions(m: VoteMatrix, asked: np.ndarray, method: str, **options: object) -> None:
    adaptive = _masked(m, asked)
    for policy in TIE_BREAKS:
        full = vote(m, method, tie_break=policy, **options).labels
        part = vote(adaptive, method, tie_break=policy, **options).labels
        changed = np.flatnonzero(full != part)
        assert not len(changed), (policy, m.labels[changed[:3], :, 0], asked[changed[:3], :, 0])


# -- the exact bound -----------------------------------------------------------------
@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("n_voters", [1, 2, 3, 4, 5, 6])
def test_exact_bound_never_changes_a_majority_decision_exhaustive(n_voters: int, n_classes: int) -> None:
    labels = _all_sequences(n_voters, n_classes)
    conf = np.random.default_rng(n_voters).uniform(0.2, 1.0, labels.shape)  # for tie_break=confidence
    m = from_arrays(labels, [str(c) for c in range(n_classes)], confidence=conf)
    asked = replay(m, default_order(n_voters, 1), get_stop_rule("exact"))
    _same_decisions(m, asked, "majority")
    if n_voters >= 3:  # and it does save calls: unanimous items stop at a strict majority
        unanimous = np.flatnonzero((labels == 0).all(axis=1))[0]
        assert asked[unanimous].sum() == n_voters // 2 + 1


@pytest.mark.parametrize("weights", [
    [0.5, 1.0, 0.25, 2.0, 0.75, 1.5],
    [0.1, 0.2, 0.3, 0.6, 0.0, 0.4],        # float sums 0.1 + 0.2 vs 0.3: ties up to rounding
    [3.0, 1.0, 1.0, 1.0, 0.5, 0.5],        # one voter outweighs the next three
])
def test_exact_bound_never_changes_a_weighted_decision(weights: list[float]) -> None:
    labels = _all_sequences(6, 3)
    conf = np.random.default_rng(1).uniform(0.2, 1.0, labels.shape)
    m = from_arrays(labels, ["A", "B", "C"], confidence=conf)
    w = np.array(weights)
    asked = replay(m, default_order(6, 1), get_stop_rule("exact"), weights=w)
    _same_decisions(m, asked, "weighted", weights=weights)
    assert asked.sum() < asked.size  # it stops somewhere


def test_exact_bound_with_samples_in_voter_then_sample_order() -> None:
    # 3 voters x 2 samples = 6 votes per item, asked sample 0 of every voter first.
    labels = _all_sequences(6, 2).reshape(-1, 3, 2)
    m = from_arrays(labels, ["A", "B"])
    asked = replay(m, default_order(3, 2), get_stop_rule("exact"))
    _same_decisions(m, asked, "majority")


def test_exact_stops_at_a_strict_majority_and_not_before() -> None:
    assert _walk([0, 0, 0, 0, 0], "exact") == (3, True)
    assert _walk([0, 1, 0, 1, 0], "exact") == (5, True)           # asked everyone
    assert _walk([0, 0, 1, 0, 0], "exact") == (4, True)           # 3 vs 1 with 1 left
    assert _walk([0, 0, 0, 0], "exact") == (3, True)              # 2 vs 0 with 2 left: a tie is possible


# -- posterior rules: unanimous vs split ----------------------------------------------
def test_dirichlet_stops_after_five_unanimous_votes_and_never_on_an_even_split() -> None:
    # 3 classes, uniform prior: P(leader is argmax) after k unanimous votes is
    # 0.887 (3), 0.942 (4), 0.970 (5); delta 0.05 needs 0.95.
    assert _walk([0] * 20, "dirichlet", {"delta": 0.05}) == (5, True)
    assert _walk([0, 1] * 10, "dirichlet", {"delta": 0.05}) == (20, True)  # ran out: everyone asked
    assert _walk([0] * 20, "dirichlet", {"delta": 0.1}) == (4, True)       # looser delta: earlier
    assert _walk([0] * 20, "dirichlet", {"delta": 0.05, "min_votes": 8}) == (8, True)
    # a smaller prior trusts the counts sooner
    assert _walk([0] * 20, "dirichlet", {"delta": 0.05, "prior": 0.3})[0] < 5
    # 2 : 1 majorities take longer than unanimity but do settle
    k_split, _ = _walk([0, 0, 1] * 10, "dirichlet", {"delta": 0.05})
    assert 5 < k_split < 30


def test_cisc_weights_votes_by_confidence() -> None:
    # Equal confidences: the plain Dirichlet counts.
    assert _walk([0] * 20, "cisc", {"delta": 0.05}, conf=[0.9] * 20) == (5, True)
    assert _walk([0, 1] * 10, "cisc", {"delta": 0.05}, conf=[0.9] * 20) == (20, True)
    # A split where one side is sure and the other is not: the sure side carries the
    # evidence, so CISC settles where the plain rule never does.
    conf = [0.9, 0.3] * 10
    assert _walk([0, 1] * 10, "dirichlet", {"delta": 0.05}, conf=conf) == (20, True)
    k, _ = _walk([0, 1] * 10, "cisc", {"delta": 0.05, "temperature": 0.1}, conf=conf)
    assert k < 20
    # a high temperature flattens the weights back to counting
    assert _walk([0, 1] * 10, "cisc", {"delta": 0.05, "temperature": 100.0}, conf=conf) == (20, True)


def test_missing_confidence_counts_as_the_mean_of_the_known_ones() -> None:
    nan = float("nan")
    with_gaps = _walk([0] * 20, "cisc", conf=[0.9, nan] * 10)
    assert with_gaps == _walk([0] * 20, "cisc", conf=[0.9] * 20) == (5, True)


def test_abstentions_are_not_evidence() -> None:
    assert _walk([ABSTAIN] * 20, "dirichlet") == (20, True)
    assert _walk([ABSTAIN, 0, ABSTAIN, 0, 0, 0, 0, 0], "dirichlet") == (7, True)   # 5 real votes
    assert _walk([ABSTAIN, 0, 0, 0, 0], "exact") == (4, True)       # 3 vs 0 with 1 left


def test_none_never_stops() -> None:
    assert _walk([0] * 7, "none") == (7, True)


def test_open_answers_count_the_classes_seen_plus_one() -> None:
    seen: list[int] = []

    def spy(votes: VotesSoFar) -> bool:
        seen.append(votes.n_classes)
        return False

    walk_item(lambda k: ([5, 5, 9, ABSTAIN][k], 0.5), [1.0] * 4, spy, None)
    assert seen == [1, 2, 2, 3]


def test_leader_probability_matches_monte_carlo() -> None:
    rng = np.random.default_rng(0)
    for counts in ([3, 0, 0], [3, 1, 0], [10, 8, 0], [2, 1], [0.5, 0.1, 0, 0, 0]):
        c = np.array(counts, dtype=float)
        draws = rng.dirichlet(c + 1.0, 100_000)
        assert leader_probability(c, 1.0) == pytest.approx((draws.argmax(1) == 0).mean(), abs=0.01)
    assert leader_probability(np.array([2.0, 2.0, 0.0]), 1.0) == 0.0         # tied: no leader


# -- replay --------------------------------------------------------------------------
def _hand_matrix() -> VoteMatrix:
    # 3 items x 3 voters x 2 samples; asked in order (v0,s0) (v1,s0) (v2,s0) (v0,s1) (v1,s1) (v2,s1)
    A, B, X = 0, 1, ABSTAIN
    labels = np.array([
        [[A, A], [A, A], [A, A]],     # unanimous
        [[A, B], [B, A], [A, B]],     # order: A B A B A B, never settled
        [[A, A], [X, A], [A, A]],     # order: A X A A A A
    ])
    return from_arrays(labels, ["A", "B"], valid=np.ones((3, 2), dtype=bool))


def test_replay_exact_on_a_hand_written_matrix() -> None:
    asked = replay(_hand_matrix(), default_order(3, 2), get_stop_rule("exact"))
    T, F = True, False
    expected = np.array([
        [[T, T], [T, F], [T, F]],     # 4 votes A: 4 > 0 + 2 left
        [[T, T], [T, T], [T, T]],     # everyone
        [[T, T], [T, F], [T, F]],     # A X A A: 3 > 0 + 2 left
    ])
    np.testing.assert_array_equal(asked, expected)


def test_replay_none_asks_everyone_and_order_limits_the_cells() -> None:
    m = _hand_matrix()
    assert replay(m, default_order(3, 2), get_stop_rule("none")).all()
    only_first_samples = replay(m, default_order(3, 1), get_stop_rule("none"))
    assert only_first_samples[:, :, 0].all() and not only_first_samples[:, :, 1].any()


def test_replay_with_weights() -> None:
    m = _hand_matrix()
    # per cell: the first cell weighs 5.5, more than the 5 cells after it (1 each)
    w = np.ones((3, 3, 2))
    w[:, 0, 0] = 5.5
    asked = replay(m, default_order(3, 2), get_stop_rule("exact"), weights=w)
    assert asked.sum(axis=(1, 2)).tolist() == [1, 1, 1]
    w[:, 0, 0] = 5.0                                     # 5 > 5 is no strict lead: one more vote
    asked = replay(m, default_order(3, 2), get_stop_rule("exact"), weights=w)
    # item 0: A A -> 6 > 0 + 4; item 1: A B -> 5 - 1 > 4? no, A -> 6 - 1 > 3; item 2: A X -> 5 > 4
    assert asked.sum(axis=(1, 2)).tolist() == [2, 3, 2]
    # per voter: voter 0's two samples weigh 3 each (6 of 10): A, A, A -> 3+1+1 = 5 > 0 + 5? no;
    # then voter 0's second sample: 8 > 2 left
    asked = replay(m, default_order(3, 2), get_stop_rule("exact"), weights=np.array([3.0, 1.0, 1.0]))
    assert asked[0].sum() == 4


def test_replay_answers_outside_the_options_are_no_vote_for_the_rule() -> None:
    # As in the live run: an answer that is not one of the item's options counts as no vote.
    labels = np.array([[2, 2, 0, 0, 0]])
    outside = from_arrays(labels, ["A", "B", "C"], valid=np.array([[True, True, False]]))
    inside = from_arrays(labels, ["A", "B", "C"], valid=np.array([[True, True, True]]))
    exact = get_stop_rule("exact")
    assert replay(outside, default_order(5, 1), exact).sum() == 4      # X X A A: 2 > 0 + 1 left
    assert replay(inside, default_order(5, 1), exact).sum() == 5       # C C A A: 2 - 2, never settled


def test_replay_class_counts_per_item() -> None:
    m = from_arrays(np.zeros((1, 20), dtype=np.int32), ["A", "B", "C"], valid=np.ones((1, 3), dtype=bool))
    rule = get_stop_rule("dirichlet", {"delta": 0.05})
    assert replay(m, default_order(20, 1), rule).sum() == 5             # 3 options
    assert replay(m, default_order(20, 1), rule, n_classes=[2]).sum() == 4
    assert replay(m, default_order(20, 1), rule, n_classes=[None]).sum() == 4  # open: seen + 1 = 2


# -- the predictive rule: will the votes to come change the winner? --------------------
def test_flip_probability_spelled_out() -> None:
    one = np.ones(1)
    assert flip_probability(np.array([2.0, 1.0]), 3, np.zeros(0), 1.0) == 0.0     # nothing to come
    assert flip_probability(np.array([1.0, 1.0]), 2, one, 1.0) == 1.0             # tied now
    assert flip_probability(np.array([3.0, 0.0]), 3, np.ones(2), 1.0) == 0.0      # the exact bound holds
    # 2 : 1 with one vote to come: it ties exactly when it goes to the runner-up, whose
    # posterior mean under Dirichlet(3, 2) is 2 / 5
    assert flip_probability(np.array([2.0, 1.0]), 3, one, 1.0) == pytest.approx(0.4, abs=0.02)
    # more votes to come, more risk; a wider lead, less
    risk = [flip_probability(np.array([3.0, 1.0, 0.0]), 4, np.ones(m), 1.0) for m in (1, 3, 6, 12)]
    assert risk == sorted(risk) and risk[0] < risk[-1]
    assert flip_probability(np.array([5.0, 1.0, 0.0]), 6, np.ones(6), 1.0) < risk[2]
    # weights: the posterior sees votes (3 : 1), the race sees weights (lead 1.5 > 1 to come)
    assert flip_probability(np.array([2.25, 0.75]), 4, np.array([1.0]), 1.0) == 0.0


def test_predictive_stops_no_later_than_exact_and_never_on_a_tie() -> None:
    for seq in _all_sequences(6, 2).tolist():
        exact, _ = _walk(seq, "exact", n_classes=2)
        for delta in (0.01, 0.2):
            k, decided = _walk(seq, "predictive", {"delta": delta}, n_classes=2)
            assert decided and k <= exact
            counted = [x for x in seq[:k] if x != ABSTAIN]
            if k < len(seq):  # stopped early: never with the two classes level
                assert counted.count(0) != counted.count(1)
    # unanimous items stop sooner than split ones, a looser delta sooner still
    assert _walk([0] * 20, "predictive", {"delta": 0.05})[0] < _walk([0, 0, 1] * 7, "predictive", {"delta": 0.05})[0]
    assert _walk([0] * 20, "predictive", {"delta": 0.2})[0] < _walk([0] * 20, "predictive", {"delta": 0.01})[0]
    assert _walk([0] * 20, "predictive", {"delta": 0.05, "min_votes": 9}) == (9, True)


def test_flip_probability_has_no_size_limit() -> None:
    # more classes and votes to come than the precomputed draws cover: still a probability,
    # the same on every call (a large K x S run must not fail deep inside the rule)
    counts = np.zeros(70)
    counts[:2] = [3.0, 2.0]
    p = flip_probability(counts, 5, np.ones(300), 1.0)
    assert 0.0 < p < 1.0
    _flip_probability.cache_clear()
    assert flip_probability(counts, 5, np.ones(300), 1.0) == p


def test_flip_probability_is_a_pure_function() -> None:
    args = (np.array([4.0, 2.0, 1.0]), 7, np.ones(9), 0.5)
    first = flip_probability(*args)
    _flip_probability.cache_clear()
    assert flip_probability(*args) == first
    assert flip_probability(np.array([4.0, 1.0, 2.0]), 7, np.ones(9), 0.5) == first  # class order: no matter


def test_sticky_with_stick_0_is_predictive() -> None:
    rng = np.random.default_rng(8)
    for _ in range(20):
        counts = rng.integers(0, 6, 3).astype(float)
        own = rng.integers(0, 3, (4, 3)).astype(float)
        assert sticky_flip_probability(counts, int(counts.sum()), np.ones(4), own, 1.0, 0.0) == \
            flip_probability(counts, int(counts.sum()), np.ones(4), 1.0)
    seq, voters = [0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0], [0, 1, 2] * 4
    for delta in (0.01, 0.1):
        assert _walk(seq, "sticky", {"delta": delta, "stick": 0.0}, voters=voters) == \
            _walk(seq, "predictive", {"delta": delta}, voters=voters)


def test_sticky_flip_probability_spelled_out() -> None:
    counts, rest = np.array([2.0, 1.0]), np.ones(3)     # A, B, A so far; each voter once more
    heard = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # (voter of each vote to come) x (A, B)
    crowd = flip_probability(counts, 3, rest, 1.0)
    # B needs 2 of the 3 votes to come; a voter that repeats itself gives B only from voter 1.
    # With stick 0.99 the two A voters turn to B only via p (1% each, then ~40%): ~0.8%.
    assert sticky_flip_probability(counts, 3, rest, heard, 1.0, 0.99) == pytest.approx(0.008, abs=0.005)
    assert sticky_flip_probability(counts, 3, rest, heard, 1.0, 0.99) < \
        sticky_flip_probability(counts, 3, rest, heard, 1.0, 0.5) < crowd
    # voters not heard yet are drawn from p whatever stick says
    assert sticky_flip_probability(counts, 3, rest, np.zeros((3, 2)), 1.0, 0.99) == crowd
    # voters 0 and 2 said A once and B once and repeat each half the time; with voter 1's B,
    # one B from either of them makes the tie: 1 - 0.5 * 0.5
    mixed = np.array([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    assert sticky_flip_probability(counts, 3, rest, mixed, 1.0, 0.999) == pytest.approx(0.75, abs=0.03)
    # a tie now, or nothing to come: as flip_probability
    assert sticky_flip_probability(np.array([1.0, 1.0]), 2, np.ones(1), np.ones((1, 2)), 1.0, 0.5) == 1.0
    assert sticky_flip_probability(counts, 3, np.zeros(0), np.zeros((0, 2)), 1.0, 0.5) == 0.0
    # class order does not matter, own's columns move with the counts'
    assert sticky_flip_probability(counts[::-1].copy(), 3, rest, heard[:, ::-1].copy(), 1.0, 0.7) == \
        sticky_flip_probability(counts, 3, rest, heard, 1.0, 0.7)
    first = sticky_flip_probability(np.array([4.0, 2.0, 1.0]), 7, np.ones(5), np.eye(3)[[0, 1, 2, 0, 0]], 0.5, 0.6)
    _sticky.cache_clear()
    assert sticky_flip_probability(np.array([4.0, 2.0, 1.0]), 7, np.ones(5), np.eye(3)[[0, 1, 2, 0, 0]],
                                   0.5, 0.6) == first


def test_sticky_stops_sooner_on_self_consistent_voters_never_on_a_tie() -> None:
    voters = [0, 1, 2, 3, 4] * 4                        # 5 voters x 4 samples, sample 0 of each first
    consistent = [0, 0, 0, 1, 0] * 4                    # every voter repeats its first answer
    # min_votes 5: hear every voter once (after two A votes, two sticky voters and a p that
    # leans to A already make a flip unlikely: stick is a strong assumption)
    sticky, _ = _walk(consistent, "sticky", {"delta": 0.05, "stick": 0.8, "min_votes": 5}, n_classes=2,
                      voters=voters)
    crowd, _ = _walk(consistent, "predictive", {"delta": 0.05, "min_votes": 5}, n_classes=2, voters=voters)
    assert sticky == 5 < crowd
    assert _walk(consistent, "sticky", {"delta": 0.05, "stick": 0.8}, n_classes=2, voters=voters)[0] == 2
    for seq in _all_sequences(6, 2).tolist():
        k, decided = _walk(seq, "sticky", {"delta": 0.2, "stick": 0.9}, n_classes=2, voters=[0, 1, 2] * 2)
        counted = [x for x in seq[:k] if x != ABSTAIN]
        assert decided and (k == len(seq) or counted.count(0) != counted.count(1))


def test_replay_tells_voters_apart_for_sticky() -> None:
    labels = np.tile(np.array([0, 0, 1])[None, :, None], (4, 1, 3))  # 4 items, 3 voters x 3 samples
    m = from_arrays(labels, ["A", "B"])
    order = default_order(3, 3)
    sticky = replay(m, order, get_stop_rule("sticky", {"delta": 0.1, "stick": 0.9, "min_votes": 3}))
    crowd = replay(m, order, get_stop_rule("predictive", {"delta": 0.1, "min_votes": 3}))
    assert sticky.sum(axis=(1, 2)).tolist() == [3] * 4  # one round: every voter heard once
    assert crowd.sum() > sticky.sum()


# -- resume and determinism ----------------------------------------------------------
@pytest.mark.parametrize("rule", ["exact", "dirichlet", "cisc", "predictive", "sticky"])
def test_a_resumed_walk_asks_what_an_uninterrupted_one_asks(rule: str) -> None:
    rng = np.random.default_rng(3)
    for _ in range(30):
        seq = rng.choice([ABSTAIN, 0, 0, 0, 1, 2], size=12).tolist()
        conf = rng.uniform(0.2, 1.0, 12).tolist()
        stop_at, decided = _walk(seq, rule, conf=conf, voters=[0, 1, 2, 3] * 3)
        assert decided
        for known in range(13):  # a run killed after `known` answers, then resumed
            def stored(k: int, known: int = known, seq: list[int] = seq,
                       conf: list[float] = conf) -> tuple[int, float] | None:
                return (seq[k], conf[k]) if k < known else None

            got = walk_item(stored, [1.0] * 12, get_stop_rule(rule), 3, [0, 1, 2, 3] * 3)
            assert got == ((stop_at, True) if known >= stop_at else (known, False))


def test_decisions_do_not_depend_on_the_cache() -> None:
    m = from_arrays(np.random.default_rng(5).integers(-1, 3, (40, 5, 4)), ["A", "B", "C"],
                    confidence=np.random.default_rng(6).uniform(0, 1, (40, 5, 4)))
    rule = get_stop_rule("cisc", {"delta": 0.1})
    first = replay(m, default_order(5, 4), rule)
    _leader_probability.cache_clear()
    again = replay(m, default_order(5, 4), get_stop_rule("cisc", {"delta": 0.1}))
    np.testing.assert_array_equal(first, again)


# -- errors --------------------------------------------------------------------------
def test_registry_lists_the_rules() -> None:
    assert {"none", "exact", "dirichlet", "cisc", "predictive", "sticky"} <= set(STOP_RULES)


@pytest.mark.parametrize("name, params, match", [
    ("dirichlt", None, r"Unknown stop rule 'dirichlt'. Did you mean 'dirichlet'\?"),
    ("dirichlet", {"delt": 0.1}, r"stop rule 'dirichlet': Unknown parameter 'delt'. Did you mean 'delta'\?"),
    ("exact", {"delta": 0.1}, r"stop rule 'exact': Unknown parameter 'delta'.*Available: \(none\)"),
    ("dirichlet", {"delta": 1.5}, r"parameter 'delta' is 1.5; use a probability in \(0, 1\)"),
    ("dirichlet", {"delta": "0.1"}, r"parameter 'delta' is '0.1'; use a probability"),
    ("dirichlet", {"prior": 0}, r"parameter 'prior' is 0; use a positive pseudo-count"),
    ("cisc", {"temperature": -1}, r"parameter 'temperature' is -1; use a positive temperature"),
    ("cisc", {"min_votes": 2.5}, r"parameter 'min_votes' is 2.5; use a whole number.*run.adaptive.params.min_votes"),
    ("dirichlet", {"min_votes": True}, r"parameter 'min_votes' is True"),
    ("predictive", {"delta": 0}, r"stop rule 'predictive': parameter 'delta' is 0; use a probability"),
    ("predictiv", None, r"Unknown stop rule 'predictiv'. Did you mean 'predictive'\?"),
    ("sticky", {"stick": 1}, r"stop rule 'sticky': parameter 'stick' is 1; use a probability in \[0, 1\)"),
    ("sticky", {"stik": 0.5}, r"stop rule 'sticky': Unknown parameter 'stik'. Did you mean 'stick'\?"),
])
def test_bad_rules_and_params_name_the_fix(name: str, params: dict[str, object] | None, match: str) -> None:
    with pytest.raises(EnsembleError, match=match):
        check_stop_rule(name, params)
    with pytest.raises(EnsembleError, match=match):
        get_stop_rule(name, params)


def test_bad_weights_and_orders_are_errors() -> None:
    m = _hand_matrix()
    with pytest.raises(EnsembleError, match=r"vote weights must be finite and >= 0"):
        walk_item(lambda k: (0, 0.5), [1.0, -1.0], get_stop_rule("exact"), 2)
    with pytest.raises(EnsembleError, match=r"weights have shape \(2,\); use \(3,\) per voter"):
        replay(m, default_order(3, 2), get_stop_rule("exact"), weights=np.ones(2))
    with pytest.raises(EnsembleError, match=r"order has a cell outside the matrix's 3 voters x 2 samples"):
        replay(m, [(0, 0), (3, 0)], get_stop_rule("exact"))
