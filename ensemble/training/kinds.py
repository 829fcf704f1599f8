"""Voter kinds at training time: a variant's PEFT ``LoraConfig``.

    plain LoRA   flavour lora / rslora / dora, layers all
    top-layer    ``layers: top:N`` -> ``layers_to_transform = [L-N .. L-1]``: the N top
                 decoder layers carry the LoRA; below them every token is the base's.
    aLoRA        ``flavour: alora`` -> ``alora_invocation_tokens = invocation_ids(tok)``:
                 the adapter acts from the last occurrence of the invocation tokens on;
                 every token before goes through the base weights, so a prompt's KV
                 cache is the base model's. PEFT stores the tokens in adapter_config.json,
                 so whoever loads the folder finds the same invocation.

The invocation is the assistant turn header: the tokens the chat template appends
after the last message with ``add_generation_prompt=True`` (SmolLM2:
``<|im_start|>assistant\\n``). The answer cue ("Answer:") is left out on purpose: it
differs between a template's language variants (``mc_short_auto``: "Answer:" /
"答案是：") and free-form chat rows have none, and it changes nothing in what is
shared (the adapter is active on the invocation tokens too, so the cue goes through
it either way). Without a chat template the cue is the invocation.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ensemble.config.schema import TrainConfig
from ensemble.errors import EnsembleError
from ensemble.training.grid import Variant

_PROBE = [{"role": "user", "content": "x"}]


def top_layers(variant: Variant, n_layers: int) -> list[int] | None:
    """``top:N`` -> the indices of the top N of ``n_layers`` decoder layers; ``all`` -> None."""
    if variant.layers == "all":
        return None
    n = int(variant.layers.partition(":")[2])
    if not 0 < n <= n_layers:
        raise EnsembleError(f"variant '{variant.name}': layers is {variant.layers!r} but the base model has "
                            f"{n_layers} decoder layers; use top:1 .. top:{n_layers}")
    return list(range(n_layers - n, n_layers))


def invocation_ids(tok: Any, answer_cue: str = "") -> list[int]:
    """The aLoRA invocation: the assistant header's token ids (the cue's without a chat template)."""
    if getattr(tok, "chat_template", None):
        opened = tok.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=True)
        closed = tok.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=False)
        if opened.startswith(closed) and opened != closed:
            ids = tok(opened, add_special_tokens=False)["input_ids"]
            head = tok(closed, add_special_tokens=False)["input_ids"]
            if ids[:len(head)] == head and len(ids) > len(head):
                return ids[len(head):]
            return tok(opened[len(closed):], add_special_tokens=False)["input_ids"]
    if answer_cue:
        return tok(answer_cue, add_special_tokens=False)["input_ids"]
    raise EnsembleError("flavour alora: the tokenizer has no chat template with an assistant header and the "
                        "prompt template no answer_prefix, so nothing marks where the answer starts; "
                        "use a template with an answer_prefix (e.g. mc_short) or another flavour")


def find_invocation(ids: Sequence[int], invocation: Sequence[int]) -> int:
    """Start of the last occurrence of ``invocation`` in ``ids`` (PEFT's rule), -1 if absent."""
    n = len(invocation)
    for start in range(len(ids) - n, -1, -1):
        if list(ids[start:start + n]) == list(invocation):
            return start
    return -1


def lora_config(variant: Variant, cfg: TrainConfig, n_layers: int, invocation: Sequence[int] | None) -> Any:
    """The variant's ``LoraConfig`` (``task_type="CAUSAL_LM"``: without it PEFT never activates an aLoRA)."""
    from peft import LoraConfig

    modules: Any = "all-linear" if variant.target_modules == ("all-linear",) else list(variant.target_modules)
    alora = variant.flavour == "alora"
    if alora and not invocation:
        raise EnsembleError(f"variant '{variant.name}': flavour alora needs invocation tokens")
    alpha: Any = variant.alpha  # PEFT annotates an int; a float alpha works
    return LoraConfig(r=variant.rank, lora_alpha=alpha, target_modules=modules,
                      lora_dropout=cfg.lora_dropout, use_rslora=variant.flavour == "rslora",
                      use_dora=variant.flavour == "dora", task_type="CAUSAL_LM",
                      layers_to_transform=top_layers(variant, n_layers),
                      alora_invocation_tokens=list(invocation or ()) if alora else None)


def n_decoder_layers(model: Any) -> int:
    return int(model.config.num_hidden_layers)
