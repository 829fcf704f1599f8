"""Training K = 5 variants on shared batches vs 5 separate runs, same steps (issue point 9).

For each voter kind with a shared part, ``aLoRA`` (``flavour: alora``; the prompt's KV
cache is the base's) and ``top-third`` (``layers: top:L/3``; the lower two thirds are
the base's): five variants that differ by seed (rank 8, attention projections), each
trained for the same number of steps with the same batch size either

    separate  ``recipe.train_variant`` five times (its own batches, whole forward pass), or
    shared    ``multi.train_group`` once (one shared batch stream; the shared part once
              per batch, each variant's own part on top; every row weight 1).

Time = from the end of step 1 to the last ``step`` event of each call: model loading,
the first (warm-up) step, held-out evaluation (none here) and saving are left out. The
warm-up step is left out because separate runs pay it five times and shared training
once, which a real run (tens of steps) amortises but a 3-step benchmark does not (with
it, --quick measured the top third at 1.87x; the full run, without it, 1.42x).

The headline (``*_speedup``, ``clock="cpu"``, the default) is this process's CPU time
per variant-token: CPU seconds / (variants x tokens in the timed steps), because each
separate run draws its own batches (seeded by its variant) and so trains on other rows
than the shared run; ``*_cpu_speedup`` is the raw CPU-time ratio. One torch thread: CPU
time is the work done, and other processes on a shared machine disturb it less.
``*_wall_s``: wall time; ``*_wall_speedup`` counts whole calls (5 model loads vs 1).

Full mode: batch 8 (cut into passes of at most ``max_batch_tokens`` = 384 tokens, the
default), 6 steps, and a third kind, ``top:L/6``: the smallest top-layer share for
which the 2x target is within reach at K = 5 (see ``top_bound``). ``--quick``: batch 4,
3 steps (2 timed), aLoRA and top third only (the same per-step work per row, fewer rows).

    python experiments/bench_train_shared.py [--quick] [--out results.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from ensemble.config.schema import GridConfig, TrainConfig, VariantConfig
from ensemble.data.benchmark import write_benchmark
from ensemble.data.formats import read_items
from ensemble.engines.models import resolve_model
from ensemble.errors import EnsembleError
from ensemble.prompts import get_template
from ensemble.training.grid import expand_grid
from ensemble.training.loop import batch_order
from ensemble.training.multi import POOL_SEED, Member, train_group
from ensemble.training.recipe import build_examples, encode, train_variant

K = 5


def _base() -> tuple[str, str]:
    """SmolLM2 when it is on disk, else the tiny test model (then the ratios mean little)."""
    try:
        path = resolve_model("smollm2")
        if (Path(path) / "config.json").is_file():
            return str(path), "smollm2-135m-instruct"
    except (EnsembleError, OSError):  # no cached model and no network: fall back
        pass
    from ensemble.testing import make_tiny_model

    return str(make_tiny_model(Path(tempfile.gettempdir()) / "ensemble-bench-tiny", num_layers=6)), "tiny"


def _timer() -> tuple[list[tuple[float, float]], Any]:
    """(wall, CPU) time marks at ``train_start`` and every ``step`` event."""
    marks: list[tuple[float, float]] = []

    def progress(event: str, **info: Any) -> None:
        if event in ("train_start", "step"):
            marks.append((time.perf_counter(), time.process_time()))
    return marks, progress


def _span(marks: list[tuple[float, float]]) -> np.ndarray:
    """(wall, CPU) from the end of step 1 to the end of the last step (warm-up left out)."""
    return np.array(marks[-1]) - np.array(marks[1 if len(marks) > 2 else 0])


def top_bound(k: int, n_layers: int, top: int, backward: float) -> float:
    """Upper bound of separate / shared time for ``layers: top:N`` with K variants, in layer
    passes per row: a separate run does L layers forward + N backward (``backward``: one
    top layer's backward in layer forwards); shared does L-N once + K x N x (1 + backward).
    The bound ignores that a training forward (LoRA, dropout, saved activations) costs
    more than the shared no-grad one, so the measured ratio sits below it."""
    return k * (n_layers + top * backward) / (n_layers - top + k * top * (1 + backward))


def _timed_tokens(lengths: list[int], cfg: TrainConfig, seed: int) -> int:
    """Tokens in the timed steps (2 .. max_steps) of a run whose batch order has ``seed``."""
    order = batch_order(lengths, cfg.batch_size, seed)
    batches = [next(order) for _ in range(cfg.max_steps * cfg.grad_accum)]
    return sum(lengths[i] for b in batches[cfg.grad_accum:] for i in b)


def _one_kind(base: str, examples: list, cfg: TrainConfig, variant: VariantConfig) -> dict[str, float]:
    variants = expand_grid(GridConfig(variants=tuple(dataclasses.replace(variant, name=f"v{i}", seed=i)
                                                     for i in range(K))), "mc_short")
    with tempfile.TemporaryDirectory() as out:
        sep, t0 = np.zeros(2), time.perf_counter()
        for v in variants:
            marks, progress = _timer()
            train_variant(base, v, examples, [], cfg, out, progress=progress)
            sep += _span(marks)
        sep_wall = time.perf_counter() - t0
        members = [Member(v, np.ones(len(examples), np.float32), (), key=v.name) for v in variants]
        marks, progress = _timer()
        t0 = time.perf_counter()
        train_group(base, members, examples, cfg, out, progress=progress)
        shared_wall, shared = time.perf_counter() - t0, _span(marks)
    # Each separate run draws its own batches (seeded by its variant), so its timed steps
    # hold other rows than the shared run's: CPU time per variant-token evens that out.
    tok = AutoTokenizer.from_pretrained(base)
    lengths = [len(encode(tok, ex, cfg.max_length)[0]) for ex in examples]
    sep_tokens = sum(_timed_tokens(lengths, cfg, v.seed) for v in variants)
    shared_tokens = K * _timed_tokens(lengths, cfg, POOL_SEED)
    return {"separate_tokens": sep_tokens, "shared_tokens": shared_tokens,
            "token_cpu_speedup": round((sep[1] / sep_tokens) / (shared[1] / shared_tokens), 2),
            "separate_wall_s": round(sep[0], 2), "shared_wall_s": round(shared[0], 2),
            "separate_cpu_s": round(sep[1], 2), "shared_cpu_s": round(shared[1], 2),
            "steps_wall_speedup": round(sep[0] / shared[0], 2), "cpu_speedup": round(sep[1] / shared[1], 2),
            "wall_speedup": round(sep_wall / shared_wall, 2)}


def bench_training(quick: bool, clock: str = "cpu") -> dict[str, Any]:
    """{"train_alora_speedup", "train_top_speedup", ...}: separate / shared training time
    (``clock``: "cpu", this process's CPU time, or "wall")."""
    torch.set_num_threads(1)
    base, name = _base()
    from transformers import AutoConfig

    n_layers = AutoConfig.from_pretrained(base).num_hidden_layers
    with tempfile.TemporaryDirectory() as d:
        items = read_items(write_benchmark(d, n_train=60, n_dev=0, n_test=0, seed=0,
                                           kinds=["arith", "compare", "sequence", "order"])["train"])
    examples = build_examples(items, get_template("mc_short_auto"), "cloze")[:96]
    steps, batch = (3, 4) if quick else (6, 8)
    cfg = TrainConfig(max_steps=steps, batch_size=batch, learning_rate=2e-3, scheduler="constant", dtype="bfloat16",
                      lora_dropout=0.05, checkpoint_every=0)
    attn = ("q_proj", "k_proj", "v_proj", "o_proj")
    third, sixth = max(1, n_layers // 3), max(1, n_layers // 6)
    kinds = {"alora": VariantConfig(rank=8, target_modules=attn, flavour="alora"),
             "top": VariantConfig(rank=8, target_modules=attn, layers=f"top:{third}")}
    if not quick:
        kinds["top_sixth"] = VariantConfig(rank=8, target_modules=attn, layers=f"top:{sixth}")
    got = {kind: _one_kind(base, examples, cfg, v) for kind, v in kinds.items()}
    key = "token_cpu_speedup" if clock == "cpu" else "steps_wall_speedup"
    out: dict[str, Any] = {f"train_{kind}_speedup": r[key] for kind, r in got.items()}
    out |= {f"train_{kind}_{m}": r[m] for kind, r in got.items()
            for m in ("token_cpu_speedup", "cpu_speedup", "wall_speedup")}
    out |= {f"train_{kind}": r for kind, r in got.items()}
    # Layer-pass bound (backward of a top layer = 1.5x its training forward, measured on SmolLM2).
    out["train_top_bound"] = {f"top:{n}": {str(k): round(top_bound(k, n_layers, n, 1.5), 2) for k in (5, 8, 16)}
                              for n in (third, n_layers // 5, sixth)}
    return out | {"train_model": name, "train_k": K, "train_steps": steps, "train_batch_size": cfg.batch_size,
                  "train_max_batch_tokens": cfg.max_batch_tokens, "train_top_layers": third,
                  "train_top_sixth_layers": sixth, "train_n_layers": n_layers, "train_threads": 1,
                  "train_clock": clock}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = ap.parse_args()
    result = bench_training(args.quick, args.clock)
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
