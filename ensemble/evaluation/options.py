"""Method options that name voters: kept with their voter's name, cut to a voter subset.

The protocol reorders voters (``protocol.canonical``) and ablation drops some, so an
option about a voter (a weight, a list of voters) must travel with the voter's name, not
its position. Re-exported by ``ensemble.evaluation.protocol``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def by_voter_name(options: Mapping[str, Mapping[str, Any]], voters: Sequence[str]
                  ) -> dict[str, dict[str, Any]]:
    """Positional ``weights`` (one per voter, in ``voters`` order) -> {voter: weight}.

    The protocol reorders voters (``canonical``) and ablation drops some, so a weight must
    travel with its voter's name, not its position.
    """
    out = {k: dict(v) for k, v in options.items()}
    for opts in out.values():
        w = opts.get("weights")
        if isinstance(w, (list, tuple, np.ndarray)) and len(w) == len(voters):
            opts["weights"] = {v: x for v, x in zip(voters, w)}
    return out


def restrict_options(options: Mapping[str, Mapping[str, Any]], voters: Sequence[str],
                     kept: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Options that name voters (a mapping keyed by voter names, or a list of voter names),
    cut down to the voters ``kept``. Values naming unknown voters pass unchanged (the
    method reports them)."""
    every, keep = set(voters), set(kept)

    def cut(value: Any) -> Any:
        if isinstance(value, Mapping) and value and {str(k) for k in value} <= every:
            return {k: v for k, v in value.items() if str(k) in keep}
        if isinstance(value, (list, tuple)) and value and all(isinstance(x, str) for x in value) \
                and set(value) <= every:
            return [x for x in value if x in keep]
        return value

    return {name: {k: cut(v) for k, v in opts.items()} for name, opts in options.items()}
