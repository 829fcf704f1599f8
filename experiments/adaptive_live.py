"""The live half of experiments/bench_adaptive.py: run the policy chosen offline through
`run.adaptive` (ensemble.adaptive) on the test items, and set its calls, tokens and accuracy
next to the replay's.

The live run is the full run's config with ``run.splits: [test]`` and ``run.adaptive``
= the chosen rule and parameters, ``order: given`` with the voters listed in the order
the replay used (best dev accuracy first, from the full run's dev votes, so the live run
need not ask the dev items again) and ``weights: none``. In generate mode the live run
asks each sample as its own request with the full run's seed and ``first_sample`` (since
2026-11-27; before, each sample had a seed of its own and the draws were new): on the HF
engine its samples are the full run's, and ``same_draws`` counts the asked samples whose text
is the full run's (bf16 batches of other shapes may still round a logit differently). Its
accuracy is compared with the full run's decision on the same items (McNemar,
ensemble.evaluation.metrics.paired_test).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ensemble.config.loader import load_config, load_yaml
from ensemble.evaluation.metrics import paired_test
from ensemble.predictions.matrix import VoteMatrix
from ensemble.predictions.rows import Row, read_rows
from ensemble.voting import vote


def split_config(base: Path, out: Path, run: dict[str, Any], limit: int | None = None,
                voters: list[str] | None = None) -> Path:
    """``base`` rewritten to answer the test split alone into ``out`` (majority, no submission),
    with ``run`` merged into its run section (a ``None`` value removes that key), ``limit`` test
    problems (``data.limit``) and ``voters`` (those, in that order); written to ``out``/config.yaml."""
    data = load_yaml(base)
    if limit is not None:
        data["data"] = {**data["data"], "limit": limit}
    if voters is not None:
        data["voters"] = {v: data["voters"][v] for v in voters}
    data["out"] = str(out)
    merged = {**data["run"], "splits": ["test"], "methods": ["majority"], "submission": None, **run}
    data["run"] = {k: v for k, v in merged.items() if v is not None}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def live_config(base: Path, setting: dict[str, Any], out: Path, limit: int | None = None) -> Path:
    """Write the live run's config (see the module docstring) to ``out``/config.yaml;
    ``limit``: only the first that many test problems (``data.limit``)."""
    chosen = setting["chosen"]
    adaptive = {"rule": chosen["rule"], "params": chosen["params"], "order": "given", "weights": "none"}
    order = list(dict.fromkeys(cell.split("#")[0] for cell in setting["order"]))
    return split_config(base, out, {"adaptive": adaptive}, limit, order)


def sample_texts(rows: Sequence[Row]) -> dict[tuple[str, str, int], str | None]:
    """(item, voter, sample) -> the generated text of each prediction row."""
    return {(r["item"], r["voter"], int(r["sample"])): r.get("text") for r in rows}


def _by_item(m: VoteMatrix, labels: np.ndarray) -> dict[str, str | None]:
    return dict(zip(m.items, m.decode(labels)))


def run_live(base: Path, full_run: Path, full_matrix: VoteMatrix, setting: dict[str, Any],
             out: Path, limit: int | None = None) -> dict[str, Any]:
    """Run the chosen policy live on the test items (``limit``: the first that many test
    problems); its calls, tokens and accuracy vs the full run's on the same ``items`` (the
    caller sets the replay's numbers on those items beside them)."""
    import torch

    from ensemble.pipeline import run

    torch.set_num_threads(1)
    cfg = load_config(live_config(base, setting, out, limit))
    t0, w0 = time.process_time(), time.time()
    result = run(cfg)
    cpu, wall = time.process_time() - t0, time.time() - w0
    m = result.matrix
    live = _by_item(m, vote(m, "majority").labels)
    full = _by_item(full_matrix, vote(full_matrix, "majority").labels)
    gold = _by_item(full_matrix, full_matrix.gold if full_matrix.gold is not None else np.array([]))
    items = [i for i in m.items if gold.get(i) is not None and i in full]
    g = np.array([gold[i] for i in items], dtype=object)
    a, b = np.array([live[i] for i in items], dtype=object), np.array([full[i] for i in items], dtype=object)
    test = paired_test(g, a, b)
    rows = [r for r in read_rows(out / "predictions.jsonl") if r["item"] in set(items)]
    full_rows = [r for r in read_rows(full_run / "predictions.jsonl") if r["item"] in set(items)]
    tokens, full_tokens = sum(r.get("n_tokens", 0) for r in rows), sum(r.get("n_tokens", 0) for r in full_rows)
    full_text, live_text = sample_texts(full_rows), sample_texts(rows)
    same = sum(full_text.get(k) == text for k, text in live_text.items())
    possible = len(items) * len(cfg.voters) * cfg.run.samples
    return {"config": str(out / "config.yaml"), "policy": setting["chosen"]["policy"], "n_items": len(items),
            "calls_made": len(rows), "calls_possible": possible,
            "calls_saved": 1 - len(rows) / possible if possible else 0.0, "same_draws": same,
            "run_calls": result.calls and {k: result.calls[k] for k in ("made", "possible", "saved_fraction")},
            "tokens_made": tokens, "tokens_full_run": full_tokens,
            "tokens_saved": 1 - tokens / full_tokens if full_tokens else None,
            "accuracy_full": float(np.mean(b == g)), "accuracy_adaptive": float(np.mean(a == g)),
            "p_value": test["p_value"], "delta": test["delta"], "delta_ci": test["delta_ci"],
            "cpu_s": round(cpu, 1), "wall_s": round(wall, 1), "items": items}
