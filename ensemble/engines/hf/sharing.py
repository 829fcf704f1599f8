"""The HF engine's shared-prefix path for aLoRA and top-layer voters.

``SharedVoters`` decides which loaded adapters may share (``kinds.loaded_kinds``),
owns the machinery (``split.SplitModel`` and a ``StackedLoRA`` that applies each
row's adapter inside a pass) and runs score rows and generation rows of those
voters in unit batches (``shared``). Plain LoRA voters and base-model rows never
come here. Rows get the wall time of their batch divided by its rows.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ensemble.engines.hf.generate import GenRow, decode_from
from ensemble.engines.hf.kinds import PLAIN, VoterKind
from ensemble.engines.hf.lora import StackedLoRA, Unsupported
from ensemble.engines.hf.score import ScoreRow
from ensemble.engines.hf.shared import (
    Unit,
    group_units,
    prefill_units,
    score_units,
    unit_batches,
)
from ensemble.engines.hf.split import SplitModel
from ensemble.errors import EnsembleError

log = logging.getLogger(__name__)


class SharedVoters:
    def __init__(self, model: Any, kinds: dict[str, VoterKind], stacked: StackedLoRA | None, *,
                 share: bool = True) -> None:
        """``stacked``: the engine's StackedLoRA over every adapter (lora_batching "stacked"),
        or None to build one over the sharing voters only. ``share=False`` runs every row
        as its own unit (the same passes, nothing shared: the reference for benchmarks)."""
        self.kinds = {n: k for n, k in kinds.items() if k.shares}
        self.share = share
        self._warned: set[str] = set()
        self.split: SplitModel | None = None
        self.stacked: StackedLoRA | None = None
        if not self.kinds:
            return
        alora = sorted(n for n, k in self.kinds.items() if k.invocation)
        untyped = [n for n in alora if getattr(model.peft_config[n], "task_type", None) != "CAUSAL_LM"]
        if untyped:  # PEFT would never activate them: running them here would give other answers
            raise EnsembleError(f"aLoRA voters {', '.join(untyped)}: task_type "
                                f"{getattr(model.peft_config[untyped[0]], 'task_type', None)} is never activated "
                                "by PEFT; re-save them with LoraConfig(task_type='CAUSAL_LM', ...)")
        try:
            self.split = SplitModel(model.get_base_model())
            self.stacked = stacked or StackedLoRA(model, list(self.kinds), alora=True)
        except Unsupported as exc:
            if alora:
                raise EnsembleError(f"aLoRA voters {', '.join(alora)}: the hf engine cannot run them on this "
                                    f"model ({exc}); use plain LoRA voters or a Llama/Qwen base") from None
            log.warning("top-layer voters run without sharing (%s)", exc)
            self.split, self.kinds = None, {}
        self.bare = model.get_base_model()

    def handles(self, adapter: str) -> bool:
        return adapter in self.kinds

    def kind(self, adapter: str) -> VoterKind:
        return self.kinds.get(adapter, PLAIN)

    @contextmanager
    def rows(self, names: list[str], blocks: bool = False) -> Iterator[None]:
        assert self.stacked is not None
        with self.stacked.rows(names, self.device, blocks=blocks):
            yield

    @property
    def device(self) -> Any:
        return self.split.embed.weight.device if self.split else "cpu"

    def forward(self, adapters: list[str], **kwargs: Any) -> Any:
        """The bare model with row b on ``adapters[b]`` (PEFT's own forward would look for
        the aLoRA invocation in each decoding step's single token and switch it off)."""
        with self.rows(adapters):
            return self.bare(**kwargs)

    def _missing(self, adapter: str) -> None:
        if adapter not in self._warned:
            self._warned.add(adapter)
            log.warning("aLoRA voter '%s': its invocation tokens %s are not in the prompt, so it answers as "
                        "the base model (PEFT's rule); check the prompt template it was trained with",
                        adapter, list(self.kinds[adapter].invocation))

    def _units(self, rows: Sequence[Any], prompt: Callable[[Any], list[int]],
               options: Callable[[Any], list[list[int]]]) -> list[Unit]:
        if self.share:
            return group_units(rows, prompt, options, lambda r: r.adapter, self.kind, self._missing)
        return [u for r in rows for u in group_units([r], prompt, options, lambda r: r.adapter, self.kind,
                                                     self._missing)]

    def _timed(self, batches: Iterator[list[Unit]], fn: Callable[[list[Unit]], None]) -> None:
        for batch in batches:
            t0 = time.perf_counter()
            with torch.inference_mode():
                fn(batch)
            rows = [r for u in batch for r in u.rows]
            for r in rows:
                r.seconds = (time.perf_counter() - t0) / len(rows)

    def score(self, rows: Sequence[ScoreRow], mode: str, *, batch_size: int, pad_id: int) -> None:
        """Fill ``logliks`` of cloze or letter rows (all of sharing voters)."""
        split = self.split
        assert split is not None
        units = self._units(rows, lambda r: r.prefix, lambda r: r.options)

        def run(batch: list[Unit]) -> None:
            per_row = score_units(split, self.rows, batch, mode=mode, pad_id=pad_id, device=self.device)
            for row, per in zip([r for u in batch for r in u.rows], per_row):
                if mode == "letter":
                    row.logliks = [max(lps) for lps in per]
                else:
                    row.logliks = [sum(lps) / len(lps) if row.normalize == "mean" else sum(lps) for lps in per]

        self._timed(unit_batches(units, batch_size), run)

    def generate(self, rows: Sequence[GenRow], *, batch_size: int, pad_id: int, eos_ids: set[int],
                 detok: Callable[[list[int]], str], ignore_eos: bool) -> None:
        """Decode rows of sharing voters: shared prefill per unit, then ordinary decoding."""
        split = self.split
        assert split is not None
        units = self._units(rows, lambda r: r.ids, lambda r: [])

        def run(batch: list[Unit]) -> None:
            logits, cache, mask, pos = prefill_units(split, self.rows, batch, pad_id=pad_id, device=self.device)
            # Rows whose aLoRA invocation is missing decode as the base model (unit adapter BASE).
            decode_from(self.forward, [r for u in batch for r in u.rows], logits, cache, mask, pos,
                        eos_ids=eos_ids, detok=detok, device=self.device, ignore_eos=ignore_eos,
                        adapters=[a for u in batch for a in u.adapters])

        self._timed(unit_batches(units, batch_size), run)

