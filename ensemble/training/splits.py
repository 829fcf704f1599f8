"""Which training rows a variant learns from, and which it is judged on.

``split_indices(variant, n, seed, groups=..., heldout_fraction=...)`` returns
``(train_idx, heldout_idx)``, two int arrays of row positions. Every split works on
*groups* (problems): the sub-questions of one nested problem share a group, so a
problem is never half in training and half held out. Without ``groups`` every row
is its own group. Each split kind is a registered function over group counts:

    full        train on every group but a seeded ``heldout_fraction`` slice, which is the
                held-out set (so "full" trains on 1 - heldout_fraction of the train file)
    kfold:K     a seeded permutation of groups cut into K near-equal folds; fold i is
                held out, the other K-1 folds are trained on
    bootstrap   G draws of groups with replacement (bagging); held out = out-of-bag groups
    shard:K     the same K-way cut; train on shard i only; held out = a seeded
                ``heldout_fraction`` slice (of all groups) taken from the other shards
    subsample:F a seeded fraction F of groups without replacement; held out = the rest

The permutation of kfold / shard depends on ``seed`` only (not on the fold), so the
K variants of one split partition the data. Train indices are sorted; bootstrap
train indices repeat rows drawn more than once.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.registry import Registry
from ensemble.training.grid import Variant

# fn(n_groups, param, index, rng_seed, heldout_fraction) -> (train groups, held-out groups)
SplitFn = Callable[[int, "int | float | None", int, int, float], tuple[np.ndarray, np.ndarray]]
SPLITS: Registry[SplitFn] = Registry("split")


def problem_key(row: Any) -> str:
    """The problem a row belongs to: ``meta["problem_id"]`` of nested items, else its id."""
    meta = getattr(row, "meta", None) or {}
    return str(meta.get("problem_id", row.id))


def problem_groups(keys: Sequence[str]) -> np.ndarray:
    """(n,) int group code per row; rows with the same problem key share a code."""
    _, codes = np.unique(np.array([str(k) for k in keys], dtype=object), return_inverse=True)
    return codes.ravel().astype(np.int64)


def split_indices(variant: Variant, n: int, seed: int | None = None, *, groups: Sequence[int] | np.ndarray | None = None,
                  heldout_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Row positions (train_idx, heldout_idx) for ``variant`` over ``n`` rows.

    ``seed`` defaults to the variant's seed; ``groups`` (n,) labels rows of one problem.
    """
    seed = variant.seed if seed is None else seed
    codes = np.arange(n) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
    if len(codes) != n:
        raise ValueError(f"groups has {len(codes)} entries for {n} rows")
    n_groups = int(codes.max()) + 1 if n else 0
    if n_groups < 2:
        raise EnsembleError(f"variant '{variant.name}': {n_groups} training problem(s); "
                            "a split needs at least 2 (add training data or remove data.limit)")
    train_g, held_g = SPLITS.get(variant.split)(n_groups, variant.split_param, variant.split_index, seed,
                                                heldout_fraction)
    # Expand groups to rows: rows_of[g] are the rows of group g, in file order.
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(n_groups + 1))
    rows_of = [order[starts[g]:starts[g + 1]] for g in range(n_groups)]
    take = lambda gs: np.sort(np.concatenate([rows_of[g] for g in gs] or [np.empty(0, np.int64)]))
    return take(train_g).astype(np.int64), take(held_g).astype(np.int64)


def _n_heldout(n_groups: int, fraction: float) -> int:
    """At least one held-out group, never all of them."""
    return min(max(1, round(fraction * n_groups)), n_groups - 1)


def _folds(n_groups: int, k: int, seed: int, what: str) -> list[np.ndarray]:
    if k > n_groups:
        raise EnsembleError(f"split {what}:{k} needs at least {k} training problems, there are {n_groups}; "
                            f"use fewer {'folds' if what == 'kfold' else 'shards'} or more data")
    perm = np.random.default_rng(seed).permutation(n_groups)
    return np.array_split(perm, k)


@SPLITS.register("full")
def _full(n_groups: int, param: None, index: int, seed: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n_groups)
    k = _n_heldout(n_groups, fraction)
    return perm[k:], perm[:k]


@SPLITS.register("kfold")
def _kfold(n_groups: int, k: int, index: int, seed: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    folds = _folds(n_groups, k, seed, "kfold")
    return np.concatenate([f for i, f in enumerate(folds) if i != index]), folds[index]


@SPLITS.register("bootstrap")
def _bootstrap(n_groups: int, param: None, index: int, seed: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    drawn = np.random.default_rng(seed).integers(0, n_groups, size=n_groups)
    out_of_bag = np.setdiff1d(np.arange(n_groups), drawn)
    return drawn, out_of_bag


@SPLITS.register("shard")
def _shard(n_groups: int, k: int, index: int, seed: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    shards = _folds(n_groups, k, seed, "shard")
    others = np.concatenate([s for i, s in enumerate(shards) if i != index])
    # A slice of the other shards, seeded per shard so siblings are judged on different rows.
    pick = np.random.default_rng([seed, index]).permutation(len(others))
    n_held = min(len(others), max(1, round(fraction * n_groups)))
    return shards[index], others[pick[:n_held]]


@SPLITS.register("subsample")
def _subsample(n_groups: int, frac: float, index: int, seed: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n_groups)
    k = min(max(1, round(frac * n_groups)), n_groups - 1)
    return perm[:k], perm[k:]
