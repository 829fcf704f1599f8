"""Voters trained elsewhere: check a PEFT LoRA folder against the base, register it.

``check_adapter(base, adapter_dir)`` reads ``adapter_config.json`` and the tensor
*shapes* in ``adapter_model.safetensors`` (``safe_open``: no weights loaded) and
compares them with the base model built on the meta device (no memory, ~0.1 s):

* ``peft_type`` must be LORA;
* every target module must name modules of the base;
* every ``lora_A`` (r, in_features) / ``lora_B`` (out_features, r) must fit the base
  module's in / out features: an adapter trained on another model fails here with
  the module, both sizes, and the base the adapter says it was trained for;
* the voter kind (``ensemble.engines.hf.kinds``): an aLoRA's invocation token ids must
  exist in the base's vocabulary (and PEFT only activates it with task_type
  CAUSAL_LM); ``layers_to_transform`` must name layers the base has.

``register_adapter(out, path)`` checks it against the run's base model (from
``<out>/manifest.json``, or ``base=``) and records it in ``<out>/voters.json``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ensemble.engines.hf.kinds import VoterKind, kind_from_config
from ensemble.errors import EnsembleError
from ensemble.io import atomic_write_text

VOTERS = "voters.json"
# Which axis of each saved LoRA tensor holds the base layer's in / out features:
# lora_A (r, in), lora_B (out, r), DoRA magnitude (out,), embedding A (r, vocab), B (dim, r).
_IN_DIM = {"lora_A": 1, "lora_embedding_A": 1}
_OUT_DIM = {"lora_B": 0, "lora_magnitude_vector": 0, "lora_embedding_B": 0}


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: Path
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    base_model_name: str | None
    kind: str = "lora"  # "lora" | "alora" | "top" | "alora+top"
    invocation_tokens: tuple[int, ...] = ()  # aLoRA: the adapter acts from these tokens on
    first_layer: int = 0  # top-layer: the adapter leaves layers below this one alone

    def describe(self) -> str:
        """One line for `vote adapters add`."""
        parts = [f"rank {self.rank}", f"modules {', '.join(self.target_modules)}"]
        if self.invocation_tokens:
            parts.insert(0, f"aLoRA, invocation tokens {list(self.invocation_tokens)}")
        if self.first_layer:
            parts.insert(0, f"top layers from {self.first_layer}")
        return ", ".join(parts)


def read_adapter_config(adapter_dir: str | Path) -> dict[str, Any]:
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise EnsembleError(f"{path}: not found; an adapter is a PEFT folder with adapter_config.json "
                            "and adapter_model.safetensors (model.save_pretrained(dir))")
    data = _json_object(path, "re-save the adapter", "expected a JSON object; re-save the adapter")
    if data.get("peft_type") != "LORA":
        raise EnsembleError(f"{path}: peft_type is {data.get('peft_type')!r}; only LoRA adapters "
                            "(peft_type LORA) can be voters")
    for key in ("r", "target_modules"):
        if data.get(key) is None:
            raise EnsembleError(f"{path}: field '{key}' is missing; re-save the adapter with PEFT")
    return data


@lru_cache(maxsize=8)
def _base_shapes(config_json: str) -> dict[str, tuple[int, int]]:
    """module name -> (in_features, out_features) of the base's Linear / Embedding layers.

    The model is built on the meta device: shapes only, no memory, no weights read.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**json.loads(config_json))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shapes: dict[str, tuple[int, int]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            shapes[name] = (mod.in_features, mod.out_features)
        elif isinstance(mod, torch.nn.Embedding):
            shapes[name] = (mod.num_embeddings, mod.embedding_dim)
    return shapes


def base_shapes(base: Any) -> dict[str, tuple[int, int]]:
    """``base``: a model folder (with config.json) or a transformers PretrainedConfig."""
    if hasattr(base, "to_dict"):
        return _base_shapes(json.dumps(base.to_dict(), sort_keys=True, default=str))
    config = Path(base) / "config.json"
    if not config.is_file():
        raise EnsembleError(f"{config}: not found; the base model must be a local Hugging Face folder")
    return _base_shapes(json.dumps(json.loads(config.read_text(encoding="utf-8")), sort_keys=True))


def _matches(target: str, module: str, regex: bool) -> bool:
    """PEFT's rule: a string config is a full regex; a list entry matches the name or its last parts."""
    if target == "all-linear":
        return not module.endswith("lm_head")
    if regex:
        return re.fullmatch(target, module) is not None
    return module == target or module.endswith("." + target)


def check_adapter(base: Any, adapter_dir: str | Path, name: str | None = None) -> AdapterInfo:
    """Check that the LoRA folder ``adapter_dir`` fits ``base``; return what it is."""
    adapter_dir = Path(adapter_dir)
    name = name or adapter_dir.name
    cfg = read_adapter_config(adapter_dir)
    said = f"adapter says base_model_name_or_path={cfg.get('base_model_name_or_path')}"
    shapes = base_shapes(base)
    targets = cfg["target_modules"]
    kinds = sorted({m.rpartition(".")[2] for m in shapes})
    regex = isinstance(targets, str)
    for t in [targets] if regex else targets:
        if not any(_matches(t, m, regex) for m in shapes):
            raise EnsembleError(
                f"adapter {name}: target module '{t}' matches no module of the base "
                f"(it has {', '.join(kinds)}) — trained for a different architecture ({said})")
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise EnsembleError(f"{weights}: not found; save the adapter with model.save_pretrained(dir) "
                            "(safetensors is the default)")
    _check_shapes(name, weights, shapes, said)
    kind = _check_kind(name, adapter_dir, cfg, shapes, said)
    return AdapterInfo(name=name, path=adapter_dir, rank=int(cfg["r"]), alpha=float(cfg.get("lora_alpha", cfg["r"])),
                       target_modules=(targets,) if isinstance(targets, str) else tuple(sorted(targets)),
                       base_model_name=cfg.get("base_model_name_or_path"), kind=kind.name,
                       invocation_tokens=kind.invocation, first_layer=kind.first_layer)


def _check_kind(name: str, adapter_dir: Path, cfg: dict[str, Any], shapes: dict[str, tuple[int, int]],
                said: str) -> VoterKind:
    """The voter kind the config declares, checked against the base's vocabulary and layers."""
    kind = kind_from_config(cfg)
    path = adapter_dir / "adapter_config.json"
    if kind.invocation:
        if cfg.get("task_type") != "CAUSAL_LM":
            raise EnsembleError(f"{path}: an aLoRA (alora_invocation_tokens) with task_type "
                                f"{cfg.get('task_type')!r} is never activated by PEFT; re-save it with "
                                "LoraConfig(task_type='CAUSAL_LM', ...)")
        vocab = next((n for k, (n, _) in shapes.items() if k.endswith("embed_tokens")), None)
        bad = [t for t in kind.invocation if vocab is not None and not 0 <= t < vocab]
        if bad:
            raise EnsembleError(f"adapter {name}: alora_invocation_tokens {bad} are not in the base's vocabulary "
                                f"of {vocab} tokens — trained with a different tokenizer ({said})")
    layers = {int(m) for k in shapes for m in re.findall(r"\.layers\.(\d+)\.", k)}
    asked = cfg.get("layers_to_transform")
    asked = [asked] if isinstance(asked, int) else list(asked or [])
    if layers and any(int(i) not in layers for i in asked):
        raise EnsembleError(f"adapter {name}: layers_to_transform {asked} names layers the base does not have "
                            f"(it has layers 0-{max(layers)}) — trained for a different base ({said})")
    return kind


def _check_shapes(name: str, weights: Path, shapes: dict[str, tuple[int, int]], said: str) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(str(weights), framework="pt")
    except (SafetensorError, OSError) as exc:
        raise EnsembleError(f"{weights}: unreadable safetensors file ({exc}); re-save the adapter") from None
    with handle as f:
        for key in f.keys():  # noqa: SIM118  (a safetensors handle, not a dict: no __iter__)
            # 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'
            #  -> module 'model.layers.0.self_attn.q_proj', part 'lora_A'
            module, _, part = key.removeprefix("base_model.model.").removesuffix(".weight").rpartition(".")
            if part not in _IN_DIM and part not in _OUT_DIM:
                continue
            if module not in shapes:
                raise EnsembleError(f"adapter {name}: has weights for {module}, which the base does not have "
                                    f"— trained for a different base ({said})")
            shape = f.get_slice(key).get_shape()
            n_in, n_out = shapes[module]
            if part in _IN_DIM and shape[_IN_DIM[part]] != n_in:
                raise EnsembleError(f"adapter {name}: {part} of {module} has in_features "
                                    f"{shape[_IN_DIM[part]]}, base has {n_in} — trained for a different base ({said})")
            if part in _OUT_DIM and shape[_OUT_DIM[part]] != n_out:
                raise EnsembleError(f"adapter {name}: {part} of {module} has out_features "
                                    f"{shape[_OUT_DIM[part]]}, base has {n_out} — trained for a different base ({said})")


def load_voters(out_dir: str | Path) -> dict[str, str]:
    """``<out>/voters.json``: name -> adapter folder ({} when absent)."""
    path = Path(out_dir) / VOTERS
    if not path.is_file():
        return {}
    data = _json_object(path, "fix or delete the file", "expected a JSON object of name -> adapter folder")
    return {str(k): str(v) for k, v in data.items()}


def register_adapter(out_dir: str | Path, path: str | Path, name: str | None = None, *,
                     base: Any = None) -> AdapterInfo:
    """Check ``path`` against the run's base model and add it to ``<out>/voters.json``.

    ``base`` defaults to the base model recorded in ``<out>/manifest.json``.
    """
    from ensemble.training.manifest import MANIFEST, find_manifest

    out_dir, path = Path(out_dir), Path(path).resolve()
    if base is None:
        manifest = find_manifest(out_dir)
        if manifest is None:
            raise EnsembleError(f"{out_dir / MANIFEST}: not found; give the base model "
                                "(the config's model:) or run `vote train` into this folder first")
        base = manifest.base_model["path"]
    info = check_adapter(base, path, name)
    voters = load_voters(out_dir)
    if info.name in voters and Path(voters[info.name]).resolve() != path:
        raise EnsembleError(f"{out_dir / VOTERS}: voter '{info.name}' already points to {voters[info.name]}; "
                            "choose another name")
    if (out_dir / "adapters" / info.name).exists() and (out_dir / "adapters" / info.name).resolve() != path:
        raise EnsembleError(f"{out_dir}: a trained variant is already named '{info.name}'; choose another name")
    voters[info.name] = str(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / VOTERS, json.dumps(voters, indent=1, ensure_ascii=False))
    return info


def _json_object(path: Path, fix: str, not_object: str) -> dict[str, Any]:
    """A JSON object from ``path``; invalid JSON names the line and ``fix``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EnsembleError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}); {fix}") from None
    if not isinstance(data, dict):
        raise EnsembleError(f"{path}: {not_object}")
    return data
