"""Helpers shared by the serving tests (test_serve*, test_engine_openai, test_tokens) and the fake
``vllm serve`` (tests/fake_vllm): a small fake Engine (deterministic, batch-independent outputs;
records every call), ``vote serve`` over it on loopback, a loopback JSON server, HTTP helpers."""
from __future__ import annotations

import json
import math
import threading
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ensemble.engines.base import (
    ChoiceOutput,
    ChoiceRequest,
    GenOutput,
    GenRequest,
    Sample,
    softmax,
)
from ensemble.errors import EnsembleError
from ensemble.registry import unknown_name


def _h(*parts: Any) -> int:
    return zlib.crc32("\0".join(map(str, parts)).encode())


class CharTokenizer:
    """One token per character (id = code point + 2), BOS = 1; a tiny chat template."""

    bos_token_id, eos_token_id = 1, 0
    model_max_length = 4096
    chat_template = "<{role}>{content}\n"  # has one (ensemble.tokens asks); apply_chat_template renders it

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([self.bos_token_id] if add_special_tokens else []) + [ord(c) + 2 for c in text]

    def apply_chat_template(self, conversation: Sequence[dict[str, str]], *, tokenize: bool = False,
                            add_generation_prompt: bool = False, continue_final_message: bool = False) -> str:
        text = "".join(f"<{m['role']}>{m['content']}" + ("" if continue_final_message and k == len(conversation) - 1
                                                         else "\n") for k, m in enumerate(conversation))
        return text + ("<assistant>" if add_generation_prompt else "")

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return ["<s>" if i == self.bos_token_id else chr(i - 2) for i in ids]


class FakeEngine:
    """Outputs depend only on (adapter, prompt, sample index, seed): never on the batch."""

    name = "fake"

    def __init__(self, adapters: Sequence[str] = ("a", "b"), tokenizer: Any = None) -> None:
        self._adapters = list(adapters)
        self.tokenizer = tokenizer
        self.calls: list[tuple[str, list[Any]]] = []  # ("generate" | "score", the batch)
        self.lock = threading.Lock()

    @property
    def adapters(self) -> list[str]:
        return list(self._adapters)

    def _check(self, adapter: str | None) -> None:
        if adapter is not None and adapter not in self._adapters:
            raise EnsembleError(unknown_name("adapter", adapter, self._adapters))

    def generate(self, requests: Sequence[GenRequest]) -> list[GenOutput]:
        with self.lock:
            self.calls.append(("generate", list(requests)))
        for r in requests:
            self._check(r.adapter)
        return [GenOutput(request=r, samples=tuple(self._sample(r, j) for j in range(r.sampling.n)), latency_s=0.01)
                for r in requests]

    def _sample(self, r: GenRequest, j: int) -> Sample:
        s = r.sampling
        source = r.prompt if r.prompt is not None else json.dumps(list(r.messages or ()))
        seed = 0 if s.temperature == 0 else s.seed
        n = 1 + _h(r.adapter, source, seed, j) % s.max_new_tokens
        text = f"{r.adapter or 'base'}:{_h(source) % 1000}:{seed}:{j}"
        for stop in s.stop:
            text = text.split(stop)[0]
        lps = tuple(-((_h(r.adapter, source, seed, j, t) % 1000) / 997.0) for t in range(n)) if s.logprobs else ()
        # top-k alternatives per token, best first: (text, logprob) with logprob <= 0, decreasing
        top = tuple(tuple((f"t{i}.{_h(source, t, i) % 50}", -(i + (_h(source, t) % 97) / 100.0)) for i in range(s.top_logprobs))
                    for t in range(n)) if s.logprobs and s.top_logprobs else ()
        return Sample(text=text, token_logprobs=lps, n_tokens=n, finish_reason="stop" if n % 2 else "length",
                      top_logprobs=top)

    def score_choices(self, requests: Sequence[ChoiceRequest]) -> list[ChoiceOutput]:
        with self.lock:
            self.calls.append(("score", list(requests)))
        outs = []
        for r in requests:
            self._check(r.adapter)
            source = r.prompt if r.prompt is not None else json.dumps(list(r.messages or ()))
            raw = [-math.log1p(_h(r.adapter, source, r.assistant_prefix, r.mode, o) % 500) for o in r.options]
            logliks = tuple(x / (1 + len(o)) if r.normalize == "mean" else x for x, o in zip(raw, r.options))
            outs.append(ChoiceOutput(request=r, logliks=logliks, probs=softmax(logliks), latency_s=0.01))
        return outs

    def close(self) -> None:
        pass


@contextmanager
def loopback(engine: Any, **options: Any) -> Iterator[Any]:
    """``vote serve`` (``make_server``) over ``engine`` on 127.0.0.1, port 0 unless given, base
    model "base" unless given; yields the server, closes it after."""
    from ensemble.serve.app import make_server

    server, thread = make_server(engine, options.pop("host", "127.0.0.1"), options.pop("port", 0),
                                 **{"base_model": "base", **options})
    try:
        yield server
    finally:
        server.close()
        thread.join(timeout=10)


Reply = tuple[int, dict[str, Any]]


class JsonServer:
    """A loopback HTTP/1.1 JSON server: GET -> ``get()``, POST -> ``post(path, body)``, each
    a (status, payload); records every POST as (path, body) in ``bodies``."""

    def __init__(self, post: Callable[[str, dict[str, Any]], Reply], get: Callable[[], Reply],
                 port: int = 0) -> None:
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._reply(*get())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                bodies.append((self.path, body))
                self._reply(*post(self.path, body))

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def http(method: str, url: str, body: Any = None, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
    """One loopback request (10 s timeout); returns (status, JSON body) for 2xx and errors."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def install_fake_vllm(monkeypatch: Any, fake_dir: str) -> Any:
    """Put the fake ``vllm`` (tests/fake_vllm) first on sys.path for one test; return the package.
    The caller's fixture removes the modules afterwards with ``forget_vllm()``."""
    import sys

    monkeypatch.syspath_prepend(fake_dir)
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    import vllm

    return vllm


def forget_vllm() -> None:
    import sys

    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]
