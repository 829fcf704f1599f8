"""Which items the fitted methods may fit on (dev) and which are scored (eval).

One rule for `vote eval`, `vote ablate`, `vote submit`, `vote run`, ``experiments/`` and
library users (``ensemble.evaluation.protocol`` uses it):

* **Groups stay together.** The sub-questions ``<id>#<k>`` of one nested problem form
  one group (``problem_group``); a dev split takes whole groups, never part of one.
* **Independent of row order.** A drawn dev split ranks groups by
  ``blake2b(f"{seed}:{group}")`` and takes them in that order until it holds
  ``round(fraction * n)`` items (at least 1), so it depends on the set of item ids and
  the seed only, never on the order rows were read in.
* **Eval items** are the items with gold outside dev. Items without gold are never scored.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.predictions.matrix import VoteMatrix

GroupOf = Callable[[str], str]


def problem_group(item_id: str) -> str:
    """``"p7#2"`` -> ``"p7"`` (sub-question 2 of problem p7); any other id is its own group."""
    head, sep, tail = item_id.rpartition("#")
    return head if sep and head and tail.isdigit() else item_id


def group_rank(seed: int, group: str) -> int:
    """A seeded pseudo-random rank of a group: the same on every machine and in every row order."""
    digest = hashlib.blake2b(f"{seed}:{group}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def groups(item_ids: Iterable[str], group_of: GroupOf = problem_group) -> dict[str, list[str]]:
    """{group: its sorted item ids}, groups in their seed-free sorted order."""
    out: dict[str, list[str]] = {}
    for i in sorted(set(item_ids)):
        out.setdefault(group_of(i), []).append(i)
    return dict(sorted(out.items()))


def split_dev(item_ids: Iterable[str], fraction: float, seed: int = 0,
              group_of: GroupOf = problem_group) -> tuple[str, ...]:
    """Sorted dev ids: whole groups in seeded-hash order until ``round(fraction * n)`` items."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise EnsembleError(f"dev fraction {fraction!r} (--dev-fraction): use a value in (0, 1), e.g. 0.3")
    by_group = groups(item_ids, group_of)
    n = sum(len(v) for v in by_group.values())
    if len(by_group) < 2:
        raise EnsembleError(f"a dev split needs at least 2 groups of items to split, got {len(by_group)} "
                            f"({n} items): add gold answers for more items or fit without dev")
    target = max(1, round(fraction * n))
    dev: list[str] = []
    for g in sorted(by_group, key=lambda g: (group_rank(seed, g), g)):
        if len(dev) >= target:
            break
        dev += by_group[g]
    if len(dev) == n:
        raise EnsembleError(f"dev fraction {fraction}: the dev split would take every one of the {n} "
                            "items (whole problems stay together), leaving nothing to score; use a "
                            "smaller --dev-fraction")
    return tuple(sorted(dev))


def straddling(item_ids: Iterable[str], dev_ids: Iterable[str],
               group_of: GroupOf = problem_group) -> list[str]:
    """Groups with some items in dev and some outside (sorted): what a split must not have."""
    dev = set(dev_ids)
    return [g for g, ids in groups(item_ids, group_of).items()
            if any(i in dev for i in ids) and not all(i in dev for i in ids)]


@dataclass(frozen=True)
class Split:
    """A dev/eval split of one vote matrix's items.

    dev   sorted ids the fitted methods may fit on (the only gold any method sees)
    eval  sorted ids the metrics are computed on: gold known, outside dev
    how   how dev was chosen, for the report (e.g. "drawn: 30% of gold items, seed 0")
    """

    dev: tuple[str, ...]
    eval: tuple[str, ...]
    how: str

    @classmethod
    def of(cls, m: VoteMatrix, dev_ids: Iterable[str], how: str,
           group_of: GroupOf = problem_group) -> Split:
        """The split of ``m`` whose dev items are ``dev_ids`` (ids not in ``m`` are ignored).

        EnsembleError when a problem's sub-questions straddle dev and eval, or when no
        dev item of ``m`` has a gold answer (nothing to fit on).
        """
        wanted = set(dev_ids)
        dev = tuple(sorted(i for i in m.items if i in wanted))
        torn = straddling(m.items, dev, group_of)
        if torn:
            raise EnsembleError(f"dev items ({how}) split problem(s) {', '.join(torn[:5])}: some of their "
                                "sub-questions <id>#<k> are dev and some are not; put whole problems in dev")
        mask = np.isin(np.asarray(m.items, dtype=object), np.asarray(dev, dtype=object))
        if not (mask & m.has_gold()).any():
            raise EnsembleError(f"dev items ({how}): none of the {len(dev)} dev items in the predictions has "
                                "a gold answer, so nothing can be fitted; give dev items with gold")
        evals = tuple(sorted(i for i, e in zip(m.items, m.has_gold() & ~mask) if e))
        return cls(dev=dev, eval=evals, how=how)

    def dev_mask(self, m: VoteMatrix) -> np.ndarray:
        """(I,) bool over ``m.items``: the dev items."""
        return _mask(m.items, self.dev)

    def eval_mask(self, m: VoteMatrix) -> np.ndarray:
        """(I,) bool over ``m.items``: the eval items."""
        return _mask(m.items, self.eval)

    def to_dict(self) -> dict[str, Any]:
        return {"how": self.how, "n_dev_items": len(self.dev), "n_eval_items": len(self.eval)}


def _mask(items: Sequence[str], ids: Sequence[str]) -> np.ndarray:
    chosen = set(ids)
    return np.fromiter((i in chosen for i in items), dtype=bool, count=len(items))


def choose_split(m: VoteMatrix, *, fit_on: str = "none", fraction: float = 0.3,
                 dev_items: str | Path | None = None, seed: int = 0) -> Split | None:
    """The dev split the CLI flags ask for: None (``fit_on="none"``), the ids in a file, or drawn.

    ``dev_items``: a file of ids, one per line, or a dataset / gold file (its item ids).
    Drawn: ``fraction`` of the items of problems with gold, by ``split_dev`` (whole problems,
    seeded hash).
    """
    if fit_on == "none":
        return None
    if fit_on != "dev":
        raise EnsembleError(f"--fit-on {fit_on!r}: use 'none' or 'dev'")
    if not m.has_gold().any():
        raise EnsembleError("--fit-on dev needs gold answers: pass --gold FILE or a 'gold' column")
    if dev_items:
        path = Path(dev_items)
        if not path.is_file():
            raise EnsembleError(f"--dev-items {path}: file not found; give a file of dev item ids")
        return Split.of(m, read_ids(path), f"listed in {path.name}")
    # Draw whole problems among those with gold; a drawn problem brings all its sub-questions.
    gold_groups = {problem_group(i) for i, g in zip(m.items, m.has_gold()) if g}
    dev = split_dev([i for i in m.items if problem_group(i) in gold_groups], fraction, seed)
    return Split.of(m, dev, f"drawn: {fraction:g} of the gold items by whole problem, seed {seed}")


def read_ids(path: Path) -> set[str]:
    """Item ids from a dataset / gold file (.jsonl/.json/.csv) or a plain list, one per line."""
    if path.suffix in (".jsonl", ".json", ".csv"):
        from ensemble.data.formats import read_gold

        return set(read_gold(path))
    return {x.strip() for x in path.read_text(encoding="utf-8").splitlines() if x.strip()}
