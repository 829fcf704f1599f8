"""Functions a spawned child imports by name in tests/test_isolate.py (a test module's own
functions need the test module importable from the child, which a `python -c` parent lacks)."""
from __future__ import annotations

import os
import time
from pathlib import Path


def sleep_forever(pid_file: str) -> None:
    tmp = Path(pid_file + ".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.replace(pid_file)
    while True:
        time.sleep(1)
