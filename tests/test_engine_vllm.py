"""The vLLM engine against a fake ``vllm`` package (tests/fake_vllm) that mirrors vLLM's
offline API, records every call and validates arguments the way vLLM does."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from conftest_serve import forget_vllm, install_fake_vllm

from ensemble.engines.base import (
    ENGINES,
    ChoiceRequest,
    EngineSpec,
    GenRequest,
    SamplingSettings,
    softmax,
)
from ensemble.errors import EnsembleError

FAKE = Path(__file__).parent / "fake_vllm"


@pytest.fixture
def fake_vllm(monkeypatch):
    """Put the fake vllm on sys.path for this test only; return the package."""
    yield install_fake_vllm(monkeypatch, str(FAKE))
    forget_vllm()


def write_adapter(root: Path, name: str, rank: int, **fields) -> Path:
    """A PEFT-shaped adapter_config.json (no weights: the fake vLLM reads only the config)."""
    path = root / name
    path.mkdir(parents=True)
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["q_proj", "v_proj"],
           "bias": "none", "init_lora_weights": True, **fields}
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    return path


@pytest.fixture
def adapters(tmp_path) -> dict[str, Path]:
    return {"a": write_adapter(tmp_path, "a", 4), "b": write_adapter(tmp_path, "b", 12)}


def build(adapters: dict[str, Path], **options):
    from ensemble.engines import vllm  # noqa: F401  (registers "vllm")

    return ENGINES.get("vllm")(EngineSpec(engine="vllm", model="/models/base", adapters=adapters, options=options))


def toy():
    from vllm import _toy

    return _toy


# --- construction ----------------------------------------------------------------------------


def test_llm_constructor_args(fake_vllm, adapters):
    engine = build(adapters, gpu_memory_utilization=0.5)
    kw = fake_vllm.LLM.instances[-1].init_kwargs
    assert kw["model"] == "/models/base"
    assert kw["enable_lora"] is True
    assert kw["max_loras"] == 2  # every voter in one batch
    assert kw["max_lora_rank"] == 16  # ranks {4, 12} -> smallest allowed value >= 12
    assert kw["max_cpu_loras"] == 2
    assert kw["seed"] == 0 and kw["gpu_memory_utilization"] == 0.5
    assert engine.adapters == ["a", "b"] and engine.name == "vllm"


@pytest.mark.parametrize("ranks, expected", [([1], 8), ([4], 8), ([8], 8), ([9, 2], 16), ([33], 64),
                                             ([257], 320), ([512], 512), ([], 16)])
def test_max_lora_rank_rounds_up_to_an_allowed_value(tmp_path, ranks, expected):
    """Without vLLM to ask, vLLM 0.10's ranks (no 1: the extra pins vllm>=0.10)."""
    from ensemble.engines.vllm import ALLOWED_LORA_RANKS, max_lora_rank_for

    paths = [write_adapter(tmp_path, f"x{i}", r) for i, r in enumerate(ranks)]
    assert max_lora_rank_for(paths) == expected
    assert expected in ALLOWED_LORA_RANKS and 1 not in ALLOWED_LORA_RANKS


def test_rank_1_only_where_the_installed_vllm_allows_it(fake_vllm, tmp_path):
    """The fake mirrors vLLM >= 0.11.1, whose MaxLoRARanks holds 1."""
    from ensemble.engines.vllm import max_lora_rank_for

    path = write_adapter(tmp_path, "one", 1)
    assert max_lora_rank_for([path]) == 1
    build({"one": path})
    assert fake_vllm.LLM.instances[-1].init_kwargs["max_lora_rank"] == 1


def test_rank_pattern_counts(tmp_path):
    from ensemble.engines.vllm import adapter_rank

    assert adapter_rank(write_adapter(tmp_path, "p", 8, rank_pattern={"q_proj": 40})) == 40


def test_rank_above_512_is_an_error(tmp_path):
    from ensemble.engines.vllm import max_lora_rank_for

    with pytest.raises(EnsembleError, match="rank 600 exceeds vLLM's largest max_lora_rank 512"):
        max_lora_rank_for([write_adapter(tmp_path, "big", 600)])


def test_adapter_folder_errors(tmp_path):
    from ensemble.engines.vllm import adapter_rank

    with pytest.raises(EnsembleError, match="adapter_config.json: not found"):
        adapter_rank(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(EnsembleError, match="field 'r' missing"):
        adapter_rank(tmp_path)


def test_no_adapters_means_no_lora(fake_vllm):
    engine = build({})
    assert fake_vllm.LLM.instances[-1].init_kwargs["enable_lora"] is False
    assert engine.adapters == []


def test_missing_vllm_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(EnsembleError, match=r"vLLM is not installed: pip install 'ensemble\[vllm\]' \(needs a CUDA GPU\)"):
        build({})


def test_option_and_spec_errors(fake_vllm, adapters):
    with pytest.raises(EnsembleError, match="option 'max_loras' is set by the engine"):
        build(adapters, max_loras=1)
    from ensemble.engines import vllm  # noqa: F401

    with pytest.raises(EnsembleError, match="field 'model' is empty"):
        ENGINES.get("vllm")(EngineSpec(engine="vllm", model=""))


# --- adapters vLLM refuses (PEFTHelper._validate_features / validate_legal) ---------------------

# (folder, adapter_config edit, our reason, the fake vLLM's own message for it)
REFUSED = [
    ("dora", {"use_dora": True}, r"DoRA \(use_dora: true\)", "does not yet support DoRA"),
    ("bias", {"bias": "lora_only"}, r"bias 'lora_only' \(vLLM supports bias 'none' only\)", "Adapter bias is not"),
    ("lora_bias", {"lora_bias": True}, r"LoRA bias \(lora_bias: true\)", r"LoRA bias \(lora_bias\)"),
    ("modules_to_save", {"modules_to_save": ["lm_head", "score"]}, r"modules_to_save \['lm_head'\]",
     r"Unsupported modules_to_save: \['lm_head'\]"),
    ("pissa", {"init_lora_weights": "pissa_niter_4"}, r"init_lora_weights 'pissa_niter_4' \(PiSSA",
     "init_lora_weights='pissa_niter_4'"),
    ("olora", {"init_lora_weights": "olora"}, r"init_lora_weights 'olora'", "init_lora_weights='olora'"),
    ("loftq", {"init_lora_weights": "loftq"}, r"init_lora_weights 'loftq'", "init_lora_weights='loftq'"),
    ("corda", {"init_lora_weights": "corda"}, r"init_lora_weights 'corda'", "init_lora_weights='corda'"),
    ("alora", {"alora_invocation_tokens": [31, 7]}, r"it is an aLoRA adapter \(alora_invocation_tokens\)",
     r"Activated LoRA \(aLoRA\)"),
    ("layer_replication", {"layer_replication": [[0, 2], [1, 2]]}, "layer_replication", "layer_replication"),
    ("rank", {"r": 600, "lora_alpha": 16}, "rank 600 is above vLLM's largest max_lora_rank 512", "LoRA rank 600 is greater"),
    ("rank_zero", {"r": 0}, r"rank 0 \(r must be a positive integer\)", "must be a positive integer"),
    ("rank_pattern", {"rank_pattern": {"v_proj": 1024}}, "rank 1024 is above vLLM's largest max_lora_rank 512", "LoRA rank 1024"),
]


@pytest.mark.parametrize("folder, edit, reason, _", REFUSED, ids=[r[0] for r in REFUSED])
def test_engine_refuses_what_vllm_refuses_naming_voter_and_reason(fake_vllm, tmp_path, folder, edit, reason, _):
    good = write_adapter(tmp_path, "good", 8)
    bad = write_adapter(tmp_path, folder, 8, **edit)
    n_built = len(fake_vllm.LLM.instances)
    with pytest.raises(EnsembleError, match=rf"voter 'v_{folder}' \(.*{folder}\): vLLM cannot load this adapter: "
                                            rf"{reason}.*; use the hf engine for it"):
        build({"good": good, f"v_{folder}": bad})
    assert len(fake_vllm.LLM.instances) == n_built  # refused before vLLM starts loading the model


@pytest.mark.parametrize("folder, edit, _, vllm_says", REFUSED, ids=[r[0] for r in REFUSED])
def test_fake_vllm_refuses_the_same_adapters(fake_vllm, tmp_path, folder, edit, _, vllm_says):
    """The fake's PEFTHelper refuses them too, so the engine's check is not the only gate."""
    from vllm.lora.request import LoRARequest

    llm = fake_vllm.LLM(model="m", enable_lora=True, max_lora_rank=512)
    bad = LoRARequest(folder, 1, str(write_adapter(tmp_path, folder, 8, **edit)))
    with pytest.raises(ValueError, match=vllm_says):
        llm.generate(["x"], fake_vllm.SamplingParams(max_tokens=1), lora_request=[bad])


def test_adapters_vllm_accepts(fake_vllm, tmp_path):
    ok = {"heads": write_adapter(tmp_path, "heads", 8, modules_to_save=["classifier", "score"]),
          "gauss": write_adapter(tmp_path, "gauss", 8, init_lora_weights="gaussian"),
          "rs": write_adapter(tmp_path, "rs", 16, use_rslora=True, rank_pattern={"q_proj": 32}),
          "plain_alora": write_adapter(tmp_path, "plain_alora", 8, alora_invocation_tokens=None)}
    engine = build(ok)
    assert fake_vllm.LLM.instances[-1].init_kwargs["max_lora_rank"] == 32
    out = engine.score_choices([ChoiceRequest(adapter=a, options=(" x", " y"), prompt="Q:") for a in ok])
    assert len(out) == 4  # the fake loaded every adapter through its PEFTHelper


def test_missing_required_fields_are_named(fake_vllm, tmp_path):
    path = tmp_path / "bare"
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"r": 8}))
    with pytest.raises(EnsembleError, match=r"voter 'bare' .*lacks lora_alpha, target_modules.*use the hf engine"):
        build({"bare": path})


def test_real_engine_args_are_accepted(fake_vllm, adapters):
    """vLLM's own EngineArgs names pass through options (the old fake refused these)."""
    build(adapters, max_num_batched_tokens=4096, enable_chunked_prefill=True, kv_cache_dtype="fp8",
          max_model_len=2048)
    kw = fake_vllm.LLM.instances[-1].init_kwargs
    assert (kw["max_num_batched_tokens"], kw["enable_chunked_prefill"], kw["kv_cache_dtype"]) == (4096, True, "fp8")
    assert kw["generation_config"] == "vllm"  # vLLM's sampling defaults, as vote serve --engine vllm passes
    with pytest.raises(EnsembleError, match=r"engine 'vllm': option 'max_num_batched_token' is not a vLLM engine "
                                            r"argument.*Did you mean 'max_num_batched_tokens'"):
        build(adapters, max_num_batched_token=4096)


def test_temperature_above_2_is_refused(fake_vllm, adapters):
    engine = build(adapters)
    with pytest.raises(EnsembleError, match=r"temperature 2.5 is outside \[0, 2\].*set run.temperature <= 2"):
        engine.generate([GenRequest(adapter="a", prompt="x", sampling=SamplingSettings(temperature=2.5))])
    engine.generate([GenRequest(adapter="a", prompt="x", sampling=SamplingSettings(temperature=2.0, max_new_tokens=2))])


# --- generate -----------------------------------------------------------------------------


def test_one_generate_call_with_per_prompt_lora_requests(fake_vllm, adapters):
    engine = build(adapters)
    s = SamplingSettings(n=2, temperature=0.7, top_p=0.9, max_new_tokens=5, seed=11, stop=("\n",))
    reqs = [GenRequest(adapter=a, prompt=f"Q{i}:", sampling=s, key=i) for i, a in enumerate(["a", "b", None, "a"])]
    outs = engine.generate(reqs)
    llm = fake_vllm.LLM.instances[-1]
    assert len(llm.calls) == 1  # the whole mixed-adapter batch in one call
    call = llm.calls[0]
    names = [lr.lora_name if lr else None for lr in call["lora_requests"]]
    assert names == ["a", "b", None, "a"]
    ids = {lr.lora_name: lr.lora_int_id for lr in call["lora_requests"] if lr}
    assert ids == {"a": 1, "b": 2}
    assert call["lora_waves"] == 1  # max_loras = K: every adapter fits one scheduling step
    p = call["params"][0]
    assert (p.n, p.temperature, p.top_p, p.seed, p.max_tokens, p.stop, p.logprobs) == (2, 0.7, 0.9, 11, 5, ["\n"], 1)
    assert [o.request.key for o in outs] == [0, 1, 2, 3]
    assert all(len(o.samples) == 2 for o in outs)


def test_samples_and_logprobs_match_the_model(fake_vllm, adapters):
    engine = build(adapters)
    out = engine.generate([GenRequest(adapter="b", prompt="Hi", sampling=SamplingSettings(max_new_tokens=4))])[0]
    t = toy()
    ids = t.ToyTokenizer().encode("Hi")
    expect_lps, ctx = [], list(ids)
    for _ in range(4):  # greedy decoding by hand
        lp = t.next_logprobs("b", ctx)
        tok = max(range(len(lp)), key=lambda v: (lp[v], -v))
        expect_lps.append(lp[tok])
        ctx.append(tok)
    sample = out.samples[0]
    assert sample.text == t.ToyTokenizer().decode(ctx[len(ids):], skip_special_tokens=True)
    assert sample.token_logprobs == pytest.approx(expect_lps)
    assert sample.n_tokens == 4 and sample.finish_reason == "length"


def test_adapters_change_outputs(fake_vllm, adapters):
    engine = build(adapters)
    outs = engine.generate([GenRequest(adapter=a, prompt="Hi") for a in ["a", "b", None]])
    assert len({o.samples[0].text for o in outs}) == 3


def test_greedy_n_sends_one_and_repeats(fake_vllm, adapters):
    engine = build(adapters)
    out = engine.generate([GenRequest(adapter="a", prompt="x", sampling=SamplingSettings(n=3, temperature=0.0))])[0]
    assert fake_vllm.LLM.instances[-1].calls[0]["params"][0].n == 1  # vLLM rejects greedy n > 1
    assert len(out.samples) == 3 and len({s.text for s in out.samples}) == 1


def test_seeded_sampling_is_reproducible(fake_vllm, adapters):
    engine = build(adapters)
    req = GenRequest(adapter="a", prompt="x", sampling=SamplingSettings(n=2, temperature=1.0, seed=5))
    assert engine.generate([req])[0].samples == engine.generate([req])[0].samples


def test_first_sample_draws_that_sample_of_the_n_sample_request(fake_vllm, adapters):
    """vLLM V1 seeds child i of an n-sample request with seed + i (the fake does too), so an
    n=1 request sent with seed + first_sample is sample first_sample of the full request."""
    engine = build(adapters)
    full = engine.generate([GenRequest(adapter="a", prompt="x", sampling=SamplingSettings(n=4, temperature=1.0,
                                                                                          seed=5))])[0]
    ones = [GenRequest(adapter="a", prompt="x", sampling=SamplingSettings(temperature=1.0, seed=5, first_sample=j))
            for j in (2, 0, 3)]
    outs = engine.generate(ones)
    assert [p.seed for p in fake_vllm.LLM.instances[-1].calls[-1]["params"]] == [7, 5, 8]
    assert [o.samples[0].text for o in outs] == [full.samples[j].text for j in (2, 0, 3)]
    assert len({s.text for s in full.samples}) > 1  # the samples differ, so the match means something


def test_no_logprobs_requested(fake_vllm, adapters):
    engine = build(adapters)
    out = engine.generate([GenRequest(adapter="a", prompt="x", sampling=SamplingSettings(logprobs=False))])[0]
    assert fake_vllm.LLM.instances[-1].calls[0]["params"][0].logprobs is None
    assert out.samples[0].token_logprobs == ()


def test_chat_messages_use_the_chat_template_once(fake_vllm, adapters):
    engine = build(adapters)
    msgs = ({"role": "user", "content": "Hi"},)
    engine.generate([GenRequest(adapter=None, messages=msgs)])
    sent = fake_vllm.LLM.instances[-1].calls[0]["prompts"][0]["prompt_token_ids"]
    tok = toy().ToyTokenizer()
    assert sent == tok.encode("<user>Hi\n<assistant>", add_special_tokens=True)
    assert sent.count(tok.bos_token_id) == 1  # the template's BOS, no second one


def test_unknown_adapter(fake_vllm, adapters):
    engine = build(adapters)
    with pytest.raises(EnsembleError, match="Unknown adapter 'bb'. Did you mean 'b'"):
        engine.generate([GenRequest(adapter="bb", prompt="x")])


# --- score_choices ------------------------------------------------------------------------


def test_cloze_scoring_sums_option_prompt_logprobs(fake_vllm, adapters):
    engine = build(adapters)
    reqs = [ChoiceRequest(adapter="a", prompt="Q:", options=(" yes", " no"), assistant_prefix=" A", normalize="sum"),
            ChoiceRequest(adapter=None, prompt="Q:", options=(" yes", " no"), assistant_prefix=" A", normalize="mean")]
    outs = engine.score_choices(reqs)
    llm = fake_vllm.LLM.instances[-1]
    assert len(llm.calls) == 1 and len(llm.calls[0]["prompts"]) == 4  # one prompt per option, one call
    p = llm.calls[0]["params"][0]
    assert (p.max_tokens, p.prompt_logprobs) == (1, 1)
    t = toy()
    tok = t.ToyTokenizer()
    prefix = tok.encode("Q: A")
    for req, out in zip(reqs, outs):
        name = req.adapter
        expected = []
        for option in req.options:
            ids = prefix + tok.encode(option, add_special_tokens=False)
            lps = [t.next_logprobs(name, ids[:i])[ids[i]] for i in range(len(prefix), len(ids))]
            expected.append(sum(lps) / (len(lps) if req.normalize == "mean" else 1))
        assert out.logliks == pytest.approx(expected)
        assert out.probs == pytest.approx(softmax(expected))
        assert sum(out.probs) == pytest.approx(1.0)


def test_cloze_moves_trailing_spaces_to_the_option(fake_vllm, adapters):
    engine = build(adapters)
    out = engine.score_choices([ChoiceRequest(adapter="b", prompt="Q: ", options=("yes",), normalize="mean")])[0]
    t = toy()
    ids = t.ToyTokenizer().encode("Q: yes")  # prefix "Q:" (BOS + 2 tokens), option " yes" (4 tokens)
    lps = [t.next_logprobs("b", ids[:i])[ids[i]] for i in range(3, 7)]
    assert fake_vllm.LLM.instances[-1].calls[0]["prompts"][0]["prompt_token_ids"] == ids
    assert out.logliks == pytest.approx((sum(lps) / 4,))


def test_letter_scoring_reads_top20_with_floor(fake_vllm, adapters):
    from ensemble.engines.vllm import MISSING_LOGPROB

    engine = build(adapters)
    t = toy()
    prefix = t.ToyTokenizer().encode("Pick:")
    lp = t.next_logprobs("a", prefix)
    order = sorted(range(len(lp)), key=lambda v: (-lp[v], v))
    inside, outside = t.VOCAB[order[0]], t.VOCAB[order[30]]  # rank 1 and rank 31 of the toy vocabulary
    out = engine.score_choices([ChoiceRequest(adapter="a", prompt="Pick:", options=(inside, outside), mode="letter")])[0]
    call = fake_vllm.LLM.instances[-1].calls[0]
    assert len(call["prompts"]) == 1 and call["params"][0].logprobs == 20 and call["params"][0].max_tokens == 1
    assert out.logliks == pytest.approx((lp[order[0]], MISSING_LOGPROB))
    assert out.probs[0] == pytest.approx(1.0) and out.probs[1] < 1e-100


def test_scoring_and_generation_errors(fake_vllm, adapters):
    engine = build(adapters)
    with pytest.raises(EnsembleError, match="field 'options' is empty"):
        engine.score_choices([ChoiceRequest(adapter="a", prompt="x", options=())])
    with pytest.raises(EnsembleError, match="Unknown scoring mode 'bogus'"):
        engine.score_choices([ChoiceRequest(adapter="a", prompt="x", options=("y",), mode="bogus")])
    with pytest.raises(EnsembleError, match="letter option 'AB' is not a single token"):
        engine.score_choices([ChoiceRequest(adapter="a", prompt="x", options=("AB",), mode="letter")])
    with pytest.raises(EnsembleError, match="exactly one of 'prompt' and 'messages'"):
        engine.generate([GenRequest(adapter="a")])
    assert engine.generate([]) == [] and engine.score_choices([]) == []


# --- the fake validates like vLLM (so the tests above can fail) --------------------------------


def test_fake_vllm_validates(fake_vllm, tmp_path):
    from vllm.lora.request import LoRARequest

    with pytest.raises(ValueError, match="id must be > 0"):
        LoRARequest("a", 0, "/x")
    with pytest.raises(ValueError, match="max_lora_rank must be one of"):
        fake_vllm.LLM(model="m", enable_lora=True, max_lora_rank=12)
    with pytest.raises(ValueError, match="max_cpu_loras"):
        fake_vllm.LLM(model="m", enable_lora=True, max_loras=3, max_cpu_loras=2)
    with pytest.raises(ValueError, match="n must be 1 when using greedy sampling"):
        fake_vllm.SamplingParams(n=2, temperature=0.0)
    with pytest.raises(ValueError, match="temperature must be non-negative"):
        fake_vllm.SamplingParams(temperature=-0.1)
    assert fake_vllm.SamplingParams(temperature=0.001).temperature == 0.01  # vLLM raises tiny temperatures
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_num_batched_token'"):
        fake_vllm.LLM(model="m", max_num_batched_token=1)
    llm = fake_vllm.LLM(model="m", enable_lora=True, max_lora_rank=8)
    big = LoRARequest("big", 1, str(write_adapter(tmp_path, "big", 16)))
    with pytest.raises(ValueError, match="LoRA rank 16 is greater than max_lora_rank 8"):
        llm.generate(["x"], fake_vllm.SamplingParams(max_tokens=1), lora_request=[big])
    with pytest.raises(ValueError, match="greater than max allowed: 20"):
        llm.generate(["x"], fake_vllm.SamplingParams(max_tokens=1, logprobs=21))
    with pytest.raises(ValueError, match="lengths of prompts and lora_request"):
        llm.generate(["x", "y"], fake_vllm.SamplingParams(max_tokens=1), lora_request=[None])
    plain = fake_vllm.LLM(model="m")
    with pytest.raises(ValueError, match="LoRA is not enabled"):
        plain.generate(["x"], fake_vllm.SamplingParams(max_tokens=1), lora_request=big)
    assert math.isfinite(plain.generate(["x"], fake_vllm.SamplingParams(max_tokens=2, logprobs=1))[0]
                         .outputs[0].cumulative_logprob)
