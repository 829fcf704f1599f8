"""`vote quickstart`'s equal-budget single LoRA, beside the ensemble it is compared with.

After `vote train` + `vote run` on the quickstart config, the config's ``baseline``
section trains ONE plain LoRA on every training row (the train section's recipe, its
own ``max_steps``) into ``<out>/baseline/`` (its own manifest and predictions: it is
never one of the ensemble's voters), scores it on the test split, and
``equal_budget.compare`` sets it beside the ensemble's dev-chosen method.

Seconds come from what the runs stored, so a resumed quickstart reports the same:
training = the manifest's ``seconds`` of the voters (a shared-batch group records its
wall time split evenly among its K members, measured as each member is saved, so the
member saved last holds the group's whole time / K); scoring = the sum of the stored
rows' ``latency_s`` (each row's share of its batch's wall time) on the scored items.
Model loading is in neither. ``baseline.max_steps`` is calibrated so the two totals match.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ensemble.config.schema import Config, GridConfig, VariantConfig
from ensemble.errors import EnsembleError

BASELINE_DIR = "baseline"
RESULT_FILE = "equal_budget.json"
Progress = Callable[..., None]


def baseline_config(cfg: Config) -> Config:
    """The single LoRA's run: ``<out>/baseline``, one plain LoRA, the test split, no extra voters."""
    b = cfg.baseline
    if b is None:
        raise EnsembleError(f"{cfg.source or 'config'}: no 'baseline' section; add baseline: {{max_steps: N}} "
                            "for the equal-budget single LoRA")
    variant = VariantConfig(name=b.name, seed=b.seed, rank=b.rank, target_modules=b.target_modules)
    train = replace(cfg.train, max_steps=b.max_steps, shared_batches=False, grid=GridConfig(variants=(variant,)),
                    max_batch_tokens=cfg.train.max_batch_tokens if b.max_batch_tokens is None else b.max_batch_tokens)
    run = replace(cfg.run, splits=("test",), methods=("majority",), method_options={}, submission=None,
                  submission_method="majority", weights_from="dev", include_base=False)
    return replace(cfg, out=str(Path(cfg.out) / BASELINE_DIR), voters={}, train=train, run=run, baseline=None)


def train_seconds(out: str | Path, names: Iterable[str], *, shared: bool) -> float:
    """Training wall time of ``names`` from ``out``'s manifest (see the module doc)."""
    from ensemble.training.manifest import load_manifest

    variants = load_manifest(out).variants
    secs = [float(variants[n].get("seconds") or 0.0) for n in names if n in variants]
    return max(secs) * len(secs) if shared and secs else sum(secs)


def score_seconds(out: str | Path, voters: Iterable[str], items: Iterable[str]) -> float:
    """Summed ``latency_s`` of ``out``'s stored prediction rows for these voters and items."""
    from ensemble.predictions.store import stored_rows

    want_v, want_i = set(voters), set(items)
    return sum(float(r.get("latency_s") or 0.0) for r in stored_rows(Path(out) / "predictions.jsonl")
               if r.get("voter") in want_v and r.get("item") in want_i)


def run_seconds(cfg: Config, result: Any) -> dict[str, float]:
    """{"train", "score"} seconds of a `vote run` result's voters (trained ones for "train")."""
    m = result.matrix
    return {"train": train_seconds(cfg.out, m.voters, shared=cfg.train.shared_batches),
            "score": score_seconds(cfg.out, m.voters, m.items)}


def write_comparison(cfg: Config, result: Any, single_cfg: Config, single: Any) -> dict[str, Any]:
    """The ensemble's run vs the single LoRA's run -> ``<out>/equal_budget.json`` (returned too)."""
    from ensemble.evaluation.equal_budget import compare
    from ensemble.io import atomic_write_text

    m = result.matrix
    if m.gold is None:
        raise EnsembleError("the quickstart comparison needs gold answers on the test split")
    gold = {i: g for i, g in zip(m.items, m.encoder.decode(m.gold.tolist())) if g is not None}
    assert single_cfg.baseline is None and cfg.baseline is not None
    out = compare(result.report, single.report, gold, single_voter=cfg.baseline.name,
                  seconds={"ensemble": run_seconds(cfg, result), "single": run_seconds(single_cfg, single)})
    out["single"]["max_steps"] = cfg.baseline.max_steps
    out["ensemble"]["max_steps"] = cfg.train.max_steps
    atomic_write_text(Path(cfg.out) / RESULT_FILE, json.dumps(out, indent=2))
    return out
