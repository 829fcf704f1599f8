"""ensemble.isolate: a phase in a child process gives back its result, its progress events in
order, its errors (messages unchanged), and never outlives its parent."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ensemble import isolate
from ensemble.errors import EnsembleError
from ensemble.isolate import IN_PROCESS_ENV, in_child


def counting(n: int, *, progress) -> dict:
    for i in range(n):
        progress("step", i=i, of=n)
    return {"pid": os.getpid(), "n": n}


def failing(message: str) -> None:
    raise EnsembleError(message)


class Unpicklable(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.callback = lambda: None  # lambdas do not pickle


def failing_unpicklable() -> None:
    raise Unpicklable("bad state in the child")


def killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def hangs_at_exit(pid_file: str) -> str:
    """Answers, but leaves a non-daemon thread that keeps the interpreter from exiting."""
    import threading

    Path(pid_file).write_text(str(os.getpid()))
    threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()
    return "answer"


def test_result_and_progress_events_come_back_in_order(monkeypatch):
    monkeypatch.delenv(IN_PROCESS_ENV, raising=False)
    seen: list[tuple[str, dict]] = []
    out = in_child(counting, 3, progress=lambda event, **info: seen.append((event, info)))
    assert out["n"] == 3 and out["pid"] != os.getpid()  # it ran in another process
    assert seen == [("step", {"i": 0, "of": 3}), ("step", {"i": 1, "of": 3}), ("step", {"i": 2, "of": 3})]


def test_in_process_env_runs_the_phase_here(monkeypatch):
    monkeypatch.setenv(IN_PROCESS_ENV, "1")
    seen: list[str] = []
    out = in_child(counting, 2, progress=lambda event, **info: seen.append(event))
    assert out == {"pid": os.getpid(), "n": 2} and seen == ["step", "step"]


def test_user_errors_come_back_unchanged(monkeypatch):
    monkeypatch.delenv(IN_PROCESS_ENV, raising=False)
    with pytest.raises(EnsembleError, match=r"^cfg.yaml: field 'model' is 'x'; pass a folder$"):
        in_child(failing, "cfg.yaml: field 'model' is 'x'; pass a folder")


def test_an_error_that_cannot_be_pickled_comes_back_with_its_traceback(monkeypatch):
    monkeypatch.delenv(IN_PROCESS_ENV, raising=False)
    with pytest.raises(RuntimeError, match=r"(?s)in the child process:.*failing_unpicklable.*"
                                           r"Unpicklable: bad state in the child"):
        in_child(failing_unpicklable)


def test_a_killed_child_names_the_signal_and_the_way_to_resume(monkeypatch):
    monkeypatch.delenv(IN_PROCESS_ENV, raising=False)
    with pytest.raises(EnsembleError, match=r"^training runs/x: its process was killed by SIGKILL \(out of "
                                            r"memory, or killed from outside\)\. What it finished is stored: "
                                            r"run the same command again to resume from there\.$"):
        in_child(killed, what="training runs/x")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_the_child_dies_with_its_parent(tmp_path):
    """kill -9 of the parent (as of `vote quickstart`) must not leave the child writing on."""
    pid_file = tmp_path / "child.pid"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from ensemble.isolate import in_child
        from isolate_helpers import sleep_forever
        in_child(sleep_forever, {str(pid_file)!r})
    """)
    env = {k: v for k, v in os.environ.items() if k != IN_PROCESS_ENV}
    parent = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline and parent.poll() is None, "the child never started"
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the child outlived its killed parent"
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_a_child_stuck_after_answering_is_ended_and_its_answer_kept(tmp_path, monkeypatch):
    monkeypatch.delenv(IN_PROCESS_ENV, raising=False)
    monkeypatch.setattr(isolate, "_EXIT_WAIT_S", 0.5)
    pid_file = tmp_path / "child.pid"
    assert in_child(hangs_at_exit, str(pid_file)) == "answer"
    assert not _alive(int(pid_file.read_text()))
