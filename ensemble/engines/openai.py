"""The OpenAI-compatible engine: voters are model names on a running server.

The server can be ``vllm serve BASE --enable-lora --lora-modules a=PATH ...`` (see
``ensemble.serve.app.vllm_serve_command``), ``vote serve`` (``ensemble.serve.app``), Ollama, or a
hosted API. Voter name -> served model name: the ``adapters`` value when it is a model
name, the voter name itself when the value is empty or a local folder (the usual case:
the same config that names PEFT folders for the HF / vLLM engines). ``adapter=None`` asks
for ``spec.model``.

Options: ``base_url`` (default http://127.0.0.1:8000/v1), ``api_key_env`` (name of the
environment variable holding the key; none -> "EMPTY"), ``concurrency`` (requests in
flight, default 16; raise it for vote serve / vllm serve, whose batchers merge concurrent
requests into one forward pass), ``max_retries`` (the client's exponential backoff on
connection errors and 408/409/429/5xx; default 3), ``timeout`` (seconds per request,
default 120), ``check_models`` (list the served models at start, default true).

Scoring (``score_choices``) depends on what the server offers:

* ``vote serve`` (models ``owned_by: "ensemble"``): ``POST /v1/ensemble/score_choices``,
  exactly the in-process engine's ``score_choices``.
* cloze, prompt: ``/v1/completions`` with ``echo=True, logprobs=1, max_tokens=0`` on
  prompt + assistant_prefix + option; the option's tokens are the trailing prompt tokens
  covering its characters. Needs prompt logprobs via echo (vLLM has them; OpenAI's hosted
  models do not).
* cloze, chat messages: vLLM's chat extras (``prompt_logprobs=0`` with the option as a
  continued assistant message); other servers refuse.
* letter: ``max_tokens=1`` with the top-20 next-token logprobs; an option's logprob is
  the max over its spellings ("A", " A") among them, ``MISSING_LOGPROB`` when absent.
  For chat messages with an ``assistant_prefix`` the reply is continued with vLLM's
  ``continue_final_message``; servers without it would score the wrong position.
"""
from __future__ import annotations

import contextlib
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
    softmax,
)
from ensemble.engines.vllm import MISSING_LOGPROB, TOP_LOGPROBS
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
        self._base = spec.model or None
        self._pool = ThreadPoolExecutor(max_workers=max(1, int(opts["concurrency"])), thread_name_prefix="openai")
        self.ensemble_server = self._check_models() if opts["check_models"] else False

    @property
    def adapters(self) -> list[str]:
        return list(self._served)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()

    def _check_models(self) -> bool:
        """Fail early if a voter is not served; True when the server is ``vote serve``."""
        with self._errors("listing models", "-"):
            models = {m.id: getattr(m, "owned_by", "") for m in self.client.models.list()}
        wanted = [*self._served.values(), *([self._base] if self._base else [])]
        missing = [m for m in wanted if m not in models]
        if missing:
            raise EnsembleError(f"model '{missing[0]}' is not served at {self.url}; served: "
                                f"{', '.join(models) or '(none)'}; fix the adapters / model names or the server")
        return bool(wanted) and all(models[m] == "ensemble" for m in wanted)

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
        greedy_copies = s.n if s.temperature == 0 else 1  # vLLM refuses greedy n > 1: ask once, repeat
        args: dict[str, Any] = {"model": model, "n": s.n // greedy_copies, "temperature": s.temperature,
                                "top_p": s.top_p, "max_tokens": s.max_new_tokens}
        if s.seed is not None:
            args["seed"] = s.seed
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
                top = self._letter_top(r, model)
            # max over the letter's spellings "A" / " A", as the in-process engines do
            logliks = tuple(max((top[k] for k in (o, " " + o) if k in top), default=MISSING_LOGPROB)
                            for o in r.options)
        else:
            with self._errors("cloze scoring (prompt logprobs: completions echo=True, logprobs=1, max_tokens=0; "
                              "chat: vLLM's prompt_logprobs)", model):
                logliks = self._cloze(r, model)
        return ChoiceOutput(request=r, logliks=logliks, probs=softmax(logliks), latency_s=time.perf_counter() - start)

    def _score_ensemble(self, r: ChoiceRequest, model: str) -> tuple[float, ...]:
        body: dict[str, Any] = {"model": model, "options": list(r.options), "mode": r.mode,
                                "normalize": r.normalize, "assistant_prefix": r.assistant_prefix}
        body.update({"messages": list(r.messages)} if r.messages is not None else {"prompt": r.prompt})
        with self._errors(f"{r.mode} scoring", model):
            data = self.client.post("/ensemble/score_choices", cast_to=object, body=body)
        return tuple(float(x) for x in data["logliks"])

    def _letter_top(self, r: ChoiceRequest, model: str) -> dict[str, float]:
        """{token text: logprob} of the top next tokens after the prompt."""
        if r.messages is None:
            resp = self.client.completions.create(model=model, prompt=r.prompt + r.assistant_prefix, max_tokens=1,
                                                  temperature=0.0, logprobs=TOP_LOGPROBS)
            return dict(resp.choices[0].logprobs.top_logprobs[0])
        resp = self.client.chat.completions.create(model=model, max_tokens=1, temperature=0.0, logprobs=True,
                                                   top_logprobs=TOP_LOGPROBS, **_chat_prefix(r, r.assistant_prefix))
        return {t.token: t.logprob for t in resp.choices[0].logprobs.content[0].top_logprobs}

    def _cloze(self, r: ChoiceRequest, model: str) -> tuple[float, ...]:
        if r.messages is None:
            resp = self.client.completions.create(model=model, prompt=[r.prompt + r.assistant_prefix + o
                                                                       for o in r.options],
                                                  echo=True, logprobs=1, max_tokens=0, temperature=0.0)
            pairs = [(c.logprobs.tokens, c.logprobs.token_logprobs) for c in sorted(resp.choices, key=lambda c: c.index)]
        else:
            pairs = []
            for o in r.options:
                resp = self.client.chat.completions.create(model=model, max_tokens=1, temperature=0.0,
                                                           **_chat_prefix(r, r.assistant_prefix + o, prompt_logprobs=0))
                rows = [next(iter(d.values())) for d in (resp.model_extra or {}).get("prompt_logprobs") or [] if d]
                pairs.append(([x["decoded_token"] for x in rows], [x["logprob"] for x in rows]))
        return tuple(_option_loglik(tokens, lps, o, r.normalize) for (tokens, lps), o in zip(pairs, r.options))


def _chat_prefix(r: ChoiceRequest, reply_start: str, **extra: Any) -> dict[str, Any]:
    """Chat arguments that make the assistant's reply start with ``reply_start`` (vLLM's
    ``continue_final_message``); plain messages when there is nothing to continue."""
    if not reply_start:
        return {"messages": list(r.messages or ()), **({"extra_body": extra} if extra else {})}
    msgs = [*(r.messages or ()), {"role": "assistant", "content": reply_start}]
    return {"messages": msgs, "extra_body": {"continue_final_message": True, "add_generation_prompt": False, **extra}}


def _option_loglik(tokens: Sequence[str] | None, lps: Sequence[float | None] | None, option: str,
                   normalize: str) -> float:
    """Sum (or mean) of the logprobs of the trailing tokens that cover ``option``'s characters
    (walking back from the end; a token straddling the boundary counts as the option's)."""
    if not tokens or not lps:
        raise EnsembleError("the server returned no prompt logprobs; it does not support cloze scoring (use "
                            "mode 'letter', vote serve, or a vLLM server)")
    covered, picked = 0, []
    for tok, lp in zip(reversed(tokens), reversed(lps)):
        if covered >= len(option) or lp is None:
            break
        covered += len(tok)
        picked.append(float(lp))
    total = sum(picked)
    return total / len(picked) if normalize == "mean" and picked else total


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
