"""ensemble: many fine-tuned LoRA voters from one base LLM, combined by voting.

Library API (imported lazily, so `import ensemble` stays cheap)::

    from ensemble import load_predictions, vote, evaluate, ablate
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_predictions": "ensemble.predictions.rows",
    "build_matrix": "ensemble.predictions.rows",
    "vote": "ensemble.voting",
    "METHODS": "ensemble.voting",
    "evaluate": "ensemble.evaluation.metrics",
    "ablate": "ensemble.evaluation.ablation",
    "VoteMatrix": "ensemble.predictions.matrix",
    "ABSTAIN": "ensemble.predictions.matrix",
    "from_arrays": "ensemble.predictions.matrix",
    "load_config": "ensemble.config.loader",
    "run": "ensemble.pipeline",
    "read_items": "ensemble.data.formats",
    "EnsembleError": "ensemble.errors",
}

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'ensemble' has no attribute {name!r}")
