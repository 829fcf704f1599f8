"""Which PEFT folders vLLM can serve, and the ``max_lora_rank`` that fits them.

vLLM reads ``adapter_config.json`` into ``PEFTHelper`` (``vllm/lora/peft_helper.py``) and
refuses, in ``PEFTHelper._validate_features`` / ``validate_legal``, adapters it cannot run
as plain LoRA. ``vllm_refusals`` repeats those checks *before* vLLM starts (its own
message comes from a worker process, minutes into loading, without the voter's name), so
a run or ``vote serve --engine vllm`` stops at once naming the voter, the reason, and the
engine that can run it (the HF engine loads adapters through PEFT itself).

``max_lora_rank`` must be one of vLLM's ``MaxLoRARanks`` (``vllm/config/lora.py``). Rank 1
joined that list in vLLM 0.11.1 (PR #26461, "[Core] Relax the LoRA max rank"); the extra
pins ``vllm>=0.10``, so without an installed vLLM to ask, a rank-1 adapter gets 8.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, get_args

from ensemble.errors import EnsembleError

# vllm/config/lora.py ``MaxLoRARanks`` as of vLLM 0.10 (no 1): valid for every vLLM the extra allows.
ALLOWED_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_MAX_LORA_RANK = 16  # LoRAConfig.max_lora_rank's default
# PEFTHelper._init_is_supported (vLLM main, 2026): string inits that only set the *initial*
# adapter weights, so the saved adapter is a plain LoRA. Every other string (pissa*, olora,
# loftq, corda, ...) rewrites the base weights when PEFT loads the adapter.
PLAIN_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
# PEFTHelper._validate_features: modules_to_save may only name classification heads.
HEAD_MODULES = ("classifier", "score")
REQUIRED = ("r", "lora_alpha", "target_modules")  # PEFTHelper.from_dict's required fields


def allowed_lora_ranks() -> tuple[int, ...]:
    """The installed vLLM's ``MaxLoRARanks`` when it can be imported, else vLLM 0.10's."""
    try:
        from vllm.config.lora import MaxLoRARanks
    except Exception:  # noqa: BLE001  (no vLLM, an older layout, or one that fails to import)
        return ALLOWED_LORA_RANKS
    ranks = tuple(sorted(int(r) for r in get_args(MaxLoRARanks)))
    return ranks or ALLOWED_LORA_RANKS


def read_config(path: str | Path) -> dict[str, Any]:
    cfg_path = Path(path) / "adapter_config.json"
    if not cfg_path.exists():
        raise EnsembleError(f"{cfg_path}: not found; point the adapter at a PEFT LoRA folder "
                            "(one holding adapter_config.json)")
    from ensemble.training.adapters import (
        _json_object,  # the project's one adapter-JSON reader
    )

    return _json_object(cfg_path, "re-save the adapter with PEFT",
                        "expected a JSON object; re-save the adapter with PEFT")


def config_rank(cfg: Mapping[str, Any], where: str | Path = "adapter_config.json") -> int:
    """``r``, or the largest ``rank_pattern`` value (validate_legal checks the max of both)."""
    try:
        return max([int(cfg["r"]), *(int(r) for r in (cfg.get("rank_pattern") or {}).values())])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise EnsembleError(f"{where}: field 'r' missing or not an integer ({e}); "
                            "re-save the adapter with PEFT") from None


def adapter_rank(path: str | Path) -> int:
    """The LoRA rank of a PEFT folder: ``r`` (or the largest ``rank_pattern`` value)."""
    return config_rank(read_config(path), Path(path) / "adapter_config.json")


def max_lora_rank_for(paths: Iterable[str | Path], allowed: tuple[int, ...] | None = None) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that fits every adapter (16 when none)."""
    allowed = allowed or allowed_lora_ranks()
    ranks = [adapter_rank(p) for p in paths]
    if not ranks:
        return DEFAULT_MAX_LORA_RANK
    need = max(ranks)
    for value in allowed:
        if value >= need:
            return value
    raise EnsembleError(f"adapter rank {need} exceeds vLLM's largest max_lora_rank {allowed[-1]}; "
                        f"train the adapters with r <= {allowed[-1]}, or use the hf engine for them")


def vllm_refusals(cfg: Mapping[str, Any], max_lora_rank: int, largest: int | None = None) -> list[str]:
    """Why vLLM's PEFTHelper would refuse this adapter_config (empty: it loads)."""
    why: list[str] = []
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        return [f"adapter_config.json lacks {', '.join(missing)} (PEFTHelper.from_dict requires them)"]
    peft_type = cfg.get("peft_type")
    if peft_type not in (None, "LORA"):
        why.append(f"peft_type is {peft_type!r}; vLLM serves LoRA adapters only")
    extra = [m for m in cfg.get("modules_to_save") or () if m not in HEAD_MODULES]
    if extra:
        why.append(f"modules_to_save {extra} (vLLM allows only the classifier/score heads)")
    if cfg.get("use_dora"):
        why.append("DoRA (use_dora: true)")
    if cfg.get("bias", "none") != "none":
        why.append(f"bias {cfg['bias']!r} (vLLM supports bias 'none' only)")
    if cfg.get("lora_bias"):
        why.append("LoRA bias (lora_bias: true)")
    init = cfg.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in PLAIN_INITS:
        why.append(f"init_lora_weights {init!r} (PiSSA/OLoRA/LoftQ/CorDA inits change the base weights)")
    if cfg.get("alora_invocation_tokens"):
        why.append("it is an aLoRA adapter (alora_invocation_tokens)")
    if cfg.get("layer_replication"):
        why.append("layer_replication")
    if cfg.get("use_bdlora"):
        why.append("block-diagonal LoRA (use_bdlora)")
    if cfg.get("use_qalora"):
        why.append("QALoRA (use_qalora)")
    try:
        rank = config_rank(cfg)
    except EnsembleError:
        return [*why, f"r {cfg.get('r')!r} is not an integer"]
    if rank <= 0:
        why.append(f"rank {rank} (r must be a positive integer)")
    elif largest is not None and rank > largest:
        why.append(f"rank {rank} is above vLLM's largest max_lora_rank {largest}")
    elif rank > max_lora_rank:
        why.append(f"rank {rank} is above max_lora_rank {max_lora_rank}")
    return why


def check_vllm_adapters(adapters: Mapping[str, str | Path]) -> int:
    """Refuse (naming the voter) any adapter vLLM would refuse; return the ``max_lora_rank``
    to start vLLM with: the smallest allowed value that fits every adapter."""
    allowed = allowed_lora_ranks()
    configs = {name: read_config(path) for name, path in adapters.items()}
    ranks = []
    for cfg in configs.values():
        try:
            ranks.append(config_rank(cfg))
        except EnsembleError:
            pass  # refused per voter below
    fitting = [r for r in ranks if 0 < r <= allowed[-1]]
    max_lora_rank = next(v for v in allowed if v >= max(fitting)) if fitting else DEFAULT_MAX_LORA_RANK
    for name, cfg in configs.items():
        why = vllm_refusals(cfg, max_lora_rank, allowed[-1])
        if why:
            raise EnsembleError(f"voter '{name}' ({adapters[name]}): vLLM cannot load this adapter: "
                                f"{'; '.join(why)}; use the hf engine for it (run.engine: hf, or "
                                "vote serve --engine hf)")
    return max_lora_rank
