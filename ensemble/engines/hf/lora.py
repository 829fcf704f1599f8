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

This reads PEFT internals (``LoraLayer`` / ``lora.layer.Linear``, their ``lora_A``,
``lora_B``, ``scaling``, ``lora_dropout``, ``use_dora``, ``lora_variant``, ``lora_bias``,
``merged_adapters``), tested with the PEFT versions pyproject allows (``PEFT_RANGE``).
``check_peft`` stops with an EnsembleError naming the installed PEFT when one is missing,
and a probe compares each adapter's stacked delta with PEFT's own forward on one layer,
so a PEFT that computes LoRA differently stops the engine instead of giving wrong numbers.

Each PEFT LoRA ``Linear`` gets an instance-level ``forward`` that, inside
``rows(...)``, returns ``base_layer(x) + delta`` and otherwise calls PEFT's own
forward. (PEFT's ``disable_adapter()`` would do for the first half, but it walks
every module and resets requires_grad flags on entry and exit: ~50 ms a forward.)
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ensemble.errors import EnsembleError

PEFT_RANGE = ">=0.18,<0.22"  # keep equal to pyproject's peft requirement
# Attributes of a PEFT LoRA layer that stacking reads (lora_dropout: it must be inactive).
LAYER_ATTRS = ("lora_A", "lora_B", "scaling", "lora_dropout", "use_dora", "lora_variant", "lora_bias",
               "merged_adapters", "get_base_layer")


class Unsupported(Exception):
    """The adapters use something stacking does not cover (DoRA, LoRA bias, embeddings...)."""


def peft_error(problem: str) -> EnsembleError:
    """The error for a PEFT whose internals differ from what stacking was written against."""
    import peft

    return EnsembleError(
        f"PEFT {peft.__version__}: {problem}. Stacked LoRA batching reads PEFT internals and is tested "
        f"with peft{PEFT_RANGE}; install one (pip install 'peft{PEFT_RANGE}') or set the hf engine "
        "option lora_batching: separate")


@contextmanager
def peft_wrap_quietly() -> Iterator[None]:
    """Around ``get_peft_model`` / ``PeftModel.from_pretrained``: PEFT (<= 0.21) reads
    transformers' deprecated ``model.is_gradient_checkpointing`` in ``PeftModel.__init__``
    (peft/peft_model.py), a FutureWarning about PEFT's own call that no argument of ours
    avoids. Only that warning is hidden, only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                category=FutureWarning)
        yield


def peft_layer_classes() -> tuple[Any, Any]:
    """(LoraLayer, lora Linear) from PEFT, or a ``peft_error`` when PEFT moved them."""
    try:
        from peft.tuners.lora.layer import Linear, LoraLayer
    except ImportError as exc:
        raise peft_error(f"cannot import LoraLayer / Linear from peft.tuners.lora.layer ({exc})") from None
    return LoraLayer, Linear


def check_peft(mod: Any, names: Sequence[str]) -> None:
    """``mod`` (a PEFT LoRA layer) has every attribute stacking reads, in the expected form."""
    kind = type(mod).__name__
    for attr in LAYER_ATTRS:
        if not hasattr(mod, attr):
            raise peft_error(f"LoRA layer {kind} has no attribute '{attr}'")
    for n in names:
        for key in ("lora_A", "lora_B"):
            weight = getattr(getattr(mod, key)[n], "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
                raise peft_error(f"LoRA layer {kind}: {key}['{n}'] is not a linear layer with a 2-D weight")
        if not isinstance(mod.scaling.get(n), (int, float)):
            raise peft_error(f"LoRA layer {kind}: scaling['{n}'] is {mod.scaling.get(n)!r}, not a number")


def _is_alora(mod: Any, name: str) -> bool:
    return type(mod.lora_variant.get(name)).__name__ == "ALoraLinearVariant"


class StackedLoRA:
    """``rows(adapters)`` applies each row's adapter to every token of the pass. An aLoRA
    adapter is only correct there when every token of the pass comes after its invocation
    (the shared-prefix path guarantees it), so aLoRA adapters are refused unless
    ``alora=True``."""

    def __init__(self, model: Any, names: Sequence[str], *, alora: bool = False) -> None:
        lora_layer, lora_linear = peft_layer_classes()
        self.names = list(names)
        self.index = {n: i for i, n in enumerate(self.names)}
        self._rows: torch.Tensor | None = None  # (B,) adapter index per row, -1 = base model
        self._masks: dict[tuple[int, ...], torch.Tensor] = {}  # per forward: owner key -> (B, R) mask
        self._blocks: list[tuple[int, int, int]] | None = None  # rows(blocks=True): (start, end, adapter)
        layers: list[Any] = [m for m in model.modules() if isinstance(m, lora_layer)]
        for mod in layers:
            if not isinstance(mod, lora_linear):
                raise Unsupported(f"{type(mod).__name__} layers (stacking covers linear layers)")
            present = [n for n in self.names if n in mod.lora_A] if hasattr(mod, "lora_A") else []
            check_peft(mod, present)
            if any(mod.use_dora.get(n) or mod.lora_bias.get(n)
                   or (n in mod.lora_variant and not (alora and _is_alora(mod, n))) for n in present):
                raise Unsupported(f"{type(mod).__name__} with DoRA / LoRA variants / bias")
            if mod.merged_adapters:
                raise Unsupported(f"adapters merged into the base weights ({', '.join(mod.merged_adapters)})")
        self._patched: list[Any] = []
        try:
            self._stack(layers)
        except EnsembleError:
            self.remove()  # leave the model as PEFT made it
            raise

    def _stack(self, layers: Sequence[Any]) -> None:
        probed: set[str] = set()
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
            for n in present:
                if n not in probed:  # one layer per adapter: the computation is the class's
                    probed.add(n)
                    self._probe(mod, n)

    def _probe(self, mod: Any, name: str) -> None:
        """Stacked delta == PEFT's own (its mixed-batch forward) for adapter ``name`` on a
        fixed random input (1, 2, in); a PEFT that computes LoRA differently fails here."""
        base_layer = mod.get_base_layer()
        w = base_layer.weight
        x = torch.randn(1, 2, w.shape[1], generator=torch.Generator().manual_seed(0)).to(w.device, w.dtype)
        was_training = mod.training
        mod.eval()  # dropout off, as at inference
        try:
            with torch.no_grad():
                base = base_layer(x)
                # an aLoRA acts from its offset on: make it act on both probe tokens
                extra = {"alora_offsets": [x.shape[1]]} if _is_alora(mod, name) else {}
                want = type(mod).forward(mod, x, adapter_names=[name], **extra) - base
                with self.rows([name], w.device):
                    got = mod.forward(x) - base
        finally:
            mod.train(was_training)
        want, got = want.float(), got.float()
        # bfloat16 rounds each product to ~3 digits; a changed formula is off by O(1).
        tol = 0.02 * float(want.abs().max()) + 1e-6
        if not torch.allclose(got, want, rtol=0.02, atol=tol):
            err = float((got - want).abs().max())
            raise peft_error(f"adapter '{name}': the stacked LoRA delta differs from PEFT's own forward by "
                             f"{err:.3g} (largest delta {float(want.abs().max()):.3g}) in a {type(mod).__name__} "
                             "layer, so PEFT now computes LoRA differently")

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
