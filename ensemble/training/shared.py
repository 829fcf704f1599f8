"""The voter-independent part of a training forward pass, computed once per batch.

Every function returns, for a subset ``rows`` of a shared batch, the (R,) summed
log-probability of each row's answer tokens and the (R,) answer-token counts, under
the PEFT model's *active* adapter, with gradients into that adapter only.

    plain_rows   the plain path: the whole model on the rows (any kind; the reference)
    TopLayers    ``layers: top:N``: embeddings + the lower L-N layers run once under
                 no_grad with every adapter off (their LoRA-free hidden states are the
                 same for every top-layer voter); each variant runs its top N layers
                 from there
    PrefixCache  ``flavour: alora``: each row's tokens before the invocation run once
                 through the base (no_grad) into a KV cache; each variant runs only the
                 invocation + answer tokens on top of it

Logits are computed only at the positions whose next token is an answer token
(left padding puts them last): ``lm_head`` over (B, K, H), never (B, T, H).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ensemble.training.batches import (
    WIDTH_MULTIPLE,
    Seq,
    answer_logprobs,
    answer_rows,
    collate,
)
from ensemble.training.kinds import find_invocation


def _window(labels: torch.Tensor) -> int:
    """K: positions that need logits (longest answer + 1), at most the width."""
    return min(labels.shape[1], int((labels != -100).sum(1).max()) + 1)


def _target_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, K-1) log p(label) from the last K logits (B, K, V); 0 where the label is -100."""
    k = logits.shape[1]
    target = labels[:, labels.shape[1] - k + 1:]
    logits = logits.float()
    chosen = logits[:, :-1].gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    # log_softmax at the chosen ids only: no (B, K, V) log-prob copy.
    return (chosen - logits[:, :-1].logsumexp(-1)) * (target != -100)


def plain_rows(model: Any, batch: dict[str, torch.Tensor], rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole PEFT model on ``batch[rows]`` (the per-voter reference path)."""
    sub = {k: v[rows] for k, v in batch.items()}
    return answer_rows(answer_logprobs(model, sub), sub["labels"])


class _Stop(Exception):
    """Raised by a forward hook to end the lower pass once its last layer has run."""


class TopLayers:
    """Shared lower layers for ``layers: top:N`` variants of one PEFT model."""

    def __init__(self, model: Any) -> None:
        inner = model.get_base_model()
        self.model, self.decoder, self.head = model, inner.model, inner.get_output_embeddings()
        if not isinstance(getattr(self.decoder, "layers", None), torch.nn.ModuleList):
            raise TypeError(f"{type(inner).__name__} has no model.layers list")

    def lower(self, batch: dict[str, torch.Tensor], splits: Sequence[int]) -> dict[int, torch.Tensor]:
        """split -> (B, T, H) hidden state entering layer ``split``: embeddings + layers below,
        all adapters off, no gradients. One pass, stopped after the deepest split."""
        found: dict[int, torch.Tensor] = {}
        deepest = max(splits)
        hooks = []
        for s in set(splits):
            module = self.decoder.embed_tokens if s == 0 else self.decoder.layers[s - 1]

            def keep(mod: Any, args: Any, out: Any, s: int = s) -> None:
                found[s] = (out[0] if isinstance(out, tuple) else out).detach()
                if s == deepest:
                    raise _Stop
            hooks.append(module.register_forward_hook(keep))
        try:
            with torch.no_grad(), self.model.disable_adapter():
                self.decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             position_ids=batch["position_ids"], use_cache=False)
        except _Stop:
            pass
        finally:
            for h in hooks:
                h.remove()
        return found

    def upper_rows(self, hidden: torch.Tensor, split: int, batch: dict[str, torch.Tensor],
                   rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layers ``split..L-1`` (active adapter, with gradients) + norm + lm_head at the answer."""
        sub = {k: v[rows] for k, v in batch.items()}
        layers = self.decoder.layers
        self.decoder.layers = torch.nn.ModuleList(list(layers)[split:])  # the same modules, LoRA included
        try:
            out = self.decoder(inputs_embeds=hidden[rows], attention_mask=sub["attention_mask"],
                               position_ids=sub["position_ids"], use_cache=False).last_hidden_state
        finally:
            self.decoder.layers = layers
        k = _window(sub["labels"])
        logp = _target_logprobs(self.head(out[:, -k:]), sub["labels"])  # (R, K-1)
        return answer_rows(logp, sub["labels"])


@dataclass
class _Prefix:
    cache: Any  # DynamicCache over the left-padded prefixes (B, Tp)
    mask: torch.Tensor  # (B, Tp)
    first: torch.Tensor  # (B,) log p(suffix token 0) from the last prefix position (base model)
    suffix: dict[str, torch.Tensor]  # left-padded invocation + answer: input_ids, mask, positions, labels


class PrefixCache:
    """Base-model KV cache of every row's tokens before the aLoRA invocation."""

    def __init__(self, model: Any, invocation: Sequence[int], pad_id: int) -> None:
        self.model, self.invocation, self.pad = model, list(invocation), pad_id

    def prefix(self, seqs: Sequence[Seq], device: str) -> _Prefix:
        """Split each row at its invocation; run the prefixes through the base (no_grad)."""
        cut = [find_invocation(ids, self.invocation) for ids, _ in seqs]
        if min(cut) < 1:
            raise ValueError("every row needs prompt tokens before the aLoRA invocation")
        # the prefixes' width rounded (few shapes, batches.WIDTH_MULTIPLE); the suffixes are short
        pre = collate([(ids[:c], 0) for (ids, _), c in zip(seqs, cut)], self.pad, WIDTH_MULTIPLE)
        suf = collate([(ids[c:], min(n, len(ids) - c)) for (ids, n), c in zip(seqs, cut)], self.pad)
        pre = {k: v.to(device) for k, v in pre.items()}
        suf = {k: v.to(device) for k, v in suf.items()}
        lengths = pre["attention_mask"].sum(1, keepdim=True)  # (B, 1)
        suf["position_ids"] = (lengths + suf["attention_mask"].cumsum(1) - 1).clamp(min=0)
        with torch.no_grad(), self.model.disable_adapter():
            out = self.model(input_ids=pre["input_ids"], attention_mask=pre["attention_mask"],
                             position_ids=pre["position_ids"], use_cache=True, logits_to_keep=1)
        first_ids = torch.tensor([ids[c] for (ids, _), c in zip(seqs, cut)], device=device)
        logits = out.logits[:, -1].float()  # (B, V)
        first = logits.gather(1, first_ids[:, None])[:, 0] - logits.logsumexp(-1)
        return _Prefix(out.cache, pre["attention_mask"], first, suf)

    def suffix_rows(self, state: _Prefix, rows: torch.Tensor, *, inner: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Invocation + answer tokens of ``rows`` through the active aLoRA, on a copy of the cache.
        ``inner``: through the model under PEFT, without PEFT's invocation hooks (inside
        ``training.stack.stacked``, which applies each row's adapter itself)."""
        cache = copy.copy(state.cache)
        cache.layers = []
        for layer in state.cache.layers:  # new per-row tensors; the shared cache is never written
            mine = copy.copy(layer)
            mine.keys, mine.values = layer.keys[rows], layer.values[rows]
            cache.layers.append(mine)
        suf = {k: v[rows] for k, v in state.suffix.items()}
        labels = suf["labels"]
        k = _window(labels)
        model = self.model.get_base_model() if inner else self.model
        out = model(input_ids=suf["input_ids"], attention_mask=torch.cat([state.mask[rows], suf["attention_mask"]], 1),
                    position_ids=suf["position_ids"], cache=cache, use_cache=True, logits_to_keep=k)
        row_logp, row_tokens = answer_rows(_target_logprobs(out.logits, labels), labels)
        # The suffix's first token is predicted by the last prefix position (the base's): it
        # counts when it is an answer token (an invocation that starts at the answer).
        width = labels.shape[1]
        start = width - suf["attention_mask"].sum(1)  # (R,) first real suffix slot
        first_is_answer = labels.gather(1, start[:, None])[:, 0] != -100
        return row_logp + state.first[rows] * first_is_answer, row_tokens
