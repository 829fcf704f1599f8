"""Did voting pay? The ensemble beside one single LoRA that cost the same to train and score.

``compare(ensemble, single, gold, ...)`` takes the two runs' reports (``vote run`` on the
ensemble's voters with a dev split; the single LoRA's run on the test split alone) and
returns one JSON-able dict: for the ensemble, the method chosen on dev (never the best
row of the table) with its test accuracy and 95% interval as its report has them; for the
single LoRA, its voter row of its own report; McNemar's exact test and the paired
bootstrap interval of the difference on the items both were scored on; and the seconds
each side spent, as measured by the caller (``ensemble.quickstart``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.evaluation.metrics import paired_test
from ensemble.evaluation.report import Report


def eval_items(report: Report) -> list[str]:
    """The items a report's metrics were computed on (gold known, not dev)."""
    if report.eval_mask is None:
        return []
    return [i for i, keep in zip(report.items, report.eval_mask.tolist()) if keep]


def compare(ensemble: Report, single: Report, gold: Mapping[str, str], *, single_voter: str,
            seconds: Mapping[str, Mapping[str, float]], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The comparison dict (see the module doc). ``seconds``: {"ensemble": {...}, "single": {...}},
    each {"train": s, "score": s}; ``total`` is added."""
    chosen = ensemble.selected_on_dev
    if not chosen:
        raise EnsembleError("the ensemble's report has no method chosen on dev: answer a dev split with gold "
                            "(run.splits: [dev, test]) so the comparison quotes an honest method")
    method = chosen["method"]
    items = eval_items(ensemble)
    if set(items) != set(eval_items(single)):
        raise EnsembleError("the ensemble and the single LoRA were evaluated on different items; score both "
                            "on the same test split (same data.benchmark or data.test)")
    if single_voter not in single.voters:
        raise EnsembleError(f"the single LoRA's report has no voter '{single_voter}' (it has "
                            f"{', '.join(single.voters) or 'none'})")
    ens_row, one_row = ensemble.methods[method], single.voters[single_voter]
    mine, theirs = ensemble.answers(method), single.answers("majority")  # majority of one voter = its answer
    g = np.array([gold[i] for i in items], dtype=object)
    a = np.array([mine[i] or "" for i in items], dtype=object)  # abstain ("") is never gold
    b = np.array([theirs[i] or "" for i in items], dtype=object)
    test = paired_test(g, a, b, n_boot=n_boot, seed=seed)
    return {
        "n_items": len(items),
        "ensemble": {"method": method, "n_voters": len(ensemble.voters), "accuracy": ens_row["accuracy"],
                     "ci": ens_row["accuracy_ci"], "seconds": _total(seconds["ensemble"])},
        "single": {"name": single_voter, "accuracy": one_row["accuracy"], "ci": one_row["accuracy_ci"],
                   "seconds": _total(seconds["single"])},
        "mcnemar": {"p_value": test["p_value"], "ensemble_only": test["n_a_only"], "single_only": test["n_b_only"],
                    "delta": test["delta"], "delta_ci": test["delta_ci"]},
    }


def _total(parts: Mapping[str, float]) -> dict[str, float]:
    out = {k: round(float(v), 1) for k, v in parts.items()}
    out["total"] = round(sum(float(v) for v in parts.values()), 1)
    return out
