"""K variants in one process on shared batches (``train.shared_batches: true``).

One base model holds every variant's adapter (PEFT multi-adapter). All variants see
the same batches, drawn from the whole training file (the *pool*) in one seeded
length-bucketed order; a variant's data is a weight per pool row instead of its own
batches: 1 on its split's training rows, 0 elsewhere (its held-out rows included),
the draw count for ``bootstrap``, times a seeded Poisson(1) draw for ``bagging:
poisson`` (online bagging). Per batch and micro-step:

1. the voter-independent part runs once, under no_grad with every adapter off
   (``training.shared``): the lower layers for ``layers: top:N`` variants, the
   prompt's KV cache for ``flavour: alora`` variants; plain LoRA variants share
   nothing but the batch;
2. each variant runs its own part with gradients, on its rows of the batch with a
   non-zero weight only (a weight-0 row is never computed), loss
   ``sum_b w_b NLL_b / sum_b w_b n_b`` (NLL_b summed over row b's n_b answer tokens;
   all weights 1 gives the plain recipe's token-mean loss), in passes of at most
   ``train.max_batch_tokens`` tokens. Members of one kind (aLoRA; top-layer with the
   same N) share passes (``training.stack``): each member's rows are cut into units as
   if it ran alone, and units of several members that fit the token budget go through
   the model together (the frozen base once, each member's LoRA on its own rows);
3. each variant with any weighted row this step clips and steps its own AdamW; every
   variant's schedule advances every step.

A variant's trajectory does not depend on its siblings: it has its own torch RNG
stream (LoRA init, then dropout), its own optimizer and schedule, and the batches
come from the pool alone. So a variant trained in a group of five equals the same
variant trained alone on shared batches (to float rounding: a stacked pass multiplies
more rows at once), and a group can resume with fewer members.

Resume: every ``checkpoint_every`` steps all members' LoRA tensors, optimizer and
scheduler states, RNG states and curves go into ``<out>/checkpoints/<group>.pt``
(one file, replaced atomically). A restarted run restores it when every remaining
member is in it with the same settings, skips the batches already used, and ends
with adapters bit-identical to an uninterrupted run.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ensemble.config.schema import TrainConfig
from ensemble.errors import EnsembleError
from ensemble.training.batches import (
    WIDTH_MULTIPLE,
    Example,
    Seq,
    collate,
    encode,
    passes,
)
from ensemble.training.heldout import eval_batch, eval_point, evaluate
from ensemble.training.loop import (
    MAX_GRAD_NORM,
    autocast_for,
    batch_order,
    bound_heap,
    cuda_determinism,
    total_steps,
    training_attention,
)
from ensemble.training.members import (  # noqa: F401  (Member, row_weights: the group's public names)
    Member,
    State,
    build_group_model,
    checkpoint_path,
    load_checkpoint,
    rng_get,
    rng_set,
    row_weights,
    save_checkpoint,
    save_member,
)
from ensemble.training.recipe import VariantResult, check_invocation
from ensemble.training.shared import PrefixCache, TopLayers, plain_rows
from ensemble.training.stack import Block, lora_linears, pack, stacked, unstackable

Progress = Callable[..., None]
POOL_SEED = 0  # the shared batch order; variants differ by their weights, not by their batches


def _rows(w: torch.Tensor) -> torch.Tensor:
    """(R,) positions of the rows with a non-zero weight (a weight-0 row is never computed)."""
    return torch.nonzero(w > 0)[:, 0]


def _member_losses(model: Any, s: State, w: Any, denom: float, batch: dict[str, Any], shared: dict[str, Any],
                   lower: dict[int, Any], prefix: Any, cfg: TrainConfig, device: str, autocast: Any) -> float:
    """One member's part alone (set_adapter, PEFT's own forward): DoRA members, and every
    member with ``share=False`` (the plain path, the reference of the exactness tests)."""
    top, cache = shared["top"], shared["prefix"]
    rows = _rows(w)
    width = prefix.suffix["input_ids"].shape[1] if s.alora and prefix is not None else batch["input_ids"].shape[1]
    model.set_adapter(s.adapter)
    rng_set(s.rng, device)  # the member's own dropout stream
    total = 0.0
    for part in passes([width] * len(rows), cfg.max_batch_tokens):  # bounded activations per pass
        sub = rows[part]
        with autocast():
            if s.split is not None and top:
                row_logp, _ = top.upper_rows(lower[s.split], s.split, batch, sub)
            elif s.alora and prefix is not None:
                row_logp, _ = cache.suffix_rows(prefix, sub)
            else:
                row_logp, _ = plain_rows(model, batch, sub)
            loss = -(w[sub] * row_logp).sum() / denom
        loss.backward()
        total += float(loss.detach())
    s.rng = rng_get(device)
    return total


def _stacked_losses(group: Sequence[State], key: tuple, weights: dict[str, Any], denoms: dict[str, float],
                    batch: dict[str, Any], shared: dict[str, Any], lower: dict[int, Any], prefix: Any,
                    cfg: TrainConfig, device: str, autocast: Any) -> dict[str, float]:
    """Members of one kind (same split, or aLoRA) in stacked passes (``training.stack``):
    each member's rows cut into units as it would run alone, units packed into passes
    of at most ``max_batch_tokens`` tokens, one forward + backward per pass."""
    suffix = key == ("alora",)
    width = prefix.suffix["input_ids"].shape[1] if suffix else batch["input_ids"].shape[1]
    units = []  # (member, (R,) rows): a member's units in its own order
    for s in group:
        rows = _rows(weights[s.adapter])
        units += [(s, rows[part]) for part in passes([width] * len(rows), cfg.max_batch_tokens)]
    for s in group:
        for p in s.params.values():
            p.requires_grad_(True)  # set_adapter (per-member path, evaluation) leaves only one trainable
    rngs = {s.adapter: s.rng for s in group}
    losses = dict.fromkeys((s.adapter for s in group), 0.0)
    for pass_ in pack([(i, len(rows) * width) for i, (_, rows) in enumerate(units)], cfg.max_batch_tokens):
        mine = [units[i] for i in pass_]
        blocks = [Block(s.adapter, rows, prefix.suffix["attention_mask"][rows].bool() if suffix else None)
                  for s, rows in mine]
        every = torch.cat([rows for _, rows in mine])
        with autocast(), stacked(shared["linears"], blocks, rngs, device):
            if suffix:
                row_logp, _ = shared["prefix"].suffix_rows(prefix, every, inner=True)
            else:
                row_logp, _ = shared["top"].upper_rows(lower[key[1]], key[1], batch, every)
            terms, start = [], 0
            for s, rows in mine:
                seg = row_logp[start:start + len(rows)]
                terms.append(-(weights[s.adapter][rows] * seg).sum() / denoms[s.adapter])
                start += len(rows)
        sum(terms).backward()
        for (s, _), term in zip(mine, terms):
            losses[s.adapter] += float(term.detach())
    for s in group:
        s.rng = rngs[s.adapter]
    return losses


def _stack_key(s: State, shared: dict[str, Any], prefix: Any) -> tuple | None:
    """Which stacked passes a member joins: ("top", split), ("alora",), or None (alone)."""
    if not shared["stack"] or s.adapter in shared["unstackable"]:
        return None
    if s.split is not None and shared["top"]:
        return ("top", s.split)
    if s.alora and prefix is not None:
        return ("alora",)
    return None


def _step_losses(model: Any, states: Sequence[State], batch: dict[str, Any], seqs: Sequence[Seq], idx: list[int],
                 shared: dict[str, Any], cfg: TrainConfig, device: str, autocast: Any) -> dict[str, float]:
    """One micro-batch: the shared part once, then the members' forward + backward
    (stacked across members where their kind allows, else one member at a time)."""
    weights = {s.adapter: torch.tensor(s.member.weights[idx], device=device) for s in states}
    active = [s for s in states if bool((weights[s.adapter] > 0).any())]
    top, cache = shared["top"], shared["prefix"]  # None: the plain path for every member
    splits = sorted({s.split for s in active if s.split is not None}) if top else []
    with autocast():
        lower = top.lower(batch, splits) if splits else {}
        prefix = cache.prefix([seqs[i] for i in idx], device) if cache and any(s.alora for s in active) else None
    n_answer = torch.tensor([seqs[i][1] for i in idx], device=device, dtype=torch.float32)  # (B,)
    # sum_b w_b n_b over the whole micro-batch
    denoms = {s.adapter: float((weights[s.adapter] * n_answer).sum()) * cfg.grad_accum for s in active}
    losses: dict[str, float] = {}
    groups: dict[tuple, list[State]] = {}
    for s in active:
        key = _stack_key(s, shared, prefix)
        if key is None:
            losses[s.adapter] = _member_losses(model, s, weights[s.adapter], denoms[s.adapter], batch, shared,
                                               lower, prefix, cfg, device, autocast)
        else:
            groups.setdefault(key, []).append(s)
    for key, group in groups.items():
        losses |= _stacked_losses(group, key, weights, denoms, batch, shared, lower, prefix, cfg, device, autocast)
    return {s.adapter: losses[s.adapter] for s in active}


@cuda_determinism()
def train_group(base_path: str | Path, members: Sequence[Member], pool: Sequence[Example], cfg: TrainConfig,
                out_dir: str | Path, *, group: str = "shared", progress: Progress | None = None,
                on_step: Callable[[int], None] | None = None, share: bool = True,
                stack: bool = True) -> list[VariantResult]:
    """Train ``members`` together on shared batches over ``pool``; save each adapter; return results
    in member order. ``on_step(step)`` runs after each optimizer step (tests stop a run there);
    ``share=False`` runs every member's whole forward pass (the reference for exactness tests);
    ``stack=False`` runs the shared path one member at a time (no stacked passes)."""
    import torch

    progress = progress or (lambda event, **info: None)
    bound_heap()
    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok, rngs, invocation = build_group_model(base_path, members, cfg, pool[0].prefix if pool else "", device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    seqs = [encode(tok, ex, cfg.max_length) for ex in pool]
    if invocation:
        check_invocation(next(m.variant.name for m in members if m.variant.flavour == "alora"), seqs, invocation,
                         [ex.id for ex in pool])
    n_steps = total_steps(len(pool), cfg)
    states = [State(model, m, f"voter{i}", cfg, n_steps, rngs[i]) for i, m in enumerate(members)]
    for s in states:
        if not s.member.weights.any():
            raise EnsembleError(f"variant '{s.member.variant.name}': no training rows with a non-zero weight; "
                                "add training data or change its split")
    shared = {"top": TopLayers(model) if share and any(s.split is not None for s in states) else None,
              "prefix": PrefixCache(model, invocation, pad) if share and invocation else None,
              "stack": share and stack, "linears": lora_linears(model),
              "unstackable": unstackable(model)}
    ckpt = checkpoint_path(out_dir, group)
    first = load_checkpoint(ckpt, states) + 1
    autocast = autocast_for(cfg, device)
    batches = batch_order([len(ids) for ids, _ in seqs], cfg.batch_size, POOL_SEED)
    for _ in range((first - 1) * cfg.grad_accum):  # batches an interrupted run already used
        next(batches)
    label = f"{len(states)} variants on shared batches"  # one progress bar for the group
    progress("train_start", name=label, n_train=len(pool), n_heldout=sum(len(m.heldout) for m in members),
             total=n_steps)
    model.train()
    for step in range(first, n_steps + 1):
        totals: dict[str, float] = {}
        for _ in range(cfg.grad_accum):
            idx = next(batches)
            batch = {k: v.to(device) for k, v in collate([seqs[i] for i in idx], pad, WIDTH_MULTIPLE).items()}
            with training_attention(model, cfg, device):
                got = _step_losses(model, states, batch, seqs, idx, shared, cfg, device, autocast)
            for adapter, loss in got.items():
                totals[adapter] = totals.get(adapter, 0.0) + loss
        for s in states:
            lr = s.sched.get_last_lr()[0]
            if s.adapter in totals:  # no weighted row this step: no update (AdamW would still move)
                torch.nn.utils.clip_grad_norm_(list(s.params.values()), MAX_GRAD_NORM)
                s.opt.step()
                s.curve.append((step, round(totals[s.adapter], 6), lr))
            s.opt.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # a variant with no weighted row yet steps its schedule
                # without an optimizer step, on purpose (schedules stay aligned with the shared step
                # count); torch warns about exactly that order.
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                s.sched.step()
        progress("step", name=label, step=step, total=n_steps, loss=float(np.mean(list(totals.values() or [0.0]))),
                 lr=states[0].sched.get_last_lr()[0])
        if cfg.eval_every and step % cfg.eval_every == 0 and step < n_steps:
            for s in states:
                model.set_adapter(s.adapter)
                s.evals.append(eval_point(model, tok, s.member.variant.name, s.member.heldout, cfg, step,
                                          autocast, progress))
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < n_steps:
            save_checkpoint(ckpt, step, states)
        if on_step is not None:
            on_step(step)
    results = []
    for s in states:
        model.set_adapter(s.adapter)
        name = s.member.variant.name
        accuracy, held_loss, logliks = evaluate(model, tok, s.member.heldout, batch_size=eval_batch(cfg),
                                                max_length=cfg.max_length, autocast=autocast)
        path = save_member(model, s.adapter, out_dir, name)
        seconds = (time.perf_counter() - started) / len(states)
        progress("train_done", name=name, heldout_accuracy=accuracy, heldout_loss=held_loss, seconds=seconds)
        results.append(VariantResult(name, path, tuple(s.curve), tuple(s.evals) + ((n_steps, held_loss, accuracy),),
                                     accuracy, held_loss, tuple(logliks), n_steps, seconds))
    return results


def drop_checkpoint(out_dir: str | Path, group: str) -> None:
    """Remove a group's checkpoint once all its adapters are saved and recorded."""
    checkpoint_path(out_dir, group).unlink(missing_ok=True)
