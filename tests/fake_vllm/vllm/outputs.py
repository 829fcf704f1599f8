"""Fake ``vllm.outputs``: ``RequestOutput`` holding ``CompletionOutput``s (vLLM's field names)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .logprobs import Logprob

SampleLogprobs = list[dict[int, Logprob]]  # one dict per generated token
PromptLogprobs = list[dict[int, Logprob] | None]  # one per prompt token; the first is None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: SampleLogprobs | None
    finish_reason: str | None = None  # "stop" | "length"
    stop_reason: int | str | None = None
    lora_request: Any = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: PromptLogprobs | None
    outputs: list[CompletionOutput]
    finished: bool = True
    lora_request: Any = None
    metrics: Any = None
    kv_transfer_params: dict = field(default_factory=dict)
