"""Train one LoRA variant over the frozen base: setup -> train -> evaluate -> save.

The recipe, top to bottom:

1. examples and tokens (``training.batches``): prompt messages + the answer to learn;
   left-padded batches with labels on the answer only, logits for the last few
   positions only.
2. model: the frozen base with the variant's PEFT LoRA (``training.kinds``: plain,
   top-layer ``layers: top:N``, or activated LoRA ``flavour: alora``).
3. train (``training.loop``): the lean loop or transformers' Trainer.
4. evaluate on the held-out rows (``training.heldout``): cloze accuracy and loss.
5. save: ``save_pretrained`` into ``adapters/.tmp-<name>``, then ``os.replace`` to
   ``adapters/<name>``: a folder under its final name is always complete.

``training.multi`` trains several variants in one process on shared batches.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ensemble.config.schema import TrainConfig
from ensemble.errors import EnsembleError
from ensemble.memory import copy_frozen_float32
from ensemble.training.batches import (  # noqa: F401  (re-exported: the recipe's public names)
    Example,
    Seq,
    answer_logprobs,
    answer_loss,
    build_examples,
    choice_tokens,
    collate,
    encode,
    prompt_ids,
)
from ensemble.training.grid import Variant
from ensemble.training.heldout import eval_batch, evaluate
from ensemble.training.kinds import (
    find_invocation,
    invocation_ids,
    lora_config,
    n_decoder_layers,
)
from ensemble.training.loop import (  # noqa: F401
    MAX_GRAD_NORM,
    autocast_for,
    batch_order,
    bound_heap,
    cuda_determinism,
    fit_hf,
    fit_loop,
    frozen_weights_in_bf16,
    total_steps,
    trainer_batch,
)

log = logging.getLogger(__name__)
Progress = Callable[..., None]


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



def load_lora_model(base_path: str | Path, variant: Variant, cfg: TrainConfig,
                    answer_cue: str = "") -> tuple[Any, Any]:
    """The frozen base (fp32 master weights) with a fresh LoRA seeded by the variant.

    ``answer_cue`` is the aLoRA invocation for tokenizers without a chat template."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ensemble.engines.hf.lora import peft_wrap_quietly

    tok = AutoTokenizer.from_pretrained(base_path)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    invocation = invocation_ids(tok, answer_cue) if variant.flavour == "alora" else None
    torch.manual_seed(variant.seed)  # LoRA A init and dropout masks
    with peft_wrap_quietly():  # PEFT's own deprecated call (engines/hf/lora.py)
        return get_peft_model(base, lora_config(variant, cfg, n_decoder_layers(base), invocation)), tok


def check_invocation(name: str, seqs: Sequence[Seq], invocation: Sequence[int], ids: Sequence[str]) -> None:
    """aLoRA rows must hold the invocation (last occurrence) at or before the answer's
    first token, else PEFT would leave the adapter off on the answer: it learns nothing."""
    for (seq, n_answer), row_id in zip(seqs, ids):
        at = find_invocation(seq, invocation)
        if at < 0 or at > len(seq) - n_answer:
            raise EnsembleError(f"variant '{name}': training row '{row_id}' has no aLoRA invocation tokens "
                                f"{list(invocation)} before its answer (after truncation to train.max_length); "
                                "raise train.max_length or use another flavour")


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


@cuda_determinism()
def train_variant(base_path: str | Path, variant: Variant, examples: Sequence[Example],
                  heldout: Sequence[Example], cfg: TrainConfig, out_dir: str | Path, *,
                  progress: Progress | None = None) -> VariantResult:
    """Train, evaluate and save one variant; return its curves and held-out scores."""
    import torch

    progress = progress or (lambda event, **info: None)
    if not examples:
        raise EnsembleError(f"variant '{variant.name}': no training rows; add training data or change its split")
    bound_heap()
    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = load_lora_model(base_path, variant, cfg, answer_cue=examples[0].prefix)
    if cfg.dtype == "bfloat16" and cfg.trainer == "loop" and variant.flavour != "dora":
        frozen_weights_in_bf16(model)  # every forward runs under bf16 autocast: same products
        copy_frozen_float32(model)  # lets the model file's mapping go (ensemble.memory)
    model.to(device)
    train = [encode(tok, ex, cfg.max_length) for ex in examples]
    invocation = model.peft_config["default"].alora_invocation_tokens
    if invocation:
        check_invocation(variant.name, train, invocation, [ex.id for ex in examples])
    n_steps = total_steps(len(train), cfg)
    progress("train_start", name=variant.name, n_train=len(train), n_heldout=len(heldout), total=n_steps)
    fit = fit_hf if cfg.trainer == "hf" else fit_loop
    curve, evals = fit(model, tok, variant, train, heldout, cfg, n_steps, device, progress)
    accuracy, loss, logliks = evaluate(model, tok, heldout, batch_size=eval_batch(cfg), max_length=cfg.max_length,
                                       autocast=autocast_for(cfg, device))
    evals.append((n_steps, loss, accuracy))
    path = save_adapter(model, out_dir, variant.name)
    seconds = time.perf_counter() - started
    progress("train_done", name=variant.name, heldout_accuracy=accuracy, heldout_loss=loss, seconds=seconds)
    return VariantResult(variant.name, path, tuple(curve), tuple(evals), accuracy, loss, tuple(logliks),
                         n_steps, seconds)
