"""The HF engine on the tiny random Llama + 3 random LoRA voters (fp32, CPU).

Mixed-adapter batches must give what one-adapter runs give; seeded sampling must
not depend on batch composition; choice scores must equal a naive full forward.
Slow tests at the bottom run the real SmolLM2 (``-m slow``).
"""
from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ensemble.engines.base import (
    ENGINES,
    ChoiceRequest,
    Engine,
    EngineSpec,
    GenRequest,
    SamplingSettings,
)
from ensemble.engines.hf.engine import HFEngine
from ensemble.errors import EnsembleError

VOTERS = [None, "v1", "v2", "v3"]
MSGS = ({"role": "user", "content": "Which number is larger? 3 or 7"},)
PROMPTS = ["Question: Which number is larger?", "The answer is", "A B C D"]


def build(model: Path | str, adapters: dict, **options) -> HFEngine:
    spec = EngineSpec("hf", str(model), {k: str(v) for k, v in adapters.items()}, options)
    return ENGINES.get("hf")(spec)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


MODES = ["stacked", "peft", "separate"]


@pytest.fixture(scope="module", params=MODES)
def mode(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def engine(one_thread, mode, tiny_model, tiny_adapters) -> HFEngine:
    eng = build(tiny_model, tiny_adapters, batch_size=32, lora_batching=mode)
    assert eng.lora_batching == mode
    yield eng
    eng.close()


def greedy(adapter, prompt=None, messages=None, n=1, **kw) -> GenRequest:
    return GenRequest(adapter, prompt=prompt, messages=messages,
                      sampling=SamplingSettings(n=n, max_new_tokens=kw.pop("max_new_tokens", 8), **kw))


def sampled(adapter, prompt, seed, n=3) -> GenRequest:
    return GenRequest(adapter, prompt=prompt,
                      sampling=SamplingSettings(n=n, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=seed))


def as_tuple(out):
    return [(s.text, s.n_tokens, s.finish_reason) for s in out.samples]


def test_engine_protocol_and_adapters(engine):
    assert isinstance(engine, Engine)
    assert engine.name == "hf"
    assert engine.adapters == ["v1", "v2", "v3"]


def test_mixed_batch_equals_one_adapter_runs(engine):
    reqs = [greedy(a, prompt=p) for p in PROMPTS for a in VOTERS] + [greedy(a, messages=MSGS) for a in VOTERS]
    mixed = engine.generate(reqs)
    alone = [o for a in VOTERS for o in engine.generate([r for r in reqs if r.adapter == a])]
    alone = sorted(alone, key=lambda o: reqs.index(o.request))
    assert [as_tuple(o) for o in mixed] == [as_tuple(o) for o in alone]
    for m, s in zip(mixed, alone):
        assert m.samples[0].token_logprobs == pytest.approx(s.samples[0].token_logprobs, abs=1e-5)
    assert [o.request for o in mixed] == reqs  # outputs come back in request order


def test_adapters_differ_from_each_other_and_from_base(engine):
    outs = engine.generate([greedy(a, prompt=PROMPTS[0]) for a in VOTERS])
    logprobs = [o.samples[0].token_logprobs for o in outs]
    assert len(set(logprobs)) == 4


def test_logprobs_match_tokens_and_are_logprobs(engine):
    outs = engine.generate([greedy(a, prompt=p) for p in PROMPTS for a in VOTERS]
                           + [sampled("v1", PROMPTS[1], seed=3)])
    for o in outs:
        for s in o.samples:
            assert len(s.token_logprobs) == s.n_tokens == 8
            assert all(lp <= 0 for lp in s.token_logprobs)
            assert s.finish_reason == "length"
        assert o.latency_s > 0


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(tiny_model, tiny_adapters, engine, mode):
    target = sampled("v2", PROMPTS[1], seed=11)
    alone = engine.generate([target])[0]
    assert as_tuple(engine.generate([target])[0]) == as_tuple(alone)
    others = [sampled(a, p, seed=5) for p in PROMPTS for a in VOTERS] + [greedy("v1", messages=MSGS)]
    crowd = engine.generate(others[:5] + [target] + others[5:])[5]
    assert as_tuple(crowd) == as_tuple(alone)
    small = build(tiny_model, tiny_adapters, batch_size=2, lora_batching=mode)  # other batches, padding
    assert as_tuple(small.generate(others + [target])[-1]) == as_tuple(alone)
    assert as_tuple(engine.generate([sampled("v2", PROMPTS[1], seed=12)])[0]) != as_tuple(alone)


def test_samples_of_a_request_share_one_prefill(tiny_model, tiny_adapters, engine, mode, monkeypatch):
    reqs = [sampled(a, p, seed=3, n=4) for p in PROMPTS[:2] for a in VOTERS]  # 8 requests, 32 rows
    prefills: list[int] = []
    forward = engine._forward

    def spy(adapters, **kw):
        if kw["input_ids"].shape[1] > 1:
            prefills.append(kw["input_ids"].shape[0])
        return forward(adapters, **kw)

    monkeypatch.setattr(engine, "_forward", spy)
    shared = engine.generate(reqs)
    assert sum(prefills) == 8  # one prompt row per request, not one per sample ("separate": 4 batches)
    plain = build(tiny_model, tiny_adapters, batch_size=32, lora_batching=mode, share_prefix=False)
    monkeypatch.setattr(plain, "_forward", spy)
    prefills.clear()
    unshared = plain.generate(reqs)
    assert sum(prefills) == 32
    for a, b in zip(shared, unshared):
        assert [s.text for s in a.samples] == [s.text for s in b.samples]
        for s, t in zip(a.samples, b.samples):
            assert s.token_logprobs == pytest.approx(t.token_logprobs, abs=1e-5)
    assert len({s.text for o in shared for s in o.samples}) > len(reqs)  # the samples differ


def test_first_sample_draws_that_sample_of_the_n_sample_request(engine):
    """A request for n=1, first_sample=j is sample j of the n-sample request with the same seed,
    in any batch (what an adaptive run relies on to draw the full run's samples)."""
    full = engine.generate([sampled("v2", PROMPTS[1], seed=7, n=4)])[0]
    ones = [GenRequest(adapter="v2", prompt=PROMPTS[1], sampling=SamplingSettings(
        n=1, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=7, first_sample=j)) for j in (3, 0, 2, 1)]
    picked = engine.generate([sampled("v1", PROMPTS[0], seed=2)] + ones)[1:]
    rows = [(s.text, s.n_tokens, s.finish_reason) for s in full.samples]
    assert [as_tuple(o)[0] for o in picked] == [rows[j] for j in (3, 0, 2, 1)]
    for o, j in zip(picked, (3, 0, 2, 1)):  # other batch shapes: the same draws, logprobs to float rounding
        assert o.samples[0].token_logprobs == pytest.approx(full.samples[j].token_logprobs, abs=1e-5)
    tail = GenRequest(adapter="v2", prompt=PROMPTS[1], sampling=replace(ones[0].sampling, n=2, first_sample=2))
    assert as_tuple(engine.generate([tail])[0]) == rows[2:]
    with pytest.raises(EnsembleError, match=r"sampling settings: first_sample -1 \(>= 0\)"):
        engine.generate([GenRequest(adapter="v2", prompt="x", sampling=SamplingSettings(first_sample=-1))])


def test_n_samples_distinct_and_greedy_copies(engine):
    out = engine.generate([sampled("v3", PROMPTS[0], seed=1, n=4)])[0]
    assert len(out.samples) == 4
    assert len({s.text for s in out.samples}) == 4
    copies = engine.generate([greedy("v3", prompt=PROMPTS[0], n=3)])[0]
    assert len(copies.samples) == 3 and len(set(copies.samples)) == 1


def test_stop_string_cuts_text_and_stops(engine):
    reqs = [greedy(a, prompt=p, max_new_tokens=12) for p in PROMPTS for a in VOTERS]
    # The random model emits many partial UTF-8 bytes (decoded as U+FFFD); pick an output
    # with an ASCII letter after its first character and stop on it.
    req, full, at = next((r, o.samples[0], i) for r, o in zip(reqs, engine.generate(reqs))
                         for i, ch in enumerate(o.samples[0].text) if i > 0 and ch.isascii() and ch.isalpha())
    stop = full.text[at:at + 2]
    cut = engine.generate([greedy(req.adapter, prompt=req.prompt, max_new_tokens=12, stop=("never", stop))])[0]
    sample = cut.samples[0]
    assert sample.text == full.text[: full.text.find(stop)]
    assert sample.finish_reason == "stop"
    assert sample.n_tokens < 12 and len(sample.token_logprobs) == sample.n_tokens
    # CPU: bit for bit. CUDA picks kernels by batch shape (one row here, many above).
    tol = 0.0 if engine.device == "cpu" else 1e-5
    assert sample.token_logprobs == pytest.approx(full.token_logprobs[: sample.n_tokens], abs=tol, rel=0)


def test_eos_stops_and_ignore_eos_keeps_going(tiny_model, tiny_adapters):
    eng = build(tiny_model, tiny_adapters)
    eng.eos_ids = set(range(len(eng.tokenizer)))  # every token ends the answer
    out = eng.generate([greedy("v1", prompt=PROMPTS[0])])[0].samples[0]
    assert (out.text, out.n_tokens, out.finish_reason, len(out.token_logprobs)) == ("", 1, "stop", 1)
    eng.ignore_eos = True
    out = eng.generate([greedy("v1", prompt=PROMPTS[0])])[0].samples[0]
    assert (out.n_tokens, out.finish_reason) == (8, "length")


def test_lora_batching_modes_agree(tiny_model, tiny_adapters, one_thread):
    reqs = [greedy(a, prompt=p) for p in PROMPTS for a in VOTERS]
    outs = {m: build(tiny_model, tiny_adapters, lora_batching=m).generate(reqs) for m in MODES}
    for m in MODES[1:]:
        assert [as_tuple(o) for o in outs[m]] == [as_tuple(o) for o in outs["stacked"]]
        for a, b in zip(outs[m], outs["stacked"]):
            assert a.samples[0].token_logprobs == pytest.approx(b.samples[0].token_logprobs, abs=1e-5)


def test_dora_adapters_fall_back_to_separate_batches(tiny_model, tmp_path, one_thread):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    for i, name in enumerate(["d1", "d2"]):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                               LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "lora_B" in pname:
                    p.copy_(torch.randn(p.shape, generator=gen))
        model.save_pretrained(tmp_path / name)
    eng = build(tiny_model, {n: tmp_path / n for n in ["d1", "d2"]})
    assert eng.lora_batching == "separate"
    reqs = [greedy(a, prompt=p) for p in PROMPTS for a in [None, "d1", "d2"]]
    mixed = eng.generate(reqs)
    alone = [eng.generate([r])[0] for r in reqs]
    assert [as_tuple(o) for o in mixed] == [as_tuple(o) for o in alone]
    assert len({o.samples[0].token_logprobs for o in mixed[:3]}) == 3


def test_bfloat16_option_generates(tiny_model, tiny_adapters):
    eng = build(tiny_model, tiny_adapters, dtype="bfloat16")
    assert next(eng.model.parameters()).dtype == torch.bfloat16
    outs = eng.generate([greedy(a, prompt=PROMPTS[0]) for a in VOTERS])
    assert all(o.samples[0].n_tokens == 8 for o in outs)


# -- choice scoring ---------------------------------------------------------------------

CLOZE = [(" 3", " 7", " seven or so"), (" yes", " no", " cannot be decided", " A")]
CLOZE_PROMPTS = ["Question: Which number is larger? Answer:", "Every bird can fly. Can Tom fly? "]


def cloze_requests(normalize="sum"):
    return [ChoiceRequest(a, options=opts, prompt=p, normalize=normalize)
            for p, opts in zip(CLOZE_PROMPTS, CLOZE) for a in VOTERS]


def letter_requests():
    return [ChoiceRequest(a, options=("A", "B", "C"), prompt=p, mode="letter") for p in PROMPTS for a in VOTERS] + \
           [ChoiceRequest(a, options=("A", "B"), messages=MSGS, mode="letter") for a in VOTERS]


@pytest.mark.parametrize("make", [cloze_requests, letter_requests])
def test_choice_probs_sum_to_one_and_mixed_equals_alone(engine, make):
    reqs = make()
    mixed = engine.score_choices(reqs)
    for o in mixed:
        assert sum(o.probs) == pytest.approx(1.0)
        assert len(o.logliks) == len(o.request.options) and all(x < 0 for x in o.logliks)
    alone = {id(o.request): o for a in VOTERS for o in engine.score_choices([r for r in reqs if r.adapter == a])}
    for o in mixed:
        assert o.logliks == pytest.approx(alone[id(o.request)].logliks, abs=1e-5)


def naive_logprobs(engine, adapter, context_ids, cont_ids):
    """Full forward of context + continuation, no cache, no padding: logprob of each continuation token."""
    model = engine.model
    ids = torch.tensor([context_ids + cont_ids], device=engine.device)
    with torch.inference_mode():
        if adapter is None:
            with model.disable_adapter():
                logits = model(input_ids=ids).logits[0]
        else:
            model.set_adapter(adapter, inference_mode=True)
            logits = model(input_ids=ids).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    start = len(context_ids)
    return [float(logp[start + i - 1, t]) for i, t in enumerate(cont_ids)]


@pytest.mark.parametrize("normalize", ["sum", "mean"])
def test_cloze_equals_naive_full_forward(engine, normalize):
    tok = engine.tokenizer
    outs = engine.score_choices(cloze_requests(normalize))
    for o in outs:
        prompt = o.request.prompt
        context = prompt.rstrip(" ")
        ctx = tok(context)["input_ids"]
        for opt, got in zip(o.request.options, o.logliks):
            cont = tok(prompt + opt)["input_ids"][len(ctx):]
            lps = naive_logprobs(engine, o.request.adapter, ctx, cont)
            want = sum(lps) if normalize == "sum" else sum(lps) / len(lps)
            assert got == pytest.approx(want, abs=1e-4)
    assert len(tok(CLOZE_PROMPTS[1].rstrip(" ") + CLOZE[1][2])["input_ids"]) - \
        len(tok(CLOZE_PROMPTS[1].rstrip(" "))["input_ids"]) > 1  # some options really are multi-token


def test_cloze_with_eager_attention_matches_sdpa(engine, tiny_model, tiny_adapters):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="eager")
    eager = HFEngine.from_model(model, AutoTokenizer.from_pretrained(tiny_model),
                                {k: str(v) for k, v in tiny_adapters.items()})
    reqs = cloze_requests("mean")
    for a, b in zip(eager.score_choices(reqs), engine.score_choices(reqs)):
        assert a.logliks == pytest.approx(b.logliks, abs=1e-5)


def test_letter_is_max_over_spellings(engine):
    tok = engine.tokenizer
    out = engine.score_choices([ChoiceRequest("v2", options=("A", "B"), prompt=PROMPTS[0], mode="letter")])[0]
    ids = tok(PROMPTS[0])["input_ids"]
    for letter, got in zip("AB", out.logliks):
        spellings = [tok(v, add_special_tokens=False)["input_ids"] for v in (letter, " " + letter)]
        assert all(len(s) == 1 for s in spellings)  # both exist in the tiny vocab
        lp = [naive_logprobs(engine, "v2", ids, s)[0] for s in spellings]
        assert got == pytest.approx(max(lp), abs=1e-5)
    assert out.probs == pytest.approx([math.exp(x) / sum(math.exp(y) for y in out.logliks) for x in out.logliks])


# -- errors -----------------------------------------------------------------------------

def test_bad_model_paths(tmp_path):
    with pytest.raises(EnsembleError, match=r"Unknown model '.*nope'.*not an existing folder or \.gguf file"):
        build(tmp_path / "nope", {})
    (tmp_path / "empty").mkdir()
    with pytest.raises(EnsembleError, match=r"empty: not a model \(no config.json"):
        build(tmp_path / "empty", {})
    with pytest.raises(EnsembleError, match=r"engine 'model' is empty"):
        build("", {})


def test_bad_adapter_folders(tiny_model, tiny_adapters, tmp_path):
    with pytest.raises(EnsembleError, match=r"adapter 'ghost': folder .*missing does not exist"):
        build(tiny_model, {"v1": tiny_adapters["v1"], "ghost": tmp_path / "missing"})
    (tmp_path / "hollow").mkdir()
    with pytest.raises(EnsembleError, match=r"adapter 'hollow': .*hollow has no adapter_config.json"):
        build(tiny_model, {"hollow": tmp_path / "hollow"})


def test_bad_options(tiny_model):
    with pytest.raises(EnsembleError, match=r"Unknown hf engine option 'dtyp'. Did you mean 'dtype'"):
        build(tiny_model, {}, dtyp="float32")
    with pytest.raises(EnsembleError, match=r"unknown dtype 'float8'"):
        build(tiny_model, {}, dtype="float8")
    with pytest.raises(EnsembleError, match=r"'batch_size': must be >= 1"):
        build(tiny_model, {}, batch_size=0)
    with pytest.raises(EnsembleError, match=r"'lora_batching': unknown value 'mixed'; use one of stacked, peft"):
        build(tiny_model, {}, lora_batching="mixed")


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="would try the network")
def test_unreachable_hub_id():
    with pytest.raises(EnsembleError, match=r"Model 'nobody/no-such-model' is not a local folder or file and could "
                                            r"not be fetched from the hub .*download it to a folder"):
        build("nobody/no-such-model", {})


def test_bad_requests(engine, monkeypatch):
    with pytest.raises(EnsembleError, match=r"Unknown adapter 'v1x'. Did you mean 'v1'"):
        engine.generate([greedy("v1x", prompt="x")])
    with pytest.raises(EnsembleError, match=r"set exactly one of 'prompt' and 'messages'"):
        engine.generate([GenRequest("v1")])
    with pytest.raises(EnsembleError, match=r"letter option 'Qz' is not a single token"):
        engine.score_choices([ChoiceRequest("v1", options=("A", "Qz"), prompt="x", mode="letter")])
    with pytest.raises(EnsembleError, match=r"option 1 \(''\) is empty after tokenization"):
        engine.score_choices([ChoiceRequest("v1", options=(" 3", ""), prompt="x", key="q1")])
    with pytest.raises(EnsembleError, match=r"no options to score"):
        engine.score_choices([ChoiceRequest("v1", options=(), prompt="x")])
    with pytest.raises(EnsembleError, match=r"choice request mode 'free': use 'cloze' or 'letter'"):
        engine.score_choices([ChoiceRequest("v1", options=("A",), prompt="x", mode="free")])
    with pytest.raises(EnsembleError, match=r"normalize 'max': use 'sum' or 'mean'"):
        engine.score_choices([ChoiceRequest("v1", options=(" a",), prompt="x", normalize="max")])
    with pytest.raises(EnsembleError, match=r"sampling settings: temperature -1.0 \(>= 0\); top_p 0.0 \(in \(0, 1\]\)"):
        engine.generate([GenRequest("v1", prompt="x", sampling=SamplingSettings(temperature=-1.0, top_p=0.0))])
    with pytest.raises(EnsembleError, match=r"sampling settings: n 0 \(>= 1\); max_new_tokens 0 \(>= 1\)"):
        engine.generate([GenRequest("v1", prompt="x", sampling=SamplingSettings(n=0, max_new_tokens=0))])
    # No chat template: messages are plain text with the tokenizer's BOS (ensemble.tokens), as a prompt.
    monkeypatch.setattr(engine.tokenizer, "chat_template", None)
    as_messages, as_prompt = engine.generate([greedy("v1", messages=MSGS),
                                              greedy("v1", prompt=MSGS[0]["content"] + "\n\n")])
    assert as_messages.samples == as_prompt.samples


# -- the real SmolLM2 (run with -m slow) -----------------------------------------------

@pytest.fixture(scope="module")
def smol_adapters(tmp_path_factory):
    from ensemble.engines.models import resolve_model
    from ensemble.testing import make_tiny_adapters

    base = resolve_model("smollm2")
    return base, make_tiny_adapters(base, tmp_path_factory.mktemp("smol_adapters"), ["r1", "r2"], rank=8,
                                    target_modules=("q_proj", "k_proj", "v_proj", "o_proj"), scale=0.02)


@pytest.mark.slow
def test_smollm2_answers_and_mixed_equals_alone(smol_adapters):
    base, adapters = smol_adapters
    eng = build(base, adapters)
    ask = ({"role": "user", "content": "What is the capital of France? Answer in one word."},)
    reqs = [greedy(a, messages=ask, max_new_tokens=12) for a in (None, "r1", "r2")]
    mixed = eng.generate(reqs)
    assert "paris" in mixed[0].samples[0].text.lower()
    alone = [eng.generate([r])[0] for r in reqs]
    assert [as_tuple(o) for o in mixed] == [as_tuple(o) for o in alone]
    choice = eng.score_choices([ChoiceRequest(a, options=(" Paris", " Berlin", " Rome"),
                                              prompt="The capital of France is", normalize="sum")
                                for a in (None, "r1", "r2")])
    assert all(max(range(3), key=o.probs.__getitem__) == 0 for o in choice)
    eng.close()


@pytest.mark.slow
def test_smollm2_float32_first_sample_draws_are_the_full_requests(smol_adapters):
    """On the real model in float32, samples asked one at a time (first_sample), in batches of
    other shapes, are the n-sample requests' draws text for text: an adaptive run replays a full
    run exactly. (In bfloat16, batches of other shapes round logits apart and ~3% of samples
    differ: README, adaptive voting.)"""
    base, adapters = smol_adapters
    eng = build(base, adapters, dtype="float32", batch_size=8)
    prompts = ["Name a colour:", "2 + 2 =", "The opposite of hot is", "A word that rhymes with cat:"]

    def sampling(n: int, first: int = 0) -> SamplingSettings:
        return SamplingSettings(n=n, temperature=1.0, max_new_tokens=10, seed=11, first_sample=first)
    full = eng.generate([GenRequest(a, prompt=p, sampling=sampling(4)) for p in prompts for a in ("r1", "r2")])
    cells = [(i, a, j) for j in (3, 1, 0, 2) for i in range(len(prompts)) for a in ("r2", "r1")]
    ones = eng.generate([GenRequest(a, prompt=prompts[i], sampling=sampling(1, j)) for i, a, j in cells])
    want = {(i, a, j): full[2 * i + ("r1", "r2").index(a)].samples[j].text for i, a, j in cells}
    assert {c: o.samples[0].text for c, o in zip(cells, ones)} == want
    assert len(set(want.values())) > len(want) // 2  # sampled at temperature 1: mostly distinct
    eng.close()


@pytest.mark.parametrize("score_mode, options", [("cloze", (" yes", " no")), ("letter", (" A", " B"))])
def test_assistant_prefix_is_scored_after_the_chat_prompt(engine, score_mode, options):
    """Options are continuations of chat-template(messages) + assistant_prefix."""
    from ensemble.engines.base import ChoiceRequest

    messages = ({"role": "user", "content": "Can Tom fly?"},)
    rendered = engine.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    with_prefix, as_text, without = engine.score_choices([
        ChoiceRequest("v1", options, messages=messages, mode=score_mode, assistant_prefix="Answer:"),
        ChoiceRequest("v1", options, prompt=rendered + "Answer:", mode=score_mode),
        ChoiceRequest("v1", options, messages=messages, mode=score_mode),
    ])
    assert with_prefix.logliks == pytest.approx(as_text.logliks, abs=1e-5)
    assert with_prefix.logliks != pytest.approx(without.logliks, abs=1e-5)
