"""Run one phase of a long job in a child process, so that all its memory goes back to the OS.

Why: a process that has trained, loaded a model and scored keeps much of what it freed.
glibc and oneDNN hold on to freed heap pages and built kernels, and transformers' model
loading maps the whole fp32 safetensors file. ``ensemble.memory.release_memory`` returns
only part of it. Measured on the quickstart (experiments/quickstart_memory.py): one
process held ~1.35 GB after training and scoring the ensemble, against ~0.95 GB after
loading the model. Loading the single LoRA's model on top of that (+0.75 GB while the fp32
file was mapped) gave the quickstart's peak. A child process ends with its phase, so each
phase starts from the parent's small footprint. The parent never imports torch, nor
sklearn, matplotlib or scipy: the modules that use those import them on first use.

``in_child(fn, *args, progress=emit)`` runs ``fn(*args, progress=relay)`` in a fresh
(spawned) Python process and returns its result:

* progress events the child emits are sent over a pipe and passed to ``progress`` in the
  parent, in order, so the CLI's progress bars work unchanged;
* an exception raised in the child is raised again in the parent (``EnsembleError``
  messages unchanged; an exception that cannot be pickled comes back as a RuntimeError
  with the child's traceback);
* a child killed from outside (``kill -9``, the OOM killer) raises ``EnsembleError``
  naming the signal. Phases are resumable, so the same command again goes on from what
  the child stored;
* a child never outlives its parent. On Linux it gets SIGKILL when the parent dies
  (``PR_SET_PDEATHSIG``), so after a ``kill -9`` of ``vote`` no orphan keeps writing to the
  stores that a rerun resumes. A Ctrl-C in the parent ends the child too.

``ENSEMBLE_IN_PROCESS=1`` runs every phase in the calling process instead (debuggers,
profilers); results are the same.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import pickle
import signal
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from ensemble.errors import EnsembleError

T = TypeVar("T")
IN_PROCESS_ENV = "ENSEMBLE_IN_PROCESS"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_EXIT_WAIT_S = 60      # how long a child that has sent its answer may take to exit before it is ended


def in_process() -> bool:
    """True when ``ENSEMBLE_IN_PROCESS`` asks for every phase to run in this process."""
    return os.environ.get(IN_PROCESS_ENV, "").strip().lower() in ("1", "true", "yes")


def in_child(fn: Callable[..., T], *args: Any, what: str = "the job",
             progress: Callable[..., None] | None = None, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` (plus ``progress=`` when given) in a spawned child; its result.

    ``fn`` and every argument are pickled, so ``fn`` must be a module-level function.
    ``what`` names the phase in the message raised when the child is killed."""
    if progress is not None:
        kwargs = {**kwargs, "progress": progress}
    if in_process():
        return fn(*args, **kwargs)
    with_progress = kwargs.pop("progress", None) is not None
    ctx = multiprocessing.get_context("spawn")  # no fork: a forked child would inherit the parent's threads
    ours, theirs = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child_main, args=(theirs, os.getpid(), fn, args, kwargs, with_progress),
                        name=f"ensemble: {what}", daemon=True)
    child.start()
    theirs.close()  # only the child writes: the parent sees EOF when the child is gone
    try:
        while True:
            try:
                message = ours.recv()
            except EOFError:
                break
            kind = message[0]
            if kind == "event" and progress is not None:
                progress(message[1], **message[2])
            elif kind == "result":
                child.join(_EXIT_WAIT_S)  # a thread left behind by a library must not hang us: see finally
                return message[1]  # type: ignore[no-any-return]
            elif kind == "error":
                child.join(_EXIT_WAIT_S)
                raise message[1]
        child.join()
    finally:
        if child.is_alive():  # leaving early (Ctrl-C, an error in a progress callback) or a child stuck at exit
            child.terminate()
            child.join(10)
            if child.is_alive():
                child.kill()
        ours.close()
    raise EnsembleError(_death_message(what, child.exitcode))


def _death_message(what: str, code: int | None) -> str:
    if code is not None and code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
    else:
        how = f"exited with code {code} without a result"
    return (f"{what}: its process was {how} (out of memory, or killed from outside). What it finished is "
            f"stored: run the same command again to resume from there.")


def _child_main(conn: Connection, parent: int, fn: Callable[..., Any], args: tuple, kwargs: dict,
                with_progress: bool) -> None:
    """The child: die with the parent, relay progress events, send back the result or the error."""
    _die_with_parent(parent)

    def relay(event: str, **info: Any) -> None:
        try:
            conn.send(("event", event, info))
        except (pickle.PicklingError, TypeError, AttributeError):
            conn.send(("event", event, {k: repr(v) for k, v in info.items()}))

    try:
        result = fn(*args, progress=relay, **kwargs) if with_progress else fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        conn.send(("error", _picklable(exc)))
        return
    conn.send(("result", result))


def _picklable(exc: BaseException) -> BaseException:
    """``exc`` itself when it survives pickling, else a RuntimeError carrying its traceback."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any pickling failure
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return RuntimeError(f"in the child process:\n{text}")


def _die_with_parent(parent: int) -> None:
    """Ask Linux for SIGKILL when the parent dies; exit now if it is already gone."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        libc = None
    prctl = getattr(libc, "prctl", None)
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
