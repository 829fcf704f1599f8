"""Training rows -> token batches -> answer log-probabilities.

1. examples: ``build_examples(items, template, mode)`` -> prompt messages + the
   assistant reply to learn (``prompts.training_target``: "Answer: B" / "Answer: Paris")
   + what to score for held-out accuracy (``prompts.choice_continuations``).
2. tokens: chat template over the prompt (``add_generation_prompt=True``), then the
   target tokens + EOS. Labels are -100 on the prompt: the loss is on the answer only.
   Sequences are *left*-padded with explicit position ids, so every answer ends at
   the last position and the model computes logits for the last few positions only
   (``logits_to_keep``): full (B, T, vocab) logits cost SmolLM2 (vocab 49152, hidden
   576) 1.46x more time per token on CPU (4.05 vs 2.77 s per 1k padded tokens).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ensemble import tokens
from ensemble.data.chat import ChatExample
from ensemble.data.items import Item

Message = dict[str, str]
Seq = tuple[list[int], int]  # (prompt + answer token ids, number of answer tokens at the end)
# Training batches are padded to a width that is a multiple of 16 tokens. Why: on CPU every
# new (rows x width) shape makes torch's bf16 matmuls build and keep new kernels (oneDNN's
# cache, ~0.2 MB an entry, capped by ensemble.memory.bound_kernel_cache, and more besides:
# with that cache off, 350 new linear shapes fwd + bwd still kept +310 MB), and with exact
# widths nearly every batch brings a new shape: resident memory grew 13-45 MB per step of
# the quickstart's single LoRA. Rounded widths repeat: its 114 batches (rows of 51-155 tokens) went through
# 125 distinct (rows, width) passes, 16 once rounded, for 7.9% more padded tokens.
WIDTH_MULTIPLE = 16


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


def padded_width(length: int, multiple: int) -> int:
    """``length`` rounded up to a multiple of ``multiple`` (the width ``collate`` pads to)."""
    return -(-length // multiple) * multiple


def collate(seqs: Sequence[tuple[list[int], int]], pad_id: int, multiple: int = 1) -> dict[str, Any]:
    """Left-pad to (B, T): input_ids, attention_mask, position_ids, labels (-100 off the answer).

    ``multiple``: T is the longest row rounded up to a multiple of it (``WIDTH_MULTIPLE``
    in training). Padding is masked (attention mask 0, labels -100), so the loss is the
    same to float rounding; what it buys is few distinct shapes (see ``WIDTH_MULTIPLE``)."""
    import torch

    width = padded_width(max(len(ids) for ids, _ in seqs), multiple)
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


def passes(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Positions of a batch's rows, cut into forward passes of at most ``max_tokens``
    padded tokens each (one row at least; ``0``: one pass). Rows go in length order,
    so a pass pads little. The gradient of a batch is the sum over its passes (each
    pass's summed NLL over the batch's answer-token count), so the split changes
    memory, not the result: activations kept for backward scale with the pass."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if not max_tokens:
        return [order]
    out: list[list[int]] = [[]]
    for i in order:
        if out[-1] and (len(out[-1]) + 1) * lengths[i] > max_tokens:
            out.append([])
        out[-1].append(i)
    return out


def answer_rows(logp: Any, labels: Any) -> tuple[Any, Any]:
    """(B,) summed answer log-probability and (B,) answer-token count per row, from
    ``answer_logprobs``' (B, K-1) output and the batch's labels."""
    return logp.sum(1), (labels != -100).sum(1)
