"""ensemble.serve.app: the `vllm serve` command line, the OpenAI-compatible routes over an
in-process engine (loopback, port 0), their error JSON, and the cross-adapter batcher."""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest_serve import FakeEngine, http

from ensemble.engines.base import ChoiceRequest, GenRequest, SamplingSettings
from ensemble.errors import EnsembleError
from ensemble.serve.app import (
    Batcher,
    EnsembleHTTPServer,
    make_server,
    max_lora_rank_for,
    run_server,
    vllm_serve_command,
)


@pytest.fixture
def served():
    engine = FakeEngine()
    server, thread = make_server(engine, "127.0.0.1", 0, base_model="base")
    yield engine, server
    server.close()
    thread.join(timeout=10)


# --- vllm serve command ---------------------------------------------------------------------


def test_vllm_serve_command_exact():
    cmd = vllm_serve_command("/m/base", {"a": "/ad/a", "b": "/ad/b"}, max_lora_rank=16, host="0.0.0.0", port=9000,
                             extra=["--dtype", "bfloat16"])
    assert cmd == ["vllm", "serve", "/m/base", "--enable-lora", "--max-loras", "2", "--max-lora-rank", "16",
                   "--max-cpu-loras", "2", "--lora-modules", "a=/ad/a", "b=/ad/b",
                   "--host", "0.0.0.0", "--port", "9000", "--dtype", "bfloat16"]


def test_vllm_serve_command_without_adapters():
    assert vllm_serve_command("/m/base", {}, max_lora_rank=16) == [
        "vllm", "serve", "/m/base", "--host", "127.0.0.1", "--port", "8000"]


def test_vllm_serve_command_errors():
    with pytest.raises(EnsembleError, match="max_lora_rank 12 is not one vLLM accepts"):
        vllm_serve_command("/m", {"a": "/a"}, max_lora_rank=12)
    with pytest.raises(EnsembleError, match="adapter name 'a=b' cannot be served"):
        vllm_serve_command("/m", {"a=b": "/a"}, max_lora_rank=16)


def test_max_lora_rank_for_is_exported(tmp_path: Path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 24}))
    assert max_lora_rank_for([tmp_path]) == 32


# --- routes ---------------------------------------------------------------------------------


def test_models_lists_adapters_and_base(served):
    _, server = served
    status, body = http("GET", server.url + "/models")
    assert status == 200 and body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["a", "b", "base"]
    assert {m["owned_by"] for m in body["data"]} == {"ensemble"}
    assert [m["parent"] for m in body["data"]] == ["base", "base", None]


def test_completions_match_the_engine(served):
    engine, server = served
    body = {"model": "b", "prompt": ["Q1", "Q2"], "n": 2, "temperature": 0.7, "top_p": 0.9, "seed": 3,
            "max_tokens": 7, "logprobs": 1, "stop": "\n"}
    status, resp = http("POST", server.url + "/completions", body)
    assert status == 200 and resp["object"] == "text_completion" and resp["model"] == "b"
    s = SamplingSettings(n=2, temperature=0.7, top_p=0.9, seed=3, max_new_tokens=7, stop=("\n",), logprobs=True)
    direct = FakeEngine().generate([GenRequest(adapter="b", prompt=p, sampling=s) for p in ("Q1", "Q2")])
    expected = [(2 * p + j, smp.text, list(smp.token_logprobs), smp.finish_reason)
                for p, out in enumerate(direct) for j, smp in enumerate(out.samples)]
    got = [(c["index"], c["text"], c["logprobs"]["token_logprobs"], c["finish_reason"]) for c in resp["choices"]]
    assert got == expected
    assert engine.calls[0][1][0].sampling == s  # the body's fields reached the engine unchanged


def test_chat_completions_and_base_model(served):
    engine, server = served
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    status, resp = http("POST", server.url + "/chat/completions",
                        {"model": "base", "messages": msgs, "logprobs": True, "temperature": 0})
    assert status == 200 and resp["object"] == "chat.completion"
    req = engine.calls[0][1][0]
    assert req.adapter is None and req.messages[1] == {"role": "user", "content": "Hi"}
    smp = engine.generate([req])[0].samples[0]
    choice = resp["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": smp.text}
    assert [t["logprob"] for t in choice["logprobs"]["content"]] == list(smp.token_logprobs)


def test_defaults_follow_openai(served):
    engine, server = served
    http("POST", server.url + "/completions", {"model": "a", "prompt": "x"})
    s = engine.calls[0][1][0].sampling
    assert (s.n, s.temperature, s.top_p, s.max_new_tokens, s.seed, s.logprobs) == (1, 1.0, 1.0, 16, None, False)


def test_echo_without_logprobs_prepends_the_prompt(served):
    _, server = served
    _, resp = http("POST", server.url + "/completions", {"model": "a", "prompt": "Hello", "echo": True})
    assert resp["choices"][0]["text"].startswith("Hello") and resp["choices"][0]["logprobs"] is None


def test_score_choices_route_matches_the_engine(served):
    _, server = served
    body = {"model": "a", "messages": [{"role": "user", "content": "Q?"}], "options": [" A", " B", " C"],
            "mode": "letter", "normalize": "sum", "assistant_prefix": "Answer:"}
    status, resp = http("POST", server.url + "/ensemble/score_choices", body)
    direct = FakeEngine().score_choices([ChoiceRequest(adapter="a", messages=({"role": "user", "content": "Q?"},),
                                                       options=(" A", " B", " C"), mode="letter", normalize="sum",
                                                       assistant_prefix="Answer:")])[0]
    assert status == 200 and resp["logliks"] == list(direct.logliks) and resp["probs"] == list(direct.probs)


@pytest.mark.parametrize("path, body, status, param, text", [
    ("/completions", {"model": "zz", "prompt": "x"}, 404, "model", "The model 'zz' does not exist. Served: a, b, base"),
    ("/completions", {"prompt": "x"}, 400, "model", "field 'model' is required"),
    ("/completions", {"model": "a"}, 400, "prompt", "field 'prompt' must be a string"),
    ("/completions", {"model": "a", "prompt": [1, 2]}, 400, "prompt", "token-id prompts are not supported"),
    ("/completions", {"model": "a", "prompt": "x", "temperature": 5}, 400, "temperature", "in [0.0, 2.0]"),
    ("/completions", {"model": "a", "prompt": "x", "n": 0}, 400, "n", "field 'n' must be an integer"),
    ("/completions", {"model": "a", "prompt": "x", "max_tokens": 0}, 400, "max_tokens", "field 'max_tokens'"),
    ("/completions", {"model": "a", "prompt": "x", "logprobs": 5}, 400, "logprobs", "field 'logprobs'"),
    ("/completions", {"model": "a", "prompt": "x", "stream": True}, 400, "stream", "stream=true is not supported"),
    ("/completions", {"model": "a", "prompt": "x", "echo": True, "logprobs": 1}, 400, "echo", "/v1/ensemble/score_choices"),
    ("/completions", {"model": "a", "prompt": "x", "stop": [""]}, 400, "stop", "field 'stop'"),
    ("/chat/completions", {"model": "a", "messages": []}, 400, "messages", "non-empty list"),
    ("/chat/completions", {"model": "a", "messages": [{"role": "bot", "content": "x"}]}, 400, "messages", "role"),
    ("/chat/completions", {"model": "a", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 5}, 400,
     "top_logprobs", "top_logprobs is not supported"),
    ("/ensemble/score_choices", {"model": "a", "prompt": "x", "options": []}, 400, "options", "field 'options'"),
    ("/ensemble/score_choices", {"model": "a", "prompt": "x", "options": ["y"], "mode": "z"}, 400, "mode", "cloze|letter"),
    ("/ensemble/score_choices", {"model": "a", "options": ["y"]}, 400, "prompt", "exactly one of"),
    ("/nope", {"model": "a"}, 404, None, "no route POST /v1/nope"),
])
def test_error_json(served, path, body, status, param, text):
    _, server = served
    got, resp = http("POST", server.url + path, body)
    assert got == status
    err = resp["error"]
    assert text in err["message"] and err["param"] == param and err["type"] == "invalid_request_error"


def test_bad_bodies_and_get_routes(served):
    _, server = served
    assert http("POST", server.url + "/completions", raw=b"{not json")[0] == 400
    status, resp = http("POST", server.url + "/completions", raw=b"[1, 2]")
    assert status == 400 and resp["error"]["message"] == "request body must be a JSON object"
    assert http("GET", server.url + "/nothing")[0] == 404
    assert http("GET", server.url.removesuffix("/v1") + "/health") == (200, {})


def test_engine_errors_become_400_and_500(served):
    engine, server = served

    def broken(requests):
        raise RuntimeError("boom")

    engine.generate = broken
    status, resp = http("POST", server.url + "/completions", {"model": "a", "prompt": "x"})
    assert status == 500 and resp["error"]["type"] == "server_error" and "boom" in resp["error"]["message"]

    def refuse(requests):
        raise EnsembleError("no such thing")

    engine.score_choices = refuse
    status, resp = http("POST", server.url + "/ensemble/score_choices", {"model": "a", "prompt": "x", "options": ["y"]})
    assert status == 400 and resp["error"]["message"] == "no such thing"
    assert http("GET", server.url + "/models")[0] == 200  # still serving


# --- batching -------------------------------------------------------------------------------


def test_concurrent_requests_for_different_voters_share_one_engine_call():
    engine = FakeEngine()
    # max_wait_s is generous and max_batch = 4: the worker runs exactly when the 4th request arrives.
    server, thread = make_server(engine, "127.0.0.1", 0, max_wait_s=30.0, max_batch=4)
    try:
        models = ["a", "b", "base", "a"]
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda m: http("POST", server.url + "/completions",
                                                   {"model": m, "prompt": f"to {m}", "temperature": 0}), models))
    finally:
        server.close()
        thread.join(timeout=10)
    assert [kind for kind, _ in engine.calls] == ["generate"]
    assert sorted(str(r.adapter) for r in engine.calls[0][1]) == ["None", "a", "a", "b"]
    for m, (status, resp) in zip(models, results):  # every client got its own answer back
        assert status == 200 and resp["choices"][0]["text"].startswith(("base" if m == "base" else m) + ":")


def test_batcher_isolates_a_failing_request():
    engine = FakeEngine()
    batcher = Batcher(engine, max_wait_s=30.0, max_batch=2)
    results: dict[str, object] = {}

    def ask(adapter: str) -> None:
        try:
            results[adapter] = batcher.submit("generate", [GenRequest(adapter=adapter, prompt="x")], timeout_s=30)
        except EnsembleError as e:
            results[adapter] = e

    threads = [threading.Thread(target=ask, args=(a,)) for a in ("a", "zz")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    batcher.close()
    assert len(engine.calls[0][1]) == 2  # tried together first, then one by one
    assert results["a"][0].samples[0].text.startswith("a:")
    assert isinstance(results["zz"], EnsembleError) and "Unknown adapter 'zz'" in str(results["zz"])


def test_batcher_mixes_generate_and_score():
    engine = FakeEngine()
    batcher = Batcher(engine, max_wait_s=30.0, max_batch=2)
    with ThreadPoolExecutor(2) as pool:
        gen = pool.submit(batcher.submit, "generate", [GenRequest(adapter="a", prompt="x")], 30)
        score = pool.submit(batcher.submit, "score", [ChoiceRequest(adapter="b", prompt="x", options=("y", "z"))], 30)
        gen_out, score_out = gen.result(timeout=30), score.result(timeout=30)
    batcher.close()
    assert sorted(kind for kind, _ in engine.calls) == ["generate", "score"]  # one call per kind
    assert gen_out[0].request.adapter == "a" and len(score_out[0].probs) == 2


# --- lifecycle ------------------------------------------------------------------------------


def test_busy_port_is_a_clear_error(served):
    _, server = served
    port = server.server_address[1]
    with pytest.raises(EnsembleError, match=rf"cannot listen on 127\.0\.0\.1:{port} .*pick another --port"):
        EnsembleHTTPServer(FakeEngine(), "127.0.0.1", port)


def test_run_server_cleans_up_on_ctrl_c(monkeypatch):
    seen: list[EnsembleHTTPServer] = []

    def interrupted(self, poll_interval: float = 0.5) -> None:
        seen.append(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(EnsembleHTTPServer, "serve_forever", interrupted)
    run_server(FakeEngine(), "127.0.0.1", 0)  # returns instead of raising
    assert seen[0].socket.fileno() == -1  # socket released
    assert not seen[0].batcher._worker.is_alive()  # batcher stopped


def test_close_without_serving_does_not_hang():
    server = EnsembleHTTPServer(FakeEngine(), "127.0.0.1", 0)
    server.close()
    assert server.socket.fileno() == -1
