"""The OpenAI-compatible engine: voters are model names on a running server.

The server can be ``vllm serve BASE --enable-lora --lora-modules {JSON} ...`` (see
``ensemble.serve.vllm_command``; ``vote serve --engine vllm --print`` writes it), ``vote
serve`` (``ensemble.serve.app``), Ollama, or a hosted API. Voter name -> served model
name: the ``adapters`` value when it is a model name, the voter name itself when the value
is empty or a local folder (the usual case: the same config that names PEFT folders for
the HF / vLLM engines). ``adapter=None`` asks for ``spec.model``.

Options: ``base_url`` (default http://127.0.0.1:8000/v1), ``api_key_env`` (name of the
environment variable holding the key; none -> "EMPTY"), ``concurrency`` (requests in
flight, default 16; raise it for vote serve / vllm serve, whose batchers merge concurrent
requests into one forward pass), ``max_retries`` (the client's exponential backoff on
connection errors and 408/409/429/5xx; default 3), ``timeout`` (seconds per request,
default 120), ``check_models`` (list the served models at start, default true).

Scoring (``score_choices``) depends on what the server offers:

* ``vote serve`` (models ``owned_by: "ensemble"``): ``POST /v1/ensemble/score_choices``,
  exactly the in-process engine's ``score_choices``.
* a server with vLLM's ``POST /tokenize``: options are found by token ids, never by token
  text (``ensemble.engines.openai_tokens``): cloze reads the echoed prompt logprobs after
  the context's ids; letter reads the top-20 next-token logprobs keyed by token id.
* any other server: letter only, matching the top-20 logprobs' token *text* against "A"
  / " A" (right for byte-level BPE tokenizers such as tiktoken's); cloze is refused.

Fingerprints (``fingerprint(adapter)``): what a voter behind the server is -- the server URL,
the served model id, and the card ``GET /v1/models`` reports for it (``root``: vLLM's adapter
folder or base model path; ``parent``; vote serve's ``ensemble_fingerprint`` of the adapter
files), plus the local adapter folder's files when the voter names one. A resumed run
refuses stored answers whose voter now fingerprints differently.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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
from ensemble.engines.openai_tokens import NoTokenizeRoute, TokenScorer
from ensemble.engines.vllm import MISSING_LOGPROB, TOP_LOGPROBS, check_temperature
from ensemble.errors import EnsembleError
from ensemble.registry import unknown_name

DEFAULT_URL = "http://127.0.0.1:8000/v1"
OPTIONS = {"base_url": DEFAULT_URL, "api_key_env": None, "concurrency": 16, "max_retries": 3, "timeout": 120.0,
           "check_models": True}


@ENGINES.register("openai")
def make_openai_engine(spec: EngineSpec) -> OpenAIEngine:
    try:
        import openai
    except ImportError:
        raise EnsembleError("the openai client is not installed: pip install 'ensemble[openai]'") from None
    return OpenAIEngine(spec, openai)


def served_name(voter: str, value: str | None) -> str:
    """The model name a voter is served under (see the module docstring)."""
    if not value or Path(value).expanduser().is_dir():
        return voter
    return value


class OpenAIEngine:
    name = "openai"

    def __init__(self, spec: EngineSpec, openai: Any) -> None:
        unknown = [k for k in spec.options if k not in OPTIONS]
        if unknown:
            raise EnsembleError(f"engine 'openai': {unknown_name('option', unknown[0], OPTIONS)}")
        opts = {**OPTIONS, **spec.options}
        self.openai, self.url, self.max_retries = openai, str(opts["base_url"]).rstrip("/"), int(opts["max_retries"])
        key = "EMPTY"
        if opts["api_key_env"]:
            key = os.environ.get(opts["api_key_env"], "")
            if not key:
                raise EnsembleError(f"engine 'openai': option api_key_env names ${opts['api_key_env']}, which is "
                                    "not set; export it or drop the option")
        self.client = openai.OpenAI(base_url=self.url, api_key=key, max_retries=self.max_retries,
                                    timeout=float(opts["timeout"]))
        self._served = {v: served_name(v, p) for v, p in spec.adapters.items()}
        self._local = {v: p for v, p in spec.adapters.items() if p and Path(p).expanduser().is_dir()}
        self._base = spec.model or None
        self._pool = ThreadPoolExecutor(max_workers=max(1, int(opts["concurrency"])), thread_name_prefix="openai")
        self._cards: dict[str, dict[str, Any]] = {}  # served model id -> its /v1/models entry
        self.ensemble_server = self._check_models() if opts["check_models"] else False
        root = self.url.removesuffix("/v1")  # vLLM serves /tokenize at the root
        self._scorer = TokenScorer(root, self.client.post, self.client.completions.create, openai.NotFoundError)
        self._has_tokenize = True  # until the server answers /tokenize with 404

    @property
    def adapters(self) -> list[str]:
        return list(self._served)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()

    def _check_models(self) -> bool:
        """Fail early if a voter is not served; True when the server is ``vote serve``."""
        with self._errors("listing models", "-"):
            cards = {m.id: m.model_dump() for m in self.client.models.list()}
        wanted = [*self._served.values(), *([self._base] if self._base else [])]
        missing = [m for m in wanted if m not in cards]
        if missing:
            raise EnsembleError(f"model '{missing[0]}' is not served at {self.url}; served: "
                                f"{', '.join(cards) or '(none)'}; fix the adapters / model names or the server")
        self._cards = {m: cards[m] for m in wanted}
        return bool(wanted) and all(cards[m].get("owned_by") == "ensemble" for m in wanted)

    def fingerprint(self, adapter: str | None) -> str:
        """What answers from this voter depend on (see the module docstring); 16 hex digits."""
        from ensemble.predictions.store import fingerprint as files_fingerprint

        model = self._model(adapter)
        card = self._cards.get(model, {})
        parts = {"url": self.url, "model": model,
                 **{k: card.get(k) for k in ("root", "parent", "ensemble_fingerprint")}}
        if adapter in self._local:
            parts["files"] = files_fingerprint(self._local[adapter])
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def _model(self, adapter: str | None) -> str:
        if adapter is None:
            if not self._base:
                raise EnsembleError("engine 'openai': a request asks for the base model but field 'model' is "
                                    "empty; set model to the served base model name")
            return self._base
        if adapter not in self._served:
            raise EnsembleError(unknown_name("adapter", adapter, self._served))
        return self._served[adapter]

    @contextlib.contextmanager
    def _errors(self, what: str, model: str) -> Iterator[None]:
        """openai exceptions -> one-line EnsembleErrors naming the server and the request kind."""
        o = self.openai
        try:
            yield
        except o.APIConnectionError as e:  # includes timeouts; raised after the client's retries
            raise EnsembleError(f"cannot reach the OpenAI-compatible server at {self.url} after {self.max_retries} "
                                f"retries ({type(e).__name__}: {e}); start it (vote serve / vllm serve) or fix "
                                "options.base_url") from None
        except o.AuthenticationError:
            raise EnsembleError(f"the server at {self.url} refused the API key; set options.api_key_env") from None
        except o.NotFoundError as e:
            raise EnsembleError(f"model '{model}' is not served at {self.url} ({_message(e)}); fix the adapter "
                                "names or start the server with them") from None
        except o.APIStatusError as e:
            raise EnsembleError(f"the server at {self.url} refused {what} for model '{model}' "
                                f"(HTTP {e.status_code}: {_message(e)})") from None

    # --- generate --------------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenRequest]) -> list[GenOutput]:
        return list(self._pool.map(self._generate_one, requests))

    def _generate_one(self, r: GenRequest) -> GenOutput:
        if (r.prompt is None) == (r.messages is None):
            raise EnsembleError("request: set exactly one of 'prompt' and 'messages'")
        s, model = r.sampling, self._model(r.adapter)
        check_temperature(s.temperature)
        greedy_copies = s.n if s.temperature == 0 else 1  # vLLM refuses greedy n > 1: ask once, repeat
        args: dict[str, Any] = {"model": model, "n": s.n // greedy_copies, "temperature": s.temperature,
                                "top_p": s.top_p, "max_tokens": s.max_new_tokens}
        if s.seed is not None:
            args["seed"] = sampling_seed(s)
        if s.stop:
            args["stop"] = list(s.stop)
        start = time.perf_counter()
        with self._errors("generation", model):
            if r.messages is not None:
                resp = self.client.chat.completions.create(messages=list(r.messages), logprobs=s.logprobs, **args)
            else:
                resp = self.client.completions.create(prompt=r.prompt, logprobs=1 if s.logprobs else None, **args)
        choices = sorted(resp.choices, key=lambda c: c.index)
        per_sample = (resp.usage.completion_tokens // max(1, len(choices))) if resp.usage else 0
        samples = tuple(_chat_sample(c, per_sample) if r.messages is not None else _text_sample(c, per_sample)
                        for c in choices) * greedy_copies
        return GenOutput(request=r, samples=samples, latency_s=time.perf_counter() - start)

    # --- score_choices ---------------------------------------------------------------------------

    def score_choices(self, requests: Sequence[ChoiceRequest]) -> list[ChoiceOutput]:
        return list(self._pool.map(self._score_one, requests))

    def _score_one(self, r: ChoiceRequest) -> ChoiceOutput:
        if not r.options:
            raise EnsembleError("choice request: field 'options' is empty; give at least one option")
        if r.mode not in ("cloze", "letter"):
            raise EnsembleError(unknown_name("scoring mode", r.mode, ("cloze", "letter")))
        if (r.prompt is None) == (r.messages is None):
            raise EnsembleError("request: set exactly one of 'prompt' and 'messages'")
        model, start = self._model(r.adapter), time.perf_counter()
        if self.ensemble_server:
            logliks = self._score_ensemble(r, model)
        elif r.mode == "letter":
            with self._errors(f"letter scoring (max_tokens=1, top {TOP_LOGPROBS} logprobs)", model):
                logliks = self._letter(r, model)
        else:
            with self._errors("cloze scoring (/tokenize, then completions with echo=True, logprobs=1, "
                              "max_tokens=0)", model):
                try:
                    logliks = self._scorer.cloze(r, model)
                except NoTokenizeRoute:
                    raise EnsembleError(f"the server at {self.url} has no /tokenize route, so cloze scoring cannot "
                                        "tell the prompt's tokens from the option's; use vLLM or vote serve, or "
                                        "mode 'letter'") from None
        return ChoiceOutput(request=r, logliks=logliks, probs=softmax(logliks), latency_s=time.perf_counter() - start)

    def _score_ensemble(self, r: ChoiceRequest, model: str) -> tuple[float, ...]:
        body: dict[str, Any] = {"model": model, "options": list(r.options), "mode": r.mode,
                                "normalize": r.normalize, "assistant_prefix": r.assistant_prefix}
        body.update({"messages": list(r.messages)} if r.messages is not None else {"prompt": r.prompt})
        with self._errors(f"{r.mode} scoring", model):
            data = self.client.post("/ensemble/score_choices", cast_to=object, body=body)
        return tuple(float(x) for x in data["logliks"])

    def _letter(self, r: ChoiceRequest, model: str) -> tuple[float, ...]:
        """By token id where the server tokenizes (vLLM); else by token text, the max over
        the letter's spellings "A" / " A" among the top logprobs, as the in-process engines do."""
        if self._has_tokenize:
            try:
                return self._scorer.letter(r, model)
            except NoTokenizeRoute:
                self._has_tokenize = False
        top = self._letter_top(r, model)
        return tuple(max((top[k] for k in (o, " " + o) if k in top), default=MISSING_LOGPROB) for o in r.options)

    def _letter_top(self, r: ChoiceRequest, model: str) -> dict[str, float]:
        """{token text: logprob} of the top next tokens after the prompt."""
        if r.messages is None:
            resp = self.client.completions.create(model=model, prompt=(r.prompt or "") + r.assistant_prefix,
                                                  max_tokens=1, temperature=0.0, logprobs=TOP_LOGPROBS)
            return dict(resp.choices[0].logprobs.top_logprobs[0])
        resp = self.client.chat.completions.create(model=model, max_tokens=1, temperature=0.0, logprobs=True,
                                                   top_logprobs=TOP_LOGPROBS, **_chat_prefix(r, r.assistant_prefix))
        return {t.token: t.logprob for t in resp.choices[0].logprobs.content[0].top_logprobs}


def _chat_prefix(r: ChoiceRequest, reply_start: str, **extra: Any) -> dict[str, Any]:
    """Chat arguments that make the assistant's reply start with ``reply_start`` (vLLM's
    ``continue_final_message``); plain messages when there is nothing to continue."""
    if not reply_start:
        return {"messages": list(r.messages or ()), **({"extra_body": extra} if extra else {})}
    msgs = [*(r.messages or ()), {"role": "assistant", "content": reply_start}]
    return {"messages": msgs, "extra_body": {"continue_final_message": True, "add_generation_prompt": False, **extra}}


def _text_sample(c: Any, n_tokens: int) -> Sample:
    lps = tuple(float(x) for x in (c.logprobs.token_logprobs or [])) if c.logprobs else ()
    return Sample(text=c.text, token_logprobs=lps, n_tokens=len(lps) or n_tokens, finish_reason=_finish(c))


def _chat_sample(c: Any, n_tokens: int) -> Sample:
    lps = tuple(float(t.logprob) for t in (c.logprobs.content or [])) if c.logprobs else ()
    return Sample(text=c.message.content or "", token_logprobs=lps, n_tokens=len(lps) or n_tokens,
                  finish_reason=_finish(c))


def _finish(c: Any) -> str:
    return "length" if c.finish_reason == "length" else "stop"


def _message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        body = body.get("error", body)
        if isinstance(body, dict) and "message" in body:
            return str(body["message"])
    return str(getattr(e, "message", e))
