"""Fake ``vllm.logprobs``: the per-token logprob record (as in vLLM >= 0.10)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Logprob:
    """One entry of a position's ``{token_id: Logprob}`` dict."""

    logprob: float
    rank: int | None = None  # 1-based rank of the token in the full distribution
    decoded_token: str | None = None
