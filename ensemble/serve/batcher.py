"""The dynamic batcher: concurrent HTTP requests become single engine calls.

A worker thread takes the first queued job, waits up to ``max_wait_s`` (10 ms) for more
(up to ``max_batch`` engine requests) and runs them as ONE ``engine.generate`` (and one
``engine.score_choices``) call, so N clients asking N different voters share one forward
pass. Every engine and tokenizer call happens on that one thread (``call`` jobs run a
function there too), so engines and tokenizers need not be thread-safe.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ensemble.engines.base import Engine
from ensemble.errors import EnsembleError

log = logging.getLogger(__name__)


@dataclass
class _Job:
    kind: str  # "generate" | "score" | "call"
    requests: list[Any]  # engine requests; for "call": [a function of no arguments]
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

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` on the worker thread (e.g. tokenizing with the engine's tokenizer)."""
        return self.submit("call", [fn])[0]

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=10)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            if first.kind == "call":  # not batched: answer at once
                self._run([first])
                continue
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
                if job.kind == "call":  # e.g. a /tokenize while a batch fills: run it, keep waiting
                    self._run([job])
                    continue
                jobs.append(job)
                size += len(job.requests)
            self._run(jobs)
            if stop:
                return

    def _run(self, jobs: list[_Job]) -> None:
        for j in (j for j in jobs if j.kind == "call"):
            try:
                j.result = [j.requests[0]()]
            except Exception as e:  # noqa: BLE001  (handed to the submitting thread)
                j.error = e
            j.done.set()
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
