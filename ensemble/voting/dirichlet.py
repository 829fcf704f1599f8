"""The arithmetic of the stopping rules in ``ensemble.voting.adaptive``: per-class vote
counts of one item, and how sure a Dirichlet posterior is that the leader is the argmax.

Adaptive-Consistency (Aggarwal et al., 2023) stops sampling when the posterior
probability that the current leader is the most likely answer reaches 1 - delta. With
class probabilities ``p ~ Dirichlet(alpha)``, ``alpha = counts + prior``, write
``p_k = G_k / sum(G)`` with independent ``G_k ~ Gamma(alpha_k, 1)``; then the leader L
is the argmax of p exactly when ``G_L`` beats every other ``G_j``:

    P(L is the argmax) = integral_0^1 prod_{j != L} F_j(F_L^{-1}(u)) du

(F_k the Gamma(alpha_k) CDF; substitute u = F_L(x) in
``integral f_L(x) prod_j F_j(x) dx``). The integrand lies in [0, 1] and is monotone
in u, so a fixed midpoint rule on ``N_GRID`` points is accurate to about 1 / N_GRID
and, above all, deterministic: a resumed run recomputes the same number from the
same counts and makes the same decision (no random draws anywhere).

The ``predictive`` rule asks another question: will the votes still to come change the
winner? Under the same posterior, each remaining vote is a draw from p, and

    P(flip) = P(argmax(counts + sum_j w_j onehot(x_j)) != leader, or a tie),  x_j ~ Cat(p)

has no closed form for unequal weights, so ``flip_probability`` averages it over
``N_DRAWS`` fixed draws: quasi-random uniforms made once (seed 0) and mapped through
inverse CDFs (Gamma for p, the categorical for each x_j). The same inputs give the same
number in every process, so this rule resumes exactly too.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from ensemble.predictions.matrix import ABSTAIN, TIE_ATOL, TIE_RTOL

N_GRID = 2048
_U = (np.arange(N_GRID, dtype=np.float64) + 0.5) / N_GRID              # (N_GRID,) midpoints of [0, 1]
N_DRAWS = 4096
_DRAWS = np.random.default_rng(0)                                        # fixed: made once per process, same everywhere
_U_P = _DRAWS.random((N_DRAWS, 64))                                      # (N, classes) uniforms for p
_U_X = _DRAWS.random((N_DRAWS, 256))                                     # (N, remaining votes) uniforms for x_j


@lru_cache(maxsize=64)
def _uniforms(what: int, width: int) -> np.ndarray:
    """(N_DRAWS, width) fixed uniforms: ``what`` 0 for p's classes, 1 for the votes to come,
    2 and 3 for the ``sticky`` rule's repeat-or-not coin and which own vote is repeated.
    Slices of the arrays above when they are wide enough; otherwise (over 64 classes or 256
    votes to come, or what >= 2) uniforms seeded by (what, width), so any size works and
    stays reproducible."""
    base = {0: _U_P, 1: _U_X}.get(what)
    if base is not None and width <= base.shape[1]:
        return base[:, :width]
    out: np.ndarray = np.random.default_rng([what, width]).random((N_DRAWS, width))
    return out


def class_counts(labels: np.ndarray, weights: np.ndarray, n_classes: int) -> np.ndarray:
    """(k,) summed weight per class seen, padded with zeros for the classes not seen.

    labels (n,) codes (ABSTAIN and weight-0 votes do not count); weights (n,) >= 0.
    k = max(n_classes, classes seen): codes need not be 0..n_classes-1 (a matrix's codes
    run over every answer in the file), so counts are per distinct class, not per code.
    Order: classes seen in code order, then the unseen zeros.
    """
    counted = (labels != ABSTAIN) & (weights > 0)
    seen, inverse = np.unique(labels[counted], return_inverse=True)
    sums = np.bincount(inverse, weights=weights[counted], minlength=len(seen)).astype(np.float64)
    return np.concatenate([sums, np.zeros(max(n_classes - len(seen), 0))])


def rescale(counts: np.ndarray, n_votes: int) -> np.ndarray:
    """Counts scaled to sum to ``n_votes``: weights shape the split of the evidence, the
    number of votes its amount (CISC scales its confidence weights the same way)."""
    total = counts.sum()
    return counts * (n_votes / total) if total > 0 else counts


def cisc_weights(confidence: np.ndarray, temperature: float) -> np.ndarray:
    """(n,) softmax(confidence / temperature), as CISC (Taubenfeld et al., 2025) weights
    sampled answers. A NaN confidence (the vote gave none) takes the mean of the known
    ones; with none known every vote weighs the same."""
    known = ~np.isnan(confidence)
    if not known.any():
        return np.full(len(confidence), 1.0 / max(len(confidence), 1))
    conf = np.where(known, confidence, confidence[known].mean())
    z = conf / temperature
    e = np.exp(z - z.max())                                             # stable softmax
    out: np.ndarray = e / e.sum()
    return out


def leader_probability(counts: np.ndarray, prior: float) -> float:
    """P(the class with the largest count is the argmax of p ~ Dirichlet(counts + prior)).

    0.0 when the top two counts tie (up to rounding): no leader to be sure of.
    """
    if len(counts) < 2:
        return 1.0
    order = np.argsort(-counts, kind="stable")
    top, second = counts[order[0]], counts[order[1]]
    if top - second <= TIE_ATOL + TIE_RTOL * abs(top):
        return 0.0
    # Cache key: the leader's alpha, then the others sorted (the probability does not
    # depend on their order); integer vote counts repeat across items and steps.
    others = tuple(sorted(float(c) + prior for c in counts[order[1:]]))
    return _leader_probability(float(top) + prior, others)


@lru_cache(maxsize=1 << 16)
def _leader_probability(alpha_leader: float, alpha_others: tuple[float, ...]) -> float:
    # scipy on first use: see ensemble.isolate
    from scipy.special import gammainc, gammaincinv

    x = gammaincinv(alpha_leader, _U)                                   # (N_GRID,) leader quantiles
    alphas, mult = np.unique(np.array(alpha_others), return_counts=True)
    # log prod_j F_j(x): classes with equal alpha (e.g. all the unseen ones) share one term.
    with np.errstate(divide="ignore"):
        log_cdf = np.log(gammainc(alphas[:, None], x[None, :]))          # (distinct others, N_GRID)
    integrand = np.exp((mult[:, None] * log_cdf).sum(axis=0))           # (N_GRID,)
    return float(integrand.mean())


def flip_probability(counts: np.ndarray, n_votes: int, remaining: np.ndarray, prior: float) -> float:
    """P(the remaining votes, of weights ``remaining`` (m,), leave another class on top of
    ``counts`` (k,) summed weights, or a tie), each drawn from p ~ Dirichlet(alpha) with
    alpha = counts rescaled to the ``n_votes`` counted + prior (see the module doc).
    1.0 when the top two counts tie now; 0.0 with no vote to come."""
    if not remaining.size or len(counts) < 2:
        return 0.0
    perm = _ranking(counts)
    if perm is None:
        return 1.0
    # the probability depends on the counts only as a multiset: one cache entry per ranking
    return _flip_probability(tuple(float(c) for c in counts[perm]), int(n_votes),
                             tuple(float(w) for w in remaining), float(prior))


def _ranking(counts: np.ndarray) -> np.ndarray | None:
    """(k,) the leader's index, then the others' by ascending count; None when the top two tie."""
    order = np.argsort(-counts, kind="stable")
    if counts[order[0]] - counts[order[1]] <= TIE_ATOL + TIE_RTOL * abs(counts[order[0]]):
        return None
    return np.concatenate([order[:1], order[1:][np.argsort(counts[order[1:]], kind="stable")]])


@lru_cache(maxsize=1 << 16)
def _flip_probability(counts: tuple[float, ...], n_votes: int, remaining: tuple[float, ...], prior: float) -> float:
    now = np.array(counts)                                                # (k,) leader first
    return _flip_share(now, _draws_from_p(now, n_votes, len(remaining), prior), remaining)


def _draws_from_p(now: np.ndarray, n_votes: int, m: int, prior: float) -> np.ndarray:
    """(N, m) the class of each of m votes to come, each drawn from its own p ~ Dirichlet(alpha)
    (one p per draw), alpha = ``now`` (k,) rescaled to ``n_votes`` votes + prior."""
    from scipy.special import gammaincinv  # on first use

    k = len(now)
    alpha = rescale(now, n_votes) + prior                                 # (k,) evidence in votes, not weights
    g = gammaincinv(alpha[None, :], _uniforms(0, k))                      # (N, k) Gamma(alpha) draws
    cum = np.cumsum(g / g.sum(axis=1, keepdims=True), axis=1)             # (N, k) CDF of each p
    x: np.ndarray = (_uniforms(1, m)[:, :, None] > cum[:, None, :]).sum(axis=2)  # (N, m)
    return x


def _flip_share(now: np.ndarray, x: np.ndarray, remaining: tuple[float, ...]) -> float:
    """The share of the N draws in which the votes to come, of classes ``x`` (N, m) and
    weights ``remaining`` (m,), leave the leader (class 0 of ``now``) tied or behind."""
    k, m = len(now), len(remaining)
    x = np.minimum(x, k - 1)                                              # rounding at the CDF's top
    final = np.tile(now, (N_DRAWS, 1))                                    # (N, k) counts after every vote
    np.add.at(final, (np.repeat(np.arange(N_DRAWS), m), x.ravel()), np.tile(remaining, N_DRAWS))
    rival = final[:, 1:].max(axis=1)                                      # (N,) best other class
    margin = 2 * (TIE_ATOL + TIE_RTOL * final[:, 0])                      # the exact rule's strict lead
    return float(np.mean(final[:, 0] - rival <= margin))


def own_counts(labels: np.ndarray, counted: np.ndarray, k: int, voters: np.ndarray | None,
               remaining_voters: np.ndarray | None, keep: np.ndarray) -> np.ndarray:
    """(m, k) ``own`` for ``sticky_flip_probability``: for each vote to come that counts
    (``keep`` (m0,) of the remaining votes, m of them), its voter's counted votes so far per
    class, in ``class_counts``' column order. ``voters`` (n,) of the votes asked and
    ``remaining_voters`` (m0,) of those to come; either None: voters unknown, all zero."""
    own = np.zeros((int(keep.sum()), k))
    if voters is None or remaining_voters is None:
        return own
    seen = np.unique(labels[counted])                                     # class_counts' columns
    for j, v in enumerate(remaining_voters[keep]):
        mine = counted & (voters == v)
        np.add.at(own[j], np.searchsorted(seen, labels[mine]), 1.0)     # a repeated class counts twice
    return own


def sticky_flip_probability(counts: np.ndarray, n_votes: int, remaining: np.ndarray, own: np.ndarray,
                            prior: float, stick: float) -> float:
    """``flip_probability`` for votes to come from voters already heard on this item.

    A voter's samples agree with each other more than with the crowd. So each vote to come
    whose voter has voted here already repeats one of that voter's own votes (uniformly)
    with probability ``stick``, else it is drawn from p as in ``flip_probability``; a vote
    from a voter not heard yet is always drawn from p. ``own`` (m, k): for each vote to
    come, its voter's votes so far per class of ``counts`` (a zero row: not heard yet).
    stick 0 is ``flip_probability``. Deterministic: fixed draws, as there.
    """
    if not remaining.size or len(counts) < 2:
        return 0.0
    perm = _ranking(counts)
    if perm is None:
        return 1.0
    # own's columns follow the counts' permutation
    own_key = tuple(tuple(float(x) for x in row) for row in own[:, perm])
    return _sticky(tuple(float(c) for c in counts[perm]), int(n_votes), tuple(float(w) for w in remaining),
                   own_key, float(prior), float(stick))


@lru_cache(maxsize=1 << 16)
def _sticky(counts: tuple[float, ...], n_votes: int, remaining: tuple[float, ...],
            own: tuple[tuple[float, ...], ...], prior: float, stick: float) -> float:
    k, m = len(counts), len(remaining)
    now = np.array(counts)                                                # (k,) leader first
    from_p = _draws_from_p(now, n_votes, m, prior)                        # (N, m) a draw from p
    own_arr = np.array(own).reshape(m, k)                                 # (m, k) each voter's votes so far
    heard = own_arr.sum(axis=1) > 0                                       # (m,)
    own_cum = np.cumsum(own_arr / np.maximum(own_arr.sum(axis=1, keepdims=True), 1), axis=1)  # (m, k)
    from_own = (_uniforms(3, m)[:, :, None] > own_cum[None, :, :]).sum(axis=2)  # (N, m) one of its own
    repeat = (_uniforms(2, m) < stick) & heard[None, :]                   # (N, m)
    return _flip_share(now, np.where(repeat, from_own, from_p), remaining)


__all__ = ["N_DRAWS", "N_GRID", "cisc_weights", "class_counts", "flip_probability", "leader_probability",
           "own_counts", "rescale", "sticky_flip_probability"]
