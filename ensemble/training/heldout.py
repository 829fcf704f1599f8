"""Held-out evaluation of a variant during and after training.

Cloze scoring (mean log-likelihood of each option's continuation after the scoring
prefix; argmax = prediction) and the held-out loss (the gold option's per-token NLL,
from the same pass).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ensemble.config.schema import TrainConfig
from ensemble.training.batches import (
    Example,
    answer_logprobs,
    choice_tokens,
    collate,
    encode,
)

Progress = Callable[..., None]


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
    forward = _forward(model)
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


def _forward(model: Any) -> Any:
    """The scorer's forward for ``model``'s active adapter. An aLoRA is active from its
    invocation on: PEFT finds it in ``input_ids``, but the option pass runs on top of the
    prefix's cache with option tokens only (no invocation in them), so it gets an explicit
    offset covering every token (the invocation ended the prefix)."""
    config = getattr(model, "active_peft_config", None)
    alora = bool(getattr(config, "alora_invocation_tokens", None))

    def forward(adapters: Any, **kwargs: Any) -> Any:
        if alora and (kwargs.get("past_key_values") is not None or kwargs.get("cache") is not None):
            ids = kwargs["input_ids"]
            kwargs["alora_offsets"] = [ids.shape[1]] * ids.shape[0]
        return model(**kwargs)
    return forward


def eval_batch(cfg: TrainConfig) -> int:
    """Held-out rows per forward pass: no gradients are kept, so larger than training's."""
    return max(16, cfg.batch_size)


def eval_point(model: Any, tok: Any, name: str, heldout: Sequence[Example], cfg: TrainConfig,
                step: int, autocast: Any, progress: Progress) -> tuple[int, float | None, float | None]:
    acc, loss, _ = evaluate(model, tok, heldout, batch_size=eval_batch(cfg), max_length=cfg.max_length,
                            autocast=autocast)
    progress("eval", name=name, step=step, heldout_loss=loss, heldout_accuracy=acc)
    return step, loss, acc
