"""Helpers shared by tests/test_training_recipe.py and tests/test_training_multi.py."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ensemble.data.items import Item

ROOT = Path(__file__).resolve().parents[1]


def yes_items(n: int, seed: int = 0, distinct: int | None = None) -> list[Item]:
    """A learnable toy task: the answer is always the option whose text is "yes" (its position
    drawn with ``seed``). Item i asks "Question k: pick one", k = i, or i % ``distinct`` for
    questions that repeat."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        options = ["yes", "no"] if rng.random() < 0.5 else ["no", "yes"]
        k = i if distinct is None else i % distinct
        out.append(Item(f"q{i}", f"Question {k}: pick one", tuple(options), "AB"[options.index("yes")]))
    return out


@contextmanager
def killed_at_marker(script: str, config: Path, marker: Path, reached: str) -> Iterator[None]:
    """Run ``python -c script config marker`` (this checkout, hub offline) until the script
    writes ``marker`` (at most 120 s; ``reached`` names the point, for the failure message),
    hand over to the caller, then SIGKILL it: a training run killed mid-way."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script, str(config), str(marker)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            assert time.monotonic() < deadline, f"the training subprocess never reached {reached}"
            time.sleep(0.05)
        yield
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
