"""Fake ``vllm.LLM``: records calls, validates like vLLM, generates from the toy model."""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from .._toy import VOCAB, SentencePieceTokenizer, ToyTokenizer, next_logprobs
from ..config.lora import validate_lora_config
from ..engine.arg_utils import EngineArgs
from ..logprobs import Logprob
from ..lora.peft_helper import PEFTHelper
from ..lora.request import LoRARequest
from ..outputs import CompletionOutput, RequestOutput
from ..sampling_params import SamplingParams


class LLM:
    instances: ClassVar[list[LLM]] = []  # every LLM built, newest last (tests read the calls here)

    def __init__(self, model: str, *, seed: int = 0, enable_lora: bool = False, max_loras: int = 1,
                 max_lora_rank: int = 16, max_cpu_loras: int | None = None, max_logprobs: int = 20,
                 **engine_args: Any) -> None:
        self.engine_args = EngineArgs(model=model, **engine_args)  # unknown names: TypeError, as in vLLM
        if enable_lora:
            validate_lora_config(max_lora_rank, max_loras, max_cpu_loras)
        self.model = model
        self.init_kwargs = {"model": model, "seed": seed, "enable_lora": enable_lora, "max_loras": max_loras,
                            "max_lora_rank": max_lora_rank, "max_cpu_loras": max_cpu_loras,
                            "max_logprobs": max_logprobs, **engine_args}
        self.calls: list[dict[str, Any]] = []
        self._loras: dict[int, LoRARequest] = {}  # int id -> the request that loaded it
        toy = engine_args.get("tokenizer") == "toy-sentencepiece"
        self._tokenizer: Any = SentencePieceTokenizer() if toy else ToyTokenizer()
        self._vocab = list(SentencePieceTokenizer.PIECES) if toy else VOCAB
        LLM.instances.append(self)

    def get_tokenizer(self) -> Any:
        return self._tokenizer

    def _lp(self, name: str | None, context: Sequence[int]) -> list[float]:
        return next_logprobs(name, context, len(self._vocab))

    def generate(self, prompts: Any, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 *, use_tqdm: bool = True, lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
                 priority: list[int] | None = None) -> list[RequestOutput]:
        prompts = [prompts] if isinstance(prompts, (str, dict)) else list(prompts)
        params = _per_prompt(sampling_params or SamplingParams(), prompts, "sampling_params")
        loras = _per_prompt(lora_request, prompts, "lora_request")
        for lr in loras:
            if lr is not None:
                self._load_lora(lr)
        for p in params:
            for name in ("logprobs", "prompt_logprobs"):
                k = getattr(p, name)
                if k is not None and k > self.init_kwargs["max_logprobs"]:
                    kind = "sample" if name == "logprobs" else "prompt"
                    raise ValueError(f"Requested {kind} logprobs of {k}, which is greater than max allowed: "
                                     f"{self.init_kwargs['max_logprobs']}")
        distinct = {lr.lora_int_id for lr in loras if lr is not None}
        self.calls.append({"prompts": prompts, "params": params, "lora_requests": loras,
                           "distinct_loras": len(distinct),
                           # vLLM schedules at most max_loras adapters per step; more means extra waves
                           "lora_waves": math.ceil(len(distinct) / self.init_kwargs["max_loras"])})
        return [self._run(str(len(self.calls)) + f"-{i}", pr, p, lr)
                for i, (pr, p, lr) in enumerate(zip(prompts, params, loras))]

    # -- validation ------------------------------------------------------------------------
    def _load_lora(self, lr: LoRARequest) -> None:
        if not self.init_kwargs["enable_lora"]:
            raise ValueError(f"Got lora_request {lr} but LoRA is not enabled!")
        seen = self._loras.get(lr.lora_int_id)
        if seen is not None:
            # vLLM documents the id as globally unique per adapter but does not enforce it;
            # the fake does, to catch id collisions that would silently mix adapters.
            if (seen.lora_name, seen.lora_path) != (lr.lora_name, lr.lora_path):
                raise ValueError(f"lora_int_id {lr.lora_int_id} used for both {seen.lora_name} and {lr.lora_name}")
            return
        if not (Path(lr.lora_path) / "adapter_config.json").exists():
            raise ValueError(f"Loading lora {lr.lora_name} failed: No adapter found for {lr.lora_path}")
        PEFTHelper.from_local_dir(lr.lora_path).validate_legal(self.init_kwargs["max_lora_rank"])
        self._loras[lr.lora_int_id] = lr

    # -- the toy forward pass ---------------------------------------------------------------
    def _run(self, request_id: str, prompt: Any, p: SamplingParams, lr: LoRARequest | None) -> RequestOutput:
        name = lr.lora_name if lr is not None else None
        if isinstance(prompt, str):
            ids, text = self._tokenizer.encode(prompt), prompt
        else:
            ids, text = list(prompt["prompt_token_ids"]), None
            if any(not 0 <= i < len(self._vocab) for i in ids):
                raise ValueError("Token id out of vocabulary")
        prompt_lps = None
        if p.prompt_logprobs is not None:
            prompt_lps = [None] + [_top(self._lp(name, ids[:t]), ids[t], p.prompt_logprobs, self._tokenizer)
                                   for t in range(1, len(ids))]
        outs = [self._sample(j, ids, p, name, lr) for j in range(p.n)]
        return RequestOutput(request_id, text, ids, prompt_lps, outs, lora_request=lr)

    def _sample(self, index: int, ids: list[int], p: SamplingParams, name: str | None,
                lr: LoRARequest | None) -> CompletionOutput:
        # vLLM V1 runs an n-sample request as n children, child i seeded seed + i
        # (v1/engine/parallel_sampling.py, ParentRequest._get_child_sampling_params)
        rng = random.Random(None if p.seed is None else p.seed + index)
        context, out, lps = list(ids), [], []
        finish, stop_reason, text = "length", None, ""
        for _ in range(p.max_tokens or 16):
            lp = self._lp(name, context)
            tok = _pick(lp, p, rng)
            out.append(tok)
            context.append(tok)
            if p.logprobs is not None:
                lps.append(_top(lp, tok, p.logprobs, self._tokenizer))
            if tok == self._tokenizer.eos_token_id:
                finish = "stop"
                break
            text = self._tokenizer.decode(out, skip_special_tokens=True)
            hit = [s for s in p.stop if s in text]
            if hit:
                text, finish, stop_reason = text[: text.index(hit[0])], "stop", hit[0]
                break
        cum = sum(self._lp(name, ids + out[:t])[out[t]] for t in range(len(out)))
        return CompletionOutput(index, text, out, cum, lps if p.logprobs is not None else None,
                                finish, stop_reason, lr)


def _per_prompt(value: Any, prompts: list, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != len(prompts):
            raise ValueError(f"The lengths of prompts and {name} must be the same.")
        return list(value)
    return [value] * len(prompts)


def _pick(lp: list[float], p: SamplingParams, rng: random.Random) -> int:
    if p.temperature < 1e-5:
        return max(range(len(lp)), key=lambda v: (lp[v], -v))
    weights = [math.exp(x / p.temperature) for x in lp]
    order = sorted(range(len(lp)), key=lambda v: -weights[v])
    total, kept, mass = sum(weights), [], 0.0
    for v in order:  # nucleus: the smallest prefix holding top_p of the mass
        kept.append(v)
        mass += weights[v] / total
        if mass >= p.top_p:
            break
    return rng.choices(kept, weights=[weights[v] for v in kept])[0]


def _top(lp: list[float], chosen: int, k: int, tokenizer: Any) -> dict[int, Logprob]:
    """vLLM's per-position dict: the top-k tokens plus the chosen one, with 1-based ranks;
    ``decoded_token`` is the token decoded alone (a SentencePiece "▁B" gives "B")."""
    order = sorted(range(len(lp)), key=lambda v: (-lp[v], v))
    rank = {v: r + 1 for r, v in enumerate(order)}
    keep = order[: len(lp) if k == -1 else k] + [chosen]
    return {v: Logprob(lp[v], rank[v], tokenizer.decode([v])) for v in keep}
