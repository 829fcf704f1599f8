"""Serving the voters behind OpenAI-compatible routes (model name = voter name).

Two ways:

* ``vllm_serve_command(...)`` (``ensemble.serve.vllm_command``): the ``vllm serve`` command
  line (vLLM's own OpenAI server; GPU).
* ``make_server(engine)`` / ``run_server(engine)``: ``vote serve``, the FastAPI app of
  ``ensemble.serve.http`` on uvicorn over any in-process ``Engine`` (e.g. the HF engine on a
  CPU). Concurrent requests are merged into engine calls by ``ensemble.serve.batcher.Batcher``.

``EnsembleHTTPServer`` binds its socket when built (port 0 picks a free one: read
``server_address`` / ``url``), so a busy port is an error before anything runs; then
``serve_forever()`` (any thread) until ``shutdown()`` / ``close()``.
"""
from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Mapping
from typing import Any

from ensemble.engines.base import Engine
from ensemble.engines.vllm_lora import max_lora_rank_for
from ensemble.errors import EnsembleError
from ensemble.serve.batcher import Batcher
from ensemble.serve.protocol import ApiError
from ensemble.serve.service import Service
from ensemble.serve.vllm_command import vllm_serve_command

__all__ = ["ApiError", "Batcher", "EnsembleHTTPServer", "make_server", "max_lora_rank_for", "require_serve_extra",
           "run_server", "vllm_serve_command"]
log = logging.getLogger(__name__)
INSTALL = "pip install 'ensemble[serve]'  (or: pip install fastapi uvicorn)"


def require_serve_extra() -> None:
    """``vote serve`` needs FastAPI and uvicorn (the ``serve`` extra)."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise EnsembleError(f"vote serve needs {' and '.join(missing)}, which are not installed: {INSTALL}")


class EnsembleHTTPServer:
    """uvicorn serving ``ensemble.serve.http.create_app`` over one engine (see the module
    docstring). Options: base_model, base_root, adapter_roots (for ``/v1/models``),
    max_wait_s, max_batch (for the batcher)."""

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = 0, *, base_model: str = "base",
                 base_root: str | None = None, adapter_roots: Mapping[str, str] | None = None,
                 max_wait_s: float = 0.01, max_batch: int = 64) -> None:
        require_serve_extra()
        import uvicorn

        from ensemble.serve.http import create_app

        self.socket = _listen(host, port)
        self.server_address = self.socket.getsockname()
        self.service = Service(engine, base_model=base_model, base_root=base_root, adapter_roots=adapter_roots,
                               max_wait_s=max_wait_s, max_batch=max_batch)
        self.engine, self.batcher, self.base_model = engine, self.service.batcher, base_model
        self.app = create_app(self.service)
        # lifespan on: the app sizes the thread pool at startup (ensemble.serve.http).
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on", timeout_keep_alive=30)
        self._uvicorn = uvicorn.Server(config)
        self._lock = threading.Lock()
        self._running = threading.Event()  # set while serve_forever runs
        self._done = threading.Event()  # set when serve_forever has returned
        self._stopping = False

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until ``shutdown()``; in a non-main thread uvicorn installs no signal handlers."""
        with self._lock:
            if self._stopping or self.socket.fileno() == -1:
                return
            self._running.set()
        try:
            self._uvicorn.run(sockets=[self.socket])
        finally:
            self._running.clear()
            self._done.set()

    def shutdown(self) -> None:
        """Stop ``serve_forever`` and wait for it to return (at most 10 s)."""
        with self._lock:
            self._stopping = True
            running = self._running.is_set()
        self._uvicorn.should_exit = True
        if running and not self._done.wait(10):
            log.warning("the server did not stop within 10 s")

    def close(self) -> None:
        """Stop serving (if serving), release the socket and stop the batcher."""
        self.shutdown()
        self.socket.close()
        self.service.close()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise EnsembleError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port / --host") from None
    return sock


def make_server(engine: Engine, host: str = "127.0.0.1", port: int = 0, **options: Any
                ) -> tuple[EnsembleHTTPServer, threading.Thread]:
    """Start serving in a background thread; ``port=0`` picks a free port (see ``server.url``).
    Stop with ``server.close()``. Options: see ``EnsembleHTTPServer``."""
    server = EnsembleHTTPServer(engine, host, port, **options)
    thread = threading.Thread(target=server.serve_forever, name="ensemble-http", daemon=True)
    thread.start()
    if not server._running.wait(10):
        log.warning("the server thread did not start within 10 s")
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
        server.close()
