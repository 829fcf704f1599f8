"""Shared-prefix voters (aLoRA, top-layer) on a tiny random 3-layer Llama, float32, CPU.

Every score and every generated token of the shared path must equal what PEFT's own
full forward pass gives for that voter alone (the adapter folder loaded on its own,
no cache, no padding): max abs difference <= 1e-4 on log-likelihoods, for every kind
and for batches mixing kinds, plain LoRA voters and the base model.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from ensemble import tokens
from ensemble.engines.base import (
    ChoiceRequest,
    EngineSpec,
    GenRequest,
    SamplingSettings,
)
from ensemble.engines.hf.engine import HFEngine
from ensemble.engines.hf.kinds import VoterKind, find_invocation, kind_from_config
from ensemble.testing import make_tiny_adapters, make_tiny_model, make_tokenizer

TOL = 1e-4
ASSISTANT = [4]  # "<|assistant|>": the chat template's generation prompt, one special token
ANSWER = [379, 31]  # " Answer:" in the tiny tokenizer
MSGS = ({"role": "user", "content": "Which number is larger? 3 or 7"},)
VOTERS = ["al1", "al2", "al3", "top1", "top2", "mix", "plain", None]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("shared") / "base3", num_layers=3, seed=3)


@pytest.fixture(scope="module")
def adapters(base, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shared_adapters")
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")
    out = {}
    out |= make_tiny_adapters(base, root / "a", ["al1", "al2"], invocation=ASSISTANT, target_modules=targets)
    out |= make_tiny_adapters(base, root / "b", ["al3"], invocation=ANSWER, target_modules=targets)
    out |= make_tiny_adapters(base, root / "c", ["top1"], layers=[2], target_modules=targets)
    out |= make_tiny_adapters(base, root / "d", ["top2"], layers=[1, 2], target_modules=targets)
    out |= make_tiny_adapters(base, root / "e", ["mix"], invocation=ASSISTANT, layers=[2], target_modules=targets)
    out |= make_tiny_adapters(base, root / "f", ["plain"], target_modules=targets)
    return out


def build(base, adapters, **options) -> HFEngine:
    return HFEngine.from_spec(EngineSpec("hf", str(base), {k: str(v) for k, v in adapters.items()}, options))


@pytest.fixture(scope="module")
def engine(base, adapters) -> HFEngine:
    return build(base, adapters)


@pytest.fixture(scope="module")
def reference(base, adapters):
    """name -> PEFT's own model with only that adapter (None: the base model)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    models = {None: AutoModelForCausalLM.from_pretrained(base).eval()}
    for name, path in adapters.items():
        models[name] = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), path).eval()
    return models


def full_logprobs(model, ids: list[int]) -> torch.Tensor:
    """(T, V) log-probabilities of the next token after each position: one full forward."""
    with torch.inference_mode():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)


def cloze_requests():
    opts = [(" 3", " 7", " seven or so"), (" yes", " no", " cannot be decided")]
    reqs = [ChoiceRequest(a, options=opts[0], messages=MSGS, assistant_prefix=" Answer:", normalize="sum")
            for a in VOTERS]
    reqs += [ChoiceRequest(a, options=opts[1], prompt="Every bird can fly. Can Tom fly? Answer:", normalize="mean")
             for a in VOTERS]
    # options that start alike share trie slots
    reqs += [ChoiceRequest(a, options=NUMBERS, messages=MSGS, assistant_prefix=" Answer:", normalize="mean")
             for a in VOTERS]
    return reqs


NUMBERS = (" -5182", " -5194", " -5184", " 7")


def test_options_that_start_alike_share_slots(engine):
    from ensemble.engines.hf.shared import Unit, tail_layout

    row = engine._score_row(ChoiceRequest("al1", options=NUMBERS, messages=MSGS))
    toks, rel, allowed, pairs = tail_layout(Unit([], [9, 8], row.options, 0), "cloze")
    assert len(toks) - 2 < sum(len(c) - 1 for c in row.options)  # fewer slots than options' tokens
    assert len(pairs) == sum(len(c) for c in row.options)
    for slot in range(2, len(toks)):  # every slot sees the prompt, itself, and rel - 2 option ancestors
        assert allowed[slot, :2].all() and allowed[slot, slot] and int(allowed[slot].sum()) == rel[slot] + 1


def letter_requests():
    return [ChoiceRequest(a, options=("A", "B", "C"), messages=MSGS, mode="letter", assistant_prefix=" Answer:")
            for a in VOTERS] + \
           [ChoiceRequest(a, options=("A", "B"), prompt="Question: Which? Answer:", mode="letter") for a in VOTERS]


def expected(engine, reference, req) -> list[float]:
    row = engine._score_row(req)  # the token ids the engine scores (tokenization is not under test)
    model = reference[req.adapter]
    if req.mode == "letter":
        logp = full_logprobs(model, row.prefix)[-1]
        return [float(logp[cands].max()) for cands in row.options]
    out = []
    for cont in row.options:
        logp = full_logprobs(model, row.prefix + cont)
        lps = [float(logp[len(row.prefix) + i - 1, t]) for i, t in enumerate(cont)]
        out.append(sum(lps) / len(lps) if req.normalize == "mean" else sum(lps))
    return out


def test_kinds_are_read_from_the_loaded_adapters(engine):
    kinds = engine._shared.kinds
    assert {n: (k.name, k.invocation, k.first_layer) for n, k in kinds.items()} == {
        "al1": ("alora", (4,), 0), "al2": ("alora", (4,), 0), "al3": ("alora", tuple(ANSWER), 0),
        "top1": ("top", (), 2), "top2": ("top", (), 1), "mix": ("alora+top", (4,), 2)}
    assert not engine._shared.handles("plain")


@pytest.mark.parametrize("make", [cloze_requests, letter_requests])
def test_mixed_kinds_equal_each_voters_own_full_forward(engine, reference, make):
    reqs = make()
    outs = engine.score_choices(reqs)
    worst = max(abs(g - w) for o in outs for g, w in zip(o.logliks, expected(engine, reference, o.request)))
    assert worst <= TOL
    # the voters really differ (else the test could not fail)
    first = [o.logliks for o in outs[:len(VOTERS)]]
    assert min(abs(a[0] - b[0]) for i, a in enumerate(first) for b in first[i + 1:]) > 1e-3


@pytest.mark.parametrize("make", [cloze_requests, letter_requests])
def test_shared_equals_unshared_and_alone(base, adapters, engine, make):
    reqs = make()
    shared = engine.score_choices(reqs)
    unshared = build(base, adapters, share_prefix=False, batch_size=3).score_choices(reqs)
    for a, b in zip(shared, unshared):
        assert a.logliks == pytest.approx(b.logliks, abs=1e-5)
    for a, req in zip(shared, reqs):
        assert a.logliks == pytest.approx(engine.score_choices([req])[0].logliks, abs=1e-5)


@pytest.mark.parametrize("mode", ["peft", "separate"])
def test_other_lora_batching_modes_share_too(base, adapters, engine, mode):
    reqs = cloze_requests()
    other = build(base, adapters, lora_batching=mode)
    assert other._shared.handles("al1") and other._shared.handles("top1")
    for a, b in zip(other.score_choices(reqs), engine.score_choices(reqs)):
        assert a.logliks == pytest.approx(b.logliks, abs=1e-5)


def greedy_reference(model, ids: list[int], n: int) -> tuple[list[int], list[float]]:
    toks, lps = [], []
    for _ in range(n):
        logp = full_logprobs(model, ids + toks)[-1]
        toks.append(int(logp.argmax()))
        lps.append(float(logp[toks[-1]]))
    return toks, lps


def test_greedy_generation_equals_peft_full_forward(engine, reference):
    reqs = [GenRequest(a, messages=MSGS, sampling=SamplingSettings(max_new_tokens=6)) for a in VOTERS]
    reqs += [GenRequest(a, prompt="The answer is Answer:", sampling=SamplingSettings(max_new_tokens=6))
             for a in VOTERS]
    engine.ignore_eos = True
    try:
        outs = engine.generate(reqs)
    finally:
        engine.ignore_eos = False
    for o in outs:
        ids = tokens.prompt_ids(engine.tokenizer, o.request.prompt, o.request.messages)
        toks, lps = greedy_reference(reference[o.request.adapter], ids, 6)
        assert o.samples[0].token_logprobs == pytest.approx(lps, abs=TOL)
        assert engine.tokenizer.decode(toks, skip_special_tokens=True) == o.samples[0].text
    invoked = [o for o in outs[:len(VOTERS)] if o.request.adapter != "al3"]  # no " Answer:" in the chat prompt
    assert len({o.samples[0].token_logprobs for o in invoked}) == len(invoked)


def test_seeded_sampling_does_not_depend_on_the_batch(base, adapters, engine):
    def req(a, seed):
        return GenRequest(a, messages=MSGS, sampling=SamplingSettings(n=2, temperature=1.0, max_new_tokens=5,
                                                                      seed=seed))
    target = req("al2", 7)
    alone = engine.generate([target])[0]
    crowd = engine.generate([req(a, 1) for a in VOTERS] + [target])[-1]
    unshared = build(base, adapters, share_prefix=False, batch_size=2).generate([target])[0]
    for other in (crowd, unshared):
        assert [s.text for s in other.samples] == [s.text for s in alone.samples]
        for s, t in zip(other.samples, alone.samples):
            assert s.token_logprobs == pytest.approx(t.token_logprobs, abs=1e-5)


def test_missing_invocation_answers_as_the_base_model(base, adapters, reference, caplog):
    # "al3" is invoked by " Answer:", which this prompt lacks: PEFT never activates it.
    engine = build(base, {"al3": adapters["al3"]})  # warns once per voter: a fresh engine
    reqs = [ChoiceRequest(a, options=(" 3", " 7"), prompt="Which number is larger? 3 or 7") for a in ("al3", None)]
    with caplog.at_level(logging.WARNING):
        got, base_out = engine.score_choices(reqs)
    assert got.logliks == pytest.approx(base_out.logliks, abs=1e-5)
    assert got.logliks == pytest.approx(expected(engine, reference, reqs[0]), abs=TOL)
    assert "aLoRA voter 'al3': its invocation tokens [379, 31] are not in the prompt" in caplog.text


def test_find_invocation_takes_the_last_occurrence():
    assert find_invocation([1, 4, 2, 4, 5], [4]) == 3
    assert find_invocation([1, 379, 31, 9, 379, 31], [379, 31]) == 4
    assert find_invocation([1, 2, 3], [2, 4]) is None
    assert find_invocation([1, 2], []) is None


def test_kind_from_config():
    assert kind_from_config({"r": 4}) == VoterKind()
    assert kind_from_config({"alora_invocation_tokens": [4, 5]}).name == "alora"
    assert kind_from_config({"layers_to_transform": [20, 21, 22, 23]}) == VoterKind((), 20)
    assert kind_from_config({"layers_to_transform": 3}).first_layer == 3
    assert kind_from_config({"layers_to_transform": [0, 5]}).name == "lora"
    # whole modules trained next to the LoRA layers: no layer split
    assert kind_from_config({"layers_to_transform": [5], "modules_to_save": ["lm_head"]}).first_layer == 0


def test_invocation_tokens_survive_save_and_load(adapters, engine):
    saved = json.loads((adapters["al3"] / "adapter_config.json").read_text())
    assert saved["alora_invocation_tokens"] == ANSWER
    assert engine.model.peft_config["al3"].alora_invocation_tokens == ANSWER
    assert make_tokenizer()(" Answer:", add_special_tokens=False)["input_ids"] == ANSWER


# -- `vote adapters add`: the kind and the invocation tokens round-trip ------------------

def edited(src: Path, dst: Path, **changes) -> Path:
    """A copy of the adapter folder ``src`` with ``changes`` in its adapter_config.json."""
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text()) | changes
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


def test_register_adapter_round_trips_the_kind(base, adapters, tmp_path):
    from ensemble.training.adapters import load_voters, register_adapter

    out = tmp_path / "run"
    info = register_adapter(out, adapters["al3"], base=base)
    assert (info.kind, info.invocation_tokens, info.first_layer) == ("alora", tuple(ANSWER), 0)
    assert info.describe().startswith("aLoRA, invocation tokens [379, 31], rank 4")
    top = register_adapter(out, adapters["top2"], base=base)
    assert (top.kind, top.first_layer) == ("top", 1)
    assert register_adapter(out, adapters["mix"], base=base).kind == "alora+top"
    engine = build(base, load_voters(out))
    assert engine._shared.kinds["al3"].invocation == tuple(ANSWER)
    assert engine._shared.kinds["top2"].first_layer == 1


def test_cli_adapters_add_says_the_kind(base, adapters, tmp_path):
    from click.testing import CliRunner

    from ensemble.cli.app import main

    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"id": "q0", "question": "Is 2 even?", "options": ["yes", "no"], "answer": "A"}) + "\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {base}\nout: {tmp_path / 'run'}\nprompt: mc\ndata: {{train: {data}}}\n")
    res = CliRunner().invoke(main, ["adapters", "add", str(adapters["al1"]), "--config", str(cfg)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "added voter 'al1' (aLoRA, invocation tokens [4], rank 4" in res.output


@pytest.mark.filterwarnings("ignore:aLoRA is currently only supported for CAUSAL_LM:UserWarning")  # the case under test
def test_bad_kind_configs_are_refused(base, adapters, tmp_path):
    from ensemble.errors import EnsembleError
    from ensemble.training.adapters import check_adapter

    untyped = edited(adapters["al1"], tmp_path / "untyped", task_type=None)
    with pytest.raises(EnsembleError, match=r"untyped/adapter_config.json: an aLoRA \(alora_invocation_tokens\) "
                                            r"with task_type None is never activated by PEFT; re-save it with "
                                            r"LoraConfig\(task_type='CAUSAL_LM'"):
        check_adapter(base, untyped)
    with pytest.raises(EnsembleError, match=r"aLoRA voters untyped: .*task_type None.*never activated"):
        build(base, {"untyped": untyped})
    far = edited(adapters["al1"], tmp_path / "far", alora_invocation_tokens=[4, 99999])
    with pytest.raises(EnsembleError, match=r"adapter far: alora_invocation_tokens \[99999\] are not in the base's "
                                            r"vocabulary of 384 tokens — trained with a different tokenizer"):
        check_adapter(base, far)
    deep = edited(adapters["top1"], tmp_path / "deep", layers_to_transform=[2, 7])
    with pytest.raises(EnsembleError, match=r"adapter deep: layers_to_transform \[2, 7\] names layers the base "
                                            r"does not have \(it has layers 0-2\) — trained for a different base"):
        check_adapter(base, deep)


# -- the real SmolLM2 (run with -m slow) -----------------------------------------------

@pytest.mark.slow
def test_smollm2_shared_prefix_equals_full_forward(tmp_path):
    """SmolLM2-135M, invocation = the chat template's "<|im_start|>assistant\\n"."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ensemble.engines.models import resolve_model

    smol = resolve_model("smollm2")
    inv = AutoTokenizer.from_pretrained(smol)("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    kw = {"rank": 8, "scale": 0.02, "target_modules": ("q_proj", "k_proj", "v_proj", "o_proj")}
    ads = make_tiny_adapters(smol, tmp_path / "a", ["s_al1", "s_al2"], invocation=inv, **kw)
    ads |= make_tiny_adapters(smol, tmp_path / "t", ["s_top"], layers=list(range(20, 30)), **kw)
    ads |= make_tiny_adapters(smol, tmp_path / "p", ["s_plain"], **kw)
    engine = build(smol, ads)
    voters = [*ads, None]
    msgs = ({"role": "user", "content": "What is the capital of France?"},)
    reqs = [ChoiceRequest(a, (" Paris", " Berlin", " Rome"), messages=msgs, assistant_prefix="Answer:",
                          normalize="sum") for a in voters]
    reqs += [ChoiceRequest(a, ("A", "B"), messages=msgs, assistant_prefix="Answer:", mode="letter") for a in voters]
    outs = engine.score_choices(reqs)
    models = {None: AutoModelForCausalLM.from_pretrained(smol).eval()}
    for name, path in ads.items():
        models[name] = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smol), path).eval()
    worst = max(abs(g - w) for o in outs for g, w in zip(o.logliks, expected(engine, models, o.request)))
    assert worst <= TOL
    cloze = [o.logliks[0] for o in outs[:len(voters)]]
    assert len({round(x, 4) for x in cloze}) == len(voters)  # every voter differs
    engine.close()


@pytest.mark.parametrize("make", [cloze_requests, letter_requests])
def test_last_layer_at_needed_slots_equals_the_whole_layer(base, adapters, engine, make):
    """Llama runs its last layer at the scored slots only; other decoders run it whole."""
    whole = build(base, adapters)
    whole._shared.split.can_cut_last = False
    reqs = make()
    for a, b in zip(whole.score_choices(reqs), engine.score_choices(reqs)):
        assert a.logliks == pytest.approx(b.logliks, abs=1e-5)
    gen = [GenRequest(a, messages=MSGS, sampling=SamplingSettings(max_new_tokens=4)) for a in VOTERS]
    for a, b in zip(whole.generate(gen), engine.generate(gen)):
        assert a.samples[0].token_logprobs == pytest.approx(b.samples[0].token_logprobs, abs=1e-5)


def test_voter_rows_in_chunks_give_the_same_scores(engine, reference, monkeypatch):
    from ensemble.engines.hf import split

    monkeypatch.setattr(split, "VOTER_TOKENS", 8)  # a few voter rows per chunk
    outs = engine.score_choices(cloze_requests())
    worst = max(abs(g - w) for o in outs for g, w in zip(o.logliks, expected(engine, reference, o.request)))
    assert worst <= TOL
