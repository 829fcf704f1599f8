"""Fake ``vllm.lora.peft_helper``: the adapter_config.json checks of vLLM's PEFTHelper.

Mirrors vLLM main (2026): ``from_dict`` keeps known fields and needs r / lora_alpha /
target_modules; ``_validate_features`` and ``validate_legal`` refuse modules_to_save other
than classifier/score, DoRA, lora_bias, base-rewriting inits, aLoRA, layer_replication,
BD-LoRA, QALoRA, a rank above max_lora_rank, and bias other than "none".
"""
from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class PEFTHelper:
    r: int
    lora_alpha: int
    target_modules: list[str] | str
    bias: str = "none"
    modules_to_save: list[str] | None = None
    use_rslora: bool = False
    use_dora: bool = False
    lora_bias: bool = False
    init_lora_weights: bool | str = True
    alora_invocation_tokens: list[int] | None = None
    layer_replication: list[list[int]] | None = None
    use_bdlora: dict | None = None
    use_qalora: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"LoRA rank `r` must be a positive integer, got {self.r}.")
        self.rank_pattern = self.rank_pattern or {}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> PEFTHelper:
        known = {f.name: f for f in fields(cls)}
        required = {n for n, f in known.items() if f.default is MISSING and f.default_factory is MISSING}
        missing = required - set(config)
        if missing:
            raise ValueError(f"Missing required configuration fields: {missing}")
        return cls(**{k: v for k, v in config.items() if k in known})

    @classmethod
    def from_local_dir(cls, lora_path: str) -> PEFTHelper:
        return cls.from_dict(json.loads((Path(lora_path) / "adapter_config.json").read_text()))

    def _validate_features(self) -> list[str]:
        errors = []
        heads_only = [m for m in self.modules_to_save or [] if m not in ("classifier", "score")]
        if heads_only:
            errors.append(f"vLLM only supports modules_to_save being either None or [\"classifier\", \"score\"] "
                          f"for classification models. Unsupported modules_to_save: {heads_only}")
        if self.use_dora:
            errors.append("vLLM does not yet support DoRA.")
        if self.lora_bias:
            errors.append("vLLM does not support LoRA bias (lora_bias).")
        init = self.init_lora_weights
        if isinstance(init, str) and init.lower() not in ("gaussian", "eva", "orthogonal", "mica", "lora_ga"):
            errors.append(f"vLLM does not support init_lora_weights={init!r}.")
        if self.alora_invocation_tokens:
            errors.append("vLLM does not support Activated LoRA (aLoRA).")
        if self.layer_replication:
            errors.append("vLLM does not support layer_replication.")
        if self.use_bdlora:
            errors.append("vLLM does not support block-diagonal LoRA (BD-LoRA).")
        if self.use_qalora:
            errors.append("vLLM does not support QALoRA.")
        return errors

    def validate_legal(self, max_lora_rank: int) -> None:
        errors = self._validate_features()
        rank = max([self.r, *self.rank_pattern.values()])
        if rank > max_lora_rank:
            errors.append(f"LoRA rank {rank} is greater than max_lora_rank {max_lora_rank}.")
        if self.bias != "none":
            errors.append("Adapter bias is not supported.")
        if errors:
            raise ValueError(" ".join(errors))
