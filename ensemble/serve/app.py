"""Serving the voters behind OpenAI-compatible routes (model name = voter name).

Two ways:

* ``vllm_serve_command(...)``: the ``vllm serve BASE --enable-lora --lora-modules a=PATH ...``
  command line (vLLM's own OpenAI server; GPU).
* ``make_server(engine)`` / ``run_server(engine)``: a standard-library HTTP server over any
  in-process ``Engine`` (e.g. the HF engine on a CPU). Routes: ``GET /v1/models``,
  ``POST /v1/completions``, ``POST /v1/chat/completions`` and one extension,
  ``POST /v1/ensemble/score_choices`` (an ``Engine.score_choices`` call: cloze / letter
  scores of the options). The extension exists because an Engine exposes option scores,
  not per-token prompt logprobs, so OpenAI's ``echo`` + ``logprobs`` trick cannot be
  answered faithfully; the ``openai`` engine uses the extension when the server lists its
  models as ``owned_by: "ensemble"``.

A dynamic batcher merges concurrent requests: a worker thread takes the first queued
request, waits up to ``max_wait_s`` (10 ms) for more (up to ``max_batch`` engine requests)
and runs them as ONE ``engine.generate`` (and one ``engine.score_choices``) call, so N
clients asking N different voters share one forward pass. All engine calls happen on that
one thread, so engines need not be thread-safe.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ensemble.engines.base import (
    ChoiceRequest,
    Engine,
    GenOutput,
    GenRequest,
    SamplingSettings,
)
from ensemble.engines.vllm import ALLOWED_LORA_RANKS, max_lora_rank_for
from ensemble.errors import EnsembleError

__all__ = ["Batcher", "EnsembleHTTPServer", "make_server", "max_lora_rank_for", "run_server", "vllm_serve_command"]
log = logging.getLogger(__name__)
MAX_BODY_BYTES = 8 * 1024 * 1024


def vllm_serve_command(base: str, adapters: dict[str, str], *, max_lora_rank: int, host: str = "127.0.0.1",
                       port: int = 8000, extra: Sequence[str] = ()) -> list[str]:
    """``vllm serve BASE --enable-lora --max-loras K --max-lora-rank R --max-cpu-loras K
    --lora-modules a=PATH b=PATH --host H --port P [extra...]`` (no LoRA flags when K = 0)."""
    if max_lora_rank not in ALLOWED_LORA_RANKS:
        raise EnsembleError(f"max_lora_rank {max_lora_rank} is not one vLLM accepts; use one of "
                            f"{', '.join(map(str, ALLOWED_LORA_RANKS))} (max_lora_rank_for picks it)")
    bad = [name for name in adapters if not name or "=" in name or " " in name]
    if bad:
        raise EnsembleError(f"adapter name {bad[0]!r} cannot be served: names must be non-empty, "
                            "without '=' or spaces")
    cmd = ["vllm", "serve", str(base)]
    if adapters:
        k = str(len(adapters))
        cmd += ["--enable-lora", "--max-loras", k, "--max-lora-rank", str(max_lora_rank),
                "--max-cpu-loras", k, "--lora-modules", *(f"{n}={p}" for n, p in adapters.items())]
    return cmd + ["--host", host, "--port", str(port), *extra]


# --- OpenAI request bodies -> engine requests, engine outputs -> OpenAI responses ---------------


class ApiError(Exception):
    """An OpenAI-style error response: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


def _number(body: dict[str, Any], name: str, default: Any, lo: float, hi: float, *, integer: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise ApiError(400, f"field '{name}' must be {kind} in [{lo}, {hi}], got {value!r}", name)
    return value


def _sampling(body: dict[str, Any], chat: bool) -> SamplingSettings:
    if body.get("stream"):
        raise ApiError(400, "stream=true is not supported by this server; set stream to false", "stream")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or not all(isinstance(x, str) and x for x in stop):
        raise ApiError(400, "field 'stop' must be a non-empty string or a list of them", "stop")
    if chat:
        if body.get("top_logprobs"):
            raise ApiError(400, "top_logprobs is not supported: engines return the chosen token's logprob only; "
                                "score options with POST /v1/ensemble/score_choices", "top_logprobs")
        want_logprobs = bool(body.get("logprobs"))
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    else:
        k = _number(body, "logprobs", None, 0, 1, integer=True)
        want_logprobs = k is not None
        max_tokens = body.get("max_tokens")
        if body.get("echo") and want_logprobs:
            raise ApiError(400, "echo with logprobs (prompt logprobs) is not supported: engines score options, "
                                "not prompt tokens; use POST /v1/ensemble/score_choices", "echo")
    max_tokens = _number({"max_tokens": max_tokens}, "max_tokens", 16, 1, 1 << 20, integer=True)
    return SamplingSettings(n=_number(body, "n", 1, 1, 128, integer=True),
                            temperature=float(_number(body, "temperature", 1.0, 0.0, 2.0)),
                            top_p=float(_number(body, "top_p", 1.0, 1e-9, 1.0)), max_new_tokens=max_tokens,
                            seed=_number(body, "seed", None, -(1 << 63), (1 << 64) - 1, integer=True),
                            stop=tuple(stop), logprobs=want_logprobs)


def _messages(body: dict[str, Any]) -> tuple[dict[str, str], ...]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "field 'messages' must be a non-empty list of {role, content}", "messages")
    out = []
    for m in msgs:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):  # content parts: only text parts can be served
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise ApiError(400, "only text content parts are supported", "messages")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str) or m.get("role") not in ("system", "user", "assistant"):
            raise ApiError(400, "each message needs role system|user|assistant and string content", "messages")
        out.append({"role": m["role"], "content": content})
    return tuple(out)


def _prompts(body: dict[str, Any]) -> list[str]:
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ApiError(400, "field 'prompt' must be a string or a non-empty list of strings "
                            "(token-id prompts are not supported)", "prompt")
    return prompts


def gen_requests(body: dict[str, Any], adapter: str | None, *, chat: bool) -> list[GenRequest]:
    """One GenRequest per prompt (completions may batch prompts; chat has one conversation)."""
    s = _sampling(body, chat)
    if chat:
        return [GenRequest(adapter=adapter, messages=_messages(body), sampling=s)]
    return [GenRequest(adapter=adapter, prompt=p, sampling=s) for p in _prompts(body)]


def choice_request(body: dict[str, Any], adapter: str | None) -> ChoiceRequest:
    """The ``/v1/ensemble/score_choices`` body: model, prompt | messages, options, mode,
    normalize, assistant_prefix (the ``ChoiceRequest`` fields)."""
    options = body.get("options")
    if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
        raise ApiError(400, "field 'options' must be a non-empty list of strings", "options")
    mode, normalize = body.get("mode", "cloze"), body.get("normalize", "mean")
    if mode not in ("cloze", "letter") or normalize not in ("sum", "mean"):
        raise ApiError(400, "field 'mode' must be cloze|letter and 'normalize' sum|mean", "mode")
    prefix = body.get("assistant_prefix", "")
    if not isinstance(prefix, str):
        raise ApiError(400, "field 'assistant_prefix' must be a string", "assistant_prefix")
    if ("messages" in body) == ("prompt" in body):
        raise ApiError(400, "set exactly one of 'prompt' and 'messages'", "prompt")
    text = {"messages": _messages(body)} if "messages" in body else {"prompt": _prompts(body)[0]}
    return ChoiceRequest(adapter=adapter, options=tuple(options), mode=mode, normalize=normalize,
                         assistant_prefix=prefix, **text)


def completion_response(body: dict[str, Any], outs: list[GenOutput], *, chat: bool) -> dict[str, Any]:
    """Engine outputs -> an OpenAI (chat) completion; choice index = prompt * n + sample.
    Per-token logprobs carry no token strings (engines return logprob values only)."""
    choices = []
    for p, out in enumerate(outs):
        for j, s in enumerate(out.samples):
            lps = list(s.token_logprobs) if out.request.sampling.logprobs else None
            choice: dict[str, Any] = {"index": p * len(out.samples) + j, "finish_reason": s.finish_reason}
            if chat:
                choice["message"] = {"role": "assistant", "content": s.text}
                choice["logprobs"] = None if lps is None else {"content": [
                    {"token": "", "logprob": lp, "bytes": None, "top_logprobs": []} for lp in lps]}
            else:
                choice["text"] = (out.request.prompt or "") + s.text if body.get("echo") else s.text
                choice["logprobs"] = None if lps is None else {
                    "tokens": None, "token_logprobs": lps, "top_logprobs": None, "text_offset": None}
            choices.append(choice)
    used = sum(s.n_tokens for out in outs for s in out.samples)
    return {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
            "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": body["model"], "choices": choices,
            "usage": {"prompt_tokens": 0, "completion_tokens": used, "total_tokens": used}}


# --- the batcher --------------------------------------------------------------------------------


@dataclass
class _Job:
    kind: str  # "generate" | "score"
    requests: list[Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: list[Any] | None = None
    error: BaseException | None = None


class Batcher:
    """Queue + one worker thread that turns concurrent submissions into single engine calls."""

    def __init__(self, engine: Engine, *, max_wait_s: float = 0.01, max_batch: int = 64) -> None:
        self.engine, self.max_wait_s, self.max_batch = engine, max_wait_s, max_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._loop, name="ensemble-batcher", daemon=True)
        self._worker.start()

    def submit(self, kind: str, requests: list[Any], timeout_s: float = 3600.0) -> list[Any]:
        """Block until the worker has run ``requests``; return their outputs in order."""
        job = _Job(kind, requests)
        self._queue.put(job)
        if not job.done.wait(timeout_s):
            raise EnsembleError(f"the engine did not answer within {timeout_s:.0f} s; retry with fewer requests")
        if job.error is not None:
            raise job.error
        return job.result or []

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=10)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, size, stop = [first], len(first.requests), False
            deadline = time.monotonic() + self.max_wait_s
            while size < self.max_batch and (left := deadline - time.monotonic()) > 0:
                try:
                    job = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                jobs.append(job)
                size += len(job.requests)
            self._run(jobs)
            if stop:
                return

    def _run(self, jobs: list[_Job]) -> None:
        calls: dict[str, Callable[[list[Any]], list[Any]]] = {
            "generate": self.engine.generate, "score": self.engine.score_choices}
        for kind, call in calls.items():
            group = [j for j in jobs if j.kind == kind]
            if not group:
                continue
            try:
                outs = call([r for j in group for r in j.requests])
                for j in group:
                    j.result, outs = outs[: len(j.requests)], outs[len(j.requests):]
            except Exception as e:  # noqa: BLE001  (one bad request must not fail the others)
                if len(group) == 1:
                    group[0].error = e
                else:
                    log.info("batched engine call failed (%s); retrying its %d requests one by one", e, len(group))
                    self._run_each(group, call)
            for j in group:
                j.done.set()

    @staticmethod
    def _run_each(group: list[_Job], call: Callable[[list[Any]], list[Any]]) -> None:
        for j in group:
            try:
                j.result = call(j.requests)
            except Exception as e:  # noqa: BLE001
                j.error = e


# --- the HTTP server ---------------------------------------------------------------------------


class EnsembleHTTPServer(ThreadingHTTPServer):
    """OpenAI-compatible routes over one in-process engine (see the module docstring)."""

    daemon_threads = True

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = 0, *, base_model: str = "base",
                 max_wait_s: float = 0.01, max_batch: int = 64) -> None:
        try:
            super().__init__((host, port), _Handler)
        except OSError as e:
            raise EnsembleError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port / --host") from None
        self.engine, self.base_model, self.created = engine, base_model, int(time.time())
        self.batcher = Batcher(engine, max_wait_s=max_wait_s, max_batch=max_batch)
        self.serving = False  # set before serve_forever runs in a thread: close() must then shut it down

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def adapter_for(self, model: Any) -> str | None:
        """Request ``model`` -> engine adapter (``None`` = base); unknown -> 404."""
        if not isinstance(model, str) or not model:
            raise ApiError(400, "field 'model' is required (a voter name or the base model name)", "model")
        if model == self.base_model:
            return None
        if model in self.engine.adapters:
            return model
        served = ", ".join([*self.engine.adapters, self.base_model])
        raise ApiError(404, f"The model '{model}' does not exist. Served: {served}", "model", "model_not_found")

    def models(self) -> dict[str, Any]:
        def entry(name: str, parent: str | None) -> dict[str, Any]:
            return {"id": name, "object": "model", "created": self.created, "owned_by": "ensemble",
                    "root": self.base_model, "parent": parent}

        return {"object": "list", "data": [entry(a, self.base_model) for a in self.engine.adapters]
                + [entry(self.base_model, None)]}

    def handle_post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path in ("/v1/completions", "/v1/chat/completions"):
            chat = path == "/v1/chat/completions"
            adapter = self.adapter_for(body.get("model"))
            reqs = gen_requests(body, adapter, chat=chat)
            outs = self.batcher.submit("generate", reqs)
            return completion_response(body, outs, chat=chat)
        if path == "/v1/ensemble/score_choices":
            out = self.batcher.submit("score", [choice_request(body, self.adapter_for(body.get("model")))])[0]
            return {"object": "ensemble.choice_scores", "model": body["model"],
                    "logliks": list(out.logliks), "probs": list(out.probs)}
        raise ApiError(404, f"no route POST {path}; routes: /v1/completions, /v1/chat/completions, "
                            "/v1/ensemble/score_choices", code="not_found")

    def close(self) -> None:
        """Stop serving (if serving), release the socket and stop the batcher."""
        if self.serving:
            self.shutdown()  # blocks until serve_forever returns; it would hang if it never ran
            self.serving = False
        self.server_close()
        self.batcher.close()


class _Handler(BaseHTTPRequestHandler):
    server: EnsembleHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive: the openai client reuses connections

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, self.server.models())
        elif self.path == "/health":
            self._send(200, {})
        else:
            self._send_error(ApiError(404, f"no route GET {self.path}; routes: /v1/models, /health", code="not_found"))

    def do_POST(self) -> None:
        try:
            self._send(200, self.server.handle_post(self.path.rstrip("/"), self._body()))
        except ApiError as e:
            self._send_error(e)
        except EnsembleError as e:
            self._send_error(ApiError(400, str(e)))
        except Exception as e:
            log.exception("request failed")
            self._send_error(ApiError(500, f"internal error: {type(e).__name__}: {e}", kind="server_error"))

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise ApiError(413, f"request body over {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"null")
        except json.JSONDecodeError as e:
            raise ApiError(400, f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        return body

    def _send_error(self, e: ApiError) -> None:
        self._send(e.status, {"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}})

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def make_server(engine: Engine, host: str = "127.0.0.1", port: int = 0, **options: Any
                ) -> tuple[EnsembleHTTPServer, threading.Thread]:
    """Start serving in a background thread; ``port=0`` picks a free port (see ``server.url``).
    Stop with ``server.close()``. Options: base_model, max_wait_s, max_batch."""
    server = EnsembleHTTPServer(engine, host, port, **options)
    server.serving = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="ensemble-http", daemon=True)
    thread.start()
    return server, thread


def run_server(engine: Engine, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
    """Serve in the foreground until Ctrl-C (the CLI's ``vote serve``)."""
    server = EnsembleHTTPServer(engine, host, port, **options)
    log.info("serving %s on %s", ", ".join([*engine.adapters, server.base_model]), server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.batcher.close()
