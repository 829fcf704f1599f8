"""The vLLM engine: one ``vllm.LLM`` with LoRA enabled, every voter a ``LoRARequest``.

A batch of requests for many voters becomes ONE ``LLM.generate`` call with a per-prompt
list of LoRA requests (``None`` = base model); vLLM's scheduler then runs up to
``max_loras`` adapters in the same forward pass (we set it to K, the number of voters).

* Prompts are tokenized here (``LLM.get_tokenizer()``) and passed as token ids, so chat
  messages rendered with the chat template are not given a second BOS, and cloze
  scoring knows exactly which positions belong to the option.
* Cloze scoring reads ``prompt_logprobs`` of prompt = prefix ids + option ids
  (``max_tokens=1``): the option's loglik is the sum of its tokens' logprobs.
* Letter scoring reads the top-20 next-token logprobs (vLLM's default ``max_logprobs``)
  after the prefix; a letter's logprob is the max over its single-token spellings ("A",
  " A"); a letter with none of them in the top 20 gets ``MISSING_LOGPROB`` (its
  probability is then ~0 after the per-item softmax).
* Tokenization is ``ensemble.tokens`` (as in the HF engine and training: lm-eval's
  context/continuation split, one rule for a model without a chat template), so both
  engines score the same token sequences.

vLLM is imported lazily inside the factory: it needs a CUDA GPU and is an optional extra.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ensemble import tokens
from ensemble.engines.base import (
    ENGINES,
    ChoiceOutput,
    ChoiceRequest,
    EngineSpec,
    GenOutput,
    GenRequest,
    Sample,
    softmax,
)
from ensemble.errors import EnsembleError
from ensemble.registry import unknown_name

# vllm/config/lora.py: ``MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]``.
ALLOWED_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
TOP_LOGPROBS = 20  # vLLM's default ``max_logprobs``: the most alternatives a request may ask for
MISSING_LOGPROB = -1e4  # letter outside the top-20: "practically impossible", finite for softmax
_RESERVED = ("model", "enable_lora", "max_loras", "max_lora_rank")


# --- adapter ranks -> max_lora_rank --------------------------------------------------------


def adapter_rank(path: str | Path) -> int:
    """The LoRA rank of a PEFT folder: ``r`` (or the largest ``rank_pattern`` value)."""
    cfg_path = Path(path) / "adapter_config.json"
    if not cfg_path.exists():
        raise EnsembleError(f"{cfg_path}: not found; point the adapter at a PEFT LoRA folder "
                            "(one holding adapter_config.json)")
    try:
        cfg = json.loads(cfg_path.read_text())
        return max([int(cfg["r"]), *(int(r) for r in (cfg.get("rank_pattern") or {}).values())])
    except (ValueError, KeyError, TypeError) as e:
        raise EnsembleError(f"{cfg_path}: field 'r' missing or not an integer ({e}); "
                            "re-save the adapter with PEFT") from None


def max_lora_rank_for(paths: Iterable[str | Path]) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that fits every adapter (16 when none)."""
    ranks = [adapter_rank(p) for p in paths]
    if not ranks:
        return 16  # vLLM's default
    need = max(ranks)
    for allowed in ALLOWED_LORA_RANKS:
        if allowed >= need:
            return allowed
    raise EnsembleError(f"adapter rank {need} exceeds vLLM's largest max_lora_rank "
                        f"{ALLOWED_LORA_RANKS[-1]}; train the adapters with r <= {ALLOWED_LORA_RANKS[-1]}")


# --- factory ---------------------------------------------------------------------------------


@ENGINES.register("vllm")
def make_vllm_engine(spec: EngineSpec) -> VLLMEngine:
    try:
        import vllm
        from vllm.lora.request import LoRARequest
    except ImportError:
        raise EnsembleError("vLLM is not installed: pip install 'ensemble[vllm]' (needs a CUDA GPU)") from None
    return VLLMEngine(spec, vllm.LLM, vllm.SamplingParams, LoRARequest)


class VLLMEngine:
    """K LoRA voters over one vLLM base model (see the module docstring)."""

    name = "vllm"

    def __init__(self, spec: EngineSpec, llm_cls: Any, sampling_cls: Any, lora_cls: Any) -> None:
        if not spec.model:
            raise EnsembleError("engine 'vllm': field 'model' is empty; set it to a local HF model folder")
        bad = [k for k in _RESERVED if k in spec.options]
        if bad:
            raise EnsembleError(f"engine 'vllm': option '{bad[0]}' is set by the engine from the model and "
                                "adapters; remove it from options")
        k = len(spec.adapters)
        kwargs: dict[str, Any] = {"seed": 0, **spec.options}
        if k:
            kwargs.update(enable_lora=True, max_loras=k, max_lora_rank=max_lora_rank_for(spec.adapters.values()),
                          max_cpu_loras=max(k, int(spec.options.get("max_cpu_loras", k))))
        self.llm = llm_cls(model=spec.model, **kwargs)
        self._params = sampling_cls
        # int ids must be >= 1 and unique per adapter: 1..K in load order.
        self._loras = {name: lora_cls(name, i + 1, str(path)) for i, (name, path) in enumerate(spec.adapters.items())}
        self.tokenizer = self.llm.get_tokenizer()

    @property
    def adapters(self) -> list[str]:
        return list(self._loras)

    def close(self) -> None:
        self.llm = None

    # --- shared helpers ----------------------------------------------------------------------

    def _lora(self, adapter: str | None) -> Any:
        if adapter is None:
            return None
        if adapter not in self._loras:
            raise EnsembleError(unknown_name("adapter", adapter, self._loras))
        return self._loras[adapter]

    def _run(self, token_ids: list[list[int]], params: list[Any], loras: list[Any]) -> tuple[list[Any], float]:
        start = time.perf_counter()
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids in token_ids], params,
                                 lora_request=loras, use_tqdm=False)
        return outs, time.perf_counter() - start

    # --- generate ---------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenRequest]) -> list[GenOutput]:
        if not requests:
            return []
        params = [self._sampling(r) for r in requests]
        ids = [tokens.prompt_ids(self.tokenizer, r.prompt, r.messages) for r in requests]
        outs, elapsed = self._run(ids, params, [self._lora(r.adapter) for r in requests])
        results = []
        for r, out in zip(requests, outs):
            samples = tuple(_sample(c, r.sampling.logprobs) for c in sorted(out.outputs, key=lambda c: c.index))
            if r.sampling.temperature == 0 and r.sampling.n > 1:
                samples = samples * r.sampling.n  # greedy samples are identical; vLLM allows only n=1
            # latency: the call's wall time shared out equally over its prompts (as the HF engine does)
            results.append(GenOutput(request=r, samples=samples, latency_s=elapsed / len(requests)))
        return results

    def _sampling(self, r: GenRequest) -> Any:
        s = r.sampling
        return self._params(n=1 if s.temperature == 0 else s.n, temperature=s.temperature, top_p=s.top_p,
                            seed=s.seed, max_tokens=s.max_new_tokens, stop=list(s.stop) or None,
                            logprobs=1 if s.logprobs else None)

    # --- score_choices -------------------------------------------------------------------------

    def score_choices(self, requests: Sequence[ChoiceRequest]) -> list[ChoiceOutput]:
        """All options of all requests in one ``generate`` call (cloze: one prompt per
        option; letter: one prompt per request)."""
        if not requests:
            return []
        prompts: list[list[int]] = []
        params: list[Any] = []
        loras: list[Any] = []
        spans: list[tuple[int, int, int]] = []  # per request: its rows [start, end) and prefix length
        for r in requests:
            if not r.options:
                raise EnsembleError("choice request: field 'options' is empty; give at least one option")
            if r.mode not in ("cloze", "letter"):
                raise EnsembleError(unknown_name("scoring mode", r.mode, ("cloze", "letter")))
            text, special = tokens.request_text(self.tokenizer, r.prompt, r.messages, r.assistant_prefix)
            if r.mode == "cloze":
                prefix, conts = tokens.cloze_ids(self.tokenizer, text, special, r.options)
                rows = [prefix + c for c in conts]
                params += [self._params(max_tokens=1, temperature=0.0, prompt_logprobs=1)] * len(rows)
            else:
                prefix = tokens.context_ids(self.tokenizer, text, special)
                rows = [prefix]
                params.append(self._params(max_tokens=1, temperature=0.0, logprobs=TOP_LOGPROBS))
            spans.append((len(prompts), len(prompts) + len(rows), len(prefix)))
            prompts += rows
            loras += [self._lora(r.adapter)] * len(rows)
        outs, elapsed = self._run(prompts, params, loras)
        share = elapsed / len(prompts)
        results = []
        for r, (a, b, n_prefix) in zip(requests, spans):
            if r.mode == "cloze":
                logliks = tuple(_cloze_loglik(out, n_prefix, r.normalize) for out in outs[a:b])
            else:
                top = outs[a].outputs[0].logprobs[0]  # {token_id: Logprob} at the first generated position
                spellings = [tokens.letter_ids(self.tokenizer, o) for o in r.options]
                logliks = tuple(max((top[t].logprob for t in ids if t in top), default=MISSING_LOGPROB)
                                for ids in spellings)
            results.append(ChoiceOutput(request=r, logliks=logliks, probs=softmax(logliks), latency_s=share * (b - a)))
        return results


def _sample(c: Any, want_logprobs: bool) -> Sample:
    """CompletionOutput -> Sample; each position's dict holds the chosen token's Logprob."""
    lps = tuple(float(d[t].logprob) for d, t in zip(c.logprobs, c.token_ids)) if want_logprobs and c.logprobs else ()
    finish = "length" if c.finish_reason == "length" else "stop"
    return Sample(text=c.text, token_logprobs=lps, n_tokens=len(c.token_ids), finish_reason=finish)


def _cloze_loglik(out: Any, n_prefix: int, normalize: str) -> float:
    """Sum (or mean) of the option tokens' prompt logprobs; positions n_prefix.. are the option."""
    ids = out.prompt_token_ids
    lps = [out.prompt_logprobs[t][ids[t]].logprob for t in range(n_prefix, len(ids))]
    total = float(sum(lps))
    return total / len(lps) if normalize == "mean" else total
