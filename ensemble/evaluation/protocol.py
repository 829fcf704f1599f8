"""The evaluation protocol: what runs, what each method sees, what it is compared with.

Used by ``evaluate`` / ``ablate`` (and through them `vote eval`, `vote ablate`, `vote submit`,
`vote run`, ``experiments/``). The dev/eval split (``Split``, ``choose_split``, ``split_dev``)
is built in ``ensemble.evaluation.splits`` and importable from here too.

* **Canonical order.** Methods run on the matrix with items and voters sorted by id /
  name (``canonical``), so no decision, fitted weight, chosen voter or metric depends on
  the order rows were read in; decisions are mapped back to the caller's order after.
* **Gold is masked.** A method gets a matrix whose gold is known on the dev items only
  (``mask_gold``): it cannot see, let alone fit on, the answers it is scored against.
* **Fitted methods need dev.** weighted without weights, select and stack fit on dev gold;
  asking for one without a dev split is an error (``require_dev``), never a silent skip.
* **Baseline.** The best single voter (``baseline_voter``) has the highest accuracy on dev
  gold (else, without dev, on the eval items: optimistic); ties go to the voter name that
  sorts first.
* **Which method?** Answered on dev only (``dev_decisions`` + ``accuracy_on_dev`` + ``best_on_dev``): methods
  that fit on dev are scored there by K-fold cross-fitting over whole problems (fit on the
  other folds, predict this one), others by their decision on the dev items; the highest
  dev accuracy wins, ties to the method name that sorts first.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.evaluation.calls import share_right, voter_asked
from ensemble.evaluation.options import by_voter_name, restrict_options
from ensemble.evaluation.splits import (
    Split,
    choose_split,
    group_rank,
    problem_group,
    split_dev,
)
from ensemble.predictions.matrix import ABSTAIN, Decision, VoteMatrix
from ensemble.voting import METHODS, vote

__all__ = ["Split", "accuracy_on_dev", "baseline_voter", "best_on_dev", "by_voter_name", "canonical", "choose_split", "cross_fit", "cross_fit_decision",
           "dev_decisions",
           "evaluate_run", "mask_gold", "require_dev", "restrict_options", "runnable_methods", "split_dev"]

DEV_FOLDS = 5
EVALUATE_FIX = "pass dev= (a bool mask or a Split with gold dev items), or weights= for weighted"


# -- which methods ---------------------------------------------------------------
def fits_on_dev(method: str, options: Mapping[str, Any]) -> bool:
    """Does ``method`` with these options fit on dev gold? (weighted only without weights.)"""
    return method in ("select", "stack") or (method == "weighted" and options.get("weights") is None)


def require_dev(methods: Sequence[str], options: Mapping[str, Mapping[str, Any]], dev: np.ndarray | None,
                gold: np.ndarray | None, fix: str = EVALUATE_FIX) -> None:
    """EnsembleError when a method that fits on dev has no dev item with gold to fit on."""
    fitted = [n for n in methods if fits_on_dev(n, options.get(n, {}))]
    if not fitted:
        return
    if dev is None or not dev.any():
        raise EnsembleError(f"method(s) {', '.join(fitted)} fit on dev items, but there is no dev split: {fix}")
    if gold is None or not (dev & (gold != ABSTAIN)).any():
        raise EnsembleError(f"method(s) {', '.join(fitted)} fit on dev items, but none of the "
                            f"{int(dev.sum())} dev items has a gold answer: {fix}")


def runnable_methods(m: VoteMatrix, requested: Sequence[str], options: Mapping[str, Mapping[str, Any]],
                     dev: np.ndarray | None, fix: str = EVALUATE_FIX) -> list[str]:
    """``requested`` (checked), or by default every method the data allows, in report order."""
    for name in requested:
        METHODS.get(name)  # unknown names fail before any work
    chosen = list(requested)
    if not chosen:
        has_dev = dev is not None and bool(dev.any())
        chosen = ["majority"]
        if has_dev or options.get("weighted", {}).get("weights") is not None:
            chosen.append("weighted")
        if has_dev:
            chosen += ["select", "stack"]
        if m.confidence is not None or m.probs is not None:
            chosen.append("confidence")
        chosen.append("dawid_skene")
    require_dev(chosen, options, dev, m.gold, fix)
    return chosen


# -- what a method sees --------------------------------------------------------------
def canonical(m: VoteMatrix) -> tuple[VoteMatrix, np.ndarray]:
    """``m`` with items sorted by id and voters by name, and ``order`` (I,): canonical = m[order]."""
    order = np.argsort(np.asarray(m.items, dtype=object), kind="stable").astype(np.intp)
    voters = sorted(m.voters)
    out = m
    if not np.array_equal(order, np.arange(m.n_items)):
        out = out.select_items(order)
    if voters != list(m.voters):
        out = out.select_voters(voters)
    return out, order


def restore_order(d: Decision, order: np.ndarray) -> Decision:
    """A decision on the canonical matrix, rows put back in the original item order."""
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return Decision(labels=d.labels[back], scores=d.scores[back], info=d.info)


def mask_gold(m: VoteMatrix, dev: np.ndarray | None) -> VoteMatrix:
    """``m`` with gold kept on the ``dev`` (I,) items only: what a voting method may see."""
    if m.gold is None:
        return m
    if dev is None or not dev.any():
        return replace(m, gold=None)
    return replace(m, gold=np.where(dev, m.gold, ABSTAIN).astype(np.int32))


# -- baselines and the choice of method -----------------------------------------------
def gold_codes(m: VoteMatrix) -> np.ndarray:
    """(I,) gold class codes, ABSTAIN where unknown (all ABSTAIN without gold)."""
    return np.full(m.n_items, ABSTAIN, dtype=np.int32) if m.gold is None else m.gold


def baseline_voter(m: VoteMatrix, singles: Mapping[str, Decision], dev: np.ndarray,
                   eval_mask: np.ndarray) -> tuple[str | None, str | None]:
    """(voter, "dev" | "eval"): the single voter most accurate on dev gold (else on eval).

    Each voter's accuracy is over the items it was asked (``calls.voter_asked``; all of
    them outside adaptive runs, where this is "most often right"). Ties go to the voter
    name that sorts first. (None, None) when neither set has gold.
    """
    dev_gold = dev & m.has_gold()
    pick, where = (dev_gold, "dev") if dev_gold.any() else (eval_mask, "eval")
    if not pick.any():
        return None, None
    acc = {v: -1.0 if a is None else a for v, a in voter_accuracies(m, singles, pick).items()}
    return min(acc, key=lambda v: (-acc[v], v)), where


def voter_accuracies(m: VoteMatrix, singles: Mapping[str, Decision], mask: np.ndarray
                     ) -> dict[str, float | None]:
    """{voter: accuracy on the gold items of ``mask`` it was asked} ({} when there are none;
    None for a voter asked none of them)."""
    keep = mask & m.has_gold()
    if not keep.any():
        return {}
    gold, asked = gold_codes(m), voter_asked(m)
    return {v: share_right(singles[v].labels, gold, keep & asked[:, j]) for j, v in enumerate(m.voters)}


def dev_decisions(seen: VoteMatrix, methods: Sequence[str], options: Mapping[str, Mapping[str, Any]],
                  dev: np.ndarray, decisions: Mapping[str, Decision], *, seed: int = 0,
                  folds: int = DEV_FOLDS) -> tuple[dict[str, Decision], dict[str, str]]:
    """({method: its decision as dev gold may judge it}, {method: why it has none}); ``seen`` =
    the gold-masked matrix. Labels and scores count on the dev items only (elsewhere: anything).

    Methods that fit on dev are cross-fitted (see ``cross_fit``): their in-sample dev
    decisions would favour whichever fits dev hardest. Others: their decision as it is.
    """
    out: dict[str, Decision] = {}
    errors: dict[str, str] = {}
    for name in methods:
        opts = options.get(name, {})
        try:
            if fits_on_dev(name, opts):
                out[name] = cross_fit_decision(seen, name, opts, dev, seed=seed, folds=folds)
            elif name in decisions:
                out[name] = decisions[name]
            else:
                raise EnsembleError("it did not run")
        except EnsembleError as exc:
            errors[name] = str(exc)
    return out, errors


def accuracy_on_dev(seen: VoteMatrix, methods: Sequence[str], fair: Mapping[str, Decision],
                    dev: np.ndarray) -> dict[str, float | None]:
    """{method: accuracy of its ``dev_decisions`` entry on dev gold} (None: no entry or no dev gold)."""
    idx = np.flatnonzero(dev & seen.has_gold())
    gold = gold_codes(seen)[idx]
    return {name: None if name not in fair or not len(idx) else float(np.mean(fair[name].labels[idx] == gold))
            for name in methods}


def cross_fit(seen: VoteMatrix, method: str, options: Mapping[str, Any], dev: np.ndarray, *,
              seed: int = 0, folds: int = DEV_FOLDS) -> np.ndarray:
    """(I,) labels of ``cross_fit_decision``: ABSTAIN outside dev."""
    return cross_fit_decision(seen, method, options, dev, seed=seed, folds=folds).labels


def cross_fit_decision(seen: VoteMatrix, method: str, options: Mapping[str, Any], dev: np.ndarray, *,
                       seed: int = 0, folds: int = DEV_FOLDS) -> Decision:
    """Each dev item decided by ``method`` fitted on the other dev folds: labels (I,) and
    scores (I, C); non-dev items get ABSTAIN and all-zero scores.

    Folds are whole problems ranked by the seeded hash and dealt round-robin into
    min(folds, problems) folds. The fitted methods decide each
    item from its own votes and the fitted parameters, so running them on the dev
    sub-matrix gives the same dev labels as on the full one, at a fraction of the cost.
    """
    dev_ix = np.flatnonzero(dev)
    sub = seen.select_items(dev_ix)
    names = sorted({problem_group(i) for i in sub.items}, key=lambda g: (group_rank(seed, g), g))
    k = min(folds, len(names))
    if k < 2:
        raise EnsembleError(f"cross-fitting {method} on dev needs dev items from at least 2 problems")
    fold_of = {g: r % k for r, g in enumerate(names)}
    fold = np.array([fold_of[problem_group(i)] for i in sub.items])  # (D,)
    labels = np.full(seen.n_items, ABSTAIN, dtype=np.int32)
    scores = np.zeros((seen.n_items, seen.n_classes))
    for f in range(k):
        train = fold != f
        d = vote(mask_gold(sub, train), method, dev=train, **options)
        labels[dev_ix[fold == f]] = d.labels[fold == f]
        scores[dev_ix[fold == f]] = d.scores[fold == f]
    return Decision(labels=labels, scores=scores, info={"cross_fit_folds": k})


def best_on_dev(dev_acc: Mapping[str, float | None], rows: Mapping[str, Mapping[str, Any]],
                n_dev: int, folds: int = DEV_FOLDS) -> dict[str, Any] | None:
    """The method with the highest dev accuracy (ties: name) and its eval result; None without dev."""
    ranked = {n: a for n, a in dev_acc.items() if a is not None}
    if not ranked:
        return None
    name = min(ranked, key=lambda n: (-ranked[n], n))
    return {"method": name, "dev_accuracy": ranked[name], "eval_accuracy": rows.get(name, {}).get("accuracy"),
            "eval_macro_f1": rows.get(name, {}).get("macro_f1"), "n_dev_items": n_dev,
            "dev_accuracies": dict(dev_acc),
            "rule": f"highest accuracy on dev gold; methods that fit on dev scored by {folds}-fold "
                    "cross-fitting within dev; ties to the method name that sorts first"}


# -- `vote run` -----------------------------------------------------------------------
RUN_FIX = ("answer a dev split with gold (data.dev and run.splits: [dev, test]), set run.weights_from: "
           "manifest for weighted, or drop them from run.methods")


def evaluate_run(m: VoteMatrix, methods: Sequence[str], method_options: Mapping[str, Mapping[str, Any]],
                 dev_ids: Sequence[str] | None, *, manifest_dir: str | Path | None = None) -> Any:
    """`vote run`'s evaluation -> (Report, Split | None): dev = the data.dev items (None: no
    dev split), weighted's weights from the training manifest when ``manifest_dir`` is given.
    A method that cannot apply is recorded in the report; one that fits on dev without
    a dev split is an error."""
    from ensemble.evaluation.report import evaluate

    split = None if dev_ids is None else Split.of(m, dev_ids, "data.dev")
    options = {k: dict(v) for k, v in method_options.items()}
    if "weighted" in methods and manifest_dir is not None:
        options.setdefault("weighted", {})["weights"] = manifest_weights(manifest_dir, m)
    require_dev(methods, options, None if split is None else split.dev_mask(m), m.gold, RUN_FIX)
    return evaluate(m, methods, dev=split, method_options=options, on_error="record"), split


def manifest_weights(out_dir: str | Path, m: VoteMatrix) -> dict[str, float]:
    """`weighted` weights from a training manifest's held-out accuracies (log-odds)."""
    from ensemble.training.manifest import load_manifest
    from ensemble.voting.weighted import log_odds_weights

    acc = {n: v.get("heldout_accuracy") for n, v in load_manifest(out_dir).variants.items()}
    missing = [v for v in m.voters if acc.get(v) is None]
    if missing:
        raise EnsembleError(f"run.weights_from: manifest has no held-out accuracy for voter(s) "
                            f"{', '.join(missing)}; use weights_from: dev")
    # Chance level: the held-out items are gone, so take these items' mean chance (1 / options
    # per item, as the fitted weights do item by item); without options, 1 / all classes.
    n_opts = m.valid.sum(axis=1) if m.valid is not None else np.zeros(0)
    chance = float(np.mean(1.0 / n_opts[n_opts >= 1])) if (n_opts >= 1).any() else 1.0 / max(m.n_classes, 2)
    w = log_odds_weights([float(acc[v] or 0.0) for v in m.voters], chance=[chance] * m.n_voters)
    return {v: float(x) for v, x in zip(m.voters, w)}
