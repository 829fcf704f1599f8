"""`vote run`: dataset -> K voters x n samples through one engine -> stored predictions -> votes.

The pipeline reads top to bottom:

    items      the config's data splits (dev items let fitted methods fit; test items are scored)
    voters     adapters of a trained run (its manifest), registered extras, config voters
    engine     one process: the base model once + every adapter (ensemble.engines)
    answers    each missing (item, voter, sample) asked once; rows appended to the store as they arrive
               (run.adaptive: dev items fully, the others in rounds until decided; ensemble.adaptive)
    votes      the stored rows -> VoteMatrix -> every configured method -> Report

Killed at any point and rerun, it recomputes only (item, voter, sample) keys missing
from the store, so the final table equals an uninterrupted run's.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ensemble.config.loader import to_dict
from ensemble.config.schema import Config
from ensemble.data.items import Item
from ensemble.data.splits import data_paths, load_split_items
from ensemble.engines.base import (
    ChoiceRequest,
    Engine,
    EngineSpec,
    GenRequest,
    SamplingSettings,
    build_engine,
)
from ensemble.errors import EnsembleError
from ensemble.predictions.store import PredictionStore, fingerprint

Progress = Callable[..., None]  # progress(event, **info); the CLI renders it with rich
BASE_VOTER = "base"


@dataclass
class RunResult:
    out: Path
    matrix: Any  # VoteMatrix
    report: Any  # ensemble.evaluation.metrics.Report
    n_new_rows: int
    abstain_counts: dict[str, int]
    dev: np.ndarray | None = None  # (I,) bool: items the fitted methods fitted on (not scored)
    warnings: list[str] = field(default_factory=list)
    submission: Any = None
    html: Path | None = None  # <out>/report.html (None when it could not be written: see warnings)
    calls: dict[str, Any] | None = None  # run.adaptive: votes made / possible / saved (evaluation.calls)


# -- voters ------------------------------------------------------------------
def resolve_voters(cfg: Config) -> dict[str, str | None]:
    """Voter name -> adapter folder (None = the plain base model)."""
    from ensemble.training.manifest import adapter_paths, find_manifest

    out_dir = Path(cfg.out)
    voters: dict[str, str | None] = {}
    manifest = find_manifest(out_dir)
    if manifest is not None:  # trained variants ("done" only: stale ones are not voters)
        voters.update({name: str(path) for name, path in adapter_paths(manifest, out_dir).items()})
    from ensemble.training.adapters import load_voters

    voters.update(load_voters(out_dir))  # registered with `vote adapters add`
    voters.update(cfg.voters)
    if cfg.run.include_base:
        voters[BASE_VOTER] = None
    if not voters:
        raise EnsembleError(f"{cfg.source or 'config'}: no voters: train some with `vote train`, add one with "
                            "`vote adapters add PATH`, list them under `voters:`, or set run.include_base: true")
    if cfg.run.engine == "openai":  # voters are model names on the server, not folders
        return voters
    for name, path in voters.items():
        if path is not None and not (Path(path) / "adapter_config.json").exists():
            raise EnsembleError(f"voter '{name}': {path} is not a PEFT adapter folder (no adapter_config.json)")
    return voters


# -- asking the voters --------------------------------------------------------
def run_settings(cfg: Config, model: str) -> dict[str, Any]:
    """What the stored rows depend on: changing any of these invalidates the store."""
    r = cfg.run
    adaptive = to_dict(r.adaptive)  # which cells were asked
    if adaptive is not None and r.mode == "generate":
        # One request per sample, drawing the full run's sample (SamplingSettings.first_sample).
        # Stores of the earlier per-sample seeds lack this mark, so they are refused, not mixed.
        adaptive = {**adaptive, "sample_seeds": "first_sample"}
    return {"model": model, "prompt": to_dict(cfg.prompt), "mode": r.mode, "samples": r.samples,
            "temperature": r.temperature, "top_p": r.top_p, "max_new_tokens": r.max_new_tokens,
            "seed": r.seed, "stop": list(r.stop), "extractor": to_dict(r.extractor), "dtype": r.dtype,
            "benchmark": to_dict(cfg.data.benchmark),  # regenerated items reuse ids: old rows must go
            "adaptive": adaptive}


def request_seed(seed: int, item_id: str, voter: str) -> int:
    """A per-(item, voter) sampling seed that does not depend on batch composition or order."""
    digest = hashlib.sha256(f"{seed}\0{item_id}\0{voter}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def pending(store: PredictionStore, items: Sequence[Item], voters: Sequence[str], n: int) -> list[tuple[Item, str]]:
    """(item, voter) pairs with at least one of their n samples missing from the store."""
    return [(it, v) for it in items for v in voters if not all(store.has(it.id, v, s) for s in range(n))]


def ask(engine: Engine, cfg: Config, work: Sequence[tuple[Item, str]], voters: dict[str, str | None],
        template: Any, extractor: Any) -> list[dict[str, Any]]:
    """Ask one chunk of (item, voter) pairs; return prediction rows (all samples)."""
    from ensemble.prompts import choice_continuations, render_messages, scoring_prefix

    r = cfg.run
    adapter = {name: (None if path is None else name) for name, path in voters.items()}
    if r.mode == "generate":
        reqs = [GenRequest(adapter=adapter[v], messages=render_messages(template, it), key=(it, v),
                           sampling=SamplingSettings(n=r.samples, temperature=r.temperature, top_p=r.top_p,
                                                     max_new_tokens=r.max_new_tokens, stop=tuple(r.stop),
                                                     seed=request_seed(r.seed, it.id, v)))
                for it, v in work]
        return [row for out in engine.generate(reqs) for row in gen_rows(out, extractor)]
    reqs_c = [ChoiceRequest(adapter=adapter[v], options=choice_continuations(it, r.mode),
                            messages=render_messages(template, it), mode=r.mode,
                            assistant_prefix=scoring_prefix(template, it), key=(it, v))
              for it, v in work]
    return [_choice_row(out) for out in engine.score_choices(reqs_c)]


def gen_rows(out: Any, extractor: Any) -> list[dict[str, Any]]:
    item, voter = out.request.key
    rows = []
    for s, sample in enumerate(out.samples):
        lp = sample.token_logprobs
        # Confidence of a generated answer: the geometric-mean token probability (DeepConf-style).
        conf = math.exp(sum(lp) / len(lp)) if lp else None
        rows.append({"item": item.id, "voter": voter, "sample": s, "answer": extractor.extract(sample.text, item),
                     "confidence": conf, "text": sample.text, "n_tokens": sample.n_tokens,
                     "latency_s": round(out.latency_s, 4)})
    return rows


def _choice_row(out: Any) -> dict[str, Any]:
    item, voter = out.request.key
    probs = {letter: round(float(p), 6) for letter, p in zip(item.letters, out.probs)}
    best = max(item.letters, key=lambda letter: (probs[letter], -item.letters.index(letter)))
    return {"item": item.id, "voter": voter, "sample": 0, "answer": best, "confidence": probs[best],
            "probs": _renormalise(probs), "logliks": [round(x, 6) for x in out.logliks],
            "latency_s": round(out.latency_s, 4)}


def _renormalise(probs: dict[str, float]) -> dict[str, float]:
    total = sum(probs.values())
    return {k: v / total for k, v in probs.items()}


def probe_adapters(engine: Engine, items: Sequence[Item], voters: dict[str, str | None], template: Any,
                   mode: str) -> list[str]:
    """Warn about adapters whose outputs equal the base model's (an adapter silently ignored)."""
    from ensemble.prompts import choice_continuations, render_messages, scoring_prefix

    probe_items = [it for it in items if it.options][:2] or list(items[:2])
    named = [v for v, p in voters.items() if p is not None]
    if not probe_items or not named:
        return []
    m = "letter" if mode == "letter" else "cloze"
    reqs = [ChoiceRequest(adapter=a, options=choice_continuations(it, m) or (" yes", " no"),
                          messages=render_messages(template, it), mode=m,
                          assistant_prefix=scoring_prefix(template, it))
            for a in [None, *named] for it in probe_items]
    outs = engine.score_choices(reqs)
    n = len(probe_items)
    base = outs[:n]  # items may have different option counts: compare item by item
    warnings = []
    for k, name in enumerate(named):
        mine = outs[(k + 1) * n:(k + 2) * n]
        if all(np.allclose(a.logliks, b.logliks, atol=1e-6) for a, b in zip(mine, base)):
            warnings.append(f"voter '{name}': its scores equal the base model's on {n} probe items — "
                            "the adapter seems to be ignored (zero weights, or target modules not applied)")
    return warnings


# -- the whole run ------------------------------------------------------------
def run(cfg: Config, *, restart: bool = False, progress: Progress | None = None,
        engine: Engine | None = None) -> RunResult:
    """Answer every split item with every voter (resuming), then vote and evaluate."""
    from ensemble.config.preflight import preflight_run
    from ensemble.engines.models import resolve_model
    from ensemble.extraction import build_extractor
    from ensemble.prompts import get_template

    preflight_run(cfg)  # data files and fitted methods' dev split, before any model is touched

    emit = progress or (lambda event, **info: None)
    out = Path(cfg.out)
    splits = load_split_items(cfg, cfg.run.splits)
    items = [it for split_items in splits.values() for it in split_items]
    voters = resolve_voters(cfg)
    template, extractor = get_template(cfg.prompt), build_extractor(cfg.run.extractor)
    # An OpenAI-compatible server holds the model itself: its name is passed through as-is.
    model_path = cfg.model if cfg.run.engine == "openai" else str(resolve_model(cfg.model))
    spec = EngineSpec(engine=cfg.run.engine, model=model_path,
                      options={**engine_defaults(cfg), **cfg.run.engine_options},
                      adapters={k: v for k, v in voters.items() if v is not None})
    prints = {name: fingerprint(path) for name, path in voters.items()}
    if cfg.run.engine == "openai":  # what answers is the server's model behind each name: ask it first
        engine = engine or build_engine(spec)
    if hasattr(engine, "fingerprint"):
        prints = {name: engine.fingerprint(None if path is None else name) for name, path in voters.items()}
    store = PredictionStore.open(out / "predictions.jsonl", run_settings(cfg, model_path), restart=restart,
                                 voters=prints)
    warnings: list[str] = []
    if cfg.run.adaptive is not None:  # in rounds, each item until its answer is settled
        from ensemble.adaptive import Asker, ask_adaptive

        asker = Asker(cfg, voters, template, extractor, spec, items, emit, warnings, engine)
        return finish(cfg, store, splits, voters, ask_adaptive(asker, store, splits), warnings)
    todo = pending(store, items, list(voters), cfg.run.samples)
    n_new = 0
    if todo:
        if engine is None:
            emit("status", message=f"loading {model_path} with {len(voters)} voters")
            engine = build_engine(spec)
        if cfg.run.probe:
            warnings += probe_adapters(engine, items, voters, template, cfg.run.mode)
            for w in warnings:
                emit("warning", message=w)
        chunk = max(cfg.run.batch_size, 1) * 2
        emit("start", total=len(todo), done=len(items) * len(voters) - len(todo))
        for start in range(0, len(todo), chunk):
            rows = ask(engine, cfg, todo[start:start + chunk], voters, template, extractor)
            n_new += store.append(rows)
            emit("advance", n=len(todo[start:start + chunk]))
        emit("finish")
    return finish(cfg, store, splits, voters, n_new, warnings)


def finish(cfg: Config, store: PredictionStore, splits: dict[str, list[Item]], voters: dict[str, str | None],
           n_new: int, warnings: list[str]) -> RunResult:
    """Stored rows -> vote matrix -> every method (dev = data.dev; see evaluate_run) -> report (+ submission)."""
    from ensemble.data.tables import item_group
    from ensemble.evaluation.calls import abstain_counts, calls
    from ensemble.evaluation.protocol import evaluate_run
    from ensemble.predictions.rows import build_matrix

    items = {it.id: it for split_items in splits.values() for it in split_items}
    rows = [r for r in store.rows if r["item"] in items and r["voter"] in voters]
    gold = {i: it.answer for i, it in items.items() if it.answer is not None}
    options = {i: it.letters for i, it in items.items() if it.options}
    groups = {i: g for i, it in items.items() if (g := item_group(it.meta))}
    m = build_matrix(rows, gold=gold, options=options or None, groups=groups,
                     adaptive=cfg.run.adaptive is not None)  # no row: not asked (not an abstention)
    dev_ids = [it.id for it in splits["dev"]] if {"dev", "test"} <= set(splits) else None
    report, split = evaluate_run(m, cfg.run.methods, cfg.run.method_options, dev_ids,
                                 manifest_dir=cfg.out if cfg.run.weights_from == "manifest" else None)
    warnings += [f"method {k}: {v['error']}" for k, v in report.methods.items() if 'error' in v]
    abstain = abstain_counts(m)  # asked cells only: a vote never asked is no abstention
    _write_json(Path(cfg.out) / "report.json", report.to_dict())
    result = RunResult(out=Path(cfg.out), matrix=m, report=report, n_new_rows=n_new, abstain_counts=abstain,
                       dev=None if split is None else split.dev_mask(m), warnings=warnings,
                       calls=calls(m))
    try:  # the page is a view of report.json: failing to draw it must not lose the run's result
        from ensemble.evaluation.html import run_html

        result.html = run_html(cfg, m, report, split, rows, {i: it.meta for i, it in items.items()})
    except Exception as exc:  # noqa: BLE001
        warnings.append(f"report.html not written: {type(exc).__name__}: {exc}")
    if cfg.run.submission:
        from ensemble.evaluation.submission import write_test_answers

        result.submission = write_test_answers(report.answers(cfg.run.submission_method), splits.get("test", []),
                                               cfg.run.submission, test_file=data_paths(cfg).get("test"),
                                               fallback=cfg.run.fallback)
    return result


def engine_defaults(cfg: Config) -> dict[str, Any]:
    """run.batch_size / run.dtype, for the engines that take them (vLLM batches by itself;
    an OpenAI-compatible server decides both)."""
    return {"hf": {"batch_size": cfg.run.batch_size, "dtype": cfg.run.dtype},
            "vllm": {"dtype": cfg.run.dtype}}.get(cfg.run.engine, {})


def _write_json(path: Path, data: Any) -> None:
    from ensemble.io import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False))
