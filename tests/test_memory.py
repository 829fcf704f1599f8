"""Peak-memory measures (ensemble.memory, engines.hf.score.logsumexp_f32): same numbers as the
plain path, less memory held at once."""
from __future__ import annotations

import os
import sys

import pytest
import torch

from ensemble.engines.base import ChoiceRequest, EngineSpec
from ensemble.engines.hf import score
from ensemble.engines.hf.engine import HFEngine
from ensemble.memory import copy_frozen_float32, release_memory, rss_mb


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_logsumexp_equals_one_pass(dtype):
    logits = (torch.randn(5, 7, 33, generator=torch.Generator().manual_seed(0)) * 4).to(dtype)
    whole = logits.float().logsumexp(dim=-1)
    for chunk in (1, 7 * 33, 2 * 7 * 33 + 1, 10**9):  # one row per block ... everything at once
        assert torch.equal(score.logsumexp_f32(logits, chunk=chunk), whole)


def test_cloze_scores_with_row_blocks_equal_the_one_pass_scores(tiny_model, tiny_adapters, monkeypatch):
    """float32 on the tiny model: scoring with one-row logsumexp blocks = the old one-pass path."""
    torch.set_num_threads(1)
    engine = HFEngine.from_spec(EngineSpec("hf", str(tiny_model), {k: str(v) for k, v in tiny_adapters.items()},
                                           {"batch_size": 8, "dtype": "float32"}))
    reqs = [ChoiceRequest(a, options=(" 3", " 7", " seven or so", " cannot be decided"), prompt=p)
            for p in ("Question: Which number is larger? Answer:", "Every bird can fly. Can Tom fly? ")
            for a in (None, "v1", "v2")]
    monkeypatch.setattr(score, "logsumexp_f32", lambda logits, chunk=0: logits.float().logsumexp(dim=-1))
    old = [o.logliks for o in engine.score_choices(reqs)]
    monkeypatch.undo()
    original = score.logsumexp_f32
    monkeypatch.setattr(score, "logsumexp_f32", lambda logits: original(logits, chunk=1))  # one row per block
    new = [o.logliks for o in engine.score_choices(reqs)]
    assert max(abs(a - b) for x, y in zip(old, new) for a, b in zip(x, y)) <= 1e-5


def test_shared_prefix_scores_with_row_blocks_equal_the_one_pass_scores(tiny_model, tmp_path, monkeypatch):
    """aLoRA voters (the quickstart's kind) go through engines.hf.shared: its logsumexp in
    one-row blocks and logits cast after indexing = the old all-float32 path, in float32."""
    from ensemble.engines.hf import shared
    from ensemble.testing import make_tiny_adapters

    torch.set_num_threads(1)
    ads = make_tiny_adapters(tiny_model, tmp_path / "al", ["al1", "al2"], invocation=[4])  # "<|assistant|>"
    engine = HFEngine.from_spec(EngineSpec("hf", str(tiny_model), {k: str(v) for k, v in ads.items()},
                                           {"batch_size": 8, "dtype": "float32"}))
    msgs = ({"role": "user", "content": "Which number is larger? 3 or 7"},)
    reqs = [ChoiceRequest(a, options=(" 3", " 7", " seven or so"), messages=msgs, assistant_prefix="Answer:")
            for a in ("al1", "al2")]
    assert all(engine._shared.handles(r.adapter) for r in reqs)  # the shared path, not the plain one

    def old_pairs(split, hidden, units, pairs, slots, device):  # the code before: all logits to float32
        logits = split.logits(hidden).float()
        lse = logits.logsumexp(-1)
        out, r = [], 0
        for u, mine, n in zip(units, pairs, slots):
            where = {p: j for j, p in enumerate(n)}
            p_idx = torch.tensor([where[p] for p, _, _ in mine])
            t_idx = torch.tensor([t for _, t, _ in mine])
            for row_lp in (logits[r:r + len(u.rows), p_idx, t_idx] - lse[r:r + len(u.rows), p_idx]).tolist():
                per = [[] for _ in u.options]
                for (_, _, k), v in zip(mine, row_lp):
                    per[k].append(v)
                out.append(per)
            r += len(u.rows)
        return out

    new = [o.logliks for o in engine.score_choices(reqs)]
    original = shared.logsumexp_f32
    monkeypatch.setattr(shared, "logsumexp_f32", lambda logits: original(logits, chunk=1))
    blocks = [o.logliks for o in engine.score_choices(reqs)]
    monkeypatch.setattr(shared, "_pair_logprobs", old_pairs)
    old = [o.logliks for o in engine.score_choices(reqs)]
    assert old[0] != old[1]  # two different voters
    for got in (new, blocks):
        assert max(abs(a - b) for x, y in zip(old, got) for a, b in zip(x, y)) <= 1e-5


def test_copy_frozen_float32_keeps_values_and_unshares_storage(tiny_model):
    from ensemble.config.schema import GridConfig, TrainConfig, VariantConfig
    from ensemble.training.grid import expand_grid
    from ensemble.training.loop import frozen_weights_in_bf16
    from ensemble.training.recipe import load_lora_model

    (variant,) = expand_grid(GridConfig(variants=(VariantConfig(name="v", rank=2),)), "mc")
    model, _ = load_lora_model(tiny_model, variant, TrainConfig(dtype="bfloat16"))
    frozen_weights_in_bf16(model)
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad and p.dtype == torch.float32}
    before = {n: (p.detach().clone(), p.data_ptr()) for n, p in frozen.items()}
    ids = torch.tensor([[1, 5, 9, 12, 40]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits_before = model(input_ids=ids).logits.float()
    assert copy_frozen_float32(model) == sum(p.numel() * 4 for p in frozen.values()) > 0
    after = dict(model.named_parameters())
    for n, (value, ptr) in before.items():
        assert torch.equal(after[n], value) and after[n].data_ptr() != ptr and not after[n].requires_grad
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(input_ids=ids).logits.float(), logits_before)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim and /proc are Linux's")
def test_release_memory_trims_the_heap_on_linux():
    assert release_memory() is True
    assert isinstance(rss_mb(), int) and rss_mb() > 0


def test_bound_kernel_cache_sets_the_capacity_unless_the_user_did(monkeypatch):
    from ensemble.memory import (
        KERNEL_CACHE_CAPACITY,
        KERNEL_CACHE_ENV,
        bound_kernel_cache,
    )

    monkeypatch.setenv(KERNEL_CACHE_ENV, "")  # recorded, so the test's setting is undone afterwards
    monkeypatch.delenv(KERNEL_CACHE_ENV)
    assert bound_kernel_cache() is True
    assert os.environ[KERNEL_CACHE_ENV] == str(KERNEL_CACHE_CAPACITY)
    monkeypatch.setenv(KERNEL_CACHE_ENV, "7")  # the user's own setting wins
    assert bound_kernel_cache() is False
    assert os.environ[KERNEL_CACHE_ENV] == "7"


def test_the_cli_bounds_the_kernel_cache(monkeypatch):
    from click.testing import CliRunner

    from ensemble.cli.app import main
    from ensemble.memory import KERNEL_CACHE_CAPACITY, KERNEL_CACHE_ENV

    monkeypatch.setenv(KERNEL_CACHE_ENV, "")  # recorded, so the test's setting is undone afterwards
    monkeypatch.delenv(KERNEL_CACHE_ENV)
    result = CliRunner().invoke(main, ["eval", "--help"])  # the group callback runs before any subcommand
    assert result.exit_code == 0, result.output
    assert os.environ[KERNEL_CACHE_ENV] == str(KERNEL_CACHE_CAPACITY)
