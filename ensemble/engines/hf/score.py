"""Choice scoring for the HF engine: each question's prompt is run once.

cloze:  the prompt (prefix) goes through the model once per question; then all its
        options go through together as one short row on top of the prefix's KV
        cache (a 4D mask keeps them from seeing each other). An option's first
        token is scored from the prefix's last logits, the rest from the option
        pass. lm-eval runs prompt+option once per option instead.
letter: one forward pass per question; the logprob of each letter is the max over
        its single-token spellings ("A" and " A"): after "Answer:" a tokenizer may
        produce either, and the model's choice between them is not the question.

Rows of one batch may belong to different adapters. The option pass needs an
attention implementation that takes a 4D additive mask (sdpa, the default, or eager).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ensemble.engines.hf.generate import Forward, left_pad


@dataclass
class ScoreRow:
    """One question for one voter."""

    prefix: list[int]  # prompt token ids (never empty)
    adapter: str  # adapter name or "__base__"
    options: list[list[int]]  # cloze: continuation ids per option; letter: candidate token ids per letter
    normalize: str = "mean"  # cloze: "sum" or "mean" over the option's tokens
    logliks: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def length(self) -> int:
        return len(self.prefix)


LSE_ELEMENTS = 1 << 22  # logits per float32 chunk in ``logsumexp_f32``: 16 MB


def logsumexp_f32(logits: torch.Tensor, chunk: int = LSE_ELEMENTS) -> torch.Tensor:
    """(B, W) float32 logsumexp over the vocabulary of (B, W, V) logits, a few rows at a time.

    ``logits.float().logsumexp(-1)`` holds a float32 copy of all of them plus logsumexp's
    own (B, W, V) temporary: with batch_size 32, ~30 option slots and SmolLM2's 49,152
    tokens, ~0.4 GB at once for one score batch. Per row block the values are the same
    (each row's reduction does not depend on the others); the peak is ``chunk`` elements."""
    B, W, V = logits.shape
    step = max(1, chunk // max(1, W * V))
    if step >= B:
        return logits.float().logsumexp(dim=-1)
    return torch.cat([logits[i:i + step].float().logsumexp(dim=-1) for i in range(0, B, step)])


def score_letters(forward: Forward, rows: Sequence[ScoreRow], *, pad_id: int, device: str) -> None:
    """Fill ``logliks`` with the next-token logprob of each letter (max over its spellings)."""
    ids, mask = left_pad([r.prefix for r in rows], pad_id, device)  # (B, L)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = forward([r.adapter for r in rows], input_ids=ids, attention_mask=mask, position_ids=pos,
                  use_cache=False, logits_to_keep=1)
    logp = torch.log_softmax(out.logits[:, -1, :], dim=-1, dtype=torch.float32).cpu()  # (B, V)
    for b, row in enumerate(rows):
        row.logliks = [float(logp[b, cands].max()) for cands in row.options]


def score_cloze(forward: Forward, rows: Sequence[ScoreRow], *, pad_id: int, device: str) -> None:
    """Fill ``logliks`` with each option's summed or mean token log-likelihood.

    Pass 1 runs the (left-padded) prefixes and keeps their KV cache. Pass 2 puts all
    options of a question side by side in ONE row after its prefix, with a 4D mask
    under which each option token sees the prefix and the earlier tokens of its own
    option only, at the positions it would have alone (prefix length + offset). So
    the cache is never copied per option and each question costs one short row.
    """
    ids, mask = left_pad([r.prefix for r in rows], pad_id, device)  # (B, Lp)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = forward([r.adapter for r in rows], input_ids=ids, attention_mask=mask, position_ids=pos,
                  use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[:, -1, :], dim=-1, dtype=torch.float32)  # (B, V): each option's token 0
    q_idx = torch.tensor([b for b, r in enumerate(rows) for _ in r.options], device=device)
    tok0 = torch.tensor([c[0] for r in rows for c in r.options], device=device)
    lp0 = iter(first[q_idx, tok0].tolist())  # one transfer, not one per option
    per_token = [[[next(lp0)] for _ in r.options] for r in rows]

    # Pass 2 inputs: option tokens but the last (which is only a target), options side by side.
    width = max(sum(len(c) - 1 for c in r.options) for r in rows)
    if width > 0:
        B = len(rows)
        inp = torch.full((B, width), pad_id, dtype=torch.long)
        target = torch.zeros((B, width), dtype=torch.long)
        offset = torch.zeros((B, width), dtype=torch.long)  # position of the token within its option
        owner = torch.full((B, width), -1, dtype=torch.long)  # option index of each slot, -1 = padding
        for b, r in enumerate(rows):
            at = 0
            for k, c in enumerate(r.options):
                n = len(c) - 1
                inp[b, at:at + n] = torch.tensor(c[:-1])
                target[b, at:at + n] = torch.tensor(c[1:])
                offset[b, at:at + n] = torch.arange(n)
                owner[b, at:at + n] = k
                at += n
        inp, target, offset, owner = (t.to(device) for t in (inp, target, offset, owner))
        same = owner[:, :, None] == owner[:, None, :]  # (B, W, W): same option
        causal = offset[:, :, None] >= offset[:, None, :]  # options are contiguous, so offset order = causal order
        allowed = torch.cat([mask.bool()[:, None, :].expand(B, width, -1), same & causal], dim=2)  # (B, W, Lp + W)
        dtype = out.logits.dtype  # the additive mask must match the model's compute dtype
        bias = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
        logits = forward([r.adapter for r in rows], input_ids=inp, attention_mask=bias[:, None],
                         position_ids=pos[:, -1:] + 1 + offset, cache=out.cache,
                         use_cache=True).logits  # (B, W, V)
        # log_softmax at the chosen ids only: logit - logsumexp, no (B, W, V) log-prob copy.
        chosen = logits.gather(2, target[:, :, None])[:, :, 0].float() - logsumexp_f32(logits)
        for b, (ks, lps) in enumerate(zip(owner.tolist(), chosen.tolist())):
            for k, lp in zip(ks, lps):
                if k >= 0:
                    per_token[b][k].append(lp)

    for b, row in enumerate(rows):
        row.logliks = [sum(lps) / len(lps) if row.normalize == "mean" else sum(lps) for lps in per_token[b]]

