"""``evaluate``: run voting methods over a VoteMatrix and score them against gold.

Protocol (``ensemble.evaluation.protocol``). ``dev`` (I,) bool marks the items fitted
methods may fit on; methods see gold on dev only, on the canonical (sorted) matrix.
Every metric is computed on the *eval items*: outside dev and with a known gold answer.
Items without gold are counted (``n_items_without_gold``), never scored. The best
single voter, the baseline every method is tested against, is chosen on dev when
dev has gold items (an honest choice), else on the eval items themselves (an
optimistic baseline); ``best_voter_selected_on`` says which; ties go to the voter
name that sorts first. ``selected_on_dev`` names the method best on dev (None
without dev) and gives its eval result: the one number to quote.

Without any eval item (no gold at all, or all gold items in dev) the report still
holds every method's decisions and its coverage over the items outside dev;
accuracy, F1, calibration and the paired test are then absent.

A matrix from an adaptive run (``VoteMatrix.asked``) adds ``calls`` (calls made,
saved, per-voter coverage: ``ensemble.evaluation.calls``); a vote never asked is
absent, so each voter's row (and the paired test against the best voter) is scored
on the eval items that voter was asked.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.evaluation import protocol
from ensemble.evaluation.calls import calls, voter_asked
from ensemble.evaluation.metrics import (
    error_correlation,
    jsonable,
    mean_pairwise_disagreement,
    oracle,
    paired_test,
    score_decision,
    voter_decisions,
)
from ensemble.evaluation.splits import Split
from ensemble.evaluation.temperature import tempered_calibration
from ensemble.predictions.matrix import ABSTAIN, Decision, VoteMatrix
from ensemble.registry import unknown_name
from ensemble.voting import METHODS, vote


@dataclass(frozen=True, eq=False)
class Report:
    """The numbers of one evaluation, plus every method's raw decisions."""

    n_items: int
    n_eval_items: int
    n_dev_items: int
    n_items_without_gold: int
    classes: tuple[str, ...]
    methods: dict[str, dict[str, Any]]
    voters: dict[str, dict[str, Any]]
    diagnostics: dict[str, Any]
    items: tuple[str, ...] = ()
    decisions: dict[str, Decision] = field(default_factory=dict)
    eval_mask: np.ndarray | None = None  # (I,) bool: the items the metrics are computed on
    selected_on_dev: dict[str, Any] | None = None  # protocol.best_on_dev: the method chosen on dev
    split_how: str | None = None  # how the dev items were chosen (a Split's ``how``)
    calls: dict[str, Any] | None = None  # calls.calls: only for a matrix with an asked mask

    def to_dict(self) -> dict[str, Any]:
        """The ``vote eval --json`` contract (keys may be added, never renamed)."""
        out: dict[str, Any] = jsonable({
            "n_items": self.n_items, "n_eval_items": self.n_eval_items,
            "n_dev_items": self.n_dev_items, "n_items_without_gold": self.n_items_without_gold,
            "classes": list(self.classes), "methods": self.methods, "voters": self.voters,
            "diagnostics": self.diagnostics, "selected_on_dev": self.selected_on_dev,
            "split": self.split_how,
            **({"calls": self.calls} if self.calls is not None else {}),
        })
        return out

    def answers(self, method: str) -> dict[str, str | None]:
        """{item id: answer} for every item (dev ones too); None where the method abstained."""
        if method not in self.decisions:
            raise EnsembleError(unknown_name("evaluated method", method, self.decisions)
                                + ". Add it to the methods evaluated.")
        labels = self.decisions[method].labels
        return {i: (self.classes[c] if c != ABSTAIN else None)
                for i, c in zip(self.items, labels.tolist())}


def evaluate(m: VoteMatrix, methods: Sequence[str] = ("majority",), *,
             dev: np.ndarray | Split | None = None, method_options: dict[str, dict[str, Any]] | None = None,
             n_boot: int = 1000, seed: int = 0, on_error: str = "raise") -> Report:
    """Run each registered method in ``methods`` on ``m`` and score it on the eval items.

    ``dev``: an (I,) bool mask over ``m.items`` or a ``Split``. Methods see gold on dev
    only (``protocol.mask_gold``) and run on the canonical (sorted) matrix, so the
    report does not depend on row or voter order; ``Report.decisions`` follow ``m.items``.
    ``on_error="record"``: a method that cannot apply to this data (EnsembleError, e.g.
    `weighted` when every voter is at chance on dev) gets ``{"error": message}`` in the
    report and no decision, and the other methods go on (used by `vote run`, where one
    method's refusal must not throw away a long inference job's report). A method that
    fits on dev without a dev split with gold is always an error.
    """
    methods = list(methods)
    how = dev.how if isinstance(dev, Split) else None
    dev = check_dev(m, dev.dev_mask(m) if isinstance(dev, Split) else dev)
    options = protocol.by_voter_name(check_methods(methods, method_options), m.voters)
    protocol.require_dev(methods, options, dev if dev.any() else None, m.gold)
    c, order = protocol.canonical(m)
    report = _evaluate_canonical(c, methods, dev[order], options, n_boot, seed, on_error)
    decisions = {k: protocol.restore_order(d, order) for k, d in report.decisions.items()}
    return replace(report, items=m.items, decisions=decisions, eval_mask=m.has_gold() & ~dev,
                   split_how=how)


def _evaluate_canonical(m: VoteMatrix, methods: list[str], dev: np.ndarray,
                        options: dict[str, dict[str, Any]], n_boot: int, seed: int,
                        on_error: str) -> Report:
    """``evaluate`` on a matrix already in canonical order."""
    has_gold = m.has_gold()
    eval_mask = has_gold & ~dev
    scored = eval_mask if eval_mask.any() else ~dev  # without gold: coverage over non-dev items
    gold = protocol.gold_codes(m)[eval_mask] if eval_mask.any() else None
    seen = protocol.mask_gold(m, dev)  # what every method may see: gold on dev only

    def score(d: Decision) -> dict[str, Any]:
        return _score(d, scored, gold, m.classes, n_boot, seed)

    singles = voter_decisions(m)
    best, selected_on = protocol.baseline_voter(m, singles, dev, eval_mask)
    asked = voter_asked(m)                                          # (I, V)
    best_asked = asked[:, m.voters.index(best)][eval_mask] if best is not None else None
    decisions: dict[str, Decision] = {}
    method_rows: dict[str, dict[str, Any]] = {name: {} for name in methods}  # report in the given order
    for name in methods:
        try:
            decisions[name] = vote(seen, name, dev=dev, **options.get(name, {}))
        except EnsembleError as exc:
            if on_error != "record":
                raise
            method_rows[name] = {"error": str(exc)}
            continue
        d = decisions[name]
        row = score(d)
        row["info"] = jsonable(d.info)
        if gold is not None and best is not None and best_asked is not None:
            # on the eval items the best voter was asked (all of them outside adaptive runs)
            test = paired_test(gold[best_asked], d.labels[eval_mask][best_asked],
                               singles[best].labels[eval_mask][best_asked], n_boot=n_boot, seed=seed)
            row["vs_best_voter"] = {**test, "voter": best, "selected_on": selected_on}
        method_rows[name] = row

    fair, dev_errors = protocol.dev_decisions(seen, methods, options, dev, decisions, seed=seed)
    dev_acc = protocol.accuracy_on_dev(seen, methods, fair, dev)
    dev_gold = dev & has_gold
    codes = protocol.gold_codes(m)                                  # (I,) for temperature fits
    if gold is not None:  # temperature scaling: fitted on dev, read on the eval items
        for name, d in decisions.items():
            if name in fair:
                method_rows[name]["temperature"] = _tempered(m, codes, fair[name], dev_gold, d, eval_mask)
    selected = protocol.best_on_dev(dev_acc, method_rows, int(dev_gold.sum()))
    if selected is not None and dev_errors:
        selected["dev_errors"] = dev_errors
    sub = m.select_items(scored)
    diagnostics = {
        "oracle": float(oracle(sub).mean()) if gold is not None else None,
        "mean_pairwise_disagreement": mean_pairwise_disagreement(sub),
        "error_correlation": error_correlation(sub) if gold is not None else None,
        "best_voter": best, "best_voter_selected_on": selected_on,
    }
    return Report(
        n_items=m.n_items, n_eval_items=int(eval_mask.sum()), n_dev_items=int(dev.sum()),
        n_items_without_gold=int((~has_gold).sum()), classes=m.classes, methods=method_rows,
        voters=_voter_rows(m, singles, asked, dev_gold, codes, scored, gold, n_boot, seed), diagnostics=jsonable(diagnostics),
        items=m.items, decisions=decisions, eval_mask=eval_mask, selected_on_dev=jsonable(selected),
        calls=jsonable(calls(m)),
    )


def _voter_rows(m: VoteMatrix, singles: dict[str, Decision], asked_all: np.ndarray, dev_gold: np.ndarray,
                codes: np.ndarray, scored: np.ndarray, gold: np.ndarray | None, n_boot: int, seed: int
                ) -> dict[str, dict[str, Any]]:
    """Each voter's eval metrics on the scored items it was asked, plus ``dev_accuracy`` (what
    the baseline was chosen on) with dev gold. ``asked_all`` (I, V): ``voter_asked(m)``;
    ``dev_gold`` (I,): dev items with gold; ``codes`` (I,): ``protocol.gold_codes(m)``."""
    dev_acc = protocol.voter_accuracies(m, singles, dev_gold)
    asked = asked_all[scored]                                       # (n scored, V)
    rows = {}
    for j, (v, d) in enumerate(singles.items()):
        own = np.flatnonzero(scored)[asked[:, j]]                   # scored items voter j was asked
        mask = np.zeros(m.n_items, dtype=bool)
        mask[own] = True
        row = _score(d, mask, None if gold is None else gold[asked[:, j]], m.classes, n_boot, seed)
        if gold is not None:
            row["temperature"] = _tempered(m, codes, d, dev_gold & asked_all[:, j], d, mask)
        rows[v] = {**row, **({"dev_accuracy": dev_acc[v]} if v in dev_acc else {})}
    return rows


def _tempered(m: VoteMatrix, gold: np.ndarray, fit: Decision, fit_mask: np.ndarray, d: Decision,
              eval_mask: np.ndarray) -> dict[str, Any] | None:
    """``temperature.tempered_calibration``: ``t`` fitted on ``fit``'s scores of the ``fit_mask``
    items (dev gold), calibration of ``d``'s tempered scores on the ``eval_mask`` items."""
    if not fit_mask.any():
        return None
    valid = m.valid
    out: dict[str, Any] | None = jsonable(tempered_calibration(
        fit.scores[fit_mask], gold[fit_mask], d.scores[eval_mask], gold[eval_mask], d.labels[eval_mask],
        dev_valid=None if valid is None else valid[fit_mask],
        eval_valid=None if valid is None else valid[eval_mask]))
    return out


def _score(d: Decision, scored: np.ndarray, gold: np.ndarray | None, classes: tuple[str, ...],
           n_boot: int, seed: int) -> dict[str, Any]:
    """score_decision on the scored items; coverage only when there is no gold."""
    pred = d.labels[scored]
    if gold is None:
        coverage = float(np.mean(pred != ABSTAIN)) if pred.size else None
        return {"n": int(scored.sum()), "coverage": coverage}
    scores: dict[str, Any] = jsonable(score_decision(gold, pred, len(classes), scores=d.scores[scored],
                                                     class_names=classes, n_boot=n_boot, seed=seed))
    return scores


def check_methods(methods: list[str], method_options: dict[str, dict[str, Any]] | None
                  ) -> dict[str, dict[str, Any]]:
    """Fail before any work on unknown methods or options for methods not run."""
    if not methods:
        raise EnsembleError("No voting method given. Name at least one of: "
                            + ", ".join(METHODS.names()))
    for name in methods:
        METHODS.get(name)  # raises the did-you-mean EnsembleError
    if len(set(methods)) != len(methods):
        raise EnsembleError(f"Voting methods listed twice: {', '.join(methods)}. List each once.")
    options = dict(method_options or {})
    for name in options:
        if name not in methods:
            raise EnsembleError(f"method_options: options given for '{name}', which is not among "
                                f"the methods run ({', '.join(methods)}). Add it to the methods "
                                "or drop its options.")
    return options


def check_dev(m: VoteMatrix, dev: np.ndarray | None) -> np.ndarray:
    """(I,) bool dev mask; all False when None."""
    if dev is None:
        return np.zeros(m.n_items, dtype=bool)
    dev = np.asarray(dev)
    if dev.dtype != bool or dev.shape != (m.n_items,):
        raise EnsembleError(f"dev mask: expected a bool array of shape ({m.n_items},), one entry "
                            f"per item; got {dev.dtype} {dev.shape}. Build it as a boolean mask "
                            "over the items.")
    return dev
