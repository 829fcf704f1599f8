"""Peak resident memory of `vote quickstart`, phase by phase, in one process.

Runs what `vote quickstart` runs (train -> run -> ablation) on a config, and for every
phase reports the peak RSS the kernel saw (VmHWM, reset at each phase start through
/proc/self/clear_refs, Linux only) and the RSS when the phase ended. Phases inside
`vote run` come from its progress events: engine load, scoring, finish (votes, report,
HTML page, submission).

    python experiments/quickstart_memory.py [--config ensemble/configs/quickstart.yaml]
        [--set train.max_steps=3 ...] [--out results.json]

Run it with a fresh ``out`` (the config's, or ``--set out=...``): stored adapters and
predictions would skip the work being measured.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _status(key: str) -> int:
    """VmRSS / VmHWM of this process in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) // 1024
    raise KeyError(key)


class Phases:
    """Peak RSS per phase: VmHWM is reset when a phase starts and read when it ends."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.name: str | None = None
        self.t0 = 0.0
        self.cpu0 = 0.0

    def start(self, name: str) -> None:
        self.stop()
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        self.name, self.t0, self.cpu0 = name, time.perf_counter(), time.process_time()
        print(f"[{name}] start rss={_status('VmRSS')} MB", flush=True)

    def stop(self) -> None:
        if self.name is None:
            return
        row = {"phase": self.name, "peak_mb": _status("VmHWM"), "end_mb": _status("VmRSS"),
               "wall_s": round(time.perf_counter() - self.t0, 1), "cpu_s": round(time.process_time() - self.cpu0, 1)}
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        self.name = None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="ensemble/configs/quickstart.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out")
    ap.add_argument("--no-baseline", action="store_true", help="Stop after the ablation (steps 1-4).")
    args = ap.parse_args()

    import torch

    from ensemble.memory import bound_kernel_cache

    bound_kernel_cache()  # as the `vote` CLI does before any command
    torch.set_num_threads(1)
    from ensemble.config.loader import load_config

    cfg = load_config(args.config, tuple(args.overrides))
    phases = Phases()
    phases.start("imports+config")

    def on_train(event: str, **info: object) -> None:
        if event == "train_start":
            phases.start(f"train {info.get('name')}")

    def on_run(event: str, **info: object) -> None:
        if event == "status":
            phases.start("run: engine load")
        elif event == "start":
            phases.start("run: scoring")
        elif event == "finish":
            phases.start("run: votes + report + html")

    from ensemble.evaluation.ablation import ablate
    from ensemble.memory import release_memory
    from ensemble.pipeline import run
    from ensemble.training import train_grid

    train_grid(cfg, progress=on_train)
    release_memory()  # as `vote quickstart` does between its phases
    result = run(cfg, progress=on_run)
    release_memory()
    phases.start("ablation")
    methods = [x for x in ("majority", "confidence", "dawid_skene") if x in cfg.run.methods]
    ablate(result.matrix, methods, dev=result.dev).write(Path(cfg.out) / "ablation")
    if cfg.baseline is not None and not args.no_baseline:  # step 5: the equal-budget single LoRA
        from ensemble.quickstart import baseline_config, write_comparison

        single_cfg = baseline_config(cfg)
        names = {"train_start": "train", "status": "engine load", "start": "scoring", "finish": "report"}

        def on_single(event: str, **info: object) -> None:
            if event in names:
                phases.start(f"single LoRA: {names[event]}")
        train_grid(single_cfg, progress=on_single)
        release_memory()
        single = run(single_cfg, progress=on_single)
        release_memory()
        print(json.dumps(write_comparison(cfg, result, single_cfg, single)))
    phases.stop()
    total = max(r["peak_mb"] for r in phases.rows)  # clear_refs also resets ru_maxrss
    print(json.dumps({"process_peak_mb": total}))
    if args.out:
        Path(args.out).write_text(json.dumps({"config": args.config, "overrides": args.overrides,
                                              "phases": phases.rows, "process_peak_mb": total}, indent=2))


if __name__ == "__main__":
    main()
