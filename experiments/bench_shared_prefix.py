"""Shared-prefix voters: what K voters cost next to one, per voter kind.

    python experiments/bench_shared_prefix.py            # all K, more items (~15 min on 2 busy cores)
    python experiments/bench_shared_prefix.py --quick    # K = 1 and 8, few items, 3 training steps (< 3 min)
    python experiments/bench_shared_prefix.py --sections score --model DIR --device cuda --clock wall \
        --batch-size 512 --out F
        # a GPU; DIR from experiments/random_model.py (SmolLM2's config and tokenizer, random weights)

Sections (each a function returning a dict of results; ``SECTIONS`` lists them):
  score  Cloze and letter scoring of bundled-benchmark questions (SmolLM2-135M-Instruct,
         float32, CPU) by K = 1, 2, 4, 8, 16 random rank-8 voters (q, k, v, o) of each kind:
           lora   plain LoRA: every voter runs the whole question;
           alora  aLoRA invoked by the chat template's "<|im_start|>assistant\\n": the prompt
                  before it runs once with the base weights, each voter runs the invocation,
                  "Answer:" and the option tokens on a copy of that KV cache;
           top    layers_to_transform = the top third of the layers: the lower two thirds
                  run once, each voter runs the top third.
         Each (kind, K) gets its own engine with exactly K adapters; the time is the best of
         --repeats runs (round-robin over K) of one ``score_choices`` call over items x K
         voters, after a warm-up.
         --quick: K = 1 and 8, 4 questions, letter mode for aLoRA only, plain LoRA timed once.
         Targets (issue 9): aLoRA K=8 <= 2.5x K=1 (cloze), <= 1.5x (letter); top <= 3.5x.
  train  K = 5 variants trained in one process on shared batches vs 5 separate runs, same
         steps, per kind (``experiments/bench_train_shared.bench_training``; --clock applies).
         Targets: aLoRA >= 3x, top third >= 2x. Full: batch 8, 6 steps, and top:L/6 too;
         --quick: batch 4, 3 steps (2 timed), aLoRA and top third.

Writes experiments/results/bench_shared_prefix.json; the LAST line printed is one JSON
object with the headline ratios (cloze unless named; null where a section did not run).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = ("lora", "alora", "top")
INVOCATION = "<|im_start|>assistant\n"
SUMMARY_KEYS = ("alora_k8_over_k1", "alora_letter_k8_over_k1", "top_k8_over_k1", "lora_k8_over_k1",
                "top_letter_k8_over_k1", "lora_letter_k8_over_k1", "train_alora_speedup", "train_top_speedup",
                "train_top_sixth_speedup")


def load_items(n: int, seed: int) -> list[tuple[tuple[dict, ...], tuple[str, ...]]]:
    """(chat messages, option texts) for the first ``n`` bundled-benchmark questions."""
    from ensemble.data.benchmark import generate_problems

    items = []
    for row in generate_problems(n, seed, split="bench_shared_prefix"):
        for q in row["questions"]:
            listed = "\n".join(f"{'ABCDEFGH'[i]}. {o}" for i, o in enumerate(q["options"]))
            text = f"{row['problem']}\n{q['question']}\n{listed}"
            items.append((({"role": "user", "content": text},), tuple(q["options"])))
    return items[:n]


def make_adapters(base: Path, root: Path, kind: str, k: int, tokenizer: Any, n_layers: int) -> dict[str, Path]:
    """``k`` random rank-8 adapters of ``kind`` (one base load; seeded noise in A and B)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    extra: dict[str, Any] = {}
    if kind == "alora":
        extra["alora_invocation_tokens"] = tokenizer(INVOCATION, add_special_tokens=False)["input_ids"]
    elif kind == "top":
        extra["layers_to_transform"] = list(range(n_layers - n_layers // 3, n_layers))
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], lora_dropout=0.0,
                     task_type="CAUSAL_LM", **extra)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), cfg)
    paths = {}
    for i in range(k):
        gen = torch.Generator().manual_seed(1000 + i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        paths[f"{kind}{i}"] = root / kind / f"{kind}{i}"
        model.save_pretrained(paths[f"{kind}{i}"])
    return paths


def requests(items, voters: list[str], mode: str) -> list:
    from ensemble.engines.base import ChoiceRequest

    out = []
    for messages, options in items:
        opts = tuple("ABCDEFGH"[:len(options)]) if mode == "letter" else tuple(" " + o for o in options)
        out += [ChoiceRequest(v, opts, messages=messages, mode=mode, assistant_prefix="Answer:", normalize="sum")
                for v in voters]
    return out


def time_scoring(base: Path, adapters: dict[str, Path], ks: tuple[int, ...], items, modes: tuple[str, ...],
                 repeats: int, clock: str, device: str = "cpu", batch_size: int = 32) -> dict[tuple[str, int], float]:
    """(mode, K) -> best time of one score_choices call over items x K voters.

    One engine per K (exactly K adapters loaded), all alive at once; the timed runs go
    round-robin over K, so a change in the machine's load hits every K alike. clock
    "cpu": this process's CPU time (steadier on a shared machine), "wall": elapsed time.
    """
    import torch

    from ensemble.engines.base import EngineSpec
    from ensemble.engines.hf.engine import HFEngine

    engines = {k: HFEngine.from_spec(EngineSpec("hf", str(base), {n: str(p) for n, p in list(adapters.items())[:k]},
                                                {"batch_size": batch_size, "device": device})) for k in ks}
    best: dict[tuple[str, int], float] = {}
    with torch.inference_mode():
        for k, engine in engines.items():
            for mode in modes:
                engine.score_choices(requests(items[:1], engine.adapters, mode))  # warm-up
        for _ in range(repeats):
            for k, engine in engines.items():
                for mode in modes:
                    reqs = requests(items, engine.adapters, mode)
                    now = time.process_time if clock == "cpu" else time.perf_counter
                    t0 = now()
                    engine.score_choices(reqs)
                    best[mode, k] = min(best.get((mode, k), float("inf")), now() - t0)
    for engine in engines.values():
        engine.close()
    return best


def score_section(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from ensemble.engines.models import resolve_model

    torch.set_num_threads(args.threads)
    base = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(base)
    n_layers = AutoConfig.from_pretrained(base).num_hidden_layers
    ks = (1, 8) if args.quick else (1, 2, 4, 8, 16)
    items = load_items(args.items or (4 if args.quick else 24), args.seed)
    modes = ("cloze", "letter")
    # --quick: only the headline ratios (plain LoRA's letter mode costs what its cloze mode does).
    kind_modes = {"lora": ("cloze",), "alora": modes, "top": ("cloze",)} if args.quick else dict.fromkeys(KINDS, modes)
    times: dict[str, dict[str, dict[int, float]]] = {m: {kind: {} for kind in KINDS} for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            adapters = make_adapters(base, Path(tmp), kind, max(ks), tok, n_layers)
            # --quick: plain LoRA (the reference, not a target; K = 8 is its slowest point) timed once
            repeats = 1 if args.quick and kind == "lora" else args.repeats
            got = time_scoring(base, adapters, ks, items, kind_modes[kind], repeats, args.clock, args.device,
                               args.batch_size)
            for (mode, k), seconds in sorted(got.items()):
                times[mode][kind][k] = seconds
                print(f"score {mode:6s} {kind:5s} K={k:2d}: {seconds:7.2f} s {args.clock} "
                      f"({seconds / got[mode, 1]:.2f}x K=1)", flush=True)
    ratios = {f"{kind}{'' if m == 'cloze' else '_' + m}_k8_over_k1": round(times[m][kind][8] / times[m][kind][1], 2)
              for kind in KINDS for m in kind_modes[kind]}
    return {"score": {"items": len(items), "ks": list(ks), "threads": args.threads, "clock": args.clock,
                      "model": args.model, "device": args.device, "batch_size": args.batch_size,
                      "seconds": {m: {kind: {str(k): round(s, 3) for k, s in t.items()} for kind, t in v.items()}
                                  for m, v in times.items()}},
            **ratios}


def train_section(args: argparse.Namespace) -> dict[str, Any]:
    """K = 5 variants on shared batches vs 5 separate runs (bench_train_shared)."""
    sys.path.insert(0, str(ROOT / "experiments"))
    from bench_train_shared import bench_training

    got = bench_training(args.quick, args.clock)
    return {"train": got, **{k: v for k, v in got.items() if k.endswith("_speedup")}}


SECTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {"score": score_section,
                                                                      "train": train_section}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="K = 1 and 8 only, few items (< 3 minutes)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    ap.add_argument("--items", type=int, default=0, help="questions (default: 4 with --quick, else 24)")
    ap.add_argument("--repeats", type=int, default=0, help="timed runs per point, best kept (default 2 / 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="time to compare: process CPU time (default; steady under other load) or wall time")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="smollm2",
                    help="score section: a registered name or a folder (experiments/random_model.py)")
    ap.add_argument("--device", default="cpu", help="score section: cpu | cuda (use --clock wall on a GPU)")
    ap.add_argument("--batch-size", type=int, default=32,
                    help="score section: the engine's rows per batch (on a GPU, enough for all K x items rows)")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "bench_shared_prefix.json"))
    args = ap.parse_args()
    args.repeats = args.repeats or (2 if args.quick else 3)
    results: dict[str, Any] = {"quick": args.quick}
    for name in args.sections.split(","):
        if name not in SECTIONS:
            ap.error(f"unknown section '{name}'; use {', '.join(SECTIONS)}")
        t0 = time.perf_counter()
        results |= SECTIONS[name](args)
        results[f"{name}_wall_s"] = round(time.perf_counter() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({key: results.get(key) for key in SUMMARY_KEYS}))


if __name__ == "__main__":
    main()
