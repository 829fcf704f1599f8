"""Fake ``vllm.config.lora``: the allowed ``max_lora_rank`` values and LoRAConfig's checks.

Mirrors vLLM main (2026; ``MaxLoRARanks`` has held 1 since vLLM 0.11.1, PR #26461).
"""
from __future__ import annotations

from typing import Literal, get_args

MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]


def validate_lora_config(max_lora_rank: int, max_loras: int, max_cpu_loras: int | None) -> None:
    """LoRAConfig's pydantic checks (``Literal`` rank, ``max_loras >= 1``) and ``_validate_lora_config``."""
    allowed = get_args(MaxLoRARanks)
    if max_lora_rank not in allowed:
        raise ValueError(f"max_lora_rank must be one of {allowed}, got {max_lora_rank}")
    if max_loras < 1:
        raise ValueError(f"max_loras must be >= 1, got {max_loras}")
    if max_cpu_loras is not None and max_cpu_loras < max_loras:
        raise ValueError(f"max_cpu_loras ({max_cpu_loras}) must be >= max_loras ({max_loras})")
