"""KV-cached decoding loop for the HF engine: many voters, one batch, per-row seeds.

Rows of one batch may use different adapters (PEFT ``adapter_names``), different
sampling settings and different prompt lengths (left-padded). Each sampled row
draws its uniforms from its own ``torch.Generator`` seeded from (request seed,
sample index), so a row's tokens do not depend on what else is in the batch.

Logprobs are ``log_softmax`` of the model's *raw* logits (temperature 1, no top-p),
i.e. the model's own probability of the chosen token, as OpenAI/vLLM report them.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ensemble.engines.base import SamplingSettings

Forward = Callable[..., Any]  # forward(adapters: list[str], **model_kwargs) -> model output


@dataclass
class GenRow:
    """One sequence to decode: a (request, sample index) pair."""

    ids: list[int]  # prompt token ids
    adapter: str  # adapter name, or "__base__"
    settings: SamplingSettings
    seed: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[tuple[tuple[str, float], ...]] = field(default_factory=list)  # settings.top_logprobs > 0 only
    text: str = ""
    finish_reason: str = "length"
    seconds: float = 0.0  # this row's share of its batch's wall time

    @property
    def length(self) -> int:
        return len(self.ids)


def decode_batch(forward: Forward, rows: Sequence[GenRow], *, pad_id: int, eos_ids: set[int],
                 detok: Callable[[list[int]], str], device: str, ignore_eos: bool = False,
                 share: bool = True) -> None:
    """Decode ``rows`` together in place (tokens, logprobs, text, finish_reason).

    ``share``: rows with the same prompt and adapter (the n samples of one request) are
    prefilled once and their KV cache is copied to each row; the prompt is most of the
    work when replies are short (a 100-token prompt, ~10 new tokens). ``share=False``
    prefills every row (the reference path)."""
    heads: list[GenRow] = []  # the rows that are prefilled: one per distinct (adapter, prompt)
    src: list[int] = []  # (B,) each row's head
    seen: dict[Any, int] = {}
    for j, r in enumerate(rows):
        key = (r.adapter, tuple(r.ids)) if share else j
        if key not in seen:
            seen[key] = len(heads)
            heads.append(r)
        src.append(seen[key])
    ids, mask = left_pad([h.ids for h in heads], pad_id, device)  # (U, L) each
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens start at position 0
    out = forward([h.adapter for h in heads], input_ids=ids, attention_mask=mask, position_ids=pos,
                  use_cache=True, logits_to_keep=1)
    logits, cache = out.logits[:, -1, :], out.cache  # (U, V)
    if len(heads) < len(rows):  # copy each prompt's state to its rows: (U, ...) -> (B, ...)
        index = torch.tensor(src, device=device)
        cache.batch_select_indices(index)
        logits, mask, pos = logits[index], mask[index], pos[index]
    decode_from(forward, rows, logits, cache, mask, pos[:, -1:], eos_ids=eos_ids,
                detok=detok, device=device, ignore_eos=ignore_eos)


def decode_from(forward: Forward, rows: Sequence[GenRow], logits: torch.Tensor, cache: Any, mask: torch.Tensor,
                pos: torch.Tensor, *, eos_ids: set[int], detok: Callable[[list[int]], str], device: str,
                ignore_eos: bool = False, adapters: Sequence[str] | None = None) -> None:
    """Decode on from a prefill: logits (B, V) after the prompt, its KV cache, the (B, L)
    0/1 attention mask over the cached tokens and (B, 1) position of the last prompt token.
    ``forward`` runs every later step, row b with ``adapters[b]`` (default: its row's)."""
    names = list(adapters) if adapters is not None else [r.adapter for r in rows]
    gens = [torch.Generator().manual_seed(r.seed) for r in rows]
    alive = list(range(len(rows)))  # rows still decoding, in batch order
    while True:
        live = [rows[i] for i in alive]
        tok, logp = pick_tokens(logits, live, [gens[i] for i in alive])
        record_top(logits, live, detok)
        keep = [j for j, (row, t, lp) in enumerate(zip(live, tok.tolist(), logp.tolist()))
                if not _append(row, t, lp, eos_ids, detok, ignore_eos)]
        if not keep:
            break
        if len(keep) < len(alive):  # drop finished rows from the batch and the KV cache
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, pos, tok = mask[index], pos[index], tok[index]
            alive = [alive[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)  # (b, L + t)
        pos = pos + 1  # (b, 1)
        out = forward([names[i] for i in alive], input_ids=tok[:, None].to(device),
                      attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
        logits, cache = out.logits[:, -1, :], out.cache
    for row in rows:
        row.text = cut_at_stop(detok(_strip_eos(row, eos_ids, ignore_eos)), row.settings.stop)


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) token ids left-padded with ``pad_id`` and the (B, L) 0/1 attention mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def pick_tokens(logits: torch.Tensor, rows: Sequence[GenRow],
                gens: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token per row (greedy or seeded top-p sampling) and its raw logprob; (b,) each."""
    raw = torch.log_softmax(logits, dim=-1, dtype=torch.float32)  # (b, V); casts in the same pass
    tok = logits.argmax(dim=-1)  # bf16 -> fp32 is exact, so this is the fp32 argmax
    sampled = [j for j, r in enumerate(rows) if r.settings.temperature > 0]
    if sampled:
        sel = torch.tensor(sampled, device=logits.device)
        temp = torch.tensor([rows[j].settings.temperature for j in sampled], device=logits.device)
        top_p = torch.tensor([rows[j].settings.top_p for j in sampled], device=logits.device)
        # One uniform per row from that row's own generator (CPU, so seeds are device independent).
        u = torch.stack([torch.rand((), generator=gens[j]) for j in sampled]).to(logits.device)
        tok[sel] = sample_top_p(logits[sel].float() / temp[:, None], top_p, u)
    logp = raw.gather(1, tok[:, None])[:, 0]
    return tok, logp


def record_top(logits: torch.Tensor, rows: Sequence[GenRow], detok: Callable[[list[int]], str]) -> None:
    """Append each row's ``settings.top_logprobs`` most likely (token text, raw logprob); logits (b, V)."""
    k = max(r.settings.top_logprobs for r in rows)
    if k <= 0:
        return
    vals, ids = torch.log_softmax(logits, dim=-1, dtype=torch.float32).topk(k, dim=-1)  # (b, k) each
    for row, v, i in zip(rows, vals.tolist(), ids.tolist()):
        if row.settings.top_logprobs > 0:
            row.top.append(tuple((detok([t]), lp) for t, lp in zip(i, v))[: row.settings.top_logprobs])


def sample_top_p(logits: torch.Tensor, top_p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling from the top-p nucleus; logits (b, V), top_p and u (b,) -> (b,) ids."""
    probs = torch.softmax(logits, dim=-1)
    if bool((top_p < 1).any()):
        probs, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the tokens before it already cover top_p (the first always stays).
        probs = probs.masked_fill(probs.cumsum(-1) - probs > top_p[:, None], 0.0)
    else:
        order = None
    cdf = probs.cumsum(-1)  # (b, V)
    # side="right": u == 0 still lands on the first token with non-zero probability.
    j = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp(max=cdf.shape[1] - 1)
    return (order.gather(1, j) if order is not None else j)[:, 0]


def _append(row: GenRow, tok: int, logp: float, eos_ids: set[int],
            detok: Callable[[list[int]], str], ignore_eos: bool) -> bool:
    """Record one generated token; True when the row is finished."""
    row.tokens.append(tok)
    row.logprobs.append(logp)
    if tok in eos_ids and not ignore_eos:
        row.finish_reason = "stop"
        return True
    if row.settings.stop:
        text = detok(row.tokens)
        if cut_at_stop(text, row.settings.stop) != text:
            row.finish_reason = "stop"
            return True
    return len(row.tokens) >= row.settings.max_new_tokens


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest stop string."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return text[: min(hits)] if hits else text


def _strip_eos(row: GenRow, eos_ids: set[int], ignore_eos: bool) -> list[int]:
    """Token ids whose text is returned: without the final EOS (it stays in tokens/logprobs)."""
    if row.finish_reason == "stop" and not ignore_eos and row.tokens and row.tokens[-1] in eos_ids:
        return row.tokens[:-1]
    return row.tokens
