"""Shared-prefix scoring and prefill for aLoRA and top-layer voters (see ``kinds``).

Rows (one question or prompt for one voter) are grouped into *units*: the rows of
one question whose voters split it at the same place. A unit's voter-independent
part runs once (``split.run_split``): the prompt before the aLoRA invocation with
the base weights, and for top-layer voters the layers below ``first_layer``. Only
the rest runs once per voter row, batched across voters.

cloze:  the unit's tail is the prompt from the split on, followed by the options as a
        token trie (``tail_layout``: each option token sees the prompt and the earlier
        tokens of its own option, at the positions it would have alone; options that
        start alike share those slots). An option's first token is scored from the
        last prompt token, the rest from the option slots.
letter: the tail is the prompt from the split on; letters are read from its last token.
prefill (generation): the tail is left-padded so that decoding continues with an
        ordinary 2D mask [head mask, tail mask, 1, 1, ...].

Exactness: each voter row gets what its own full forward pass gives (PEFT's aLoRA
activates from the last invocation in the prompt; an option that itself contained
the invocation sequence would move PEFT's activation point, which is not modelled).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

from ensemble.engines.hf.generate import left_pad
from ensemble.engines.hf.kinds import VoterKind, find_invocation
from ensemble.engines.hf.score import logsumexp_f32
from ensemble.engines.hf.split import SplitModel, head_allowed, run_split

Row = TypeVar("Row")
RowsCtx = Callable[..., Any]  # rows_ctx(names, blocks=False): context where row b uses names[b]
BASE = "__base__"


@dataclass
class Unit(Generic[Row]):
    head: list[int]  # prompt tokens before the split: base weights, run once
    tail: list[int]  # prompt tokens from the split on (never empty)
    options: list[list[int]]  # cloze: option continuations; letter: candidate ids per letter
    first_layer: int  # layers below it run once for the unit
    rows: list[Row] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)  # per row; BASE where the invocation is missing

    @property
    def length(self) -> int:
        return len(self.head) + len(self.tail) + sum(len(o) for o in self.options)


def split_prompt(ids: Sequence[int], kind: VoterKind) -> tuple[int, bool]:
    """(s, active): ids[:s] need no adapter. active is False when an aLoRA's invocation is
    not in the prompt: PEFT then never activates it, so the voter answers as the base."""
    if not kind.invocation:
        return 0, True
    start = find_invocation(ids, kind.invocation)
    if start is None:
        return len(ids) - 1, False
    return start, True


def group_units(rows: Sequence[Row], prompt: Callable[[Row], list[int]], options: Callable[[Row], list[list[int]]],
                adapter: Callable[[Row], str], kind: Callable[[str], VoterKind],
                missing: Callable[[str], None]) -> list[Unit[Row]]:
    """One unit per (head, tail, options, first_layer); ``missing(adapter)`` on absent invocations."""
    units: dict[tuple, Unit[Row]] = {}
    for row in rows:
        ids, name = prompt(row), adapter(row)
        k = kind(name)
        s, active = split_prompt(ids, k)
        if not active:
            missing(name)
        opts = options(row)
        key = (tuple(ids[:s]), tuple(ids[s:]), tuple(map(tuple, opts)), k.first_layer)
        unit = units.setdefault(key, Unit(list(ids[:s]), list(ids[s:]), opts, k.first_layer))
        unit.rows.append(row)
        unit.adapters.append(name if active else BASE)
    return list(units.values())


def unit_batches(units: list[Unit[Row]], batch_size: int) -> Iterator[list[Unit[Row]]]:
    """Length-sorted batches of at most ``batch_size`` voter rows (a unit is never cut),
    one ``first_layer`` per batch."""
    batch: list[Unit[Row]] = []
    for unit in sorted(units, key=lambda u: (u.first_layer, u.length)):
        if batch and (sum(len(u.rows) for u in batch) + len(unit.rows) > batch_size
                      or batch[-1].first_layer != unit.first_layer):
            yield batch
            batch = []
        batch.append(unit)
    if batch:
        yield batch


def _heads(units: Sequence[Unit], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not any(u.head for u in units):
        empty = torch.zeros((len(units), 0), dtype=torch.long, device=device)
        return empty, empty
    return left_pad([u.head for u in units], pad_id, device)


def _voters(units: Sequence[Unit], device: str) -> tuple[torch.Tensor, list[str]]:
    unit = torch.tensor([i for i, u in enumerate(units) for _ in u.rows], device=device)
    return unit, [a for u in units for a in u.adapters]


def tail_layout(u: Unit, mode: str) -> tuple[list[int], list[int], torch.Tensor, list[tuple[int, int, int]]]:
    """One unit's tail: (token ids, offsets from the split, (n, n) bool "slot i sees slot j",
    (slot, target id, option) pairs whose logprob a score needs).

    Prompt tokens are causal. In cloze mode the options follow as a token trie: options
    that start alike (" -5182", " -5194") share slots, which hold the same tokens in the
    same context at the same positions as in each option's own row; a slot sees the
    prompt and its own trie ancestors. An option's first token is read at the last
    prompt token, its token i + 1 at the slot of its first i + 1 tokens.
    """
    m = len(u.tail)
    toks, rel, parent = list(u.tail), list(range(m)), list(range(-1, m - 1))
    if mode == "letter":
        pairs = [(m - 1, t, k) for k, cands in enumerate(u.options) for t in cands]
    else:
        pairs, node = [], {}  # node: (parent slot, token) -> slot
        for k, c in enumerate(u.options):
            at = m - 1
            pairs.append((at, c[0], k))
            for i in range(len(c) - 1):
                if (at, c[i]) not in node:
                    node[(at, c[i])] = len(toks)
                    toks.append(c[i])
                    rel.append(rel[at] + 1)
                    parent.append(at)
                at = node[(at, c[i])]
                pairs.append((at, c[i + 1], k))
    n = len(toks)
    allowed = torch.zeros((n, n), dtype=torch.bool)
    for i in range(n):  # parents come first: a slot sees what its parent sees, and itself
        if parent[i] >= 0:
            allowed[i] = allowed[parent[i]]
        allowed[i, i] = True
    return toks, rel, allowed, pairs


def score_units(split: SplitModel, rows_ctx: RowsCtx, units: Sequence[Unit], *, mode: str, pad_id: int,
                device: str) -> list[list[list[float]]]:
    """Per voter row (in unit order), per option: cloze, the logprob of each of its tokens;
    letter, the logprob of each spelling of the letter."""
    head_ids, head_mask = _heads(units, pad_id, device)
    layouts = [tail_layout(u, mode) for u in units]
    width = max(len(t) for t, _, _, _ in layouts)
    U = len(units)
    tail_ids = torch.full((U, width), pad_id, dtype=torch.long)
    rel = torch.zeros((U, width), dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(U, 1, 1)  # padding slots see themselves only
    for i, (t, r, a, _) in enumerate(layouts):
        n = len(t)
        tail_ids[i, :n], rel[i, :n], allowed[i, :n, :n] = torch.tensor(t), torch.tensor(r), a
    tail_ids, rel, allowed = tail_ids.to(device), rel.to(device), allowed.to(device)
    tail_pos = head_mask.sum(-1, keepdim=True) + rel  # (U, W): head length + offset
    unit, adapters = _voters(units, device)
    pairs = [p for _, _, _, p in layouts]
    slots = [sorted({p for p, _, _ in mine}) for mine in pairs]  # distinct slots a score reads, per unit
    need, need_ok = _padded(slots, device)
    hidden, _ = run_split(split, rows_ctx, head_ids=head_ids, head_mask=head_mask, tail_ids=tail_ids,
                          tail_pos=tail_pos, tail_allowed=allowed, unit=unit, adapters=adapters,
                          first_layer=units[0].first_layer, need=need, need_ok=need_ok)
    return _pair_logprobs(split, hidden, units, pairs, slots, device)


def _padded(slots: list[list[int]], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, P) slot indices, padded with each unit's first slot, and the (U, P) not-padding mask."""
    P = max(len(n) for n in slots)
    need = torch.tensor([n + [n[0]] * (P - len(n)) for n in slots], dtype=torch.long)
    ok = torch.tensor([[True] * len(n) + [False] * (P - len(n)) for n in slots])
    return need.to(device), ok.to(device)


def _pair_logprobs(split: SplitModel, hidden: torch.Tensor, units: Sequence[Unit], pairs: list[list[tuple]],
                   slots: list[list[int]], device: str) -> list[list[list[float]]]:
    """Log-probabilities of the (slot, target) pairs: per row, per option, in pair order.
    hidden (R, P, H): the last layer at each unit's ``slots``."""
    logits = split.logits(hidden)  # (R, P, V), model dtype: no float32 copy of all of it
    lse = logsumexp_f32(logits)  # (R, P) float32, a few rows at a time (engines.hf.score)
    out: list[list[list[float]]] = []
    r = 0
    for u, mine, n in zip(units, pairs, slots):
        where = {p: j for j, p in enumerate(n)}
        p_idx = torch.tensor([where[p] for p, _, _ in mine], device=device)
        t_idx = torch.tensor([t for _, t, _ in mine], device=device)
        lp = (logits[r:r + len(u.rows), p_idx, t_idx].float() - lse[r:r + len(u.rows), p_idx]).tolist()  # (rows, pairs)
        for row_lp in lp:
            per: list[list[float]] = [[] for _ in u.options]
            for (_, _, k), v in zip(mine, row_lp):
                per[k].append(v)
            out.append(per)
        r += len(u.rows)
    return out


def prefill_units(split: SplitModel, rows_ctx: RowsCtx, units: Sequence[Unit], *, pad_id: int,
                  device: str) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
    """Shared prefill for generation: (R, V) next-token logits, the per-row cache, the
    (R, Lh + Tt) 0/1 attention mask and (R, 1) position of the last prompt token."""
    head_ids, head_mask = _heads(units, pad_id, device)
    tail_ids, tail_mask = left_pad([u.tail for u in units], pad_id, device)  # (U, Tt)
    tail_pos = head_mask.sum(-1, keepdim=True) + (tail_mask.cumsum(-1) - 1).clamp(min=0)
    unit, adapters = _voters(units, device)
    # Left-padded tails: the last slot is the last prompt token, the only one whose logits count.
    last = torch.full((len(units), 1), tail_ids.shape[1] - 1, dtype=torch.long, device=device)
    hidden, cache = run_split(split, rows_ctx, head_ids=head_ids, head_mask=head_mask, tail_ids=tail_ids,
                              tail_pos=tail_pos, tail_allowed=head_allowed(tail_mask), unit=unit,
                              adapters=adapters, first_layer=units[0].first_layer, need=last,
                              need_ok=torch.ones_like(last, dtype=torch.bool), keep_cache=True)
    logits = split.logits(hidden[:, 0, :])
    mask = torch.cat([head_mask, tail_mask], dim=1)[unit]
    return logits, cache, mask, tail_pos[unit][:, -1:]
