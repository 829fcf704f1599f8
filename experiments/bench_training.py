"""Lean loop vs transformers' Trainer: s/step on the same small LoRA job (SmolLM2-135M, CPU).

Same base, variant, examples, batch size, schedule and dtype; runs are interleaved
(loop, hf, loop, hf, ...) so machine load hits both alike. s/step = time between the
first and the last "step" progress event / (steps - 1): model loading, tokenisation,
the first (warm-up) step, evaluation and saving are excluded. Both paths compute
logits for the answer positions only; "*_full_logits" are the same paths with the
model's stock loss over every position's logits, to separate the two effects
(answer-only logits vs framework overhead).

    python bench_training.py [--steps 8] [--repeats 2] [--out results.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import torch

from ensemble.config.schema import GridConfig, TrainConfig
from ensemble.data.benchmark import write_benchmark
from ensemble.data.formats import read_items
from ensemble.engines.models import resolve_model
from ensemble.prompts import get_template
from ensemble.training import loop, recipe
from ensemble.training.grid import expand_grid


def full_logits_logprobs(model, batch):
    """(B, T-1) answer-token log-probabilities from logits at every position (the stock setup)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits.float()  # (B, T, V)
    target = batch["labels"][:, 1:]
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logp * (target != -100)


def timed_run(base, variant, examples, cfg, kind: str) -> dict:
    stamps: list[float] = []
    tokens: list[int] = []  # padded tokens per training forward (B*T), counted after the first step
    progress = lambda event, **info: stamps.append(time.perf_counter()) if event == "step" else None
    # The lean loop and the Trainer path live in training.loop; the model is loaded in training.recipe.
    original, original_load, original_tb = loop.answer_logprobs, recipe.load_lora_model, loop.trainer_batch

    def load(*a, **k):
        model, tok = original_load(*a, **k)
        def count(mod, args, kwargs):
            if torch.is_grad_enabled() and stamps:
                tokens.append(kwargs["input_ids"].numel())
        model.base_model.model.model.register_forward_pre_hook(count, with_kwargs=True)
        return model, tok

    recipe.load_lora_model = load
    if kind == "loop_full_logits":
        loop.answer_logprobs = full_logits_logprobs
    if kind == "hf_full_logits":  # the stock Trainer setup: every position's logits
        loop.trainer_batch = recipe.collate
    try:
        with tempfile.TemporaryDirectory() as out:
            trainer = "hf" if kind.startswith("hf") else "loop"
            res = recipe.train_variant(base, variant, examples, examples[:8], dataclasses.replace(cfg, trainer=trainer),
                                       out, progress=progress)
    finally:
        loop.answer_logprobs, recipe.load_lora_model, loop.trainer_batch = original, original_load, original_tb
    seconds = stamps[-1] - stamps[0]
    per_step = [b - a for a, b in pairwise(stamps)]
    return {"s_per_step": seconds / (len(stamps) - 1), "s_per_1k_padded_tokens": 1000 * seconds / sum(tokens),
            "step_seconds": per_step, "step_tokens": tokens,
            "padded_tokens_per_step": sum(tokens) / (len(stamps) - 1),
            "first_loss": res.loss_curve[0][1], "last_loss": res.loss_curve[-1][1]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--kinds", default="loop,hf,loop_full_logits,hf_full_logits")
    ap.add_argument("--out", default="bench_training.json")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = resolve_model("smollm2")
    with tempfile.TemporaryDirectory() as d:
        items = read_items(write_benchmark(d, n_train=40, n_dev=0, n_test=0, seed=0)["train"])
    examples = recipe.build_examples(items, get_template("mc"), "cloze")[:96]
    cfg = TrainConfig(max_steps=args.steps, batch_size=8, dtype=args.dtype, max_length=256)
    variant = expand_grid(GridConfig(), "mc")[0]
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(base)
    lengths = [len(recipe.encode(tok, ex, 256)[0]) for ex in examples]
    results: dict[str, list[dict]] = {}
    kinds = args.kinds.split(",")
    for _ in range(args.repeats):
        for kind in kinds:
            results.setdefault(kind, []).append(timed_run(base, variant, examples, cfg, kind))
            print(kind, {k: v for k, v in results[kind][-1].items() if k != "step_tokens"}, flush=True)
    summary = {k: statistics.median(r["s_per_step"] for r in v) for k, v in results.items()}
    per_tok = {k: statistics.median(r["s_per_1k_padded_tokens"] for r in v) for k, v in results.items()}
    # The fastest single step of each kind: on a shared machine the least disturbed measurement.
    fastest = {k: min(s for r in v for s in r["step_seconds"]) for k, v in results.items()}
    report = {"model": "smollm2-135m-instruct", "device": "cpu", "threads": torch.get_num_threads(),
              "dtype": args.dtype, "batch_size": 8, "steps": args.steps, "repeats": args.repeats,
              "mean_tokens_per_sequence": round(statistics.mean(lengths), 1), "s_per_step_median": summary,
              "s_per_1k_padded_tokens_median": per_tok, "fastest_step_s": fastest,
              "ratio_hf_over_loop": summary.get("hf", 0) / summary["loop"],
              "ratio_hf_over_loop_per_token": per_tok.get("hf", 0) / per_tok["loop"], "runs": results}
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("dtype", "mean_tokens_per_sequence", "s_per_step_median",
                                             "s_per_1k_padded_tokens_median", "fastest_step_s", "ratio_hf_over_loop", "ratio_hf_over_loop_per_token", "threads")}, indent=1))


if __name__ == "__main__":
    main()
