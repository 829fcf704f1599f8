"""What experiments/per_group.py and experiments/tie_break.py share: the vote matrix of a
`vote run` folder or of prediction + gold files, its dev split, and 2-fold cross-fitting
within dev.

The dev split of a run folder is the run's own (data/dev.jsonl); of files, the split
``vote eval --fit-on dev`` draws (``ensemble.evaluation.splits.choose_split``: whole
problems, seeded hash of the problem id). Problems are ``problem_group`` of an item id.

The cross-fit folds are the experiments' own (2 halves of dev by ``hash_unit`` of the
problem id, seed + 1), not ``ensemble.evaluation.protocol.cross_fit``'s 5 round-robin
folds: the results in experiments/results/ were measured with these, and they must be
reproducible from this code.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ensemble.evaluation.splits import choose_split, problem_group
from ensemble.predictions.matrix import VoteMatrix
from ensemble.predictions.rows import build_matrix, load_predictions, read_rows
from ensemble.voting import vote


def parser(doc: str, results: Path) -> argparse.ArgumentParser:
    """The arguments both experiments take: the data (a run folder, or files), the files'
    dev split, the seed and the results file."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--run", type=Path, help="a `vote run` output folder (predictions + data/)")
    ap.add_argument("--predictions", type=Path)
    ap.add_argument("--gold", type=Path)
    ap.add_argument("--dev-fraction", type=float, default=0.3, help="files only: dev share of the gold items")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=results)
    return ap


def load(args: argparse.Namespace, repeats: int = 1
         ) -> tuple[VoteMatrix, list[tuple[np.ndarray, int]], dict[str, Any]]:
    """``parser``'s arguments -> (matrix, [(dev mask, seed)] one per split, source facts): a run
    folder's own split, or ``repeats`` drawn splits of the files (seeds seed .. seed+repeats-1)."""
    if args.run:
        m, dev, source = load_run(args.run)
        return m, [(dev, args.seed)], source
    if not (args.predictions and args.gold):
        sys.exit("give --run DIR, or --predictions and --gold")
    m = load_predictions(args.predictions, args.gold)
    seeds = range(args.seed, args.seed + max(repeats, 1))
    which = f"seed {args.seed}" if len(seeds) == 1 else f"seeds {seeds[0]}..{seeds[-1]}"
    return m, [(drawn_dev(m, args.dev_fraction, s), s) for s in seeds], {
        "predictions": str(args.predictions), "gold": str(args.gold),
        "split": f"{DRAWN}, dev fraction {args.dev_fraction}, {which}"}


def write_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=float) + "\n", encoding="utf-8")


def hash_unit(key: str, seed: int) -> float:
    """A uniform number in [0, 1) from blake2b(seed:key): order-free and stable."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def load_run(run: Path) -> tuple[VoteMatrix, np.ndarray, dict[str, Any]]:
    """A `vote run` folder -> (matrix with gold, options and groups, dev mask, source facts).

    The matrix ``vote run`` builds (``ensemble.pipeline.finish``): the rows of the dev and
    test items, gold answers, option letters, and each item's kind as its group."""
    from ensemble.data.formats import read_items
    from ensemble.data.tables import item_group

    splits = {s: read_items(run / "data" / f"{s}.jsonl") for s in ("dev", "test")}
    items = {it.id: it for part in splits.values() for it in part}
    rows = [r for r in read_rows(run / "predictions.jsonl") if r["item"] in items]
    gold = {i: it.answer for i, it in items.items() if it.answer is not None}
    options = {i: it.letters for i, it in items.items() if it.options}
    groups = {i: g for i, it in items.items() if (g := item_group(it.meta))}
    m = build_matrix(rows, gold=gold, options=options or None, groups=groups)
    dev_ids = {it.id for it in splits["dev"]}
    dev = np.array([i in dev_ids for i in m.items])
    return m, dev, {"run": str(run), "split": "the run's own dev/test splits"}


def drawn_dev(m: VoteMatrix, fraction: float, seed: int) -> np.ndarray:
    """(I,) bool: the gold items of the dev split `vote eval --fit-on dev` draws
    (``--dev-fraction fraction --seed seed``)."""
    split = choose_split(m, fit_on="dev", fraction=fraction, seed=seed)
    assert split is not None  # fit_on="dev" always gives a split (or raises)
    dev: np.ndarray = split.dev_mask(m) & m.has_gold()
    return dev


DRAWN = "the split `vote eval --fit-on dev` draws (whole problems by seeded hash)"


def synthetic_groups(m: VoteMatrix, k: int, seed: int) -> VoteMatrix:
    """``m`` with group = hash of the problem id mod ``k``: groups that carry no signal."""
    return replace(m, groups=tuple(f"g{int(hash_unit(problem_group(i), seed + 7) * k)}" for i in m.items))


def cross_fit(m: VoteMatrix, method: str, dev: np.ndarray, seed: int, **options: Any) -> np.ndarray:
    """(I,) labels whose dev entries are out-of-sample: each half of dev (by ``hash_unit``
    of the problem id, seed + 1) is labelled by ``method`` fitted on the other half.
    Entries outside dev are -1."""
    fold = np.array([hash_unit(problem_group(i), seed + 1) < 0.5 for i in m.items])
    labels = np.full(m.n_items, -1, dtype=np.int32)
    for half in (fold, ~fold):
        scored = dev & ~half
        labels[scored] = vote(m, method, dev=dev & half, **options).labels[scored]
    return labels


def accuracy(m: VoteMatrix, labels: np.ndarray, mask: np.ndarray) -> float:
    """Accuracy of (I,) ``labels`` on the ``mask`` items (which must have gold)."""
    assert m.gold is not None
    return float((labels == m.gold)[mask].mean())
