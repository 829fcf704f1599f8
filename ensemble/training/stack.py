"""Several members' own parts in one forward pass: rows stacked along the batch.

A shared-batch step (``training.multi``) runs each member's part on its own rows: the
top N layers from the shared hidden state (``layers: top:N``) or the invocation + answer
tokens on the shared prefix cache (``flavour: alora``). Run one member at a time, each
pass pays the whole model's per-operation cost for a few rows (an aLoRA suffix is
~11 tokens a row); stacked, the K members' rows go through the model once:

    rows      [ member a: rows of a | member b: rows of b | ... ]   (N = sum R_m, T)
    each LoRA Linear:  y = W x                     once, over all N rows (frozen base)
                       y[block m] += s_m B_m A_m drop_m(x[block m])     member m's delta

``stacked(model, blocks)`` patches every LoRA Linear's ``forward`` that way while the
block is open; the caller runs the inner (non-PEFT) model over the stacked rows. A
member's delta is exactly PEFT's: vanilla LoRA on all positions of its rows, an aLoRA
on the positions it acts on (``Block.tokens``: the suffix's real tokens, where PEFT's
invocation offsets put it). Gradients reach each member's LoRA from its own rows only.

Dropout: each member draws its masks from its own RNG state (``rngs[adapter]``), in
its own modules' order, so a member's masks do not depend on its siblings. Members
whose adapter is not stackable (DoRA reads the weight) keep the per-member path.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ensemble.training.members import rng_get, rng_set


@dataclass(frozen=True)
class Block:
    """One member's rows in a stacked pass."""

    adapter: str
    rows: torch.Tensor  # (R,) indices into the shared batch
    tokens: torch.Tensor | None = None  # (R, T) bool: where the adapter acts (aLoRA); None: everywhere


def lora_linears(model: Any) -> list[Any]:
    """Every PEFT LoRA ``Linear`` of ``model`` (the modules ``stacked`` patches)."""
    from peft.tuners.lora.layer import Linear

    return [m for m in model.modules() if isinstance(m, Linear)]


def unstackable(model: Any) -> set[str]:
    """Adapters ``stacked`` cannot run: one on a LoRA layer that is not a ``Linear``
    (embeddings), or with a variant other than aLoRA (DoRA reads the base weight)."""
    from peft.tuners.lora.layer import Linear, LoraLayer
    from peft.tuners.lora.variants import ALoraLinearVariant

    out: set[str] = set()
    for m in model.modules():
        if isinstance(m, LoraLayer) and not isinstance(m, Linear):
            out |= set(m.lora_A) | set(getattr(m, "lora_embedding_A", {}))
        elif isinstance(m, Linear):
            out |= {a for a, v in m.lora_variant.items() if not isinstance(v, ALoraLinearVariant)}
    return out


def _delta(module: Any, adapter: str, x: torch.Tensor, rngs: dict[str, Any], device: str) -> torch.Tensor:
    """s * B(A(dropout(x))) for one adapter, dropout from the adapter's own RNG stream."""
    lora_a, lora_b = module.lora_A[adapter], module.lora_B[adapter]
    drop = module.lora_dropout[adapter]
    x = module._cast_input_dtype(x, lora_a.weight.dtype)
    if isinstance(drop, torch.nn.Dropout) and drop.training and drop.p > 0:
        rng_set(rngs[adapter], device)
        x = drop(x)
        rngs[adapter] = rng_get(device)
    return lora_b(lora_a(x)) * module.scaling[adapter]


def _stacked_forward(module: Any, blocks: Sequence[Block], rngs: dict[str, Any], device: str):
    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = module.base_layer(x, *args, **kwargs)  # (N, T, out): the frozen base, once
        dtype, pieces, start = result.dtype, [], 0
        for b in blocks:
            n = len(b.rows)
            part = result[start:start + n]
            if b.adapter in module.lora_A:
                xs = x[start:start + n]
                if b.tokens is None:  # PEFT's vanilla LoRA: every position
                    part = part + _delta(module, b.adapter, xs, rngs, device)
                else:  # PEFT's aLoRA: the selected positions only, as (n_selected, H)
                    where = b.tokens.reshape(-1).nonzero()[:, 0]
                    flat = part.reshape(-1, part.shape[-1])
                    delta = _delta(module, b.adapter, xs.reshape(-1, xs.shape[-1])[where], rngs, device)
                    part = flat.index_add(0, where, delta.to(flat.dtype)).view_as(part)
            pieces.append(part.to(dtype))
            start += n
        return torch.cat(pieces) if len(pieces) > 1 else pieces[0]
    return forward


@contextlib.contextmanager
def stacked(modules: Sequence[Any], blocks: Sequence[Block], rngs: dict[str, Any], device: str) -> Iterator[None]:
    """While open, ``modules`` (``lora_linears``) compute the base once over the stacked
    rows and each block's adapter on its rows; ``rngs`` (adapter -> RNG state) advance."""
    for m in modules:
        m.forward = _stacked_forward(m, blocks, rngs, device)
    try:
        yield
    finally:
        for m in modules:
            del m.forward  # back to the class's forward


def pack(units: Sequence[tuple[int, int]], max_tokens: int) -> list[list[int]]:
    """Units (index, tokens) -> passes of at most ``max_tokens`` tokens (one unit at least;
    ``0``: one pass), in order: a member's units keep their order, so its dropout draws do."""
    out: list[list[int]] = [[]]
    used = 0
    for i, n in units:
        if out[-1] and max_tokens and used + n > max_tokens:
            out.append([])
            used = 0
        out[-1].append(i)
        used += n
    return out
