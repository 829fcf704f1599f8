"""Voter kinds: which part of a forward pass a LoRA voter leaves to the base model.

    plain  ("lora")   the adapter acts on every token in every layer it targets;
                      nothing can be shared between voters.
    aLoRA  ("alora")  PEFT's Activated LoRA (``LoraConfig(alora_invocation_tokens=[...])``):
                      the adapter acts only from the *last* occurrence of its invocation
                      sequence on; every token before it goes through the base weights,
                      so that part of the prompt's KV cache is the same for every voter.
    top    ("top")    ``layers_to_transform`` leaves layers [0, first_layer) untouched, so
                      the hidden states entering layer ``first_layer`` are the same for
                      every voter.

A voter may be both aLoRA and top (an invocation sequence and a layer split). The
kind is read from ``adapter_config.json`` (``kind_from_config``, used by
``vote adapters add``) and, in the engine, from the loaded modules themselves
(``loaded_kinds``): the split is where PEFT really put the LoRA layers.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class VoterKind:
    invocation: tuple[int, ...] = ()  # aLoRA invocation token ids; () = not an aLoRA
    first_layer: int = 0  # lowest decoder layer the adapter changes; 0 = all of them

    @property
    def name(self) -> str:
        if self.invocation:
            return "alora+top" if self.first_layer > 0 else "alora"
        return "top" if self.first_layer > 0 else "lora"

    @property
    def shares(self) -> bool:
        """Does some part of a question's forward pass not depend on this voter?"""
        return bool(self.invocation) or self.first_layer > 0


PLAIN = VoterKind()


def _layers(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def kind_from_config(cfg: dict[str, Any]) -> VoterKind:
    """The kind an ``adapter_config.json`` (as a dict) declares.

    ``layers_to_transform`` starting above layer 0 makes a top-layer voter; a voter that
    also trains whole modules (``modules_to_save``) or token embeddings changes more than
    its LoRA layers, so it shares only what its invocation sequence allows.
    """
    invocation = tuple(int(t) for t in cfg.get("alora_invocation_tokens") or ())
    layers = _layers(cfg.get("layers_to_transform"))
    extra = cfg.get("modules_to_save") or cfg.get("trainable_token_indices")
    first = min(layers) if layers and not extra else 0
    return VoterKind(invocation, first)


def find_invocation(ids: Sequence[int], invocation: Sequence[int]) -> int | None:
    """Start of the last occurrence of ``invocation`` in ``ids`` (PEFT's rule), or None."""
    n = len(invocation)
    if n == 0:
        return None
    inv = list(invocation)
    for start in range(len(ids) - n, -1, -1):
        if list(ids[start:start + n]) == inv:
            return start
    return None


def loaded_kinds(model: Any, names: Sequence[str]) -> dict[str, VoterKind]:
    """name -> kind for the adapters of a loaded PeftModel, from where its LoRA layers sit.

    ``first_layer`` is the lowest decoder layer holding a LoRA module of the adapter; an
    adapter with a LoRA module outside the decoder layers (lm_head, embeddings) or with
    ``modules_to_save`` gets 0 (no layer split).
    """
    from peft.tuners.lora.layer import LoraLayer

    if not names:
        return {}
    base = model.get_base_model()
    layers = base.get_decoder().layers
    where: dict[int, int] = {}  # id(LoRA module) -> decoder layer index
    for i, layer in enumerate(layers):
        for mod in layer.modules():
            where[id(mod)] = i
    lowest: dict[str, int] = {}
    for mod in model.modules():
        if not isinstance(mod, LoraLayer):
            continue
        for name in names:
            if name in mod.lora_A or name in getattr(mod, "lora_embedding_A", {}):
                lowest[name] = min(lowest.get(name, len(layers)), where.get(id(mod), 0))
    kinds = {}
    for name in names:
        cfg = model.peft_config[name]
        extra = getattr(cfg, "modules_to_save", None) or getattr(cfg, "trainable_token_indices", None)
        first = 0 if extra else lowest.get(name, 0)
        kinds[name] = VoterKind(tuple(int(t) for t in getattr(cfg, "alora_invocation_tokens", None) or ()), first)
    return kinds
