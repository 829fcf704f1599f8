"""The engine contract: one process, one base model, K named LoRA voters.

An engine answers two kinds of batched requests. Each request names the voter
(``adapter``: a registered adapter name, or ``None`` for the plain base model):

* ``generate(requests) -> list[GenOutput]``: text completion of a prompt string or
  chat messages, ``n`` samples per request, with per-token logprobs.
* ``score_choices(requests) -> list[ChoiceOutput]``: no generation. ``mode="cloze"``
  scores each option's text as a continuation of the prompt (summed or
  length-normalised log-likelihood); ``mode="letter"`` reads the next-token
  probabilities of the option letters after the prompt. Both softmax over the
  item's own options.

Engines are plain classes satisfying the ``Engine`` protocol (no base class);
they are registered by name in ``ENGINES`` and built with ``build_engine``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from ensemble.registry import Registry

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}


@dataclass(frozen=True)
class SamplingSettings:
    """Decoding settings. ``temperature == 0`` means greedy (then ``n`` must be 1... or
    identical samples). ``seed`` makes sampled outputs reproducible per request.

    ``first_sample``: the request's samples are samples ``first_sample, first_sample + 1, ...``
    of the stream its ``seed`` starts. The HF engine seeds every sample on its own, so a request
    for ``n=1, first_sample=j`` draws exactly sample j of the ``n``-sample request with the same
    seed (an adaptive run asks samples one at a time and gets the full run's draws). vLLM and
    OpenAI-compatible servers take one seed per request: they send ``sampling_seed(s)``."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int | None = 0
    stop: tuple[str, ...] = ()
    logprobs: bool = True
    top_logprobs: int = 0  # also report the k most likely tokens of each step (OpenAI: 0..20)
    first_sample: int = 0  # this request's samples start at this index of its seed's stream


def sampling_seed(s: SamplingSettings) -> int | None:
    """The one seed sent to vLLM or an OpenAI-compatible server: ``seed + first_sample``.
    vLLM (V1) runs an n-sample request as n child requests and seeds child i with
    ``seed + i`` (vllm/v1/engine/parallel_sampling.py, ``ParentRequest._get_child_sampling_params``),
    so on vLLM, and on a vLLM server, this draws the full request's sample ``first_sample``
    too (to the numerics of other batches). Other servers promise nothing beyond "seeded"."""
    return None if s.seed is None else s.seed + s.first_sample


@dataclass(frozen=True)
class GenRequest:
    """One prompt for one voter. Exactly one of ``prompt`` / ``messages`` is set.
    ``messages`` are rendered with the model's chat template by the engine."""

    adapter: str | None
    prompt: str | None = None
    messages: tuple[Message, ...] | None = None
    sampling: SamplingSettings = SamplingSettings()
    key: Any = None  # caller's bookkeeping (e.g. (item, voter)); engines pass it through


@dataclass(frozen=True)
class Sample:
    text: str
    token_logprobs: tuple[float, ...] = ()  # logprob of each generated token (chosen token)
    n_tokens: int = 0
    finish_reason: str = "length"  # "stop" | "length"
    # per generated token, the sampling.top_logprobs most likely (token text, raw logprob), best first
    top_logprobs: tuple[tuple[tuple[str, float], ...], ...] = ()


@dataclass(frozen=True)
class GenOutput:
    request: GenRequest
    samples: tuple[Sample, ...]
    latency_s: float = 0.0


@dataclass(frozen=True)
class ChoiceRequest:
    """Score ``options`` after ``prompt`` (or chat ``messages``) for one voter.

    cloze: options are the continuation texts (e.g. " 42", " Paris").
    letter: options are the letters ("A", "B", ...); the engine compares the
            next-token probability of each letter after the prompt.
    """

    adapter: str | None
    options: tuple[str, ...]
    prompt: str | None = None
    messages: tuple[Message, ...] | None = None
    mode: Literal["cloze", "letter"] = "cloze"
    normalize: Literal["sum", "mean"] = "mean"  # cloze: summed or per-token log-likelihood
    # Text the assistant's reply starts with, appended after the rendered prompt (after the
    # chat template's generation prompt for ``messages``), e.g. "Answer:" -- the options are
    # scored as continuations of prompt + assistant_prefix.
    assistant_prefix: str = ""
    key: Any = None


@dataclass(frozen=True)
class ChoiceOutput:
    request: ChoiceRequest
    logliks: tuple[float, ...]  # one per option: summed/mean log-likelihood (cloze) or logprob (letter)
    probs: tuple[float, ...]  # softmax over this item's options
    latency_s: float = 0.0


@runtime_checkable
class Engine(Protocol):
    """What every engine provides."""

    name: str

    @property
    def adapters(self) -> list[str]:
        """Names of the loaded voters (adapters), in load order."""
        ...

    def generate(self, requests: Sequence[GenRequest]) -> list[GenOutput]: ...

    def score_choices(self, requests: Sequence[ChoiceRequest]) -> list[ChoiceOutput]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class EngineSpec:
    """How to build an engine: which one, the base model, the voters, options."""

    engine: str = "hf"
    model: str = ""  # local HF folder, GGUF file, hub id, or the name of a bundled default
    adapters: dict[str, str] = field(default_factory=dict)  # voter name -> PEFT folder
    options: dict[str, Any] = field(default_factory=dict)  # engine-specific (dtype, batch_size, base_url...)


EngineFactory = Callable[[EngineSpec], Engine]
ENGINES: Registry[EngineFactory] = Registry("engine")
# The built-in engines, by name: configs check run.engine against this list at load without
# importing the engine modules (the HF one imports torch). tests/test_config_checks.py keeps it
# equal to what build_engine registers.
ENGINE_NAMES = ("hf", "vllm", "openai")


def build_engine(spec: EngineSpec) -> Engine:
    """Build the named engine. Engine modules import heavy libraries lazily."""
    from ensemble.engines import openai, vllm  # noqa: F401
    from ensemble.engines.hf import engine  # noqa: F401  (register factories)

    return ENGINES.get(spec.engine)(spec)


def softmax(values: Sequence[float]) -> tuple[float, ...]:
    """Numerically stable softmax of a short list (per-item option scores)."""
    import math

    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return tuple(e / total for e in exps)
