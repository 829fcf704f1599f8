"""The ``vllm serve`` command line that serves the voters from vLLM's own OpenAI server.

Read against vLLM's source:

* ``--lora-modules`` takes ``name=path`` *or* a JSON object per module
  (``vllm/entrypoints/openai/cli_args.py``, ``LoRAParserAction``): an item holding ``=``
  and no ``,`` is split on ``=``, anything else is parsed as JSON into ``LoRAModulePath``
  (``name``, ``path``, ``base_model_name``). A path with ``=`` or ``,`` breaks the first
  form, so every module is passed as JSON.
* ``--generation-config vllm`` makes the server use vLLM's sampling defaults instead of the
  model's ``generation_config.json`` (``ModelConfig.generation_config``, default "auto"):
  a request that leaves e.g. ``top_k`` or ``repetition_penalty`` unset then samples as the
  offline engine does, which passes explicit ``SamplingParams``.
* ``--max-lora-rank`` must be one of ``MaxLoRARanks`` (``vllm/config/lora.py``); the
  adapters themselves are checked with ``check_vllm_adapters`` (PEFTHelper's rules) first.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from ensemble.engines.vllm_lora import allowed_lora_ranks
from ensemble.errors import EnsembleError


def lora_module_json(name: str, path: str, base_model_name: str | None = None) -> str:
    """One ``--lora-modules`` item in vLLM's JSON form (any character in name or path is safe)."""
    module = {"name": name, "path": path}
    if base_model_name:
        module["base_model_name"] = base_model_name
    return json.dumps(module, ensure_ascii=False)


def vllm_serve_command(base: str, adapters: Mapping[str, str], *, max_lora_rank: int, host: str = "127.0.0.1",
                       port: int = 8000, served_model_name: str | None = None,
                       extra: Sequence[str] = ()) -> list[str]:
    """``vllm serve BASE [--served-model-name NAME] --generation-config vllm --enable-lora
    --max-loras K --max-lora-rank R --max-cpu-loras K --lora-modules {JSON} ... --host H --port P
    [extra...]`` (no LoRA flags when K = 0)."""
    allowed = allowed_lora_ranks()
    if max_lora_rank not in allowed:
        raise EnsembleError(f"max_lora_rank {max_lora_rank} is not one vLLM accepts; use one of "
                            f"{', '.join(map(str, allowed))} (check_vllm_adapters picks it)")
    bad = [name for name in adapters if not name.strip()]
    if bad:
        raise EnsembleError(f"adapter name {bad[0]!r} cannot be served: give every voter a non-empty name")
    cmd = ["vllm", "serve", str(base)]
    if served_model_name:
        cmd += ["--served-model-name", served_model_name]
    cmd += ["--generation-config", "vllm"]
    if adapters:
        k = str(len(adapters))
        cmd += ["--enable-lora", "--max-loras", k, "--max-lora-rank", str(max_lora_rank), "--max-cpu-loras", k,
                "--lora-modules", *(lora_module_json(n, str(p), served_model_name) for n, p in adapters.items())]
    return cmd + ["--host", host, "--port", str(port), *extra]
