"""`run.adaptive`: ask the votes in rounds and stop per item once its answer is settled.

    dev items      asked fully (every voter, every sample): they fit the voter order, the
                   weights and the fitted methods
    asking order   voters by dev accuracy (best first, ties by name) or as given; the cells
                   of an item are every voter's sample 0 in that order, then every sample 1, ...
    rounds         for every other item, ``walk_item`` (ensemble.voting.adaptive) reads the
                   item's stored votes down the asking order and says whether the stop rule
                   holds or which cell to ask next; each round asks every undecided item's
                   next cell through the engine, in batches, and appends the rows to the store

Nothing but the store carries state from round to round: decisions are recomputed from
the stored rows, so a killed run, rerun, asks exactly the cells an uninterrupted run asks
(the engine's answers do not depend on the batch; generated samples are seeded per
(item, voter, sample), one request each). ``replay`` runs the same ``walk_item`` offline.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ensemble.config.schema import AdaptiveConfig, Config
from ensemble.data.items import Item
from ensemble.engines.base import Engine, EngineSpec, GenRequest, SamplingSettings
from ensemble.errors import EnsembleError
from ensemble.predictions.matrix import ABSTAIN, VoteMatrix
from ensemble.predictions.rows import Key, Row
from ensemble.predictions.store import PredictionStore
from ensemble.voting.adaptive import StopRule, get_stop_rule, walk_item

Cell = tuple[Item, str, int]  # (item, voter, sample): one request to the engine
Progress = Callable[..., None]


# -- order and weights (fitted on the dev rows) ------------------------------------
def dev_matrix(rows: Sequence[Row], items: Sequence[Item]) -> VoteMatrix:
    """The dev rows as a vote matrix with gold (dev is asked fully, so no cell is 'not asked')."""
    from ensemble.predictions.rows import build_matrix

    return build_matrix(rows, gold={it.id: it.answer for it in items if it.answer is not None},
                        options={it.id: it.letters for it in items if it.options} or None)


def dev_accuracy(m: VoteMatrix, voters: Sequence[str]) -> dict[str, float]:
    """Voter -> share of its dev (item, sample) votes equal to the gold answer (abstaining counts as wrong)."""
    known = m.has_gold()
    right = (m.labels[known] == m.gold[known, None, None]).mean(axis=(0, 2)) if known.any() else None  # (V,)
    acc = {} if right is None else dict(zip(m.voters, right.tolist()))
    return {v: float(acc.get(v, 0.0)) for v in voters}


def voter_order(a: AdaptiveConfig, voters: Sequence[str], accuracy: Mapping[str, float]) -> list[str]:
    """The asking order of the voters: given, or best dev accuracy first (ties by name)."""
    if a.order == "given":
        return list(voters)
    return sorted(voters, key=lambda v: (-accuracy[v], v))


def voter_weights(a: AdaptiveConfig, m: VoteMatrix, voters: Sequence[str]) -> dict[str, float]:
    """Voter -> weight of each of its votes: 1, or the `weighted` method's log-odds weights fitted on dev."""
    if a.weights == "none":
        return dict.fromkeys(voters, 1.0)
    from ensemble.voting.weighted import fit_log_odds_weights

    fitted = dict(zip(m.voters, fit_log_odds_weights(m, np.ones(m.n_items, dtype=bool)).tolist()))
    w = {v: float(fitted.get(v, 0.0)) for v in voters}
    if not any(x > 0 for x in w.values()):
        raise EnsembleError("run.adaptive.weights is 'dev', but every voter is at or below chance on the dev "
                            "items, so every weight is 0 and no vote would count: set run.adaptive.weights: none")
    return w


def check_dev(a: AdaptiveConfig, dev: Sequence[Item]) -> None:
    """A dev-fitted order or weights need dev items with gold answers."""
    fitted = [f"{name}: {value}" for name, value in (("order", a.order), ("weights", a.weights))
              if value in ("dev_accuracy", "dev")]
    if fitted and not any(it.answer is not None for it in dev):
        raise EnsembleError(f"run.adaptive ({', '.join(fitted)}) is fitted on the dev items' gold answers, but no "
                            "dev item has one: give the dev split answers, or set run.adaptive.order: given and "
                            "run.adaptive.weights: none")


# -- one item's decision ---------------------------------------------------------
def item_votes(item: Item, known: Sequence[Row | None]) -> tuple[Callable[[int], tuple[int, float] | None], int | None]:
    """votes(k) for ``walk_item`` and the item's class count, from its known rows in asking order.

    An item with options codes its option letters in order (n_classes = its options); an
    answer outside them is no vote for the rule (ABSTAIN), as in the offline ``replay``. An
    open question codes the distinct answers seen by sorted name; n_classes None:
    ``walk_item`` counts the answers seen so far + 1 at each step. (The rules count per
    distinct class, so only the grouping of the answers matters, not the code numbers.)
    """
    if item.options:
        classes = list(item.letters)
    else:
        classes = sorted({r["answer"] for r in known if r is not None and r.get("answer")})
    code = {c: i for i, c in enumerate(classes)}

    def votes(k: int) -> tuple[int, float] | None:
        row = known[k]
        if row is None:
            return None
        conf = row.get("confidence")
        return code.get(row.get("answer") or "", ABSTAIN), float("nan") if conf is None else float(conf)

    return votes, (len(item.options) if item.options else None)


def next_cells(items: Sequence[Item], order: Sequence[tuple[str, int]], weights: Sequence[float],
               rule: StopRule, index: Mapping[Key, Row], decided: set[str]) -> list[Cell]:
    """Each undecided item's next cell to ask (items in order); [] when every item is decided.

    ``decided`` collects the items found decided: their stored votes never change, so a later
    round skips them (a cache of this process; a rerun finds the same from the store).
    """
    out: list[Cell] = []
    number = {v: i for i, v in enumerate(dict.fromkeys(v for v, _ in order))}
    voters = [number[v] for v, _ in order]                              # the voter of each cell, as an index
    for it in items:
        if it.id in decided:
            continue
        votes, n_classes = item_votes(it, [index.get((it.id, v, s)) for v, s in order])
        k, done = walk_item(votes, weights, rule, n_classes, voters)
        if done:
            decided.add(it.id)
        else:
            out.append((it, *order[k]))
    return out


# -- asking ------------------------------------------------------------------------
@dataclass
class Asker:
    """Asks cells through the engine, built (and probed) on first need: a finished run loads no model."""

    cfg: Config
    voters: dict[str, str | None]
    template: Any
    extractor: Any
    spec: EngineSpec
    probe_items: Sequence[Item]
    emit: Progress
    warnings: list[str]
    engine: Engine | None = None
    _opened: bool = field(default=False, repr=False)

    def _open(self) -> Engine:
        from ensemble import pipeline

        if self.engine is None:
            self.emit("status", message=f"loading {self.spec.model} with {len(self.voters)} voters")
            self.engine = pipeline.build_engine(self.spec)
        if not self._opened and self.cfg.run.probe:
            found = pipeline.probe_adapters(self.engine, self.probe_items, self.voters, self.template,
                                            self.cfg.run.mode)
            self.warnings += found
            for w in found:
                self.emit("warning", message=w)
        self._opened = True
        return self.engine

    def __call__(self, cells: Sequence[Cell]) -> list[Row]:
        """Rows for ``cells``: choice scoring (sample 0) or one generated sample per request."""
        from ensemble.pipeline import ask, gen_rows, request_seed
        from ensemble.prompts import render_messages

        engine, r = self._open(), self.cfg.run
        if r.mode != "generate":
            return ask(engine, self.cfg, [(it, v) for it, v, _ in cells], self.voters, self.template,
                       self.extractor)
        adapter = {name: (None if path is None else name) for name, path in self.voters.items()}
        # One request per sample: sample s of the (item, voter) request a full run sends, with
        # the full run's seed and first_sample = s, so it is the full run's sample s whichever
        # other samples were asked, in whatever batch (HF exactly in float32; vLLM seeds child s
        # of a request seed + s, see SamplingSettings.first_sample).
        reqs = [GenRequest(adapter=adapter[v], messages=render_messages(self.template, it), key=(it, v),
                           sampling=SamplingSettings(n=1, temperature=r.temperature, top_p=r.top_p,
                                                     max_new_tokens=r.max_new_tokens, stop=tuple(r.stop),
                                                     seed=request_seed(r.seed, it.id, v), first_sample=s))
                for it, v, s in cells]
        rows = []
        for out, (_, _, s) in zip(engine.generate(reqs), cells):
            rows += [{**row, "sample": s} for row in gen_rows(out, self.extractor)]
        return rows


def ask_all(asker: Asker, store: PredictionStore, cells: Sequence[Cell], index: dict[Key, Row],
            description: str) -> int:
    """Ask ``cells`` in batches, appending each batch's rows to the store; returns rows written."""
    chunk = max(asker.cfg.run.batch_size, 1) * 2
    asker.emit("start", total=len(cells), done=0, description=description)
    n_new = 0
    for start in range(0, len(cells), chunk):
        rows = asker(cells[start:start + chunk])
        n_new += store.append(rows)
        index.update({(r["item"], r["voter"], int(r["sample"])): r for r in rows})
        asker.emit("advance", n=len(cells[start:start + chunk]))
    return n_new


def ask_adaptive(asker: Asker, store: PredictionStore, splits: Mapping[str, Sequence[Item]]) -> int:
    """Dev items fully, then rounds over the other items until each is decided; returns rows written."""
    a, n_samples = asker.cfg.run.adaptive, asker.cfg.run.samples
    assert a is not None
    voters = list(asker.voters)
    index: dict[Key, Row] = {(r["item"], r["voter"], int(r.get("sample", 0))): r for r in store.rows}
    dev = list(splits.get("dev", []))
    check_dev(a, dev)
    full = [(it, v, s) for it in dev for v in voters for s in range(n_samples) if (it.id, v, s) not in index]
    n_new = ask_all(asker, store, full, index, "dev (every vote)") if full else 0
    dev_ids = {it.id for it in dev}
    dev_rows = [r for r in store.rows if r["item"] in dev_ids and r["voter"] in asker.voters]
    m = dev_matrix(dev_rows, dev) if a.order == "dev_accuracy" or a.weights == "dev" else None
    order = voter_order(a, voters, dev_accuracy(m, voters) if m is not None else {})
    w = voter_weights(a, m, voters) if m is not None else dict.fromkeys(voters, 1.0)
    cells = [(v, s) for s in range(n_samples) for v in order]
    weights = [w[v] for v, _ in cells]
    rule = get_stop_rule(a.rule, a.params)
    others = [it for name, items in splits.items() if name != "dev" for it in items]
    decided: set[str] = set()
    for round_no in range(1, len(cells) + 1):  # each round asks one more cell of an item: at most len(cells)
        todo = next_cells(others, cells, weights, rule, index, decided)
        if not todo:
            break
        n_new += ask_all(asker, store, todo, index, f"round {round_no} ({len(todo)} undecided items)")
    asker.emit("finish")
    return n_new

