"""The openai engine: against `vote serve` (ensemble.serve.app on loopback, port 0) it must give
exactly the in-process engine's answers; against a vLLM-like stub it must parse echo /
top-logprob responses into the right scores; errors name the server and the fix."""
from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest_serve import (
    FakeEngine,
    JsonServer,
    forget_vllm,
    http,
    install_fake_vllm,
    loopback,
)
from test_engine_vllm import FAKE, write_adapter
from test_engine_vllm import build as build_vllm

from ensemble.engines.base import (
    ENGINES,
    ChoiceRequest,
    EngineSpec,
    GenRequest,
    SamplingSettings,
)
from ensemble.errors import EnsembleError
from ensemble.serve.app import make_server

MSGS = ({"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "2+2?"})


def openai_engine(url: str, adapters: dict[str, str], model: str = "base", **options: Any):
    from ensemble.engines import openai as _  # noqa: F401  (registers "openai")

    return ENGINES.get("openai")(EngineSpec(engine="openai", model=model, adapters=adapters,
                                            options={"base_url": url, "max_retries": 0, "timeout": 10, **options}))


def gen_requests() -> list[GenRequest]:
    greedy = SamplingSettings(max_new_tokens=12)
    sampled = SamplingSettings(n=3, temperature=0.8, top_p=0.95, seed=7, max_new_tokens=9, stop=(":",))
    return [GenRequest(adapter="a", prompt="Q: 1+1=", sampling=greedy),
            GenRequest(adapter="b", messages=MSGS, sampling=sampled),
            GenRequest(adapter=None, prompt="Q: 2+2=", sampling=SamplingSettings(logprobs=False)),
            GenRequest(adapter=None, messages=MSGS, sampling=greedy)]


def choice_requests() -> list[ChoiceRequest]:
    return [ChoiceRequest(adapter=a, options=opts, mode=mode, normalize=norm, assistant_prefix=pre, **text)
            for a in ("a", None)
            for mode, opts in (("cloze", (" 3", " 4", " five")), ("letter", (" A", " B")))
            for norm, pre, text in (("mean", "", {"prompt": "2+2="}), ("sum", "Answer:", {"messages": MSGS}))]


def assert_same_generation(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.request == w.request
        assert [s.text for s in g.samples] == [s.text for s in w.samples]
        assert [s.n_tokens for s in g.samples] == [s.n_tokens for s in w.samples]
        assert [s.finish_reason for s in g.samples] == [s.finish_reason for s in w.samples]
        for gs, ws in zip(g.samples, w.samples):
            assert gs.token_logprobs == pytest.approx(ws.token_logprobs, abs=1e-5)


def assert_same_scores(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.request == w.request
        assert g.logliks == pytest.approx(w.logliks, abs=1e-5)
        assert g.probs == pytest.approx(w.probs, abs=1e-5)
        assert max(range(len(g.probs)), key=g.probs.__getitem__) == max(range(len(w.probs)), key=w.probs.__getitem__)


# --- against vote serve ------------------------------------------------------------------------


def test_generate_over_http_equals_in_process(fake_served):
    _, server = fake_served
    remote = openai_engine(server.url, {"a": "", "b": "b"})
    try:
        assert remote.ensemble_server is True and remote.adapters == ["a", "b"]
        assert_same_generation(remote.generate(gen_requests()), FakeEngine().generate(gen_requests()))
    finally:
        remote.close()


def test_score_choices_over_http_equals_in_process(fake_served):
    engine, server = fake_served
    remote = openai_engine(server.url, {"a": "", "b": ""})
    try:
        assert_same_scores(remote.score_choices(choice_requests()), FakeEngine().score_choices(choice_requests()))
    finally:
        remote.close()
    assert {k for k, _ in engine.calls} == {"score"}


def test_served_names(tmp_path):
    from ensemble.engines.openai import served_name

    assert served_name("v1", "") == "v1"
    assert served_name("v1", str(tmp_path)) == "v1"  # a local PEFT folder: served under the voter name
    assert served_name("v1", "org/served-v1") == "org/served-v1"


def test_missing_model_is_reported_with_the_served_list(fake_served):
    _, server = fake_served
    with pytest.raises(EnsembleError, match=r"model 'zz' is not served at http://127\.0\.0\.1:\d+/v1; served: a, b, base"):
        openai_engine(server.url, {"a": "", "zz": ""})


def test_base_model_needs_a_name(fake_served):
    _, server = fake_served
    remote = openai_engine(server.url, {"a": ""}, model="")
    try:
        with pytest.raises(EnsembleError, match="asks for the base model but field 'model' is empty"):
            remote.generate([GenRequest(adapter=None, prompt="x")])
        with pytest.raises(EnsembleError, match="Unknown adapter 'aa'. Did you mean 'a'"):
            remote.generate([GenRequest(adapter="aa", prompt="x")])
    finally:
        remote.close()


def test_unreachable_server_names_the_url():
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(EnsembleError, match=rf"cannot reach the OpenAI-compatible server at {url} after 0 retries"):
        openai_engine(url, {"a": ""})


def test_option_errors(monkeypatch):
    with pytest.raises(EnsembleError, match="Unknown option 'base_ur'. Did you mean 'base_url'"):
        openai_engine("http://127.0.0.1:9/v1", {}, base_ur="x")
    monkeypatch.delenv("ENSEMBLE_TEST_KEY", raising=False)
    with pytest.raises(EnsembleError, match=r"api_key_env names \$ENSEMBLE_TEST_KEY, which is not set"):
        openai_engine("http://127.0.0.1:9/v1", {}, api_key_env="ENSEMBLE_TEST_KEY")


# --- against a vLLM-like stub (canned responses, spelled-out numbers) ------------------------------


def models_a_and_base() -> tuple[int, dict]:
    return 200, {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "vllm"}
                                            for m in ("a", "base")]}


def stub_server(respond: Callable[[str, dict], tuple[int, dict]]) -> JsonServer:
    """A loopback server answering POSTs with ``respond(path, body) -> (status, json)`` and
    listing models a and base; records bodies."""
    return JsonServer(respond, models_a_and_base)


def hosted_like(path: str, body: dict) -> tuple[int, dict]:
    """An OpenAI-compatible server without vLLM's /tokenize (canned answers, token *text* keys)."""
    if path == "/tokenize":
        return 404, {"error": {"message": "Not Found", "type": "not_found"}}
    if path == "/v1/completions" and body.get("logprobs") == 20:
        top = {" A": -0.1, " B": -2.5, "A": -3.0}
        return 200, {"id": "c", "object": "text_completion", "created": 0, "model": body["model"], "choices": [
            {"index": 0, "text": " A", "finish_reason": "length",
             "logprobs": {"tokens": [" A"], "token_logprobs": [-0.1], "top_logprobs": [top], "text_offset": [0]}}]}
    if path == "/v1/completions":
        return 200, {"id": "c", "object": "text_completion", "created": 0, "model": body["model"],
                     "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}, "choices": [
            {"index": 1, "text": " two", "finish_reason": "stop", "logprobs": None},
            {"index": 0, "text": " 2", "finish_reason": "length",
             "logprobs": {"tokens": [" 2"], "token_logprobs": [-0.3], "top_logprobs": None, "text_offset": [0]}}]}
    top = [{"token": " B", "logprob": -0.2, "bytes": None}, {"token": " A", "logprob": -1.7, "bytes": None}]
    return 200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": " B"},
         "logprobs": {"content": [{"token": " B", "logprob": -0.2, "bytes": None, "top_logprobs": top}]}}]}


@pytest.fixture
def stub_engine():
    stub = stub_server(hosted_like)
    remote = openai_engine(stub.url, {"a": ""})
    yield stub, remote
    remote.close()
    stub.close()


def test_cloze_needs_tokenize(stub_engine):
    """Token text cannot mark the option's tokens (see test_sentencepiece_*): without /tokenize, refuse."""
    _, remote = stub_engine
    with pytest.raises(EnsembleError, match=r"has no /tokenize route, so cloze scoring cannot tell the prompt's "
                                            r"tokens from the option's; use vLLM or vote serve, or mode 'letter'"):
        remote.score_choices([ChoiceRequest(adapter="a", prompt="Q:", options=(" yes", " no"))])


def test_letter_via_top_logprobs(stub_engine):
    from ensemble.engines.openai import MISSING_LOGPROB

    stub, remote = stub_engine
    prompt_out, chat_out, bare_out = remote.score_choices([
        ChoiceRequest(adapter="a", prompt="Q:", options=(" A", " B", " C"), mode="letter"),
        ChoiceRequest(adapter=None, messages=MSGS, options=(" A", " B"), mode="letter"),
        ChoiceRequest(adapter="a", prompt="Q:", options=("A", "B"), mode="letter")])
    assert prompt_out.logliks == pytest.approx((-0.1, -2.5, MISSING_LOGPROB))
    assert bare_out.logliks == pytest.approx((-0.1, -2.5))  # max over "A" (-3.0) and " A" (-0.1)
    assert prompt_out.probs[2] == pytest.approx(0.0)
    assert chat_out.logliks == pytest.approx((-1.7, -0.2))
    chat_body = next(b for p, b in stub.bodies if p == "/v1/chat/completions")
    assert (chat_body["logprobs"], chat_body["top_logprobs"], chat_body["max_tokens"]) == (True, 20, 1)


def test_generate_parses_standard_responses(stub_engine):
    stub, remote = stub_engine
    s = SamplingSettings(n=2, temperature=0.5, seed=4, max_new_tokens=3, stop=("\n",))
    text_out, chat_out = remote.generate([GenRequest(adapter="a", prompt="1+1=", sampling=s),
                                          GenRequest(adapter=None, messages=MSGS)])
    assert [x.text for x in text_out.samples] == [" 2", " two"]  # ordered by choice index
    assert text_out.samples[0].token_logprobs == (-0.3,) and text_out.samples[0].n_tokens == 1
    assert text_out.samples[1].token_logprobs == () and text_out.samples[1].n_tokens == 2  # usage 4 / 2 choices
    assert [x.finish_reason for x in text_out.samples] == ["length", "stop"]
    body = next(b for p, b in stub.bodies if p == "/v1/completions")
    assert {k: body[k] for k in ("model", "n", "temperature", "seed", "max_tokens", "stop", "logprobs")} == {
        "model": "a", "n": 2, "temperature": 0.5, "seed": 4, "max_tokens": 3, "stop": ["\n"], "logprobs": 1}
    assert chat_out.samples[0].text == " B" and chat_out.samples[0].token_logprobs == (-0.2,)


def test_first_sample_is_sent_as_seed_plus_first_sample(stub_engine):
    """A vLLM server seeds child i of an n-sample request with seed + i: sample 2 alone is seed 6."""
    stub, remote = stub_engine
    s = SamplingSettings(n=1, temperature=0.5, seed=4, max_new_tokens=3, first_sample=2)
    remote.generate([GenRequest(adapter="a", prompt="1+1=", sampling=s)])
    body = next(b for p, b in stub.bodies if p == "/v1/completions")
    assert body["seed"] == 6


def test_greedy_n_asks_once(stub_engine):
    stub, remote = stub_engine
    out = remote.generate([GenRequest(adapter=None, messages=MSGS, sampling=SamplingSettings(n=3))])[0]
    assert stub.bodies[-1][1]["n"] == 1  # vLLM refuses greedy n > 1
    assert [x.text for x in out.samples] == [" B"] * 3


def test_refused_scoring_names_the_mode():
    stub = stub_server(lambda path, body: (400, {"error": {"message": "echo is not supported", "type": "invalid_request_error"}}))
    remote = openai_engine(stub.url, {"a": ""})
    try:
        with pytest.raises(EnsembleError, match=r"refused cloze scoring \(/tokenize.*model 'a' \(HTTP 400: echo is not supported\)"):
            remote.score_choices([ChoiceRequest(adapter="a", prompt="Q:", options=(" yes",))])
        with pytest.raises(EnsembleError, match=r"refused letter scoring"):
            remote.score_choices([ChoiceRequest(adapter="a", prompt="Q:", options=(" A",), mode="letter")])
    finally:
        remote.close()
        stub.close()


# --- against the fake vLLM server with a SentencePiece-style tokenizer -----------------------------

SP = {"tokenizer": "toy-sentencepiece"}


@pytest.fixture
def fake_vllm(monkeypatch):
    yield install_fake_vllm(monkeypatch, str(FAKE))
    forget_vllm()


@pytest.fixture
def sp_vllm(fake_vllm, tmp_path):
    """(fake vLLM server over the toy model, the in-process vLLM engine on the same toy, adapters)."""
    from vllm.entrypoints.openai.api_server import FakeVLLMServer

    adapters = {"a": write_adapter(tmp_path, "a", 8), "b": write_adapter(tmp_path, "b", 16)}
    llm = fake_vllm.LLM(model="/models/toy", enable_lora=True, max_loras=2, max_lora_rank=16, **SP)
    server = FakeVLLMServer(llm, "toy", {k: str(v) for k, v in adapters.items()})
    local = build_vllm(adapters, **SP)
    yield server, local, adapters
    server.close()


def sp_requests() -> list[ChoiceRequest]:
    chat = ({"role": "user", "content": "Q: Which is B?"},)
    return [ChoiceRequest(adapter=a, options=opts, mode=mode, normalize=norm, assistant_prefix=pre, **text)
            for a in ("a", "b", None)
            for mode, opts in (("cloze", (" B", " C", " London")), ("letter", ("A", "B", "C", "D")))
            for norm, pre, text in (("sum", "", {"prompt": "Q: Which is B? Answer:"}),
                                    ("mean", "Answer: ", {"prompt": "Q: The"}),
                                    ("sum", "Answer:", {"messages": chat}))]


def test_sentencepiece_option_boundary_is_found_by_token_ids(sp_vllm):
    """"▁B" decodes alone to "B" (one character for the two of " B"): counting characters
    would take a prompt token into the option. By ids, the option is exactly its tokens."""
    from vllm._toy import SentencePieceTokenizer, next_logprobs

    server, _, _ = sp_vllm
    tok = SentencePieceTokenizer()
    prefix, full = tok.encode("Q: Which is B? Answer:"), tok.encode("Q: Which is B? Answer: B")
    assert full[:len(prefix)] == prefix and len(full) == len(prefix) + 1 and tok.decode(full[-1:]) == "B"
    remote = openai_engine(server.url, {"a": ""}, model="toy")
    try:
        out = remote.score_choices([ChoiceRequest(adapter="a", prompt="Q: Which is B? Answer:", options=(" B",),
                                                  normalize="sum")])[0]
    finally:
        remote.close()
    assert out.logliks == pytest.approx((next_logprobs("a", prefix, len(tok))[full[-1]],))
    echo = next(b for p, b in server.bodies if p == "/v1/completions")
    assert echo["prompt"] == [full] and (echo["echo"], echo["logprobs"], echo["max_tokens"]) == (True, 1, 0)


def test_openai_over_vllm_server_equals_the_vllm_engine(sp_vllm):
    """Cloze (prompt, trailing-space prompt, chat + assistant prefix) and letter scores over
    HTTP equal the in-process vLLM engine's on the same toy model and SentencePiece tokenizer."""
    server, local, adapters = sp_vllm
    remote = openai_engine(server.url, {k: str(v) for k, v in adapters.items()}, model="toy")
    try:
        assert remote.ensemble_server is False
        assert_same_scores(remote.score_choices(sp_requests()), local.score_choices(sp_requests()))
    finally:
        remote.close()
    letter = next(b for p, b in server.bodies if p == "/v1/completions" and b.get("max_tokens") == 1)
    assert letter["return_tokens_as_token_ids"] is True and letter["logprobs"] == 20


def test_generation_over_vllm_server_equals_the_vllm_engine(sp_vllm):
    server, local, adapters = sp_vllm
    chat = ({"role": "user", "content": "Q: Which is B?"},)
    reqs = [GenRequest(adapter="a", prompt="Q: The", sampling=SamplingSettings(max_new_tokens=6)),
            GenRequest(adapter="b", messages=chat, sampling=SamplingSettings(n=3, temperature=0.7, seed=5,
                                                                             max_new_tokens=5)),
            GenRequest(adapter=None, prompt="Answer:", sampling=SamplingSettings(n=2, max_new_tokens=4, stop=("o",)))]
    remote = openai_engine(server.url, {k: str(v) for k, v in adapters.items()}, model="toy")
    try:
        assert_same_generation(remote.generate(reqs), local.generate(reqs))
        with pytest.raises(EnsembleError, match=r"temperature 2.5 is outside \[0, 2\]"):
            remote.generate([GenRequest(adapter="a", prompt="x", sampling=SamplingSettings(temperature=2.5))])
    finally:
        remote.close()


# --- fingerprints: what is behind a served name ---------------------------------------------------


def test_fingerprint_follows_the_model_the_server_reports(fake_vllm, tmp_path):
    from vllm.entrypoints.openai.api_server import FakeVLLMServer

    first, second = write_adapter(tmp_path, "first", 8), write_adapter(tmp_path, "second", 8)
    llm = fake_vllm.LLM(model="/models/toy", enable_lora=True, max_lora_rank=8)
    prints, port = [], 0
    for folder in (first, first, second):  # one URL throughout: only the adapter behind "a" changes
        server = FakeVLLMServer(llm, "toy", {"a": str(folder)}, port=port)
        port = server.server.server_address[1]
        remote = openai_engine(server.url, {"a": "a"}, model="toy")
        prints.append((remote.fingerprint("a"), remote.fingerprint(None)))
        remote.close()
        server.close()
    assert prints[0] == prints[1]  # same server, same model
    assert prints[2][0] != prints[0][0] and len(prints[2][0]) == 16  # root: another adapter folder
    assert prints[2][1] == prints[0][1]  # the base model did not change


def test_resumed_run_refuses_a_different_model_behind_the_same_name(tmp_path):
    """vote serve on one port: the same adapter resumes; another folder behind the same name is refused."""
    from test_run import write_config

    from ensemble.config.loader import load_config
    from ensemble.pipeline import run

    folders = {"old": write_adapter(tmp_path, "old", 8), "new": write_adapter(tmp_path, "new", 8)}

    def serve(folder: str, port: int = 0):
        return loopback(FakeEngine(adapters=("v1",)), port=port, base_model="tiny",
                        adapter_roots={"v1": str(folders[folder])})

    with serve("old") as server:
        port = server.server_address[1]
        cfg = write_config(tmp_path, Path("tiny"), {"v1": "v1"}, tmp_path / "out", n=4,
                           run_extra=f"  engine: openai\n  probe: false\n  engine_options: {{base_url: '{server.url}'}}\n")
        assert run(load_config(cfg)).n_new_rows > 0
        assert run(load_config(cfg)).n_new_rows == 0  # same server, same model: resumes
    changed = r"voter 'v1' changed since its predictions were stored \(its adapter files, or the model its server reports, differ\)"
    with serve("new", port), pytest.raises(EnsembleError, match=changed):  # same URL and name, another folder
        run(load_config(cfg))


# --- end to end: the HF engine on the tiny model, served and asked over HTTP ------------------------


@pytest.fixture(scope="module")
def hf_engine(tiny_model, tiny_adapters):
    from ensemble.engines.base import build_engine

    engine = build_engine(EngineSpec(engine="hf", model=str(tiny_model),
                                     adapters={k: str(v) for k, v in tiny_adapters.items()}))
    yield engine
    engine.close()


def counted(monkeypatch, engine: Any, name: str) -> list[int]:
    """Record the batch size of every call to ``engine.<name>`` (undone after the test)."""
    sizes: list[int] = []
    call = getattr(engine, name)
    monkeypatch.setattr(engine, name, lambda reqs: (sizes.append(len(reqs)), call(reqs))[1])
    return sizes


def test_hf_engine_over_http_equals_in_process(hf_engine, tiny_adapters, monkeypatch):
    chat = ({"role": "user", "content": "Which number is larger? 3 or 7"},)
    gen = [GenRequest(adapter="v1", prompt="The answer is", sampling=SamplingSettings(max_new_tokens=8)),
           GenRequest(adapter="v2", messages=chat, sampling=SamplingSettings(n=2, temperature=0.9, seed=3,
                                                                              max_new_tokens=8)),
           GenRequest(adapter="v3", prompt="Every bird", sampling=SamplingSettings(max_new_tokens=6, stop=(" ",))),
           GenRequest(adapter=None, messages=chat, sampling=SamplingSettings(max_new_tokens=8))]
    # assistant_prefix stays "": the HF engine does not apply it yet (see the report).
    score = [ChoiceRequest(adapter="v1", options=(" 3", " 7"), prompt="Which number is larger? 3 or 7. Answer:"),
             ChoiceRequest(adapter="v2", options=(" A", " B"), messages=chat, mode="letter"),
             ChoiceRequest(adapter="v3", options=(" A", " B", " C"), prompt="Options: A. 3 B. 7 Answer:",
                           mode="letter"),
             ChoiceRequest(adapter=None, options=(" yes", " no", " cannot be decided"), messages=chat,
                           normalize="sum")]
    want_gen, want_score = hf_engine.generate(gen), hf_engine.score_choices(score)

    # max_batch = 4 requests and a generous wait: the 4 concurrent HTTP requests (4 voters)
    # reach the engine as ONE mixed-adapter call.
    server, thread = make_server(hf_engine, "127.0.0.1", 0, base_model="tiny-base", max_wait_s=30.0, max_batch=4)
    gen_sizes = counted(monkeypatch, hf_engine, "generate")
    score_sizes = counted(monkeypatch, hf_engine, "score_choices")
    remote = openai_engine(server.url, {k: str(v) for k, v in tiny_adapters.items()}, model="tiny-base")
    try:
        assert remote.adapters == ["v1", "v2", "v3"] and remote.ensemble_server
        assert_same_generation(remote.generate(gen), want_gen)
        assert_same_scores(remote.score_choices(score), want_score)
        # vote serve's /tokenize and usage count with the engine's own tokenizer (what vLLM reports)
        tok = hf_engine.tokenizer
        assert remote._scorer.tokenize("tiny-base", prompt="Every bird") == tok.encode("Every bird")
        assert remote._scorer.tokenize("tiny-base", messages=list(chat)) == tok.encode(
            tok.apply_chat_template(list(chat), tokenize=False, add_generation_prompt=True), add_special_tokens=False)
        texts = ["The answer is", "Every bird", "Which number", "A B C"]  # 4 = max_batch: no batching wait
        _, resp = http("POST", server.url + "/completions", {"model": "v1", "prompt": texts, "max_tokens": 5,
                                                             "temperature": 0})
        done = hf_engine.generate([GenRequest(adapter="v1", prompt=p, sampling=SamplingSettings(max_new_tokens=5))
                                   for p in texts])
        prompt_tokens = sum(len(tok.encode(p)) for p in texts)
        completion_tokens = sum(o.samples[0].n_tokens for o in done)
        assert resp["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                 "total_tokens": prompt_tokens + completion_tokens}
    finally:
        remote.close()
        server.close()
        thread.join(timeout=10)
    assert gen_sizes == [4, 4, 4] and score_sizes == [4]  # remote.generate, POST /completions, the direct call
