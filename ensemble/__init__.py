"""ensemble: many fine-tuned LoRA voters from one base LLM, combined by voting.

Library API (imported lazily, so `import ensemble` stays cheap)::

    from ensemble import load_predictions, vote, evaluate, ablate

Layout: the folders follow the data flow, file -> items -> prompts -> engines ->
predictions -> votes -> reports.

    config/       YAML -> typed Config (schema, loader); a config never does I/O
    configs/      shipped YAML configs (quickstart, study, vllm_serve, ...)
    data/         data files -> Items / ChatExamples (items, rows, formats, nested, chat);
                  benchmark/: the generated benchmark, one module per problem kind
    prompts.py    templates: an Item -> chat messages, prompt text, answer strings
    extraction/   a model's reply -> a label (letter, number, small steps, pipelines)
    engines/      one base model, K LoRA voters: base (the contract), hf/ (load, lora,
                  score, generate), vllm, openai; models (default models, name -> folder)
    serve/        the voters behind OpenAI-compatible routes (model name = voter name)
    predictions/  rows (predictions.jsonl / csv), store (resumable runs), matrix (VoteMatrix)
    voting/       voting methods over one VoteMatrix, registered in METHODS
    evaluation/   metrics, report, ablation, submission files
    training/     the LoRA grid (grid, splits, recipe), manifest (the only reader of
                  manifest.json), adapters (registering adapters trained elsewhere)
    pipeline.py   `vote run`: items -> every voter's answers -> stored rows -> votes
    cli/          the `vote` command (app, jobs, console)
    registry.py, errors.py, io.py, testing.py   shared helpers (name registries,
                  EnsembleError, atomic writes, tiny test models)
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
