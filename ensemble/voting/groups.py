"""Per-group fits: ``weighted``, ``select`` and ``stack`` with ``per_group=True``.

Voters are often good on some kinds of item (a subject, a task) and poor on others,
so one set of voter weights for every item wastes what dev gold says per group. A
group may have only a handful of dev items, though, and a fit on five items is
mostly noise. So each group's fit is *shrunk toward the global fit* with a strength
``group_prior`` measured in dev items: a group with n dev items gets weight
n / (n + group_prior) on its own evidence and the rest on the global fit. How the
two are mixed is each method's (see their docstrings); the limits are shared:

* ``group_prior=inf``  every group uses the global fit: exactly the global decision.
* ``group_prior=0``    every group with dev gold uses its own, independent fit.

Items with no group (``""``) and groups with no dev item with gold use the global
fit: there is no evidence to move away from it. Groups are visited in sorted
order and each fit only sums over its items, so nothing depends on row or voter
order. The result is one weight per (item, voter): every item is then scored with
its group's weights by the method's usual vote, so tie policies apply as before.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.predictions.matrix import VoteMatrix

DEFAULT_GROUP_PRIOR = 20.0
NO_GROUPS_FIX = ("give each item a group: a 'group' column in the predictions rows, or a "
                 "subject / category / kind field in the dataset")


def check_group_options(per_group: bool, group_prior: float, method: str) -> None:
    """EnsembleError unless per_group is a bool and group_prior a number in [0, inf]."""
    if not isinstance(per_group, (bool, np.bool_)):
        raise EnsembleError(f"{method}: per_group must be true or false, got {per_group!r} "
                            f"(option '{method}.per_group')")
    if isinstance(group_prior, bool) or not isinstance(group_prior, (int, float, np.number)) \
            or math.isnan(group_prior) or group_prior < 0:
        raise EnsembleError(f"{method}: group_prior must be a number of dev items >= 0 (inf = "
                            f"global fit only), got {group_prior!r} (option "
                            f"'{method}.group_prior')")


def group_dev_items(m: VoteMatrix, dev_idx: np.ndarray, method: str) -> list[tuple[str, np.ndarray]]:
    """[(group, its dev items (n,) from ``dev_idx``)] for every named group, sorted by name.

    EnsembleError when the matrix has no groups (or only ""), since per_group would
    silently be the global fit.
    """
    if m.groups is None or not any(m.groups):
        raise EnsembleError(f"{method}: per_group=true, but the items carry no group: "
                            f"{NO_GROUPS_FIX}; or set {method}.per_group=false")
    dev_groups = np.array([m.groups[i] for i in dev_idx], dtype=object)
    return [(g, dev_idx[dev_groups == g]) for g in sorted(set(m.groups) - {""})]


def own_share(n_dev: int, group_prior: float) -> float:
    """n / (n + prior): the share of a group's own fit (0 with no dev item or prior=inf)."""
    if n_dev == 0 or math.isinf(group_prior):
        return 0.0
    return n_dev / (n_dev + group_prior)


def item_weights(m: VoteMatrix, global_w: np.ndarray, group_w: dict[str, np.ndarray]) -> np.ndarray:
    """(I, V) weights: each item's group's row of ``group_w``, ``global_w`` (V,) otherwise."""
    out = np.tile(global_w, (m.n_items, 1))
    if m.groups is not None:
        groups = np.array(m.groups, dtype=object)
        for g, w in group_w.items():
            out[groups == g] = w
    return out


def fit_groups(m: VoteMatrix, dev_idx: np.ndarray, global_w: np.ndarray, method: str,
               fit_group: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-item weights (I, V) from ``fit_group(group dev items) -> (V,) shrunk weights``.

    ``fit_group`` is not called for groups without dev items (they keep ``global_w``).
    Returns the weights and the info to report: {"group_weights": {group: {voter: w}},
    "group_dev_items": {group: n}}.
    """
    group_w: dict[str, np.ndarray] = {}
    n_dev: dict[str, int] = {}
    for g, idx in group_dev_items(m, dev_idx, method):
        n_dev[g] = len(idx)
        group_w[g] = fit_group(idx) if len(idx) else global_w
    info: dict[str, Any] = {
        "group_weights": {g: {v: float(x) for v, x in zip(m.voters, w)} for g, w in group_w.items()},
        "group_dev_items": n_dev}
    return item_weights(m, global_w, group_w), info


def blend(global_w: np.ndarray, own_w: np.ndarray | None, n_dev: int,
          group_prior: float) -> np.ndarray:
    """(V,) convex blend (1 - a) global + a own, a = own_share; own None -> global.

    With a = 0 the result is ``global_w`` bit for bit (1 * x + 0 * y == x).
    """
    a = own_share(n_dev, group_prior)
    if own_w is None or a == 0.0:
        return global_w
    mixed: np.ndarray = (1.0 - a) * global_w + a * own_w
    return mixed


__all__ = ["DEFAULT_GROUP_PRIOR", "NO_GROUPS_FIX", "blend", "check_group_options", "fit_groups",
           "group_dev_items", "item_weights", "own_share"]
