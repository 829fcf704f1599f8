"""Budget accounting and step planning for experiments/equal_budget.py.

``Ledger``: one arm's ``budget.json``: per phase (``train``, ``score``) CPU and wall seconds,
attempts and whether it finished; saved while a phase runs, so a killed run's seconds are
kept and added to the rerun's. The arm's cost is ``train.cpu + score.cpu``.

``choose``: an ensemble's voters per kind K and steps per voter, from a measured pilot:

    train(steps) ~ train_fixed + steps * step_cpu     (pilot: ``pilot_steps`` steps of the K voters;
                                                       step_cpu from the step marks after the first,
                                                       train_fixed = the rest: load, held-out, save)
    score ~ score_fixed + items * item_cpu * r        (pilot: the first few dev/test problems;
                                                       r = baseline A's full/pilot cost per item,
                                                       since the first problems are not average ones)
    steps = floor((B - score - train_fixed) / step_cpu)

Pilots run at K = 2 and at the target K; every cost is fitted as a line in K (a shared part
plus a part per voter), and the largest K that leaves ``min_steps`` steps per voter is chosen.
A kind with no K >= 2 that fits is recorded as infeasible, with the predictions that ruled it out.
"""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LEDGER = "budget.json"
TICK_S = 5.0  # save a running phase's seconds at most this often


class Ledger:
    """One arm's measured seconds (``<arm>/budget.json``)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LEDGER
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, phase: str) -> dict[str, Any]:
        return dict(self.data.get(phase) or {"cpu": 0.0, "wall": 0.0, "attempts": 0, "done": False})

    def done(self, phase: str) -> bool:
        return bool(self.get(phase)["done"])

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)

    def seconds(self, clock: str = "cpu") -> float:
        """The arm's cost: training + scoring (dev and test), on ``clock`` (cpu | wall)."""
        return float(self.get("train")[clock] + self.get("score")[clock])

    @contextmanager
    def phase(self, name: str) -> Iterator[Callable[[], None]]:
        """Time a phase; the yielded ``tick()`` saves the seconds so far (call it from progress)."""
        prev = self.get(name)
        c0, w0, last = time.process_time(), time.perf_counter(), [0.0]

        def record(done: bool) -> None:
            self.data[name] = {"cpu": round(prev["cpu"] + time.process_time() - c0, 2),
                               "wall": round(prev["wall"] + time.perf_counter() - w0, 2),
                               "attempts": prev["attempts"] + 1, "done": done}
            self.save()

        def tick() -> None:
            if time.perf_counter() - last[0] >= TICK_S:
                last[0] = time.perf_counter()
                record(False)
        yield tick
        record(True)


class Marks:
    """CPU-time marks from progress events: training steps, and the scoring loop's start/finish."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.start: float | None = None
        self.finish: float | None = None
        self.rows = 0

    def __call__(self, event: str, **info: Any) -> None:
        now = time.process_time()
        if event == "step":
            self.steps.append(now)
        elif event == "start":
            self.start, self.rows = now, int(info.get("total", 0))
        elif event == "finish":
            self.finish = now

    def step_cpu(self) -> float:
        """CPU seconds per step, the first (warm-up) step left out."""
        return (self.steps[-1] - self.steps[0]) / max(len(self.steps) - 1, 1)

    def span(self) -> float:
        """CPU seconds of the scoring loop alone (no model load, no evaluation)."""
        return 0.0 if self.start is None or self.finish is None else self.finish - self.start


def _copy_run(src: Path, dst: Path) -> None:
    """A scoring pilot's folder: the trained manifest + adapters, no predictions."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "manifest.json", dst / "manifest.json")
    shutil.copytree(src / "adapters", dst / "adapters", dirs_exist_ok=True)


def _n_items(cfg: Any) -> int:
    from ensemble.data.splits import load_split_items

    return sum(len(v) for v in load_split_items(cfg, ["dev", "test"]).values())


def _score_cost(cfg: Any) -> dict[str, float]:
    """Score ``cfg``'s (limited) dev + test items from scratch: CPU of the whole run and of its loop."""
    from ensemble.pipeline import run

    (Path(cfg.out) / "predictions.jsonl").unlink(missing_ok=True)
    marks, c0 = Marks(), time.process_time()
    run(cfg, restart=True, progress=marks)
    return {"total": time.process_time() - c0, "span": marks.span(), "items": _n_items(cfg)}


def score_pilot(a_ledger: Ledger, pilot_cfg: Any, full_cfg: Any) -> dict[str, float]:
    """Baseline A's scoring cost per item on the pilot problems vs on the full dev + test
    (the scale factor ``scale``), and its overhead (load + evaluation) at both sizes."""
    if "pilot" in a_ledger.data:
        return dict(a_ledger.data["pilot"])
    full = a_ledger.data["score_marks"]  # its scoring loop, measured while it ran (run_arm)
    _copy_run(Path(full_cfg.out), Path(pilot_cfg.out))
    c0 = time.process_time()
    pilot = _score_cost(pilot_cfg)
    out = {"pilot_item_cpu": pilot["span"] / pilot["items"], "pilot_fixed_cpu": pilot["total"] - pilot["span"],
           "full_item_cpu": full["span"] / full["rows"], "full_fixed_cpu": full["attempt_cpu"] - full["span"],
           "full_items": _n_items(full_cfg), "pilot_items": pilot["items"]}
    out["scale"] = out["full_item_cpu"] / out["pilot_item_cpu"]
    out["pilot_cpu"] = time.process_time() - c0
    a_ledger.set("pilot", out)
    return out


def _pilot(root: Path, name: str, k: int, s: dict[str, Any], make_cfg: Callable[..., Any]) -> dict[str, float]:
    """Train K voters for ``pilot_steps`` steps, then score the first pilot problems with them."""
    from ensemble.training import train_grid

    out = root / f"{name}-pilot-k{k}"
    shutil.rmtree(out, ignore_errors=True)
    marks, c0 = Marks(), time.process_time()
    train_grid(make_cfg(k, s["pilot_steps"], out), progress=marks)
    train_total = time.process_time() - c0
    step = marks.step_cpu()
    score = _score_cost(make_cfg(k, s["pilot_steps"], out, limit=s["pilot_problems"]))
    return {"step_cpu": step, "train_fixed_cpu": train_total - step * len(marks.steps), "train_cpu": train_total,
            "item_cpu": score["span"] / score["items"], "score_fixed_cpu": score["total"] - score["span"],
            "score_cpu": score["total"]}


def _fit(pilots: dict[int, dict[str, float]], k: int) -> dict[str, float]:
    """Costs at K voters: linear in K through the pilots' two K values (one pilot: its own costs).
    Each cost is a shared part plus a part per voter, so a line fits it."""
    ks = sorted(pilots)
    lo, hi = pilots[ks[0]], pilots[ks[-1]]
    if ks[0] == ks[-1]:
        return dict(lo)
    w = (k - ks[0]) / (ks[-1] - ks[0])
    return {key: lo[key] + w * (hi[key] - lo[key]) for key in lo}


def choose(root: Path, name: str, s: dict[str, Any], args: Any, budget: float, a_pilot: dict[str, float],
           make_cfg: Callable[..., Any], kind: str | None = None) -> dict[str, Any]:
    """K and steps per voter for one ensemble arm so that train + score ~ ``budget`` CPU seconds.
    ``name``: the arm's folder name (its pilots go in ``root/<name>-pilot-k<K>``); ``kind``: its
    voter kind (alora | top | lora) where the name is not the kind itself (``alora-r8``).

    Pilots run at K = 2 and at the target K (two points of each cost's line in K); the
    largest K that leaves ``min_steps`` steps per voter is chosen."""
    tried: list[dict[str, Any]] = []
    n_items = a_pilot["full_items"]
    candidates = []
    for k in range(args.k, 1, -1):
        if (kind or name) == "lora" and k * a_pilot["full_item_cpu"] * n_items >= budget:
            # Plain voters share nothing in scoring: K voters cost K x baseline A's scoring loop.
            tried.append({"k": k, "skipped": "K x baseline A's scoring loop alone exceeds the budget",
                          "predicted_score_cpu": round(k * a_pilot["full_item_cpu"] * n_items, 1)})
        else:
            candidates.append(k)
    pilots = {k: _pilot(root, name, k, s, make_cfg) for k in sorted({min(candidates), max(candidates)})} \
        if candidates else {}
    for k in candidates:
        p = _fit(pilots, k)
        score = (p["score_fixed_cpu"] + a_pilot["full_fixed_cpu"] - a_pilot["pilot_fixed_cpu"]
                 + p["item_cpu"] * a_pilot["scale"] * n_items)
        steps = int((budget - score - p["train_fixed_cpu"]) // p["step_cpu"])
        row = {"k": k, "pilot" if k in pilots else "fitted": {key: round(v, 3) for key, v in p.items()},
               "predicted_score_cpu": round(score, 1), "steps": steps,
               "predicted_total_cpu": round(score + p["train_fixed_cpu"] + steps * p["step_cpu"], 1)}
        tried.append(row)
        if steps >= args.min_steps:
            return {"status": "planned", "k": k, "steps": steps, "budget_cpu": round(budget, 1),
                    "predicted_total_cpu": row["predicted_total_cpu"], "pilot_ks": sorted(pilots),
                    "pilot_cpu": round(sum(p["train_cpu"] + p["score_cpu"] for p in pilots.values()), 1),
                    "tried": tried}
    return {"status": "infeasible", "k": None, "steps": None, "budget_cpu": round(budget, 1), "tried": tried,
            "pilot_ks": sorted(pilots),
            "pilot_cpu": round(sum(p["train_cpu"] + p["score_cpu"] for p in pilots.values()), 1),
            "reason": f"no K >= 2 leaves {args.min_steps} training steps per voter inside the budget"}
