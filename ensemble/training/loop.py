"""The training loops: the lean loop (default) and transformers' Trainer.

AdamW over the LoRA parameters; warmup + linear/cosine/constant schedule; gradient
accumulation; grad-norm clip 1.0; bf16 autocast when ``dtype: bfloat16``;
length-bucketed batches in a seeded order. ``trainer: loop`` (default) is the lean
loop; ``trainer: hf`` runs the same model, data, answer-only logits and schedule
through transformers' ``Trainer`` (accelerate gives multi-GPU / DeepSpeed scale-out).
Measured on CPU (SmolLM2, bf16, batch 8 x ~141 tokens, one thread): loop 3.11 s/step,
Trainer 3.42 s/step (1.03x per padded token: its length grouping pads more), the
stock Trainer with full logits 4.96 s/step.
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ensemble.config.schema import TrainConfig
from ensemble.training.batches import (
    WIDTH_MULTIPLE,
    Example,
    answer_logprobs,
    collate,
    padded_width,
    passes,
)
from ensemble.training.grid import Variant
from ensemble.training.heldout import eval_point

Progress = Callable[..., None]
MAX_GRAD_NORM = 1.0
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def bound_heap() -> None:
    """Fix glibc's mmap threshold at 4 MiB (glibc only; a no-op elsewhere).

    glibc raises its mmap threshold after each large free (up to 32 MiB), so the
    activation tensors of later passes come from the heap, which fragments: training
    SmolLM2 (batch 8) grew by ~170 MB of resident memory per step. A fixed threshold
    turns that dynamic raise off. Why 4 MiB and not lower: every allocation above the
    threshold is a fresh mmap whose pages the kernel zero-fills, and at 64 KiB that made
    a training step 2.1x slower (6 SmolLM2 steps, batch 8 x 90 tokens: 24.2 s vs 11.7 s
    wall); at 4 MiB the steps take 11.0 s, as without it."""
    import ctypes
    import ctypes.util

    from ensemble.memory import bound_kernel_cache

    bound_kernel_cache()  # no effect once a model has run in this process (ensemble.memory)
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        return
    if mallopt is not None:
        mallopt(-3, 4 * 1024 * 1024)  # M_MMAP_THRESHOLD; a fixed value also turns the dynamic raise off


def frozen_weights_in_bf16(model: Any) -> None:
    """Store the frozen base's Linear weights and input embeddings as bf16.

    Linear weights: under bf16 autocast every matmul casts its fp32 weight to bf16 on
    every call (frozen weights are not in autocast's cache), so storing the cast once
    gives the same products bit for bit, without the per-call cast (which dominated the
    short aLoRA suffix passes) and with half the memory.

    Input embeddings: autocast leaves the lookup in fp32. They are stored in bf16 too and
    the lookup's output is cast back to fp32, so the residual stream stays fp32 as before;
    the only change is that each embedding row is rounded to bf16, which is how the bf16
    scoring engine holds them anyway. A tied lm_head shares that one bf16 tensor: SmolLM2
    keeps 57 MB of embeddings instead of 113 (fp32 input) + 57 (bf16 lm_head copy).

    Call it after the adapters exist (PEFT would otherwise initialise the LoRA in bf16 and
    round its init). Not for DoRA (it reads the weight)."""
    import torch

    emb = model.get_input_embeddings()
    fp32_embed = emb.weight
    if fp32_embed.dtype == torch.float32 and not fp32_embed.requires_grad:
        emb.weight = torch.nn.Parameter(fp32_embed.detach().to(torch.bfloat16), requires_grad=False)
        emb.register_forward_hook(_embeddings_as_float32)
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or "lora_" in name or module.weight.requires_grad:
            continue
        if module.weight is fp32_embed:  # tied lm_head: the same bf16 tensor as the lookup
            module.weight = emb.weight
        elif module.weight.dtype == torch.float32:
            module.weight.data = module.weight.data.to(torch.bfloat16)


def _embeddings_as_float32(module: Any, args: Any, out: Any) -> Any:
    """Forward hook: a bf16-stored embedding lookup returns fp32, as an fp32 table would."""
    return out.float()


@contextlib.contextmanager
def training_attention(model: Any, cfg: TrainConfig, device: str) -> Iterator[None]:
    """Eager attention for training steps on CPU under bf16 autocast, the model's own
    (sdpa) elsewhere and afterwards (evaluation scores as `vote run` does).

    Why: torch's CPU flash-attention backward in bf16 is 2-3x slower than the plain
    matmul + softmax attention (one thread, 9 heads x 64: 25.4 vs 11.4 ms fwd+bwd for
    8 x 90 tokens; 7.9 vs 3.0 ms for an aLoRA suffix, 8 x 11 queries on 101 keys);
    in float32 sdpa is the faster one (12.3 vs 14.2 ms), and on GPU it is the fused kernel.
    Same attention, other kernel: the loss agrees to bf16 rounding (tested)."""
    config = model.config
    before = config._attn_implementation
    if device == "cpu" and cfg.dtype == "bfloat16" and before == "sdpa":
        config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = before


@contextlib.contextmanager
def cuda_determinism() -> Iterator[None]:
    """On CUDA, train with torch's deterministic algorithms; restore the caller's settings after.

    Why: a run resumed after kill -9 must give the adapters an uninterrupted run gives, bit
    for bit. On CPU it does as it is; on CUDA, atomics in some backward kernels (the
    memory-efficient attention's, for one) sum in a different order on every call, and
    Adam turns those last-bit differences into visible ones within a few steps. cuBLAS also
    needs a fixed workspace (CUBLAS_WORKSPACE_CONFIG, read when its handle is made: a
    training process sets it before its first matmul). Not ``warn_only``: with it, torch
    only warns that the memory-efficient attention's backward is non-deterministic and
    keeps it; without it, that kernel runs its deterministic variant. Measured on an H100
    (experiments/device_check.sh): warn_only left both resume tests off by a few bits;
    strict mode made them bit-identical, and no op of the training step raised."""
    import torch

    if not torch.cuda.is_available():
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]


def total_steps(n_train: int, cfg: TrainConfig) -> int:
    """Optimizer steps: max_steps, else epochs over ceil(n / batch) micro-batches / grad_accum."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * math.ceil(n_train / cfg.batch_size) / cfg.grad_accum))


def batch_order(lengths: Sequence[int], batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless stream of index batches: per epoch a seeded shuffle, cut into chunks of 16
    batches, each chunk sorted by length (little padding), batch order shuffled again."""
    epoch = 0
    while True:
        rng = np.random.default_rng([seed, epoch])
        perm = rng.permutation(len(lengths))
        batches = []
        for c in range(0, len(perm), 16 * batch_size):
            chunk = sorted(perm[c:c + 16 * batch_size], key=lambda i: lengths[i])
            batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
        yield from (batches[i] for i in rng.permutation(len(batches)))
        epoch += 1


def autocast_for(cfg: TrainConfig, device: str) -> Callable[[], Any]:
    import torch

    return lambda: torch.autocast(device, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")


def fit_loop(model: Any, tok: Any, variant: Variant, train: list[tuple[list[int], int]],
              heldout: Sequence[Example], cfg: TrainConfig, n_steps: int, device: str,
              progress: Progress) -> tuple[list, list]:
    """The lean loop: AdamW + schedule + accumulation + bf16 autocast, answer-only logits."""
    import torch
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = get_scheduler(SCHEDULERS[cfg.scheduler], opt, num_warmup_steps=math.ceil(cfg.warmup_ratio * n_steps),
                          num_training_steps=n_steps)
    autocast = autocast_for(cfg, device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batches = batch_order([len(ids) for ids, _ in train], cfg.batch_size, variant.seed)
    curve, evals = [], []
    model.train()
    for step in range(1, n_steps + 1):
        total = 0.0
        for _ in range(cfg.grad_accum):
            rows = [train[i] for i in next(batches)]
            n_answer = sum(n for _, n in rows)  # the batch's mean NLL: every pass divides by all its tokens
            widths = [padded_width(len(ids), WIDTH_MULTIPLE) for ids, _ in rows]
            for part in passes(widths, cfg.max_batch_tokens):
                batch = {k: v.to(device) for k, v in collate([rows[j] for j in part], pad, WIDTH_MULTIPLE).items()}
                with training_attention(model, cfg, device), autocast():
                    loss = -answer_logprobs(model, batch).sum() / (n_answer * cfg.grad_accum)
                loss.backward()
                total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        curve.append((step, round(total, 6), lr))
        progress("step", name=variant.name, step=step, total=n_steps, loss=total, lr=lr)
        if cfg.eval_every and step % cfg.eval_every == 0 and step < n_steps:
            evals.append(eval_point(model, tok, variant.name, heldout, cfg, step, autocast, progress))
    return curve, evals


def trainer_batch(seqs: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, Any]:
    """``collate`` for the Trainer, with answer-only logits: ``logits_to_keep = K`` and
    the last K labels. The model's loss shifts labels by one, so logit row j (position
    T-K+j) is scored against label T-K+j+1, as in ``answer_logprobs``."""
    batch = collate(seqs, pad_id)
    labels = batch["labels"]
    k = min(labels.shape[1], int((labels != -100).sum(1).max()) + 1)
    return {**batch, "labels": labels[:, labels.shape[1] - k:], "logits_to_keep": k}


def fit_hf(model: Any, tok: Any, variant: Variant, train: list[tuple[list[int], int]],
            heldout: Sequence[Example], cfg: TrainConfig, n_steps: int, device: str,
            progress: Progress) -> tuple[list, list]:
    """The same recipe through transformers' Trainer (accelerate: multi-GPU / DeepSpeed).

    Same data, padding, schedule and clip; Trainer's own seeded length-grouped sampler.
    The loss is the model's own, made answer-only by ``trainer_batch``."""
    import tempfile

    from transformers import (
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = [{"input_ids": ids, "n_answer": n} for ids, n in train]
    autocast = autocast_for(cfg, device)
    evals: list = []

    class Hooks(TrainerCallback):  # Trainer's extension point; the only class we need
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:  # logging_steps=1: once per optimizer step
                progress("step", name=variant.name, step=state.global_step, total=n_steps,
                         loss=float(logs["loss"]), lr=float(logs.get("learning_rate", 0.0)))

        def on_step_end(self, args, state, control, **kw):
            if cfg.eval_every and state.global_step % cfg.eval_every == 0 and state.global_step < n_steps:
                evals.append(eval_point(model, tok, variant.name, heldout, cfg, state.global_step, autocast, progress))

    with tempfile.TemporaryDirectory(prefix="ensemble-trainer-") as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
            max_steps=n_steps, learning_rate=cfg.learning_rate, lr_scheduler_type=SCHEDULERS[cfg.scheduler],
            warmup_steps=math.ceil(cfg.warmup_ratio * n_steps), weight_decay=cfg.weight_decay,
            max_grad_norm=MAX_GRAD_NORM, bf16=cfg.dtype == "bfloat16", use_cpu=device == "cpu",
            logging_steps=1, save_strategy="no", report_to=[], seed=variant.seed, data_seed=variant.seed,
            disable_tqdm=True, remove_unused_columns=False, train_sampling_strategy="group_by_length",
            dataloader_num_workers=0)
        collator = lambda rows: trainer_batch([(r["input_ids"], r["n_answer"]) for r in rows], pad)
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator, callbacks=[Hooks()])
        trainer.remove_callback(PrinterCallback)  # it prints every log line; we return data
        trainer.train()
    curve = [(h["step"], round(float(h["loss"]), 6), float(h.get("learning_rate", 0.0)))
             for h in trainer.state.log_history if "loss" in h]
    return curve, evals
