"""State of the members of a shared-batch group (``training.multi``).

``Member``: a variant, its (n_pool,) row weights, its held-out rows. ``row_weights``:
split -> weights. ``build_group_model``: one PEFT model, one adapter per member, each
initialised as if trained alone. ``State``: a member's optimizer, schedule, RNG stream
and curves; checkpoints hold every member's state in one atomically replaced file.
"""
from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ensemble.config.schema import TrainConfig
from ensemble.memory import copy_frozen_float32
from ensemble.training.batches import Example
from ensemble.training.grid import Variant
from ensemble.training.kinds import (
    invocation_ids,
    lora_config,
    n_decoder_layers,
    top_layers,
)
from ensemble.training.loop import SCHEDULERS, frozen_weights_in_bf16


@dataclass(frozen=True)
class Member:
    """One variant of a group: its (n_pool,) row weights and its held-out examples."""

    variant: Variant
    weights: np.ndarray
    heldout: tuple[Example, ...]
    key: str = ""  # settings hash: a checkpoint entry is restored only under the same key


def row_weights(variant: Variant, train_idx: Sequence[int], n_pool: int) -> np.ndarray:
    """(n_pool,) float32: how often each pool row counts for ``variant`` (0 = never)."""
    w = np.bincount(np.asarray(train_idx, dtype=np.int64), minlength=n_pool).astype(np.float32)
    if variant.bagging == "poisson":
        w *= np.random.default_rng([variant.seed, 1_000_003]).poisson(1.0, n_pool).astype(np.float32)
    return w


class State:
    """A member's training state: adapter name, parameters, optimizer, schedule, RNG, curves."""

    def __init__(self, model: Any, member: Member, adapter: str, cfg: TrainConfig, n_steps: int, rng: Any) -> None:
        import torch
        from transformers import get_scheduler

        self.member, self.adapter, self.rng = member, adapter, rng
        self.params = {n: p for n, p in model.named_parameters() if f".{adapter}." in n}
        self.opt = torch.optim.AdamW(list(self.params.values()), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.sched = get_scheduler(SCHEDULERS[cfg.scheduler], self.opt, num_training_steps=n_steps,
                                   num_warmup_steps=math.ceil(cfg.warmup_ratio * n_steps))
        self.curve: list[tuple[int, float, float]] = []
        self.evals: list[tuple[int, float | None, float | None]] = []
        n_layers = n_decoder_layers(model.get_base_model())
        layers = top_layers(member.variant, n_layers)
        self.split = layers[0] if layers and member.variant.flavour != "alora" else None
        self.alora = member.variant.flavour == "alora"

    def snapshot(self) -> dict[str, Any]:
        return {"key": self.member.key, "params": {n: p.detach().cpu().clone() for n, p in self.params.items()},
                "opt": self.opt.state_dict(), "sched": self.sched.state_dict(), "rng": self.rng,
                "curve": list(self.curve), "evals": list(self.evals)}

    def restore(self, saved: dict[str, Any]) -> None:
        import torch

        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(saved["params"][n])
        self.opt.load_state_dict(saved["opt"])
        self.sched.load_state_dict(saved["sched"])
        self.rng, self.curve, self.evals = saved["rng"], list(saved["curve"]), list(saved["evals"])


def rng_get(device: str) -> Any:
    import torch

    return (torch.get_rng_state(), torch.cuda.get_rng_state() if device == "cuda" else None)


def rng_set(state: Any, device: str) -> None:
    import torch

    torch.set_rng_state(state[0])
    if device == "cuda":
        torch.cuda.set_rng_state(state[1])


def build_group_model(base_path: str | Path, members: Sequence[Member], cfg: TrainConfig, answer_cue: str,
                      device: str) -> tuple[Any, Any, list[Any], list[int] | None]:
    """(PEFT model with adapter ``voter<i>`` per member, tokenizer, per-member RNG states,
    aLoRA invocation). Member i's LoRA is initialised from torch seed = its variant seed,
    exactly as ``recipe.load_lora_model`` initialises a variant trained alone."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ensemble.engines.hf.lora import peft_wrap_quietly

    tok = AutoTokenizer.from_pretrained(base_path)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    n_layers = n_decoder_layers(base)
    invocation = invocation_ids(tok, answer_cue) if any(m.variant.flavour == "alora" for m in members) else None
    model, rngs = None, []
    for i, m in enumerate(members):
        torch.manual_seed(m.variant.seed)
        lora = lora_config(m.variant, cfg, n_layers, invocation)
        if model is None:
            with peft_wrap_quietly():  # PEFT's own deprecated call (engines/hf/lora.py)
                model = get_peft_model(base, lora, adapter_name=f"voter{i}")
        else:
            model.add_adapter(f"voter{i}", lora)
        rngs.append(rng_get(device))
    if model is None:
        raise ValueError("a group needs at least one member")
    if cfg.dtype == "bfloat16" and not any(m.variant.flavour == "dora" for m in members):
        frozen_weights_in_bf16(model)  # every forward runs under bf16 autocast: same products
        copy_frozen_float32(model)  # lets the model file's mapping go (ensemble.memory)
    model.to(device)
    return model, tok, rngs, invocation


def checkpoint_path(out_dir: str | Path, group: str) -> Path:
    return Path(out_dir) / "checkpoints" / f"{group}.pt"


def save_checkpoint(path: Path, step: int, states: Sequence[State]) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "members": {s.member.variant.name: s.snapshot() for s in states}}, tmp)
    os.replace(tmp, path)  # the old checkpoint or the new one, never half of one


def load_checkpoint(path: Path, states: Sequence[State]) -> int:
    """Restore every member from ``path`` when all of them are in it; return its step (0: none)."""
    import torch

    if not path.is_file():
        return 0
    saved = torch.load(path, weights_only=False)
    entries = [saved["members"].get(s.member.variant.name) for s in states]
    if any(e is None or e["key"] != s.member.key for e, s in zip(entries, states)):
        return 0
    for e, s in zip(entries, states):
        s.restore(e)
    return int(saved["step"])


def save_member(model: Any, adapter: str, out_dir: str | Path, name: str) -> Path:
    """PEFT folder ``<out>/adapters/<name>`` for one adapter of the group, published when complete."""
    root = Path(out_dir) / "adapters"
    tmp, final = root / f".tmp-{name}", root / name
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, selected_adapters=[adapter])  # PEFT writes <tmp>/<adapter>/
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp / adapter, final)
    shutil.rmtree(tmp, ignore_errors=True)
    return final
