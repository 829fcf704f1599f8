"""Dawid–Skene: unsupervised EM over one confusion matrix per voter.

Model (Dawid & Skene 1979): item i has a hidden true class z_i ~ prior rho; each
non-abstaining sample of voter j on item i is an independent draw from row z_i of
the voter's confusion matrix pi_j (C x C, rows = true class, columns = voted
class). EM alternates

    E-step  T_ik ∝ rho_k * prod_{votes (j, l) of item i} pi_j[k, l]     (I, C)
    M-step  pi_j[k, l] ∝ smoothing + sum_i T_ik * n_ijl,  rho_k ∝ smoothing + sum_i T_ik

starting from majority's vote shares (as crowd-kit's DawidSkene does; the two
agree step for step), until the evidence lower bound per vote rises by less than
``tol``. That bound is the textbook one, which after an E-step equals the
log-likelihood per vote. crowd-kit's "loss" adds log prior once per vote instead
of once per item, so with the same ``tol`` it usually runs more iterations.

Speed: an item's votes are read through *block codes*. Voters' sample columns
are grouped into blocks of g columns; the g labels of a block (ABSTAIN included)
form one base-(C+1) integer, so each item has a handful of codes instead of V*S
votes. A sparse one-hot matrix N (items x codes) then gives both steps as one
sparse product each: log-likelihoods = N @ table (table = the block's summed
log pi for every code) and sufficient statistics = N.T @ T, which are summed back
to per-voter counts. 1M items x 16 voters x 4 classes: 3 codes per item.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.predictions.matrix import ABSTAIN, Decision, VoteMatrix
from ensemble.voting import METHODS
from ensemble.voting.majority import majority
from ensemble.voting.tiebreak import DEFAULT_TIE_BREAK, check_tie_break, decision

if TYPE_CHECKING:
    import scipy.sparse as sp

_MAX_CODES = 1 << 16   # codes per block: table rows (and N columns) stay small


def _block_columns(n_columns: int, n_classes: int) -> list[np.ndarray]:
    """Split columns 0..Q-1 into blocks of g with (C+1)^g <= _MAX_CODES (g >= 1)."""
    g = 1
    while (n_classes + 1) ** (g + 1) <= _MAX_CODES:
        g += 1
    return [np.arange(a, min(a + g, n_columns)) for a in range(0, n_columns, g)]


def _code_matrix(votes: np.ndarray, blocks: list[np.ndarray], n_classes: int) -> sp.csr_matrix:
    """(I, Q) votes -> sparse one-hot (I, sum_b (C+1)^|b|): one entry per item and block.

    Code of item i in block b = the block's labels + 1 (ABSTAIN -> 0) read as a
    base-(C+1) number, first column most significant.
    """
    import scipy.sparse as sp  # on first use: see ensemble.isolate

    I = votes.shape[0]
    cols, offset = [], 0
    for block in blocks:
        code = np.zeros(I, dtype=np.int64)
        for q in block:
            code = code * (n_classes + 1) + (votes[:, q] + 1)
        cols.append(code + offset)
        offset += (n_classes + 1) ** len(block)
    cols_arr = np.stack(cols, axis=1).ravel()                          # (I * B,)
    rows = np.repeat(np.arange(I, dtype=np.int64), len(blocks))
    data = np.ones(len(rows))
    return sp.csr_matrix((data, (rows, cols_arr)), shape=(I, offset))


def _code_table(log_pi: np.ndarray, column_voter: np.ndarray,
                blocks: list[np.ndarray]) -> np.ndarray:
    """(sum_b (C+1)^|b|, C): sum of log pi_j[k, l] over the votes a code stands for."""
    V, C, _ = log_pi.shape
    # pad[j] (C+1, C): row 0 = an abstention (adds nothing), row l+1 = log pi_j[:, l].
    pad = np.concatenate([np.zeros((V, 1, C)), log_pi.transpose(0, 2, 1)], axis=1)
    tables = []
    for block in blocks:
        table = np.zeros((1, C))
        for q in block:  # append one digit: (codes, 1, C) + (1, C+1, C) -> (codes * (C+1), C)
            table = (table[:, None, :] + pad[column_voter[q]][None, :, :]).reshape(-1, C)
        tables.append(table)
    return np.concatenate(tables)


def _voter_counts(stats: np.ndarray, column_voter: np.ndarray, blocks: list[np.ndarray],
                  n_voters: int) -> np.ndarray:
    """Code statistics (codes, C) -> per-voter counts (V, C, C): [j, true k, voted l]."""
    C = stats.shape[1]
    counts = np.zeros((n_voters, C, C))
    offset = 0
    for block in blocks:
        size = (C + 1) ** len(block)
        cube = stats[offset:offset + size].reshape((C + 1,) * len(block) + (C,))
        for pos, q in enumerate(block):
            others = tuple(a for a in range(len(block)) if a != pos)
            per_digit = cube.sum(axis=others)                            # (C+1, C): [digit, k]
            counts[column_voter[q]] += per_digit[1:].T                   # drop abstentions
        offset += size
    return counts


def _m_step(T: np.ndarray, N: sp.csr_matrix, column_voter: np.ndarray,
            blocks: list[np.ndarray], n_voters: int,
            smoothing: float) -> tuple[np.ndarray, np.ndarray]:
    """Posteriors T (I, C) -> (log prior (C,), log confusions (V, C, C)).

    ``N.T`` is a CSC view, whose product walks the items in order and adds each
    row of T into its few code rows: several times faster than a CSR transpose.
    """
    C = T.shape[1]
    counts = _voter_counts(N.T @ T, column_voter, blocks, n_voters) + smoothing
    log_pi = np.log(counts / counts.sum(axis=2, keepdims=True))
    prior = (T.sum(axis=0) + smoothing) / (T.shape[0] + C * smoothing)
    return np.log(prior), log_pi


def _e_step(log_joint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise softmax of (I, C) log joint -> (T, log T), stable and in place.

    The row max is taken class by class: a reduction along a length-C axis is
    several times slower in numpy than C elementwise maxima over columns.
    """
    top = log_joint[:, 0].copy()
    for k in range(1, log_joint.shape[1]):
        np.maximum(top, log_joint[:, k], out=top)
    log_joint -= top[:, None]
    T = np.exp(log_joint)
    total = T.sum(axis=1)
    T /= total[:, None]
    log_joint -= np.log(total)[:, None]
    return T, log_joint


@METHODS.register("dawid_skene")
def dawid_skene(m: VoteMatrix, *, dev: np.ndarray | None = None, max_iter: int = 100,
                tol: float = 1e-5, smoothing: float = 0.01,
                tie_break: str = DEFAULT_TIE_BREAK) -> Decision:
    """Unsupervised Dawid–Skene EM; ``dev`` is ignored (no gold is used).

    Use when there is no gold but many items (hundreds or more), voters differ in
    quality, and some may be systematically confused (e.g. always answer "A" when
    unsure): DS learns each voter's confusion matrix from agreement alone.
    Each sample of a voter is one observation; abstentions are skipped.
    ``smoothing`` is a pseudo-count added to every confusion cell and prior.
    scores = posterior class probabilities; ties (equal up to rounding):
    ``tie_break``, whose ``confidence`` policy sums the confidences of every vote;
    all-abstain items stay ABSTAIN with a zero row.
    info = {"iterations", "converged", "elbo" (per vote), "priors": {class: p},
    "confusions": {voter: C x C list, rows = true class, columns = voted class}}.
    """
    check_tie_break(tie_break, "dawid_skene")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise EnsembleError(f"dawid_skene: max_iter must be a whole number >= 1, got {max_iter!r}")
    if not (np.isfinite(tol) and tol >= 0):
        raise EnsembleError(f"dawid_skene: tol must be >= 0, got {tol!r}")
    if not (np.isfinite(smoothing) and smoothing > 0):
        raise EnsembleError(f"dawid_skene: smoothing must be > 0 (a zero count would give "
                            f"log 0), got {smoothing!r}")
    I, V, S = m.labels.shape
    C = m.n_classes
    shares = majority(m).scores                                        # (I, C) vote shares
    active = shares.sum(axis=1) > 0                                    # items with any vote
    if not active.any():
        return decision(m, shares, tie_break, "dawid_skene", iterations=0, converged=True, elbo=0.0, priors={}, confusions={})
    votes = m.labels[active].reshape(-1, V * S)                        # (I', Q), column = j*S + s
    column_voter = np.arange(V * S) // S
    blocks = _block_columns(V * S, C)
    N = _code_matrix(votes, blocks, C)                                 # (I', codes)
    n_votes = max(int((votes != ABSTAIN).sum()), 1)

    T = shares[active]                                                 # (I', C)
    log_prior, log_pi = _m_step(T, N, column_voter, blocks, V, smoothing)
    elbo, converged, iterations = -np.inf, False, 0
    log_T = np.zeros_like(T)  # set by the first E-step; read only from the second pass on
    for it in range(max_iter + 1):
        log_joint = N @ _code_table(log_pi, column_voter, blocks)      # (I', C)
        log_joint += log_prior
        if it > 0:  # ELBO of the current T under the parameters fitted to it
            new = (np.vdot(T, log_joint) - np.vdot(T, log_T)) / n_votes
            converged = bool(new - elbo < tol)
            elbo = float(new)
            if converged or it == max_iter:
                break
        T, log_T = _e_step(log_joint)
        log_prior, log_pi = _m_step(T, N, column_voter, blocks, V, smoothing)
        iterations = it + 1

    scores = np.zeros((I, C))
    scores[active] = T
    pi = np.exp(log_pi)
    return decision(m, scores, tie_break, "dawid_skene", iterations=iterations, converged=converged, elbo=elbo,
                  priors={c: float(p) for c, p in zip(m.classes, np.exp(log_prior))},
                  confusions={v: pi[j].tolist() for j, v in enumerate(m.voters)})
