"""Peak resident memory of `vote quickstart`, phase by phase: one process vs a child per phase.

Runs `vote quickstart` as a subprocess twice on the same config, each with a fresh ``out``:

* ``one process``: ``ENSEMBLE_IN_PROCESS=1``, every phase in the `vote` process (the old way);
* ``child per phase``: the default. Every phase that loads a model runs in a child process
  of its own (``ensemble.isolate``), and the parent never imports torch.

A sampler reads /proc every 50 ms. The resident memory counted is the **sum over the whole
process tree** (`vote` and every descendant alive at that moment). The phase is the last
``N/M ...`` rule `vote quickstart` printed. Each mode's peak, its peak per phase and its
wall time are reported; the ratio of the two peaks is printed last.

    python experiments/quickstart_memory.py [--config ensemble/configs/quickstart.yaml]
        [--set train.max_steps=6 ...] [--modes one,child] [--out results.json]

Linux only (/proc).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MODES = {"one": ("one process", {"ENSEMBLE_IN_PROCESS": "1"}), "child": ("child per phase", {})}
RULE = re.compile(r"(\d+/\d+ [a-z][A-Za-z ]+?)\s*─*\s*$")


def tree_rss_mb(root: int) -> tuple[int, int]:
    """(sum of VmRSS over ``root`` and its descendants, number of processes) in MB."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, n, todo = 0, 0, [root]
    while todo:
        pid = todo.pop()
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    n += 1
        except OSError:
            pass
        todo += children.get(pid, [])
    return total // 1024, n


def measure(label: str, env_extra: dict[str, str], config: str, overrides: list[str], out: Path) -> dict:
    """Run `vote quickstart` once; its tree's peak RSS overall and per phase."""
    cmd = [str(Path(sys.executable).parent / "vote"), "quickstart", "--config", config]
    for o in [*overrides, f"out={out}"]:
        cmd += ["--set", o]
    env = {k: v for k, v in os.environ.items() if k != "ENSEMBLE_IN_PROCESS"} | env_extra | {"COLUMNS": "120"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    phase = ["start"]
    peaks: dict[str, dict[str, int]] = {}
    tail: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line)
            del tail[:-40]
            m = RULE.search(line.strip())
            if m:
                phase[0] = m.group(1)
                print(f"[{label}] {phase[0]}", flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while proc.poll() is None:
        mb, n = tree_rss_mb(proc.pid)
        row = peaks.setdefault(phase[0], {"peak_mb": 0, "processes": 0})
        if mb > row["peak_mb"]:
            row.update(peak_mb=mb, processes=n)
        time.sleep(0.05)
    reader.join()
    if proc.returncode != 0:
        raise SystemExit(f"[{label}] vote quickstart failed ({proc.returncode}):\n{''.join(tail)}")
    return {"mode": label, "peak_mb": max(r["peak_mb"] for r in peaks.values()),
            "wall_s": round(time.perf_counter() - t0, 1),
            "phases": [{"phase": k, **v} for k, v in peaks.items()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="ensemble/configs/quickstart.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--modes", default="one,child", help="comma list of: one, child")
    ap.add_argument("--out", help="write the results json here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qs-memory-"))
    rows = []
    try:
        for key in args.modes.split(","):
            label, env_extra = MODES[key]
            rows.append(measure(label, env_extra, args.config, args.overrides, work / key))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"config": args.config, "overrides": args.overrides, "measure": "peak RSS summed over the process tree",
              "modes": rows}
    if len(rows) == 2:
        result["child_over_one_peak"] = round(rows[1]["peak_mb"] / rows[0]["peak_mb"], 3)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({r["mode"]: r["peak_mb"] for r in rows} | {k: v for k, v in result.items()
                                                               if k == "child_over_one_peak"}))


if __name__ == "__main__":
    main()
