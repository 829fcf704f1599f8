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

import dataclasses
import difflib
import re
import time
from collections.abc import Sequence
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
    sampling_seed,
    softmax,
)
from ensemble.engines.vllm_lora import (  # noqa: F401  (re-exported: the public names live here)
    ALLOWED_LORA_RANKS,
    adapter_rank,
    allowed_lora_ranks,
    check_vllm_adapters,
    max_lora_rank_for,
)
from ensemble.errors import EnsembleError
from ensemble.registry import unknown_name

TOP_LOGPROBS = 20  # vLLM's default ``max_logprobs``: the most alternatives a request may ask for
MISSING_LOGPROB = -1e4  # letter outside the top-20: "practically impossible", finite for softmax
MAX_TEMPERATURE = 2.0  # the OpenAI API's bound (vote serve enforces it): every engine samples alike
_RESERVED = ("model", "enable_lora", "max_loras", "max_lora_rank")


def check_temperature(temperature: float) -> None:
    """Refuse a temperature OpenAI-compatible servers refuse (vLLM itself has no upper bound:
    ``SamplingParams._verify_args`` checks ``temperature >= 0`` only)."""
    if not 0.0 <= temperature <= MAX_TEMPERATURE:
        raise EnsembleError(f"sampling temperature {temperature} is outside [0, {MAX_TEMPERATURE:g}] (the OpenAI "
                            f"API's range, which vote serve and hosted servers enforce); set run.temperature "
                            f"<= {MAX_TEMPERATURE:g}")


def _close_engine_arg(name: str) -> str:
    """`` Did you mean 'x'?`` from the installed vLLM's EngineArgs fields ("" when none is close)."""
    try:
        from vllm.engine.arg_utils import EngineArgs

        names = [f.name for f in dataclasses.fields(EngineArgs)]
    except Exception:  # noqa: BLE001  (an unexpected vLLM layout: no hint)
        return ""
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.8)
    return f" Did you mean '{close[0]}'?" if close else ""


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
        # generation_config="vllm": vLLM's own sampling defaults, not the model's generation_config.json
        # (vllm/config/model.py ModelConfig.generation_config); vote serve --engine vllm passes the same.
        kwargs: dict[str, Any] = {"seed": 0, "generation_config": "vllm", **spec.options}
        if k:
            # PEFTHelper.validate_legal would refuse these inside a worker, minutes in and unnamed.
            rank = check_vllm_adapters(spec.adapters)
            kwargs.update(enable_lora=True, max_loras=k, max_lora_rank=rank,
                          max_cpu_loras=max(k, int(spec.options.get("max_cpu_loras", k))))
        try:
            self.llm = llm_cls(model=spec.model, **kwargs)
        except TypeError as e:  # LLM passes unknown options on to EngineArgs(...), which refuses them
            hit = re.search(r"unexpected keyword argument '(\w+)'", str(e))
            if hit is None:
                raise
            raise EnsembleError(f"engine 'vllm': option '{hit[1]}' is not a vLLM engine argument "
                                f"(vllm/engine/arg_utils.py EngineArgs).{_close_engine_arg(hit[1])} Fix or remove "
                                "it in run.engine_options") from None
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
        check_temperature(s.temperature)
        return self._params(n=1 if s.temperature == 0 else s.n, temperature=s.temperature, top_p=s.top_p,
                            seed=sampling_seed(s), max_tokens=s.max_new_tokens, stop=list(s.stop) or None,
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
