"""Fake ``vllm.sampling_params.SamplingParams``: the fields the ensemble engines use.

Unknown keyword arguments raise ``TypeError`` (as vLLM's msgspec struct does); the value
checks copy vLLM's ``_verify_args`` / ``_verify_greedy_sampling`` messages.
"""
from __future__ import annotations

from dataclasses import dataclass

_SAMPLING_EPS = 1e-5
_MAX_TEMP = 1e-2  # vLLM raises a positive temperature below this to it (with a warning)


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    stop: str | list[str] | None = None
    max_tokens: int | None = 16
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    detokenize: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is None:
            self.stop = []
        if 0 < self.temperature < _MAX_TEMP:
            self.temperature = _MAX_TEMP
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}.")
        if self.temperature < 0.0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and value < 0 and value != -1:
                raise ValueError(f"{name} must be non-negative or -1, got {value}.")
        if any(not s for s in self.stop):
            raise ValueError("stop cannot contain an empty string.")
        if self.temperature < _SAMPLING_EPS:  # greedy: vLLM resets these and allows n == 1 only
            self.top_p, self.top_k = 1.0, -1
            if self.n > 1:
                raise ValueError(f"n must be 1 when using greedy sampling, got {self.n}.")
