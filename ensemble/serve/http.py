"""The FastAPI app of ``vote serve`` (the stack of vLLM's own OpenAI server).

Routes: ``GET /v1/models``, ``GET /health``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (both with ``stream: true``), vLLM's ``POST /tokenize`` and one
extension, ``POST /v1/ensemble/score_choices`` (an ``Engine.score_choices`` call: cloze /
letter scores of the options; an Engine exposes option scores, not per-token prompt
logprobs, so OpenAI's ``echo`` + ``logprobs`` trick cannot be answered faithfully).

Every error is an OpenAI error body ``{"error": {"message", "type", "param", "code"}}``.
Request validation errors are HTTP 400, as in vLLM's ``api_server.py``
(``validation_exception_handler``), not FastAPI's default 422. Routes are plain ``def``s:
FastAPI runs them in its thread pool, where they block on the dynamic batcher.
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from ensemble.errors import EnsembleError
from ensemble.serve import streaming
from ensemble.serve.protocol import ApiError
from ensemble.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    ScoreChoicesRequest,
    TokenizeRequest,
    as_body,
)
from ensemble.serve.service import Service

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 8 * 1024 * 1024
DRAIN_BYTES = 8 * MAX_BODY_BYTES  # larger bodies are refused unread (the connection is closed)


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}},
                        status_code=e.status)


def _union_tag(part: object) -> bool:
    """Pydantic names the member of a union in an error's location ("str", "list[str]")."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool", "dict", "list") or "[" in part
                                      or "-" in part)


def validation_error(exc: RequestValidationError) -> ApiError:
    """Pydantic's errors -> one 400 naming the field, the problem and the value sent. A field
    typed as a union fails once per member; its first message stands for all of them."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return ApiError(400, f"request body is not valid JSON: {errors[0].get('ctx', {}).get('error', '')}".rstrip(": "))
    if any(e.get("type") in ("model_attributes_type", "model_type", "dict_type") for e in errors):
        return ApiError(400, "request body must be a JSON object")
    parts: dict[str, str] = {}
    for err in errors:
        loc = [x for x in err.get("loc", ()) if x != "body"]
        field = str(loc[0]) if loc else ""
        if field in parts:
            continue
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        got = f" (got {err['input']!r:.80})" if err.get("type") != "missing" and "input" in err and loc else ""
        path = ".".join(str(x) for x in loc if not _union_tag(x))
        parts[field] = (f"field '{path}': " if field else "request body: ") + msg + got
    return ApiError(400, "; ".join(list(parts.values())[:3]) or "invalid request", next(iter(parts), None) or None)


def create_app(service: Service) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Each waiting request holds a pool thread while it blocks on the batcher: the pool
        # (anyio's default, 40 threads) must hold a full batch or batches can never fill.
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, service.batcher.max_batch + 8)
        yield

    app = FastAPI(title="ensemble vote serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            if length.isdigit() and int(length) <= DRAIN_BYTES:
                # Read and drop the body: a server that answers before reading it resets the
                # connection under a client still sending, which then never sees the 413.
                async for _ in request.stream():
                    pass
            return error_response(ApiError(413, f"request body over {MAX_BODY_BYTES} bytes (Content-Length "
                                                f"{length}); send fewer prompts per request", code="too_large"))
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            msg = f"no route {request.method} {request.url.path}; see GET /v1/models, /health, POST /v1/completions"
        else:
            msg = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(ApiError(exc.status_code, msg, code="not_found" if exc.status_code == 404 else None))

    @app.exception_handler(ApiError)
    async def on_api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(EnsembleError)
    async def on_ensemble(_: Request, exc: EnsembleError) -> JSONResponse:
        return error_response(ApiError(400, str(exc)))

    @app.exception_handler(Exception)
    async def on_crash(_: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", exc_info=exc)
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error"))

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return service.models()

    def complete(body: dict[str, Any], chat: bool) -> Any:
        if not body.get("stream"):
            return service.complete(body, chat=chat)
        outs, prompt_tokens = service.generate(body, chat=chat)
        return StreamingResponse(streaming.events(body, outs, chat=chat, prompt_tokens=prompt_tokens,
                                                  engine_name=service.engine_name), media_type="text/event-stream")

    @app.post("/v1/completions")
    def completions(request: CompletionRequest) -> Any:
        return complete(as_body(request), chat=False)

    @app.post("/v1/chat/completions")
    def chat_completions(request: ChatCompletionRequest) -> Any:
        return complete(as_body(request), chat=True)

    @app.post("/tokenize")
    def tokenize(request: TokenizeRequest) -> dict[str, Any]:
        return service.tokenize(as_body(request))

    @app.post("/v1/ensemble/score_choices")
    def score_choices(request: ScoreChoicesRequest) -> dict[str, Any]:
        return service.score(as_body(request))

    return app
