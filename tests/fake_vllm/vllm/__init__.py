"""A fake ``vllm`` package for tests: vLLM's offline API surface, no GPU, deterministic.

It mirrors the names the ensemble engine uses (``LLM``, ``SamplingParams``,
``vllm.lora.request.LoRARequest``, ``RequestOutput``/``CompletionOutput``, ``Logprob``),
records every call on ``LLM.instances[-1].calls``, and validates like vLLM does:
``EngineArgs`` field names (``vllm.engine.arg_utils``), allowed ``max_lora_rank`` values
(``vllm.config.lora``), ``PEFTHelper.validate_legal`` on every adapter it loads
(``vllm.lora.peft_helper``), ``max_cpu_loras >= max_loras``, LoRA without ``enable_lora``,
list lengths, logprobs <= ``max_logprobs``, SamplingParams' value checks.
The "model" is a character-level toy whose next-token logits are a fixed function of
(LoRA name, previous token, position): see ``vllm._toy``.
"""
from __future__ import annotations

from .entrypoints.llm import LLM
from .outputs import CompletionOutput, RequestOutput
from .sampling_params import SamplingParams

__version__ = "0.0.0+fake"
__all__ = ["LLM", "CompletionOutput", "RequestOutput", "SamplingParams"]
