"""`vote train`: a grid of LoRA variants over one frozen base model.

``train_grid(cfg)`` resolves the base model, reads (or generates) the training data,
expands the variant grid and trains each variant in order, rewriting
``<out>/manifest.json`` after every one. It resumes: a variant is skipped only when
the manifest says done with the same settings hash and the same train / held-out
rows, *and* ``adapters/<name>/adapter_model.safetensors`` exists. Half-written
``adapters/.tmp-*`` folders (a run killed while saving) are deleted first.

Progress events (``progress(event, **info)``; the CLI draws bars from them):
``setup`` (n_rows, n_variants, names), ``variant`` (name, index, total) or
``variant_skipped`` (same), then from the recipe ``train_start`` (name, n_train,
n_heldout, total steps), ``step`` (name, step, total, loss, lr), ``eval`` (name, step,
heldout_loss, heldout_accuracy), ``train_done`` (name, heldout_accuracy, heldout_loss,
seconds); finally ``done`` (n_variants).

With ``train.shared_batches: true`` the pending variants of one prompt template
train together in one process on shared batches (``training.multi``); their
progress events interleave, and their checkpoints live in ``<out>/checkpoints``.

Modules: grid (variants), kinds (PEFT config per voter kind), splits (rows per
variant), batches / loop / heldout / recipe (train one), shared / multi (train K on
shared batches), manifest (the record), adapters (voters trained elsewhere).
"""
from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ensemble.config.loader import to_dict
from ensemble.config.schema import Config, TrainConfig
from ensemble.data.chat import ChatExample
from ensemble.data.items import Item
from ensemble.errors import EnsembleError
from ensemble.memory import release_memory
from ensemble.training.adapters import (
    AdapterInfo,
    check_adapter,
    load_voters,
    register_adapter,
)
from ensemble.training.grid import Variant, expand_grid
from ensemble.training.manifest import (
    Manifest,
    adapter_paths,
    base_model_info,
    heldout_accuracies,
    ids_fields,
    load_manifest,
    open_manifest,
    write_manifest,
)
from ensemble.training.recipe import (
    Example,
    VariantResult,
    build_examples,
    train_variant,
)
from ensemble.training.splits import problem_groups, problem_key, split_indices

__all__ = ["AdapterInfo", "Example", "Manifest", "Variant", "VariantResult", "adapter_paths", "build_examples",
           "check_adapter", "expand_grid", "heldout_accuracies", "load_manifest", "load_training_rows",
           "load_voters", "register_adapter", "split_indices", "train_grid", "train_variant"]

log = logging.getLogger(__name__)
CHAT_KEYS = ("instruction", "conversations", "messages")
# Settings that change the weights (eval_every, checkpoint_every and the grid itself do not).
_NOT_RECIPE = ("grid", "eval_every", "checkpoint_every")
# Fields added later, left out of the hash at their defaults: older runs keep their hashes.
_NEW_DEFAULTS = {"shared_batches": False, "max_batch_tokens": 384}


def load_training_rows(cfg: Config, out: Path) -> list[Item | ChatExample]:
    """The training file (or the generated benchmark's train split), first ``data.limit`` problems."""
    from ensemble.data.chat import CHAT_FORMATS, read_chat_examples
    from ensemble.data.formats import read_items
    from ensemble.data.rows import read_rows
    from ensemble.data.tables import is_table

    data = cfg.data
    path = Path(data.train) if data.train else None
    if path is None and data.benchmark is not None:
        from ensemble.data.benchmark import ensure_benchmark

        path = ensure_benchmark(out / "data", **data.benchmark.settings())["train"]
    if path is None:
        raise EnsembleError(f"{cfg.source or 'config'}: field 'data.train' is empty; give a training file "
                            "or set data.benchmark to generate one")
    if not path.exists():
        raise EnsembleError(f"{cfg.source or 'config'}: field 'data.train' is {str(path)!r}: no such file")
    chat = data.format in CHAT_FORMATS or (  # chat files are JSON/JSONL; tables are item layouts
        data.format == "auto" and not is_table(path) and any(k in read_rows(path)[0][1] for k in CHAT_KEYS))
    rows: list[Any] = read_chat_examples(path, format=data.format if chat and data.format != "auto" else "auto") \
        if chat else read_items(path, format=data.format, columns=data.columns)
    if data.limit:
        keep = set(list(dict.fromkeys(problem_key(r) for r in rows))[: data.limit])
        rows = [r for r in rows if problem_key(r) in keep]
    return rows


def recipe_settings(train: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in to_dict(train).items()
            if k not in _NOT_RECIPE and not (k in _NEW_DEFAULTS and v == _NEW_DEFAULTS[k])}


def _is_done(entry: dict[str, Any] | None, settings_hash: str, train_hash: str, heldout_hash: str,
             out: Path, name: str) -> bool:
    return (entry is not None and entry.get("status") in ("done", "stale")
            and entry.get("settings_hash") == settings_hash and entry.get("train_items_hash") == train_hash
            and entry.get("heldout_items_hash") == heldout_hash
            and (out / "adapters" / name / "adapter_model.safetensors").is_file())


def _ordered(manifest: Manifest, names: Sequence[str]) -> Manifest:
    """Variants of the current grid first, in grid order; earlier ones after, marked stale."""
    variants = {n: manifest.variants[n] for n in names if n in manifest.variants}
    for n, e in manifest.variants.items():
        if n not in variants:
            variants[n] = {**e, "status": "stale"}
    return Manifest(manifest.base_model, variants, manifest.created, manifest.ensemble_version)


def _remove_partial(out: Path) -> None:
    """Delete ``adapters/.tmp-*``: saves that a killed run never finished."""
    for tmp in (out / "adapters").glob(".tmp-*"):
        log.info("removing half-written %s", tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _train_shared(base: Any, pending: Sequence[tuple], examples_by_prompt: dict[Any, list[Example]],
                  train: TrainConfig, out: Path, progress: Callable[..., None], record: Callable[..., None]) -> None:
    """Pending variants grouped by prompt template, each group in one process on shared batches."""
    from ensemble.training.multi import (
        Member,
        drop_checkpoint,
        row_weights,
        train_group,
    )

    by_prompt: dict[Any, list[tuple]] = {}
    for p in pending:
        by_prompt.setdefault(p[0].prompt, []).append(p)
    for prompt, group in by_prompt.items():
        pool = examples_by_prompt[prompt]
        members = [Member(v, row_weights(v, train_idx, len(pool)), tuple(pool[i] for i in held_idx), key=key)
                   for v, train_idx, held_idx, _, key, _ in group]
        name = f"shared-{prompt or 'default'}"
        for index, (v, *_rest) in enumerate(group):
            progress("variant", name=v.name, index=index, total=len(group))
        results = train_group(base, members, pool, train, out, group=name, progress=progress)
        for result, (_, _, _, settings, key, fields) in zip(results, group):
            record(result, settings, key, fields)
        drop_checkpoint(out, name)


def train_grid(cfg: Config, *, progress: Callable[..., None] | None = None) -> Manifest:
    """Train every variant of ``cfg.train.grid`` into ``cfg.out`` (resuming); return the manifest."""
    from ensemble.config.preflight import preflight_train
    from ensemble.engines.models import resolve_model
    from ensemble.prompts import get_template

    preflight_train(cfg)  # the training file exists, before the base model is resolved or converted

    progress = progress or (lambda event, **info: None)
    out = Path(cfg.out)
    base = resolve_model(cfg.model)
    if not (Path(base) / "config.json").is_file():
        raise EnsembleError(f"{cfg.source or 'config'}: field 'model' is {cfg.model!r}, a GGUF file; training "
                            "needs a Hugging Face model folder (a bundled name such as smollm2 converts one)")
    manifest = open_manifest(out, base_model_info(base, name=cfg.model))
    rows = load_training_rows(cfg, out)
    variants = expand_grid(cfg.train.grid, cfg.prompt)
    names = [v.name for v in variants]
    _remove_partial(out)
    manifest = _ordered(manifest, names)
    write_manifest(out, manifest)
    groups = problem_groups([problem_key(r) for r in rows])
    ids = [r.id for r in rows]
    recipe = recipe_settings(cfg.train)
    # Templates and examples for every prompt up front: a bad template or a row without
    # an answer fails before hours of training, not after.
    templates = {v.prompt: get_template(cfg.prompt if v.prompt is None else v.prompt,
                                        origin=f"{cfg.source or 'config'}: variant '{v.name}' prompt")
                 for v in variants}
    examples_by_prompt = {p: build_examples(rows, t, cfg.train.mode) for p, t in templates.items()}
    progress("setup", base=str(base), n_rows=len(rows), n_variants=len(variants), names=names)
    pending: list[tuple[Variant, Any, Any, dict[str, Any], str, dict[str, Any]]] = []

    def record(result: VariantResult, settings: dict[str, Any], settings_hash: str, fields: dict[str, Any]) -> None:
        nonlocal manifest
        manifest = manifest.with_variant(result.name, {
            "settings": settings, "settings_hash": settings_hash, "status": "done", **fields,
            "loss_curve": [list(p) for p in result.loss_curve], "eval_curve": [list(p) for p in result.eval_curve],
            "heldout_accuracy": result.heldout_accuracy, "heldout_loss": result.heldout_loss,
            "n_steps": result.n_steps, "seconds": round(result.seconds, 2), "adapter": f"adapters/{result.name}"})
        write_manifest(out, _ordered(manifest, names))

    for index, variant in enumerate(variants):
        template, examples = templates[variant.prompt], examples_by_prompt[variant.prompt]
        train_idx, held_idx = split_indices(variant, len(rows), groups=groups,
                                            heldout_fraction=cfg.train.heldout_fraction)
        train_ids, held_ids = [ids[i] for i in train_idx], [ids[i] for i in held_idx]
        context = {"recipe": recipe, "prompt_template": to_dict(template)}
        if cfg.train.shared_batches:  # the shared batch order comes from every row of the file
            context["pool_items_hash"] = ids_fields("pool", ids)["pool_items_hash"]
        settings, settings_hash = {**variant.settings(), **context}, variant.settings_hash(context)
        fields = {**ids_fields("train", train_ids), **ids_fields("heldout", held_ids)}
        entry = manifest.variants.get(variant.name)
        if _is_done(entry, settings_hash, fields["train_items_hash"], fields["heldout_items_hash"], out, variant.name):
            manifest = manifest.with_variant(variant.name, {**entry, "status": "done"})  # type: ignore[dict-item]
            progress("variant_skipped", name=variant.name, index=index, total=len(variants))
            continue
        if cfg.train.shared_batches:
            pending.append((variant, train_idx, held_idx, settings, settings_hash, fields))
            continue
        progress("variant", name=variant.name, index=index, total=len(variants))
        result = train_variant(base, variant, [examples[i] for i in train_idx], [examples[i] for i in held_idx],
                               cfg.train, out, progress=progress)
        record(result, settings, settings_hash, fields)
        release_memory()  # the variant's freed heap back to the OS before the next one loads
    if pending:
        _train_shared(base, pending, examples_by_prompt, cfg.train, out, progress, record)
    manifest = _ordered(manifest, names)
    write_manifest(out, manifest)
    progress("done", n_variants=len(variants))
    return manifest
