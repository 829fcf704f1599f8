"""Loading for the HF engine: one base model, K PEFT LoRA adapters on top of it.

``load_model(spec_model, dtype, device)`` accepts a local HF folder, a ``.gguf``
file, a bundled name (``ensemble.engines.models``: "smollm2") or, when nothing local
matches, a hub id (only if the hub is reachable). ``attach_adapters`` wraps the
base once in a ``PeftModel`` and loads every adapter under its voter name, so all
voters share the base weights (memory grows by the LoRA matrices only).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from ensemble.engines.models import MODELS, resolve_model
from ensemble.errors import EnsembleError

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def pick_device(option: str | None) -> str:
    """``"auto"``/None: CUDA when present, else CPU."""
    import torch

    if option in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(option)


def pick_dtype(option: str | None) -> Any:
    """Engine option ``dtype`` -> torch dtype: float32 (default), or bfloat16 (~2x faster on CPU)."""
    import torch

    name = option or "float32"
    if name not in DTYPES:
        raise EnsembleError(f"engine option 'dtype': unknown dtype '{name}'; use one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def load_model(spec_model: str, dtype: Any, device: str) -> tuple[Any, Any]:
    """Load (model, tokenizer) for a folder, .gguf file, bundled name or hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not spec_model:
        raise EnsembleError(f"engine 'model' is empty; set it to a model folder, a .gguf file or "
                            f"a bundled name ({', '.join(MODELS.names())})")
    local = Path(spec_model).expanduser()
    if not local.exists() and spec_model not in MODELS and _HUB_ID.match(spec_model):
        return _load_from_hub(spec_model, dtype, device)
    path = resolve_model(spec_model)
    kwargs: dict[str, Any] = {}
    where = path
    if path.is_file():  # .gguf: transformers dequantizes it on load
        kwargs["gguf_file"] = path.name
        where = path.parent
    try:
        tok = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise EnsembleError(f"{path}: cannot load the model ({_first_line(exc)}); "
                            f"check that it is a complete causal-LM folder or GGUF file") from None
    return _finish(model, tok, device)


def _load_from_hub(model_id: str, dtype: Any, device: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_id)
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype)
    except Exception as exc:  # noqa: BLE001  (offline, gated, typo: all the same fix)
        raise EnsembleError(
            f"Model '{model_id}' is not a local folder or file and could not be fetched from the hub "
            f"({_first_line(exc)}); download it to a folder and point 'model' at it, or use "
            f"a bundled name ({', '.join(MODELS.names())})") from None
    return _finish(model, tok, device)


def _finish(model: Any, tok: Any, device: str) -> tuple[Any, Any]:
    if tok.pad_token_id is None:  # we pad ourselves; any id works since padded positions are masked
        tok.pad_token = tok.eos_token
    model.to(device).eval()
    model.requires_grad_(False)
    return model, tok


def check_adapter_folder(name: str, path: str | Path) -> Path:
    """A PEFT adapter folder must exist and hold ``adapter_config.json``."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise EnsembleError(f"adapter '{name}': folder {folder} does not exist; fix its path in 'adapters'")
    if not (folder / "adapter_config.json").is_file():
        raise EnsembleError(f"adapter '{name}': {folder} has no adapter_config.json; "
                            f"point it at a PEFT adapter folder (the output of save_pretrained)")
    return folder


def attach_adapters(base: Any, adapters: dict[str, str | Path], dtype: Any) -> Any:
    """Wrap ``base`` in one PeftModel holding every adapter; the base itself if none."""
    import torch
    from peft import PeftModel

    if not adapters:
        return base
    folders = {name: check_adapter_folder(name, path) for name, path in adapters.items()}
    # Keep LoRA weights in the base dtype: PEFT's default upcasts them to fp32 under a
    # bf16 base, which costs a cast per LoRA layer per forward for no visible gain.
    keep = dtype != torch.float32
    model = None
    for name, folder in folders.items():
        try:
            if model is None:
                from ensemble.engines.hf.lora import peft_wrap_quietly

                with peft_wrap_quietly():  # PEFT's own is_gradient_checkpointing read (see there)
                    model = PeftModel.from_pretrained(base, folder, adapter_name=name,
                                                      autocast_adapter_dtype=not keep, is_trainable=False)
            else:
                model.load_adapter(folder, adapter_name=name, autocast_adapter_dtype=not keep,
                                   is_trainable=False)
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            raise EnsembleError(f"adapter '{name}': cannot load {folder} onto this base model "
                                f"({_first_line(exc)}); was it trained on the same base?") from None
    model.eval()
    return model


def contiguous_lm_head(model: Any) -> None:
    """Make the lm_head input contiguous before the matmul.

    With ``logits_to_keep`` the model slices ``hidden[:, -1:, :]`` (a strided view);
    on CPU, F.linear on that view under a PeftModel copied the frozen weight once
    per row (about 2x slower and GBs of peak memory on 64 rows). A contiguous copy of
    the (B, T, H) input costs nothing next to the (B, T, V) output.
    """
    head = model.get_output_embeddings()
    if head is None or getattr(head, "_ensemble_contiguous", False):
        return
    head.register_forward_pre_hook(lambda _mod, args: tuple(a.contiguous() for a in args))
    head._ensemble_contiguous = True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
