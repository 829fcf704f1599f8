"""Training one variant on the tiny model: examples, label masking, learning, saving, reloading."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest_training import yes_items

from ensemble.config.schema import GridConfig, TrainConfig, VariantConfig
from ensemble.data.chat import ChatExample
from ensemble.data.items import Item
from ensemble.prompts import get_template
from ensemble.training.batches import WIDTH_MULTIPLE, padded_width
from ensemble.training.grid import expand_grid
from ensemble.training.recipe import (
    answer_logprobs,
    answer_loss,
    build_examples,
    collate,
    encode,
    evaluate,
    load_lora_model,
    train_variant,
    trainer_batch,
)


@pytest.fixture(scope="module")
def base(tiny_model) -> Path:
    return tiny_model  # the session's 2-layer model (tests/conftest.py), read only here


@pytest.fixture(scope="module")
def examples():
    return build_examples(yes_items(40), get_template("mc"), "cloze")


CFG = TrainConfig(max_steps=6, batch_size=8, learning_rate=1e-2, lora_dropout=0.0, dtype="float32",
                  warmup_ratio=0.0, scheduler="constant")


def one_variant(**grid) -> object:
    return expand_grid(GridConfig(ranks=(4,), **grid), "mc")[0]


def test_build_examples_cloze_letter_and_chat():
    item = Item("q1", "Pick", ("no", "yes"), "B")
    (cloze,) = build_examples([item], get_template("mc"), "cloze")
    assert (cloze.id, cloze.target, cloze.prefix, cloze.choices, cloze.gold) == \
        ("q1", "Answer: yes", "Answer:", (" no", " yes"), 1)
    assert cloze.messages[0]["role"] == "user" and "A. no\nB. yes" in cloze.messages[0]["content"]
    (letter,) = build_examples([item], get_template("mc"), "letter")
    assert (letter.target, letter.choices, letter.gold) == ("Answer: B", (" A", " B"), 1)
    chat = ChatExample("c1", ({"role": "user", "content": "hi"},), "hello there")
    (ex,) = build_examples([chat], get_template("mc"), "cloze")
    assert (ex.id, ex.messages, ex.target, ex.choices, ex.gold) == ("c1", chat.messages, "hello there", (), None)


def test_labels_mask_the_prompt(base, examples):
    _, tok = load_lora_model(base, one_variant(), CFG)
    seqs = [encode(tok, ex, 256) for ex in examples[:3]]
    ids, n_answer = seqs[0]
    assert tok.decode(ids[-n_answer:]) == "Answer: yes<|end|>"  # target + EOS, at the end
    assert tok.decode(ids[:-n_answer]).endswith("<|assistant|>")  # the prompt opens the reply
    batch = collate(seqs, tok.pad_token_id)
    width = batch["input_ids"].shape[1]
    for b, (seq, n) in enumerate(seqs):
        labels = batch["labels"][b].tolist()
        assert labels[:width - n] == [-100] * (width - n)  # prompt and left padding: no loss
        assert labels[width - n:] == seq[-n:]  # answer tokens: loss
        assert batch["attention_mask"][b].sum() == len(seq)
        assert batch["position_ids"][b, -1] == len(seq) - 1


def test_truncation_keeps_the_answer(base, examples):
    _, tok = load_lora_model(base, one_variant(), CFG)
    full, n = encode(tok, examples[0], 10_000)
    short, n2 = encode(tok, examples[0], 12)
    assert n == n2 and len(short) == 12 and short[-n:] == full[-n:] and short == full[-12:]
    tiny, n3 = encode(tok, examples[0], 3)  # the answer alone is too long: keep one prompt token
    assert (len(tiny), n3) == (3, 2) and tiny == [full[-n - 1]] + full[-n:-n + 2]


def test_answer_logprobs_match_an_unpadded_forward(base, examples):
    model, tok = load_lora_model(base, one_variant(), CFG)
    model.eval()
    seqs = [encode(tok, ex, 256) for ex in examples[:4]]
    with torch.no_grad():
        padded = answer_logprobs(model, collate(seqs, tok.pad_token_id))  # (B, K-1)
        for b, (seq, n) in enumerate(seqs):
            logits = model(input_ids=torch.tensor([seq])).logits[0]  # (T, V)
            want = torch.log_softmax(logits[-n - 1:-1], -1).gather(-1, torch.tensor(seq[-n:])[:, None])[:, 0]
            assert torch.allclose(padded[b, -n:], want, atol=1e-5)
            assert (padded[b, :-n] == 0).all()


def test_trainer_batch_gives_the_same_loss(base, examples):
    # The Trainer path: the model's own loss on the last K logits and labels.
    model, tok = load_lora_model(base, one_variant(), CFG)
    model.eval()
    seqs = [encode(tok, ex, 256) for ex in examples[:4]]
    with torch.no_grad():
        want = answer_loss(model, collate(seqs, tok.pad_token_id))
        short = trainer_batch(seqs, tok.pad_token_id)
        assert short["logits_to_keep"] == max(n for _, n in seqs) + 1
        assert torch.allclose(model(**short).loss, want, atol=1e-6)
        assert torch.allclose(model(**collate(seqs, tok.pad_token_id)).loss, want, atol=1e-6)  # full logits


def test_loss_goes_down_and_reload_gives_the_same_scores(base, examples, tmp_path):
    variant = one_variant()
    cfg = dataclasses.replace(CFG, max_steps=16, eval_every=8)
    model, tok = load_lora_model(base, variant, cfg)  # LoRA B = 0: the untrained base
    before = evaluate(model, tok, examples[30:])
    result = train_variant(base, variant, examples[:30], examples[30:], cfg, tmp_path)
    losses = [loss for _, loss, _ in result.loss_curve]
    assert [s for s, _, _ in result.loss_curve] == list(range(1, 17))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1
    assert result.heldout_loss < before[1] - 0.1  # held-out answers got likelier too
    assert before[0] < 1.0 and result.heldout_accuracy == 1.0  # ... and "yes" now wins every held-out item
    assert [s for s, _, _ in result.eval_curve] == [8, 16]
    assert result.adapter == tmp_path / "adapters" / variant.name
    assert sorted(p.name for p in result.adapter.iterdir() if p.suffix != ".md") == \
        ["adapter_config.json", "adapter_model.safetensors"]
    assert not list((tmp_path / "adapters").glob(".tmp-*"))

    # Reload through PEFT: the same per-option scores as the in-memory model had.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), result.adapter)
    acc, loss, logliks = evaluate(reloaded, tok, examples[30:])
    assert torch.allclose(torch.tensor(logliks), torch.tensor(result.heldout_logliks), atol=1e-5)
    assert (acc, round(loss, 5)) == (result.heldout_accuracy, round(result.heldout_loss, 5))
    assert logliks != before[2]  # training changed the scores

    # ... and through the HF engine, the way `vote run` scores the voters.
    from ensemble.engines.base import ChoiceRequest, EngineSpec, build_engine

    engine = build_engine(EngineSpec("hf", str(base), {variant.name: str(result.adapter)}))
    prompts = [tok.apply_chat_template(list(ex.messages), tokenize=False, add_generation_prompt=True) + ex.prefix
               for ex in examples[30:]]
    outs = engine.score_choices([ChoiceRequest(variant.name, ex.choices, prompt=p, mode="cloze", normalize="mean")
                                 for ex, p in zip(examples[30:], prompts)])
    assert torch.allclose(torch.tensor([o.logliks for o in outs]), torch.tensor(result.heldout_logliks), atol=1e-4)
    engine.close()


def test_same_seed_same_adapter_other_seed_differs(base, examples, tmp_path):
    from safetensors.torch import load_file

    a, b = expand_grid(GridConfig(ranks=(4,), seeds=(0, 1)), "mc")
    ra = train_variant(base, a, examples[:16], examples[16:20], CFG, tmp_path / "one")
    ra2 = train_variant(base, a, examples[:16], examples[16:20], CFG, tmp_path / "two")
    rb = train_variant(base, b, examples[:16], examples[16:20], CFG, tmp_path / "one")
    wa, wa2, wb = (load_file(r.adapter / "adapter_model.safetensors") for r in (ra, ra2, rb))
    assert all(torch.equal(wa[k], wa2[k]) for k in wa)  # deterministic under the variant seed
    assert not all(torch.allclose(wa[k], wb[k]) for k in wa)
    assert ra.loss_curve == ra2.loss_curve


@pytest.mark.parametrize("flavour", ["rslora", "dora"])
def test_flavours_train_and_save(base, examples, tmp_path, flavour):
    import json

    v = expand_grid(GridConfig(ranks=(4,), flavours=(flavour,)), "mc")[0]
    r = train_variant(base, v, examples[:8], examples[8:12], dataclasses.replace(CFG, max_steps=2), tmp_path)
    saved = json.loads((r.adapter / "adapter_config.json").read_text())
    assert (saved["use_rslora"], saved["use_dora"]) == (flavour == "rslora", flavour == "dora")


def test_hf_trainer_path(base, examples, tmp_path):
    v = expand_grid(GridConfig(ranks=(4,), variants=(VariantConfig(name="t", rank=4),)), "mc")[1]
    cfg = dataclasses.replace(CFG, trainer="hf", max_steps=4, dtype="bfloat16", eval_every=2,
                              scheduler="cosine", warmup_ratio=0.25)
    events: list[str] = []
    r = train_variant(base, v, examples[:16], examples[16:20], cfg, tmp_path,
                      progress=lambda event, **info: events.append(event))
    assert [s for s, _, _ in r.loss_curve] == [1, 2, 3, 4]
    assert [s for s, _, _ in r.eval_curve] == [2, 4]
    assert (r.adapter / "adapter_model.safetensors").is_file()
    assert events[0] == "train_start" and events[-1] == "train_done" and events.count("step") == 4


def test_heldout_loss_is_the_gold_options_nll_and_chat_rows_their_answers(base, examples):
    model, tok = load_lora_model(base, one_variant(), CFG)
    acc, loss, logliks = evaluate(model, tok, examples[:5], batch_size=2)
    gold_nll = [-ll[ex.gold] for ll, ex in zip(logliks, examples[:5])]   # one number per scored row
    assert loss == pytest.approx(sum(gold_nll) / 5)
    assert acc == sum(max(range(2), key=lambda k: ll[k]) == ex.gold for ll, ex in zip(logliks, examples[:5])) / 5
    # Batch size and row order do not change a row's scores (rows run in length order).
    again = evaluate(model, tok, examples[:5][::-1], batch_size=3)[2]
    assert torch.allclose(torch.tensor(again[::-1]), torch.tensor(logliks), atol=1e-5)
    # Free-form chat rows have no options: their loss is the NLL of target + EOS, token-weighted.
    chat = build_examples([ChatExample("c1", ({"role": "user", "content": "hi"},), "hello there")],
                          get_template("mc"), "cloze")
    acc_c, loss_c, ll_c = evaluate(model, tok, chat)
    batch = collate([encode(tok, chat[0], 256)], tok.pad_token_id)
    want = -float(answer_logprobs(model, batch).detach().sum()) / int((batch["labels"] != -100).sum())
    assert (acc_c, ll_c) == (None, []) and loss_c == pytest.approx(want, rel=1e-5)


def test_a_batch_cut_into_passes_gives_the_same_update(base, examples, tmp_path):
    """max_batch_tokens bounds the activations kept for backward; the gradient is the sum
    over passes of each pass's NLL over the whole batch's answer tokens: the same step."""
    from safetensors.torch import load_file

    from ensemble.training.batches import passes

    assert passes([5, 3, 9, 3], 0) == [[1, 3, 0, 2]]
    assert passes([5, 3, 9, 3], 10) == [[1, 3], [0], [2]]  # 2 x 3 fits in 10; 5 and 9 each alone
    assert passes([5, 3, 9, 3], 1) == [[1], [3], [0], [2]]  # one row at least
    v = one_variant()
    whole = train_variant(base, v, examples[:16], examples[16:20], dataclasses.replace(CFG, max_batch_tokens=0),
                          tmp_path / "whole")
    cut = train_variant(base, v, examples[:16], examples[16:20], dataclasses.replace(CFG, max_batch_tokens=40),
                        tmp_path / "cut")
    a, b = (load_file(r.adapter / "adapter_model.safetensors") for r in (whole, cut))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert not all(torch.equal(a[k], b[k]) for k in a)  # really another computation (summation order)
    assert [round(x, 4) for _, x, _ in whole.loss_curve] == [round(x, 4) for _, x, _ in cut.loss_curve]


@pytest.mark.parametrize("tied", [False, True])
def test_frozen_weights_in_bf16_give_the_same_products(base, examples, tied, tmp_path):
    """Under bf16 autocast a frozen fp32 weight is cast on every call; storing the cast
    once changes no bit of the output or of the LoRA gradients (and the LoRA stays fp32).
    The input embeddings are stored in bf16 as well (the only rounding: the same as an fp32
    model whose embedding table was rounded to bf16), and a tied lm_head shares that tensor."""
    from ensemble.testing import make_tiny_model
    from ensemble.training.loop import frozen_weights_in_bf16

    if tied:
        base = make_tiny_model(tmp_path / "tied", tied=True)
    v = one_variant()
    batch = collate([encode(load_lora_model(base, v, CFG)[1], ex, 256) for ex in examples[:4]], 0)
    outs = []
    for convert in (False, True):
        model, _ = load_lora_model(base, v, CFG)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.5)
        emb = model.get_input_embeddings()
        if convert:
            assert (model.get_output_embeddings().weight is emb.weight) == tied
            frozen_weights_in_bf16(model)
            assert model.get_output_embeddings().weight.dtype == torch.bfloat16
            assert emb.weight.dtype == torch.bfloat16 and not emb.weight.requires_grad
            assert (model.get_output_embeddings().weight is emb.weight) == tied
            assert emb(torch.tensor([[1, 2]])).dtype == torch.float32  # the residual stream stays fp32
            assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)
        else:
            emb.weight.data = emb.weight.data.to(torch.bfloat16).float()  # the reference: rounded table, fp32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logp = answer_logprobs(model, batch)
        grads = torch.autograd.grad(logp.sum(), [p for p in model.parameters() if p.requires_grad])
        outs.append((logp, grads))
    assert torch.equal(outs[0][0], outs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(outs[0][1], outs[1][1]))


def test_padded_width_rounds_up():
    assert [padded_width(n, 16) for n in (1, 15, 16, 17, 32, 33)] == [16, 16, 16, 32, 32, 48]
    assert [padded_width(n, 1) for n in (1, 7)] == [1, 7]


def test_bucketed_width_keeps_the_loss(base, examples):
    """Training pads batches to a multiple of WIDTH_MULTIPLE: masked positions only, so the
    answer log-probabilities equal the exact-width batch's to float rounding."""
    model, tok = load_lora_model(base, one_variant(), CFG)
    model.eval()
    seqs = [encode(tok, ex, 256) for ex in examples[:5]]
    exact, wide = collate(seqs, tok.pad_token_id), collate(seqs, tok.pad_token_id, WIDTH_MULTIPLE)
    assert wide["input_ids"].shape[1] % WIDTH_MULTIPLE == 0
    assert wide["input_ids"].shape[1] > exact["input_ids"].shape[1]  # this batch does get padded
    with torch.no_grad():
        a, b = answer_logprobs(model, exact), answer_logprobs(model, wide)
        assert torch.allclose(a, b, atol=1e-5)
        assert abs(float(answer_loss(model, exact)) - float(answer_loss(model, wide))) <= 1e-5


def test_training_on_cuda_runs_deterministic_algorithms_and_restores_the_callers(monkeypatch):
    """A resumed run must equal an uninterrupted one bit for bit, on CUDA too (loop.cuda_determinism)."""
    import os

    from ensemble.training.loop import cuda_determinism

    seen = []

    @cuda_determinism()
    def step(fail: bool) -> None:
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                     os.environ.get("CUBLAS_WORKSPACE_CONFIG")))
        if fail:
            raise KeyboardInterrupt

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    step(False)  # no GPU: nothing changes
    assert seen == [(False, False, None)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    try:
        step(False)
        with pytest.raises(KeyboardInterrupt):
            step(True)
        assert seen[1:] == [(True, False, ":4096:8")] * 2
        assert not torch.are_deterministic_algorithms_enabled()  # the caller's setting, after a failure too
    finally:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
