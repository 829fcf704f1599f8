"""The HF engine: one transformers base model + K PEFT LoRA voters in one process.

    engine = build_engine(EngineSpec("hf", "smollm2", {"v1": "adapters/v1", ...},
                                     {"dtype": "bfloat16", "batch_size": 32}))
    engine.generate([GenRequest("v1", messages=...), GenRequest("v2", messages=...)])

The base weights are loaded once. Requests for different voters share one batch,
and each row gets its own LoRA delta inside a single forward pass, in one of two ways
(option ``lora_batching``):
  "stacked"  (default) ``hf_lora.StackedLoRA``: all adapters of a layer in one
             matmul pair, each row masked to its own adapter; the kernel count does
             not grow with K (on CPU the calls, not the FLOPs, bound a decoding step).
  "peft"     PEFT's ``adapter_names=[...]`` (one name per row, ``"__base__"`` for the
             plain model), which loops over the batch's adapters in every layer; a
             batch whose rows all use one adapter takes PEFT's ``set_adapter`` path.
  "separate" never mix: batches are cut per adapter and run with ``set_adapter``
             (the one-voter-at-a-time loop; the fallback when the adapters use DoRA
             or other LoRA variants that stacking does not cover).
All give a row the same tokens whatever else is in its batch; float32 logprobs
agree to ~1e-6 (padding lengths and summation order change with the batch).

Options (``EngineSpec.options``):
  dtype       "float32" (default) | "bfloat16" (about 2x faster on CPU) | "float16"
  device      "auto" (default: CUDA when present) | "cpu" | "cuda" | "cuda:1"...
  batch_size  rows per batch (default 32), sorted by prompt length; generation: one
              row per sample; scoring: one row per question (its options run together)
  ignore_eos  keep generating after EOS (benchmarks with a fixed token count)
  lora_batching  "stacked" (default) | "peft" | "separate", see above
  share_prefix   true (default): aLoRA and top-layer voters run a question's
              voter-independent part once (``sharing``), and the n samples of one
              generate request share one prompt prefill; false: once per row

Latency: each row gets its batch's wall time divided by the batch's rows; a
request's ``latency_s`` is the sum over its rows (its ``n`` samples / one question).
"""
from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ensemble import tokens
from ensemble.engines.base import (
    ENGINES,
    ChoiceOutput,
    ChoiceRequest,
    EngineSpec,
    GenOutput,
    GenRequest,
    Sample,
    SamplingSettings,
    softmax,
)
from ensemble.engines.hf.generate import GenRow, decode_batch
from ensemble.engines.hf.kinds import loaded_kinds
from ensemble.engines.hf.load import (
    attach_adapters,
    contiguous_lm_head,
    load_model,
    pick_device,
    pick_dtype,
)
from ensemble.engines.hf.lora import StackedLoRA, Unsupported
from ensemble.engines.hf.score import ScoreRow, score_cloze, score_letters
from ensemble.engines.hf.sharing import SharedVoters
from ensemble.errors import EnsembleError
from ensemble.registry import unknown_name

log = logging.getLogger(__name__)
BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch
OPTIONS = ("dtype", "device", "batch_size", "ignore_eos", "lora_batching", "share_prefix")
LORA_BATCHING = ("stacked", "peft", "separate")
R = TypeVar("R", GenRow, ScoreRow)


class HFEngine:
    name = "hf"

    def __init__(self, model: Any, tokenizer: Any, adapter_names: Sequence[str], *, device: str,
                 batch_size: int = 32, ignore_eos: bool = False, lora_batching: str = "stacked",
                 share_prefix: bool = True) -> None:
        """Wrap an already-loaded model (a PeftModel when there are adapters)."""
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self._adapters = list(adapter_names)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise EnsembleError(f"engine option 'batch_size': must be >= 1, got {batch_size}")
        self.ignore_eos = bool(ignore_eos)
        if lora_batching not in LORA_BATCHING:
            raise EnsembleError(f"engine option 'lora_batching': unknown value '{lora_batching}'; "
                                f"use one of {', '.join(LORA_BATCHING)}")
        self._stacked: StackedLoRA | None = None
        if lora_batching in ("stacked", "peft") and self._adapters:
            try:
                # Also the check that rows may mix; aLoRA rows only ever run in the shared path.
                stacked = StackedLoRA(model, self._adapters, alora=True)
                if lora_batching == "stacked":
                    self._stacked = stacked
                else:
                    stacked.remove()
            except Unsupported as exc:
                log.warning("adapters cannot share a batch (%s); using lora_batching='separate'", exc)
                lora_batching = "separate"
        self.lora_batching = lora_batching
        self.share_prefix = bool(share_prefix)  # also: the n samples of a request share one prefill
        self._shared = SharedVoters(model, loaded_kinds(model, self._adapters), self._stacked,
                                    share=self.share_prefix) if self._adapters else None
        contiguous_lm_head(model)
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        gen_eos = gen_eos if isinstance(gen_eos, list) else [gen_eos]
        self.eos_ids = {i for i in [tokenizer.eos_token_id, *gen_eos] if i is not None}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @classmethod
    def from_spec(cls, spec: EngineSpec) -> HFEngine:
        opts = dict(spec.options)
        for key in opts:
            if key not in OPTIONS:
                raise EnsembleError(unknown_name("hf engine option", key, OPTIONS))
        dtype, device = pick_dtype(opts.get("dtype")), pick_device(opts.get("device"))
        base, tok = load_model(spec.model, dtype, device)
        model = attach_adapters(base, spec.adapters, dtype)
        return cls(model, tok, list(spec.adapters), device=device, batch_size=opts.get("batch_size", 32),
                   ignore_eos=opts.get("ignore_eos", False), lora_batching=opts.get("lora_batching", "stacked"),
                   share_prefix=opts.get("share_prefix", True))

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, adapters: dict[str, str] | None = None,
                   **options: Any) -> HFEngine:
        """An engine over a model already in memory (tests, notebooks); adapters: name -> PEFT folder."""
        param = next(model.parameters())
        device = str(param.device)
        model = attach_adapters(model, adapters or {}, param.dtype)
        model.eval()
        return cls(model, tokenizer, list(adapters or {}), device=device, **options)

    @property
    def adapters(self) -> list[str]:
        return list(self._adapters)

    # -- generation ---------------------------------------------------------------------

    def generate(self, requests: Sequence[GenRequest]) -> list[GenOutput]:
        rows: list[GenRow] = []
        owner: list[int] = []  # request index of each row
        for i, req in enumerate(requests):
            ids, adapter, s = tokens.prompt_ids(self.tokenizer, req.prompt, req.messages), self._adapter(req.adapter), req.sampling
            _check_sampling(s)
            seed = s.seed if s.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
            for j in range(1 if s.temperature == 0 else s.n):  # greedy: one row, copied n times
                rows.append(GenRow(ids, adapter, s, seed=(seed * 1_000_003 + s.first_sample + j) % 2**63))
                owner.append(i)
        detok: Callable[[list[int]], str] = lambda t: self.tokenizer.decode(t, skip_special_tokens=True)
        shared, rows_plain = self._split_rows(rows)
        if shared:
            self._shared.generate(shared, batch_size=self.batch_size, pad_id=self.pad_id,  # type: ignore[union-attr]
                                  eos_ids=self.eos_ids, detok=detok, ignore_eos=self.ignore_eos)
        self._run_batches(rows_plain, lambda batch: decode_batch(
            self._forward, batch, pad_id=self.pad_id, eos_ids=self.eos_ids, detok=detok,
            device=self.device, ignore_eos=self.ignore_eos, share=self.share_prefix))
        per_req: list[list[GenRow]] = [[] for _ in requests]
        for i, row in zip(owner, rows):
            per_req[i].append(row)
        outs = []
        for req, mine in zip(requests, per_req):
            samples = [Sample(r.text, tuple(r.logprobs) if req.sampling.logprobs else (), len(r.tokens),
                              r.finish_reason, tuple(r.top)) for r in mine]
            samples = samples * req.sampling.n if req.sampling.temperature == 0 else samples
            outs.append(GenOutput(req, tuple(samples), sum(r.seconds for r in mine)))
        return outs

    # -- choice scoring -----------------------------------------------------------------

    def score_choices(self, requests: Sequence[ChoiceRequest]) -> list[ChoiceOutput]:
        rows = [self._score_row(req) for req in requests]
        kinds = {"cloze": score_cloze, "letter": score_letters}
        for mode, fn in kinds.items():
            shared, mine = self._split_rows([r for r, req in zip(rows, requests) if req.mode == mode])
            if shared:
                self._shared.score(shared, mode, batch_size=self.batch_size, pad_id=self.pad_id)  # type: ignore[union-attr]
            self._run_batches(mine, lambda batch, fn=fn: fn(self._forward, batch, pad_id=self.pad_id,
                                                             device=self.device))
        return [ChoiceOutput(req, tuple(r.logliks), softmax(r.logliks), r.seconds)
                for req, r in zip(requests, rows)]

    def _score_row(self, req: ChoiceRequest) -> ScoreRow:
        if req.mode not in ("cloze", "letter"):
            raise EnsembleError(f"choice request mode '{req.mode}': use 'cloze' or 'letter'")
        if not req.options:
            raise EnsembleError(f"choice request {req.key!r}: no options to score")
        adapter = self._adapter(req.adapter)
        # The assistant's reply starts with req.assistant_prefix (e.g. "Answer:"); options are
        # scored as continuations of the rendered prompt + that prefix (ensemble.tokens).
        tok = self.tokenizer
        text, special = tokens.request_text(tok, req.prompt, req.messages, req.assistant_prefix)
        if req.mode == "letter":
            prefix = tokens.context_ids(tok, text, special)
            return ScoreRow(prefix, adapter, [tokens.letter_ids(tok, o) for o in req.options])
        if req.normalize not in ("sum", "mean"):
            raise EnsembleError(f"choice request normalize '{req.normalize}': use 'sum' or 'mean'")
        prefix, conts = tokens.cloze_ids(tok, text, special, req.options, where=f"choice request {req.key!r}")
        return ScoreRow(prefix, adapter, conts, normalize=req.normalize)

    # -- shared plumbing ----------------------------------------------------------------

    def _split_rows(self, rows: list[R]) -> tuple[list[R], list[R]]:
        """(rows of aLoRA / top-layer voters, the others: plain LoRA and base-model rows)."""
        if self._shared is None:
            return [], rows
        return ([r for r in rows if self._shared.handles(r.adapter)],
                [r for r in rows if not self._shared.handles(r.adapter)])

    def _run_batches(self, rows: list[R], fn: Callable[[list[R]], None]) -> None:
        """Call ``fn`` on length-sorted batches of ``batch_size`` rows; share out the time."""
        import torch

        for batch in self._batches(rows):
            t0 = time.perf_counter()
            with torch.inference_mode():
                fn(batch)
            share = (time.perf_counter() - t0) / len(batch)
            for row in batch:
                row.seconds = share

    def _batches(self, rows: list[R]) -> list[list[R]]:
        """Rows sorted by length (least padding); with "separate", cut where the adapter changes."""
        group: Callable[[R], str] = (lambda r: r.adapter) if self.lora_batching == "separate" else (lambda r: "")
        out: list[list[R]] = []
        for row in sorted(rows, key=lambda r: (group(r), r.length)):
            if not out or len(out[-1]) == self.batch_size or group(out[-1][-1]) != group(row):
                out.append([])
            out[-1].append(row)
        return out

    def _forward(self, adapters: list[str], **kwargs: Any) -> Any:
        """One forward pass where row b uses ``adapters[b]``."""
        if not self._adapters:
            return self.model(**kwargs)
        if self._stacked is not None:
            with self._stacked.rows(adapters, self.device):
                return self.model(**kwargs)
        names = set(adapters)
        if len(names) > 1 or BASE in names:  # (disable_adapter() would reset grads on every call)
            return self.model(**kwargs, adapter_names=adapters)
        name = names.pop()
        if self.model.active_adapter != name:
            self.model.set_adapter(name, inference_mode=True)
        return self.model(**kwargs)

    def _adapter(self, name: str | None) -> str:
        if name is None:
            return BASE
        if name not in self._adapters:
            raise EnsembleError(unknown_name("adapter", name, self._adapters or ["(none loaded)"]))
        return name

    def close(self) -> None:
        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _check_sampling(s: SamplingSettings) -> None:
    bad = [f"{name} {value!r} ({rule})" for name, value, ok, rule in [
        ("n", s.n, s.n >= 1, ">= 1"), ("temperature", s.temperature, s.temperature >= 0, ">= 0"),
        ("top_p", s.top_p, 0 < s.top_p <= 1, "in (0, 1]"),
        ("max_new_tokens", s.max_new_tokens, s.max_new_tokens >= 1, ">= 1"),
        ("top_logprobs", s.top_logprobs, 0 <= s.top_logprobs <= 20, "in [0, 20]"),
        ("first_sample", s.first_sample, s.first_sample >= 0, ">= 0")] if not ok]
    if bad:
        raise EnsembleError(f"sampling settings: {'; '.join(bad)}: fix these values")


@ENGINES.register("hf")
def _build(spec: EngineSpec) -> HFEngine:
    return HFEngine.from_spec(spec)
