"""Voter kinds in training and K variants on shared batches (training.kinds / shared / multi)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest_training import killed_at_marker, yes_items
from safetensors.torch import load_file

from ensemble.config.schema import GridConfig, TrainConfig, VariantConfig
from ensemble.data.items import Item
from ensemble.errors import EnsembleError
from ensemble.prompts import get_template
from ensemble.testing import make_tiny_model
from ensemble.training.grid import expand_grid
from ensemble.training.multi import Member, row_weights, train_group
from ensemble.training.recipe import (
    build_examples,
    collate,
    encode,
    evaluate,
    load_lora_model,
    train_variant,
)
from ensemble.training.shared import PrefixCache, TopLayers, plain_rows


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny3") / "base", num_layers=3)


@pytest.fixture(scope="module")
def pool():
    return build_examples(yes_items(24, distinct=10), get_template("mc"), "cloze")


CFG = TrainConfig(max_steps=6, batch_size=6, learning_rate=1e-2, lora_dropout=0.0, dtype="float32",
                  warmup_ratio=0.0, scheduler="constant", shared_batches=True, checkpoint_every=2)
KINDS = (VariantConfig(name="top", seed=1, rank=4, layers="top:1"),
         VariantConfig(name="alora", seed=2, rank=4, flavour="alora", target_modules=("q_proj", "v_proj")),
         VariantConfig(name="plain", seed=3, rank=2, target_modules=("gate_proj", "up_proj", "down_proj")))


def variants(*configs: VariantConfig):
    return expand_grid(GridConfig(variants=configs), "mc")


def members(pool, configs=KINDS, weights=None) -> list[Member]:
    """Each variant trains on all but its last 4 rows (its held-out set)."""
    out = []
    for i, v in enumerate(variants(*configs)):
        held = list(range(len(pool) - 4 - i, len(pool) - i))
        train = [j for j in range(len(pool)) if j not in held]
        w = row_weights(v, train, len(pool)) if weights is None else weights[i]
        out.append(Member(v, w, tuple(pool[j] for j in held), key=v.name))
    return out


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "adapter_model.safetensors")


def test_kinds_become_peft_configs(base, pool, tmp_path):
    top, alora = variants(*KINDS[:2])
    model, tok = load_lora_model(base, top, CFG)
    assert model.peft_config["default"].layers_to_transform == [2]
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".layers.0." in n or ".layers.1." in n)
    bad = variants(VariantConfig(name="deep", layers="top:4"))[0]
    with pytest.raises(EnsembleError, match="layers is 'top:4' but the base model has 3 decoder layers; use top:1 .. top:3"):
        load_lora_model(base, bad, CFG)
    # aLoRA: the invocation is the assistant header, stored by PEFT in the adapter folder.
    r = train_variant(base, alora, pool[:8], pool[8:10], dataclasses.replace(CFG, max_steps=2), tmp_path)
    saved = json.loads((r.adapter / "adapter_config.json").read_text())
    assert saved["alora_invocation_tokens"] == tok("<|assistant|>", add_special_tokens=False)["input_ids"]
    assert saved["task_type"] == "CAUSAL_LM"


@pytest.mark.parametrize("kind", ["top", "alora"])
def test_shared_part_matches_the_plain_forward(base, pool, kind):
    """Values and gradients of the shared path equal the whole model's, on a subset of rows."""
    v = variants(*KINDS)[0 if kind == "top" else 1]
    model, tok = load_lora_model(base, v, CFG)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)  # B = 0 would hide an adapter that is not applied
    seqs = [encode(tok, ex, 256) for ex in pool[:5]]
    seqs[1] = (seqs[1][0][4:], seqs[1][1])  # rows of different lengths: padding in both passes
    batch = collate(seqs, tok.pad_token_id)
    rows = torch.tensor([0, 1, 3])
    want = plain_rows(model, batch, rows)
    if kind == "top":
        top = TopLayers(model)
        got = top.upper_rows(top.lower(batch, [2])[2], 2, batch, rows)
    else:
        cache = PrefixCache(model, model.peft_config["default"].alora_invocation_tokens, tok.pad_token_id)
        got = cache.suffix_rows(cache.prefix(seqs, "cpu"), rows)
    assert torch.equal(got[1], want[1])
    assert torch.allclose(got[0], want[0], atol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    for g1, g2 in zip(torch.autograd.grad(want[0].sum(), params), torch.autograd.grad(got[0].sum(), params)):
        assert torch.allclose(g1, g2, atol=1e-5)
    # The adapter really acts: the base model gives other log-probabilities.
    with model.disable_adapter():
        assert not torch.allclose(plain_rows(model, batch, rows)[0], want[0], atol=1e-3)


def test_alora_heldout_scores_match_whole_sequences(base, pool):
    """evaluate() scores an aLoRA's options on top of the prefix cache; each option alone
    through PEFT (which finds the invocation itself) gives the same log-likelihoods."""
    model, tok = load_lora_model(base, variants(*KINDS)[1], CFG)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    items = [Item(f"m{i}", f"Question {i}: pick one", ("yes it is", "no it is not"), "A") for i in range(3)]
    rows = build_examples(items, get_template("mc"), "cloze")  # options of several tokens: the cached pass
    _, _, logliks = evaluate(model, tok, rows)
    model.eval()
    for ex, got in zip(rows, logliks):
        context = tok.apply_chat_template(list(ex.messages), tokenize=False, add_generation_prompt=True) + ex.prefix
        ctx = tok(context, add_special_tokens=False)["input_ids"]
        for choice, ll in zip(ex.choices, got):
            full = tok(context + choice, add_special_tokens=False)["input_ids"]
            cont = full[len(ctx):]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0, -len(cont) - 1:-1], -1)
            want = float(logp.gather(1, torch.tensor(cont)[:, None]).mean())
            assert ll == pytest.approx(want, abs=1e-4)


def test_shared_batches_equal_the_plain_path(base, pool, tmp_path):
    """Every kind in one group: the shared computation trains the same adapters as each
    member's whole forward pass on the same batches and weights."""
    shared = train_group(base, members(pool), pool, CFG, tmp_path / "shared")
    plain = train_group(base, members(pool), pool, CFG, tmp_path / "plain", share=False)
    for a, b in zip(shared, plain):
        wa, wb = tensors(a.adapter), tensors(b.adapter)
        assert wa.keys() == wb.keys()
        worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
        assert worst <= 1e-5, (a.name, worst)
        assert [s for s, _, _ in a.loss_curve] == list(range(1, 7))
        assert np.allclose([x for _, x, _ in a.loss_curve], [x for _, x, _ in b.loss_curve], atol=1e-5)
        assert a.loss_curve[-1][1] < a.loss_curve[0][1]  # it learns
        assert a.heldout_accuracy is not None and len(a.heldout_logliks) == 4
    # A member alone equals the same member in the group (own RNG, optimizer, schedule).
    (alone,) = train_group(base, members(pool)[1:2], pool, CFG, tmp_path / "alone")
    if not torch.cuda.is_available():
        assert (alone.adapter / "adapter_model.safetensors").read_bytes() == \
            (shared[1].adapter / "adapter_model.safetensors").read_bytes()
        assert alone.loss_curve == shared[1].loss_curve
    else:  # CUDA picks kernels by shape: alone, its rows run in smaller matmuls than in the group's
        wa, wb = tensors(alone.adapter), tensors(shared[1].adapter)
        worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
        assert worst <= 1e-5, worst


def test_a_zero_weight_row_changes_nothing(base, pool, tmp_path):
    """Row 3 has weight 0 for every member: what it says does not matter, bit for bit."""
    ws = [row_weights(v, range(20), len(pool)) for v in variants(*KINDS)]
    for w in ws:
        w[3] = 0.0
    other = list(pool)
    other[3] = build_examples([Item("q3", "Question 7: pick one", ("no", "yes"), "B")], get_template("mc"), "cloze")[0]
    _, tok = load_lora_model(base, variants(*KINDS)[2], CFG)
    assert len(encode(tok, other[3], 256)[0]) == len(encode(tok, pool[3], 256)[0])  # same batches
    assert encode(tok, other[3], 256) != encode(tok, pool[3], 256)
    a = train_group(base, members(pool, weights=ws), pool, CFG, tmp_path / "a")
    b = train_group(base, members(pool, weights=ws), other, CFG, tmp_path / "b")
    for x, y in zip(a, b):
        assert (x.adapter / "adapter_model.safetensors").read_bytes() == \
            (y.adapter / "adapter_model.safetensors").read_bytes()
    # ... while a weight that counts does change the adapter.
    ws[2][3] = 2.0
    c = train_group(base, members(pool, KINDS[2:], weights=ws[2:]), pool, CFG, tmp_path / "c")
    assert not torch.equal(tensors(c[0].adapter)["base_model.model.model.layers.0.mlp.up_proj.lora_B.weight"],
                           tensors(a[2].adapter)["base_model.model.model.layers.0.mlp.up_proj.lora_B.weight"])


def test_row_weights_membership_bootstrap_and_poisson():
    v = variants(VariantConfig(name="v", seed=4))[0]
    assert row_weights(v, [0, 2, 2, 5], 6).tolist() == [1, 0, 2, 0, 0, 1]  # bootstrap draws count twice
    bag = dataclasses.replace(v, bagging="poisson")
    w = row_weights(bag, range(1000), 1200)
    assert (w[1000:] == 0).all() and np.array_equal(w, row_weights(bag, range(1000), 1200))  # seeded
    assert abs(w[:1000].mean() - 1.0) < 0.1 and (w[:1000] == 0).mean() == pytest.approx(np.exp(-1), abs=0.05)
    assert not np.array_equal(w, row_weights(dataclasses.replace(bag, seed=5), range(1000), 1200))


def test_a_member_without_rows_is_an_error(base, pool, tmp_path):
    (m,) = members(pool, KINDS[2:])
    with pytest.raises(EnsembleError, match="variant 'plain': no training rows with a non-zero weight"):
        train_group(base, [dataclasses.replace(m, weights=np.zeros(len(pool), np.float32))], pool, CFG, tmp_path)


class Killed(Exception):
    pass


def test_resume_after_a_kill_is_bit_identical(base, pool, tmp_path):
    whole = train_group(base, members(pool), pool, CFG, tmp_path / "whole")

    def die(step: int) -> None:
        if step == 5:  # after the step-4 checkpoint, before the end
            raise Killed

    with pytest.raises(Killed):
        train_group(base, members(pool), pool, CFG, tmp_path / "killed", on_step=die)
    ckpt = tmp_path / "killed" / "checkpoints" / "shared.pt"
    assert torch.load(ckpt, weights_only=False)["step"] == 4
    steps: list[int] = []
    resumed = train_group(base, members(pool), pool, CFG, tmp_path / "killed", on_step=steps.append)
    assert steps == [5, 6]  # it went on from step 5
    for a, b in zip(whole, resumed):
        assert (a.adapter / "adapter_model.safetensors").read_bytes() == \
            (b.adapter / "adapter_model.safetensors").read_bytes(), a.name
        assert a.loss_curve == b.loss_curve and a.heldout_logliks == b.heldout_logliks
    # A checkpoint made for other settings is not restored.
    changed = [dataclasses.replace(m, key="other") for m in members(pool)]
    steps.clear()
    train_group(base, changed, pool, CFG, tmp_path / "killed", on_step=steps.append)
    assert steps == list(range(1, 7))


# --- `vote train` with shared batches: config, manifest, SIGKILL and resume ------------------------

# One thread, as conftest sets for this process: CPU matmuls may sum in another order
# with another thread count, and bit-identity is only promised on the same setup.
KILLED_RUN = """
import sys, time, pathlib, torch
torch.set_num_threads(1)
from ensemble.config.loader import load_config
from ensemble.training import train_grid
def progress(event, **info):
    if event == "step" and info["step"] == 3:  # after the step-2 checkpoint
        pathlib.Path(sys.argv[2]).write_text("inside step 3")
        time.sleep(600)
train_grid(load_config(sys.argv[1]), progress=progress)
"""
GRID_NAMES = ["s0-r4-attn-full-alora", "s1-r4-attn-shard2.1-lora-top1", "bag"]


def shared_config(root: Path, base: Path, out: str) -> Path:
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Question {i}: pick one",
                                        "options": list(o), "answer": "AB"[o.index("yes")]}) + "\n"
                            for i, o in enumerate([("yes", "no"), ("no", "yes")] * 10)))
    path = root / f"{out}.yaml"
    path.write_text(f"""
model: {base}
out: {root / out}
prompt: mc
data: {{train: {data}}}
train:
  max_steps: 4
  batch_size: 4
  learning_rate: 0.01
  dtype: float32
  lora_dropout: 0.1
  heldout_fraction: 0.2
  shared_batches: true
  checkpoint_every: 2
  grid:
    seeds: [0]
    ranks: [4]
    flavours: [alora]
    variants:
      - {{seed: 1, rank: 4, layers: "top:1", split: "shard:2:1"}}
      - {{name: bag, seed: 2, rank: 4, split: bootstrap, bagging: poisson}}
""")
    return path


def test_vote_train_shared_batches_resumes_after_sigkill(base, tmp_path):
    from ensemble.config.loader import load_config
    from ensemble.training import load_manifest, train_grid

    cfg = load_config(shared_config(tmp_path, base, "whole"))
    assert [v.name for v in expand_grid(cfg.train.grid, cfg.prompt)] == GRID_NAMES
    whole = train_grid(cfg)
    names = list(whole.variants)
    assert [whole.variants[n]["status"] for n in names] == ["done"] * 3
    assert not (tmp_path / "whole" / "checkpoints" / "shared-default.pt").exists()  # removed when done
    saved = json.loads((tmp_path / "whole" / "adapters" / names[0] / "adapter_config.json").read_text())
    assert saved["alora_invocation_tokens"] and saved["layers_to_transform"] is None
    top = json.loads((tmp_path / "whole" / "adapters" / names[1] / "adapter_config.json").read_text())
    assert top["layers_to_transform"] == [2]
    assert whole.variants["bag"]["settings"]["bagging"] == "poisson"

    killed = shared_config(tmp_path, base, "killed")
    with killed_at_marker(KILLED_RUN, killed, tmp_path / "killed.marker", "step 3"):
        pass
    assert (tmp_path / "killed" / "checkpoints" / "shared-default.pt").is_file()
    steps: list[int] = []
    resumed = train_grid(load_config(killed), progress=lambda e, **i: steps.append(i["step"]) if e == "step" else None)
    assert steps == [3, 4]  # from the checkpoint on, not from step 1
    for name in names:
        a = (tmp_path / "whole" / "adapters" / name / "adapter_model.safetensors").read_bytes()
        b = (tmp_path / "killed" / "adapters" / name / "adapter_model.safetensors").read_bytes()
        assert a == b, name  # bit-identical to the uninterrupted run, dropout included
        for key in ("settings_hash", "loss_curve", "train_ids", "heldout_ids"):
            assert resumed.variants[name][key] == whole.variants[name][key], (name, key)
    events: list[str] = []
    train_grid(load_config(killed), progress=lambda e, **i: events.append(e))
    assert events.count("variant_skipped") == 3 and "step" not in events
    assert load_manifest(tmp_path / "killed").done().keys() == set(names)


def test_config_errors_name_the_field_and_the_fix():
    from ensemble.config.loader import ConfigError

    with pytest.raises(ConfigError, match=r"field 'variant.layers' is 'top:0'; use all, or top:N with N a positive"):
        VariantConfig(layers="top:0")
    with pytest.raises(ConfigError, match=r"field 'train.grid.layers' is 'bottom:2'; use all, or top:N"):
        GridConfig(layers=("bottom:2",))
    with pytest.raises(ConfigError, match=r"field 'train.shared_batches' is True; shared batches run in the lean loop"):
        TrainConfig(shared_batches=True, trainer="hf")
    # Online bagging weights the rows of shared batches; one variant at a time would ignore it.
    with pytest.raises(ConfigError, match=r"field 'train.shared_batches' is False; bagging: poisson \(train.grid\) "
                                          r"weights the rows of shared batches; set shared_batches: true, or use "
                                          r"split: bootstrap"):
        TrainConfig(grid=GridConfig(bagging="poisson"))
    with pytest.raises(ConfigError, match=r"bagging: poisson \(v2\) weights the rows"):
        TrainConfig(grid=GridConfig(variants=(VariantConfig(name="v1"), VariantConfig(name="v2", bagging="poisson"))))
    assert TrainConfig(shared_batches=True, grid=GridConfig(bagging="poisson")).shared_batches
    with pytest.raises(ConfigError, match=r"field 'train.max_batch_tokens' is -1; use 0 \(whole batches\)"):
        TrainConfig(max_batch_tokens=-1)
    names = [v.name for v in expand_grid(GridConfig(layers=("all", "top:2"), flavours=("lora", "alora")), "mc")]
    assert names == ["s0-r8-attn-full-lora", "s0-r8-attn-full-lora-top2", "s0-r8-attn-full-alora",
                     "s0-r8-attn-full-alora-top2"]


def test_new_fields_keep_old_hashes():
    """layers / bagging / shared_batches / max_batch_tokens at their defaults leave the
    settings hash of a variant trained before they existed unchanged (no retraining)."""
    from ensemble.training import recipe_settings

    v = variants(VariantConfig(name="v"))[0]
    assert "layers" not in v.settings() and "bagging" not in v.settings()
    assert "layers" in dataclasses.replace(v, layers="top:2").settings()
    settings = recipe_settings(TrainConfig())
    assert not {"shared_batches", "max_batch_tokens", "checkpoint_every"} & settings.keys()
    assert recipe_settings(TrainConfig(shared_batches=True))["shared_batches"] is True
