"""Serving the voters behind OpenAI-compatible routes (model name = voter name).

Two ways:

* ``vllm_serve_command(...)`` (``ensemble.serve.vllm_command``): the ``vllm serve`` command
  line (vLLM's own OpenAI server; GPU).
* ``make_server(engine)`` / ``run_server(engine)``: a standard-library HTTP server over any
  in-process ``Engine`` (e.g. the HF engine on a CPU). Routes: ``GET /v1/models``,
  ``POST /v1/completions``, ``POST /v1/chat/completions``, vLLM's ``POST /tokenize``, and
  one extension, ``POST /v1/ensemble/score_choices`` (an ``Engine.score_choices`` call:
  cloze / letter scores of the options). The extension exists because an Engine exposes
  option scores, not per-token prompt logprobs, so OpenAI's ``echo`` + ``logprobs`` trick
  cannot be answered faithfully; the ``openai`` engine uses the extension when the server
  lists its models as ``owned_by: "ensemble"``.

``GET /v1/models`` describes each model as vLLM does (``serving_models.py``,
``show_available_models``): ``root`` is the adapter folder (the base model path for the
base), ``parent`` the base model's name, plus ``ensemble_fingerprint``, a hash of the
adapter's files, so a client can tell a retrained voter from the one it asked before.
Requests are merged into engine calls by ``ensemble.serve.batcher.Batcher``.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ensemble.engines.base import Engine
from ensemble.engines.vllm_lora import max_lora_rank_for
from ensemble.errors import EnsembleError
from ensemble.serve.batcher import Batcher
from ensemble.serve.protocol import (
    ApiError,
    choice_request,
    completion_response,
    gen_requests,
    prompt_ids,
    tokenize_args,
)
from ensemble.serve.vllm_command import vllm_serve_command

__all__ = ["ApiError", "Batcher", "EnsembleHTTPServer", "make_server", "max_lora_rank_for", "run_server",
           "vllm_serve_command"]
log = logging.getLogger(__name__)
MAX_BODY_BYTES = 8 * 1024 * 1024
POST_ROUTES = ("/v1/completions", "/v1/chat/completions", "/tokenize", "/v1/ensemble/score_choices")


def _max_model_len(engine: Engine) -> int | None:
    """The context length, where the engine says (HF config, then the tokenizer's limit)."""
    config = getattr(getattr(engine, "model", None), "config", None)
    for value in (getattr(engine, "max_model_len", None), getattr(config, "max_position_embeddings", None),
                  getattr(getattr(engine, "tokenizer", None), "model_max_length", None)):
        if isinstance(value, int) and 0 < value < 1 << 40:
            return value
    return None


class EnsembleHTTPServer(ThreadingHTTPServer):
    """OpenAI-compatible routes over one in-process engine (see the module docstring).

    ``base_root`` / ``adapter_roots`` (voter name -> folder) are what ``/v1/models``
    reports as each model's ``root``; without them the served name stands in."""

    daemon_threads = True

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = 0, *, base_model: str = "base",
                 base_root: str | None = None, adapter_roots: Mapping[str, str] | None = None,
                 max_wait_s: float = 0.01, max_batch: int = 64) -> None:
        try:
            super().__init__((host, port), _Handler)
        except OSError as e:
            raise EnsembleError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port / --host") from None
        self.engine, self.base_model, self.created = engine, base_model, int(time.time())
        self.tokenizer = getattr(engine, "tokenizer", None)
        self._cards = self._model_cards(base_root, dict(adapter_roots or {}))
        self.batcher = Batcher(engine, max_wait_s=max_wait_s, max_batch=max_batch)
        self.serving = False  # set before serve_forever runs in a thread: close() must then shut it down

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def _model_cards(self, base_root: str | None, roots: dict[str, str]) -> list[dict[str, Any]]:
        from ensemble.predictions.store import fingerprint

        def card(name: str, root: str, parent: str | None) -> dict[str, Any]:
            entry = {"id": name, "object": "model", "created": self.created, "owned_by": "ensemble",
                     "root": root, "parent": parent}
            if parent is not None and Path(root).is_dir():
                entry["ensemble_fingerprint"] = fingerprint(root)
            return entry

        base = {**card(self.base_model, base_root or self.base_model, None),
                "max_model_len": _max_model_len(self.engine)}
        return [card(a, roots.get(a, a), self.base_model) for a in self.engine.adapters] + [base]

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
        return {"object": "list", "data": [dict(c) for c in self._cards]}

    def _prompt_tokens(self, reqs: list[Any]) -> int | None:
        """Real prompt token counts for ``usage`` (None when the engine has no tokenizer)."""
        tok = self.tokenizer
        if tok is None:
            return None
        return int(self.batcher.call(lambda: sum(len(prompt_ids(tok, r.prompt, r.messages)) for r in reqs)))

    def tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        self.adapter_for(body.get("model", self.base_model))  # vLLM checks the name; the tokenizer is shared
        if self.tokenizer is None:
            raise ApiError(501, "this engine exposes no tokenizer, so /tokenize cannot be answered",
                           code="not_implemented", kind="server_error")
        args, tok = tokenize_args(body), self.tokenizer
        want_strs = args.pop("return_token_strs")
        ids = self.batcher.call(lambda: prompt_ids(tok, **args))
        strs = self.batcher.call(lambda: list(tok.convert_ids_to_tokens(ids))) if want_strs else None
        return {"count": len(ids), "max_model_len": _max_model_len(self.engine), "tokens": ids, "token_strs": strs}

    def handle_post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path in ("/v1/completions", "/v1/chat/completions"):
            chat = path == "/v1/chat/completions"
            adapter = self.adapter_for(body.get("model"))
            reqs = gen_requests(body, adapter, chat=chat)
            outs = self.batcher.submit("generate", reqs)
            return completion_response(body, outs, chat=chat, prompt_tokens=self._prompt_tokens(reqs))
        if path == "/tokenize":
            return self.tokenize(body)
        if path == "/v1/ensemble/score_choices":
            out = self.batcher.submit("score", [choice_request(body, self.adapter_for(body.get("model")))])[0]
            return {"object": "ensemble.choice_scores", "model": body["model"],
                    "logliks": list(out.logliks), "probs": list(out.probs)}
        raise ApiError(404, f"no route POST {path}; routes: {', '.join(POST_ROUTES)}", code="not_found")

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
    Stop with ``server.close()``. Options: base_model, base_root, adapter_roots, max_wait_s, max_batch."""
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
