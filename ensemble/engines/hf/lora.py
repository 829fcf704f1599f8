"""Stacked LoRA: one matmul pair per layer for a batch that mixes K adapters.

PEFT's ``adapter_names`` path loops over the adapters of a batch inside every LoRA
layer (gather rows, two small matmuls, scatter back): with K = 8 adapters that is
~8x more kernel calls than the base model makes, and on CPU the calls, not the
FLOPs, dominate a decoding step. Here each LoRA layer keeps its adapters stacked:

    A_all  (R, in)   = cat_a A_a                 R = sum of the adapters' ranks
    B_all  (out, R)  = cat_a (B_a * scaling_a)
    owner  (R,)      = adapter index of each stacked rank column
    mask   (B, R)    = owner == row_adapter[b]   (all zero for base-model rows)
    out   += ((x @ A_all.T) * mask) @ B_all.T    x (B, T, in) -> (B, T, out)

i.e. each row gets exactly its own adapter's delta; other adapters' columns are
multiplied by zero. Results equal PEFT's up to float rounding (the scaling is
folded into B and the second matmul sums over R instead of one adapter's rank).

Each PEFT LoRA ``Linear`` gets an instance-level ``forward`` that, inside
``rows(...)``, returns ``base_layer(x) + delta`` and otherwise calls PEFT's own
forward. (PEFT's ``disable_adapter()`` would do for the first half, but it walks
every module and resets requires_grad flags on entry and exit: ~50 ms a forward.)
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch


class Unsupported(Exception):
    """The adapters use something stacking does not cover (DoRA, LoRA bias, embeddings...)."""


def _is_alora(mod: Any, name: str) -> bool:
    return type(mod.lora_variant.get(name)).__name__ == "ALoraLinearVariant"


class StackedLoRA:
    """``rows(adapters)`` applies each row's adapter to every token of the pass. An aLoRA
    adapter is only correct there when every token of the pass comes after its invocation
    (the shared-prefix path guarantees it), so aLoRA adapters are refused unless
    ``alora=True``."""

    def __init__(self, model: Any, names: Sequence[str], *, alora: bool = False) -> None:
        from peft.tuners.lora.layer import Linear as LoraLinear
        from peft.tuners.lora.layer import LoraLayer

        self.names = list(names)
        self.index = {n: i for i, n in enumerate(self.names)}
        self._rows: torch.Tensor | None = None  # (B,) adapter index per row, -1 = base model
        self._masks: dict[tuple[int, ...], torch.Tensor] = {}  # per forward: owner key -> (B, R) mask
        self._blocks: list[tuple[int, int, int]] | None = None  # rows(blocks=True): (start, end, adapter)
        layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        for mod in layers:
            present = [n for n in self.names if n in mod.lora_A]
            if not isinstance(mod, LoraLinear) or any(
                    mod.use_dora.get(n) or mod.lora_bias.get(n)
                    or (n in mod.lora_variant and not (alora and _is_alora(mod, n))) for n in present):
                raise Unsupported(f"{type(mod).__name__} with DoRA / LoRA variants / bias")
        self._patched = []
        for mod in layers:
            present = [n for n in self.names if n in mod.lora_A]
            if not present:
                continue
            dtype = mod.get_base_layer().weight.dtype
            a_all = torch.cat([mod.lora_A[n].weight for n in present]).to(dtype)  # (R, in)
            b_all = torch.cat([mod.lora_B[n].weight * mod.scaling[n] for n in present], dim=1).to(dtype)  # (out, R)
            owner = [self.index[n] for n in present for _ in range(mod.lora_A[n].weight.shape[0])]
            mod.forward = self._make_forward(mod, a_all, b_all, tuple(owner))
            self._patched.append(mod)

    @contextmanager
    def rows(self, adapters: Sequence[str], device: Any, *, blocks: bool = False) -> Iterator[None]:
        """Within this block, row b of every forward uses ``adapters[b]`` (unknown = base).

        blocks=True: rows come in runs of one adapter (many tokens each, e.g. a prefill
        sorted by voter); each run gets its own adapter's two matmuls instead of all
        adapters' columns masked (K times fewer LoRA FLOPs, K times more calls).
        """
        rows = [self.index.get(a, -1) for a in adapters]
        if blocks:
            starts = [b for b in range(len(rows)) if b == 0 or rows[b] != rows[b - 1]]
            self._blocks = [(s, e, rows[s]) for s, e in zip(starts, starts[1:] + [len(rows)]) if rows[s] >= 0]
        # A batch of base-model rows only: skip the LoRA matmuls (an empty tensor marks it).
        self._rows = torch.tensor(rows if max(rows) >= 0 else [], dtype=torch.long, device=device)
        self._masks = {}
        try:
            yield
        finally:
            self._rows, self._masks, self._blocks = None, {}, None

    def _make_forward(self, mod: Any, a_all: torch.Tensor, b_all: torch.Tensor, owner: tuple[int, ...]):
        peft_forward = type(mod).forward.__get__(mod)
        base_layer = mod.get_base_layer()
        owner_t = torch.tensor(owner, device=a_all.device)
        spans = {a: (owner.index(a), len(owner) - owner[::-1].index(a)) for a in set(owner)}  # adapter -> columns

        def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if self._rows is None:
                return peft_forward(x, *args, **kwargs)
            kwargs.pop("alora_offsets", None)  # PEFT's aLoRA bookkeeping; rows() decides here
            if self._rows.numel() == 0:
                return base_layer(x, *args, **kwargs)
            if self._blocks is not None:
                out = base_layer(x, *args, **kwargs)
                for start, end, a in self._blocks:
                    if a in spans:
                        c0, c1 = spans[a]
                        out[start:end] += torch.nn.functional.linear(
                            torch.nn.functional.linear(x[start:end], a_all[c0:c1]), b_all[:, c0:c1])
                return out
            mask = self._masks.get(owner)
            if mask is None:  # built once per forward for each distinct set of adapters
                mask = (self._rows[:, None] == owner_t[None, :]).to(x.dtype)  # (B, R)
                mask = mask.view(mask.shape[0], *([1] * (x.dim() - 2)), mask.shape[1])
                self._masks[owner] = mask
            h = torch.nn.functional.linear(x, a_all) * mask  # (B, T, R)
            return base_layer(x, *args, **kwargs) + torch.nn.functional.linear(h, b_all)

        return forward

    def remove(self) -> None:
        for mod in self._patched:
            del mod.forward  # back to the class's (PEFT's) forward
        self._patched = []
