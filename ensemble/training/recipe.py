"""Train one LoRA variant over the frozen base: setup -> train -> evaluate -> save.

The recipe, top to bottom:

1. examples: ``build_examples(items, template, mode)`` -> prompt messages + the
   assistant reply to learn (``prompts.training_target``: "Answer: B" / "Answer: Paris")
   + what to score for held-out accuracy (``prompts.choice_continuations``).
2. tokens (``ensemble.tokens``, as the engines): chat template over the prompt
   (``add_generation_prompt=True``), then the target tokens + EOS. Labels are -100
   on the prompt: the loss is on the answer only.
   Sequences are *left*-padded with explicit position ids, so every answer ends at
   the last position and the model computes logits for the last few positions only
   (``logits_to_keep``): full (B, T, vocab) logits cost SmolLM2 (vocab 49152, hidden
   576) 1.46x more time per token on CPU (4.05 vs 2.77 s per 1k padded tokens).
3. train: PEFT LoRA on the frozen base; AdamW over the LoRA parameters; warmup +
   linear/cosine/constant schedule; gradient accumulation; grad-norm clip 1.0; bf16
   autocast when ``dtype: bfloat16``; length-bucketed batches in a seeded order.
   ``trainer: loop`` (default) is the lean loop below; ``trainer: hf`` runs the same
   model, data, answer-only logits and schedule through transformers' ``Trainer``
   (``_fit_hf``: accelerate gives multi-GPU / DeepSpeed scale-out). Measured on CPU
   (SmolLM2, bf16, batch 8 x ~141 tokens, one thread): loop 3.11 s/step, Trainer
   3.42 s/step (1.03x per padded token: its length grouping pads more), the stock
   Trainer with full logits 4.96 s/step.
4. evaluate on the held-out rows: cloze scoring (mean log-likelihood of each option's
   continuation after the scoring prefix; argmax = prediction) and the held-out loss
   (the gold option's per-token NLL, from the same pass).
5. save: ``save_pretrained`` into ``adapters/.tmp-<name>``, then ``os.replace`` to
   ``adapters/<name>``: a folder under its final name is always complete.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ensemble import tokens
from ensemble.config.schema import TrainConfig
from ensemble.data.chat import ChatExample
from ensemble.data.items import Item
from ensemble.errors import EnsembleError
from ensemble.training.grid import Variant

log = logging.getLogger(__name__)
Message = dict[str, str]
Progress = Callable[..., None]
MAX_GRAD_NORM = 1.0
_SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


@dataclass(frozen=True)
class Example:
    """One training / held-out row. ``choices`` are the continuations scored after
    ``prefix`` (empty for free-form chat examples: no accuracy, loss only)."""

    id: str
    messages: tuple[Message, ...]
    target: str
    prefix: str = ""
    choices: tuple[str, ...] = ()
    gold: int | None = None


@dataclass(frozen=True)
class VariantResult:
    name: str
    adapter: Path
    loss_curve: tuple[tuple[int, float, float], ...]  # (step, train loss, lr)
    eval_curve: tuple[tuple[int, float | None, float | None], ...]  # (step, held-out loss, accuracy)
    heldout_accuracy: float | None
    heldout_loss: float | None
    heldout_logliks: tuple[tuple[float, ...], ...]  # per held-out item: mean loglik of each choice
    n_steps: int
    seconds: float


def build_examples(rows: Sequence[Item | ChatExample], template: Any, mode: str) -> list[Example]:
    """Items -> prompt + target + scored choices; ChatExamples keep their own target."""
    from ensemble.prompts import (
        choice_continuations,
        render_messages,
        scoring_prefix,
        training_target,
    )

    out = []
    for row in rows:
        if isinstance(row, ChatExample):
            out.append(Example(row.id, tuple(row.messages), row.target))
            continue
        choices = choice_continuations(row, mode) if row.options else ()  # type: ignore[arg-type]
        gold = row.letters.index(row.answer) if row.options and row.answer in row.letters else None
        out.append(Example(row.id, render_messages(template, row), training_target(template, row, mode),  # type: ignore[arg-type]
                           scoring_prefix(template, row), choices, gold))
    return out


# --- tokens ------------------------------------------------------------------------------


def prompt_ids(tok: Any, messages: Sequence[Message]) -> list[int]:
    """The prompt's ids, assistant turn opened (``ensemble.tokens``: chat template, or
    plain text for a model without one)."""
    return tokens.prompt_ids(tok, messages=messages)


def encode(tok: Any, ex: Example, max_length: int) -> tuple[list[int], int]:
    """(prompt + target + EOS token ids, number of answer tokens at the end).

    Prompt and target are split as the engines split context and option
    (``tokens.split``), so the answer tokens are the ones later scored.
    Too long: the prompt loses tokens from its start (the answer is kept whole unless
    it alone is longer than ``max_length``; then its end is cut)."""
    text, special = tokens.render(tok, ex.messages)
    prompt, (target,) = tokens.split(tok, text, [ex.target], special)
    answer = (target + [tok.eos_token_id])[:max_length - 1]
    return prompt[-(max_length - len(answer)):] + answer, len(answer)


def choice_tokens(tok: Any, ex: Example, max_length: int) -> tuple[list[int], list[list[int]]]:
    """(context ids = prompt + scoring prefix, one continuation id list per choice), by
    ``tokens.cloze_ids`` as the engines score them; the context is cut from its start so
    that context + the longest continuation fits ``max_length``."""
    text, special = tokens.render(tok, ex.messages)
    context, conts = tokens.cloze_ids(tok, text + ex.prefix, special, ex.choices, where=f"example '{ex.id}'")
    return context[-max(1, max_length - max(len(c) for c in conts)):], conts


def collate(seqs: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, Any]:
    """Left-pad to (B, T): input_ids, attention_mask, position_ids, labels (-100 off the answer)."""
    import torch

    width = max(len(ids) for ids, _ in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for b, (seq, n_answer) in enumerate(seqs):
        ids[b, width - len(seq):] = torch.tensor(seq)
        mask[b, width - len(seq):] = 1
        labels[b, width - n_answer:] = torch.tensor(seq[len(seq) - n_answer:])
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": labels}


def answer_logprobs(model: Any, batch: dict[str, Any]) -> Any:
    """(B, K-1) log-probabilities of the last K-1 tokens (labels -100 elsewhere -> 0 there).

    Only the last K positions get logits (K = longest answer + 1): left padding puts
    every answer at the end."""
    import torch

    labels = batch["labels"]
    k = min(labels.shape[1], int((labels != -100).sum(1).max()) + 1)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], logits_to_keep=k).logits.float()  # (B, K, V)
    target = labels[:, labels.shape[1] - k + 1:]  # (B, K-1): the token each logit row predicts
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logp * (target != -100)


def answer_loss(model: Any, batch: dict[str, Any]) -> Any:
    """Mean negative log-likelihood over the batch's answer tokens (a scalar tensor)."""
    logp = answer_logprobs(model, batch)
    return -logp.sum() / (batch["labels"] != -100).sum().clamp(min=1)


# --- held-out evaluation ------------------------------------------------------------------


def evaluate(model: Any, tok: Any, heldout: Sequence[Example], *, batch_size: int = 8, max_length: int = 256,
             autocast: Callable[[], Any] = contextlib.nullcontext
             ) -> tuple[float | None, float | None, list[tuple[float, ...]]]:
    """(accuracy by cloze scoring, answer loss, per-item choice mean logliks) on ``heldout``.

    Accuracy: argmax over each item's choices of the mean log-likelihood of the
    continuation tokens after the scoring prefix, computed by the HF engine's scorer
    (``engines.hf_score.score_cloze``: the context runs once per item, its KV cache is
    shared by the options; 3x faster than a sequence per option), so a variant is
    judged exactly as `vote run` will score it. Rows go through in length order
    (little padding). Loss: for scored rows, the mean NLL per token of the gold
    option's continuation (what the variant has to learn; it comes from the same
    pass, so evaluation costs one forward per row, not two); free-form chat rows
    (no choices) are scored by the NLL of their whole answer (target + EOS)."""
    import torch

    from ensemble.engines.hf.score import ScoreRow, score_cloze

    if not heldout:
        return None, None, []
    model.eval()
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    scored = [ex for ex in heldout if ex.choices]
    rows = []
    for ex in scored:
        context, conts = choice_tokens(tok, ex, max_length)
        rows.append(ScoreRow(prefix=context, adapter="variant", options=conts))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].prefix))
    chat = [encode(tok, ex, max_length) for ex in heldout if not ex.choices]
    forward = lambda adapters, **kwargs: model(**kwargs)
    nll, n = 0.0, 0
    with torch.no_grad(), autocast():
        for i in range(0, len(order), batch_size):
            score_cloze(forward, [rows[j] for j in order[i:i + batch_size]], pad_id=pad, device=str(device))
        for i in range(0, len(chat), batch_size):
            batch = {k: v.to(device) for k, v in collate(chat[i:i + batch_size], pad).items()}
            nll -= float(answer_logprobs(model, batch).sum())
            n += int((batch["labels"] != -100).sum())
    model.train()
    per_item = [tuple(r.logliks) for r in rows]
    judged = [(ll, ex.gold) for ll, ex in zip(per_item, scored) if ex.gold is not None]
    for ll, gold in judged:  # mean loglik of the gold continuation = -(its per-token NLL)
        nll, n = nll - ll[gold], n + 1
    accuracy = float(np.mean([int(np.argmax(ll)) == g for ll, g in judged])) if judged else None
    return accuracy, (nll / n if n else None), per_item


# --- training ------------------------------------------------------------------------------


def load_lora_model(base_path: str | Path, variant: Variant, cfg: TrainConfig) -> tuple[Any, Any]:
    """The frozen base (fp32 master weights) with a fresh LoRA seeded by the variant."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ensemble.engines.hf.lora import peft_wrap_quietly

    tok = AutoTokenizer.from_pretrained(base_path)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    torch.manual_seed(variant.seed)  # LoRA A init and dropout masks
    modules: Any = "all-linear" if variant.target_modules == ("all-linear",) else list(variant.target_modules)
    lora = LoraConfig(r=variant.rank, lora_alpha=variant.alpha, target_modules=modules,
                      lora_dropout=cfg.lora_dropout, use_rslora=variant.flavour == "rslora",
                      use_dora=variant.flavour == "dora", task_type="CAUSAL_LM")
    with peft_wrap_quietly():  # PEFT's own deprecated call (engines/hf/lora.py)
        return get_peft_model(base, lora), tok


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


def _autocast(cfg: TrainConfig, device: str) -> Callable[[], Any]:
    import torch

    return lambda: torch.autocast(device, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")


def _fit_loop(model: Any, tok: Any, variant: Variant, train: list[tuple[list[int], int]],
              heldout: Sequence[Example], cfg: TrainConfig, n_steps: int, device: str,
              progress: Progress) -> tuple[list, list]:
    """The lean loop: AdamW + schedule + accumulation + bf16 autocast, answer-only logits."""
    import torch
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = get_scheduler(_SCHEDULERS[cfg.scheduler], opt, num_warmup_steps=math.ceil(cfg.warmup_ratio * n_steps),
                          num_training_steps=n_steps)
    autocast = _autocast(cfg, device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batches = batch_order([len(ids) for ids, _ in train], cfg.batch_size, variant.seed)
    curve, evals = [], []
    model.train()
    for step in range(1, n_steps + 1):
        total = 0.0
        for _ in range(cfg.grad_accum):
            batch = {k: v.to(device) for k, v in collate([train[i] for i in next(batches)], pad).items()}
            with autocast():
                loss = answer_loss(model, batch) / cfg.grad_accum
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
            evals.append(_eval_point(model, tok, variant, heldout, cfg, step, autocast, progress))
    return curve, evals


def eval_batch(cfg: TrainConfig) -> int:
    """Held-out rows per forward pass: no gradients are kept, so larger than training's."""
    return max(16, cfg.batch_size)


def _eval_point(model: Any, tok: Any, variant: Variant, heldout: Sequence[Example], cfg: TrainConfig,
                step: int, autocast: Any, progress: Progress) -> tuple[int, float | None, float | None]:
    acc, loss, _ = evaluate(model, tok, heldout, batch_size=eval_batch(cfg), max_length=cfg.max_length,
                            autocast=autocast)
    progress("eval", name=variant.name, step=step, heldout_loss=loss, heldout_accuracy=acc)
    return step, loss, acc


def trainer_batch(seqs: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, Any]:
    """``collate`` for the Trainer, with answer-only logits: ``logits_to_keep = K`` and
    the last K labels. The model's loss shifts labels by one, so logit row j (position
    T-K+j) is scored against label T-K+j+1, as in ``answer_logprobs``."""
    batch = collate(seqs, pad_id)
    labels = batch["labels"]
    k = min(labels.shape[1], int((labels != -100).sum(1).max()) + 1)
    return {**batch, "labels": labels[:, labels.shape[1] - k:], "logits_to_keep": k}


def _fit_hf(model: Any, tok: Any, variant: Variant, train: list[tuple[list[int], int]],
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
    autocast = _autocast(cfg, device)
    evals: list = []

    class Hooks(TrainerCallback):  # Trainer's extension point; the only class we need
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:  # logging_steps=1: once per optimizer step
                progress("step", name=variant.name, step=state.global_step, total=n_steps,
                         loss=float(logs["loss"]), lr=float(logs.get("learning_rate", 0.0)))

        def on_step_end(self, args, state, control, **kw):
            if cfg.eval_every and state.global_step % cfg.eval_every == 0 and state.global_step < n_steps:
                evals.append(_eval_point(model, tok, variant, heldout, cfg, state.global_step, autocast, progress))

    with tempfile.TemporaryDirectory(prefix="ensemble-trainer-") as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
            max_steps=n_steps, learning_rate=cfg.learning_rate, lr_scheduler_type=_SCHEDULERS[cfg.scheduler],
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


def save_adapter(model: Any, out_dir: str | Path, name: str) -> Path:
    """PEFT folder at ``<out>/adapters/<name>``, published only when complete."""
    root = Path(out_dir) / "adapters"
    tmp, final = root / f".tmp-{name}", root / name
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def train_variant(base_path: str | Path, variant: Variant, examples: Sequence[Example],
                  heldout: Sequence[Example], cfg: TrainConfig, out_dir: str | Path, *,
                  progress: Progress | None = None) -> VariantResult:
    """Train, evaluate and save one variant; return its curves and held-out scores."""
    import torch

    progress = progress or (lambda event, **info: None)
    if not examples:
        raise EnsembleError(f"variant '{variant.name}': no training rows; add training data or change its split")
    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = load_lora_model(base_path, variant, cfg)
    model.to(device)
    train = [encode(tok, ex, cfg.max_length) for ex in examples]
    n_steps = total_steps(len(train), cfg)
    progress("train_start", name=variant.name, n_train=len(train), n_heldout=len(heldout), total=n_steps)
    fit = _fit_hf if cfg.trainer == "hf" else _fit_loop
    curve, evals = fit(model, tok, variant, train, heldout, cfg, n_steps, device, progress)
    accuracy, loss, logliks = evaluate(model, tok, heldout, batch_size=eval_batch(cfg), max_length=cfg.max_length,
                                       autocast=_autocast(cfg, device))
    evals.append((n_steps, loss, accuracy))
    path = save_adapter(model, out_dir, variant.name)
    seconds = time.perf_counter() - started
    progress("train_done", name=variant.name, heldout_accuracy=accuracy, heldout_loss=loss, seconds=seconds)
    return VariantResult(variant.name, path, tuple(curve), tuple(evals), accuracy, loss, tuple(logliks),
                         n_steps, seconds)
