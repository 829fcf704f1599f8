"""vote serve (FastAPI + uvicorn on loopback) with the official ``openai`` client: plain and
streamed completions and chat, logprobs / top_logprobs up to 20, /health, malformed requests
(each a 4xx OpenAI error body, and the server keeps serving), and the HF engine's top-k
logprobs against its own chosen-token logprobs."""
from __future__ import annotations

import json
from http.client import HTTPConnection, HTTPException
from typing import Any

import openai
import pytest
from conftest_serve import CharTokenizer, FakeEngine, http, loopback

from ensemble.engines.base import GenRequest, SamplingSettings
from ensemble.errors import EnsembleError
from ensemble.serve.app import make_server, require_serve_extra
from ensemble.serve.http import MAX_BODY_BYTES

MSGS = [{"role": "user", "content": "Which is larger, 3 or 7?"}]


@pytest.fixture
def served():
    engine = FakeEngine(tokenizer=CharTokenizer())
    with loopback(engine) as server:
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=10)
        yield engine, server, client
        client.close()


def direct(prompt: str | None = None, messages: Any = None, **sampling: Any):
    req = GenRequest(adapter="a", prompt=prompt, messages=None if messages is None else tuple(messages),
                     sampling=SamplingSettings(**sampling))
    return FakeEngine().generate([req])[0]


# --- plain and streamed -------------------------------------------------------------------------


def test_completions_plain_and_streamed_agree(served):
    _, _, client = served
    args = {"model": "a", "prompt": ["Q1", "Q2"], "n": 2, "temperature": 0.7, "seed": 5, "max_tokens": 9}
    plain = client.completions.create(**args)
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    usage = None
    for chunk in client.completions.create(**args, stream=True, stream_options={"include_usage": True}):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            finish[c.index] = c.finish_reason or finish.get(c.index)
        usage = chunk.usage or usage
    assert texts == {c.index: c.text for c in plain.choices}
    assert finish == {c.index: c.finish_reason for c in plain.choices}
    assert usage is not None and usage.model_dump() == plain.usage.model_dump()
    want = [s.text for p in ("Q1", "Q2") for s in direct(p, n=2, temperature=0.7, seed=5, max_new_tokens=9).samples]
    assert [texts[i] for i in range(4)] == want


def test_chat_plain_and_streamed_agree(served):
    _, _, client = served
    args: dict[str, Any] = {"model": "a", "messages": MSGS, "temperature": 0, "logprobs": True, "max_tokens": 30}
    plain = client.chat.completions.create(**args)
    stream = list(client.chat.completions.create(**args, stream=True))
    roles = [c.choices[0].delta.role for c in stream if c.choices[0].delta.role]
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    lps = [t.logprob for c in stream if c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert roles == ["assistant"] and text == plain.choices[0].message.content
    assert lps == [t.logprob for t in plain.choices[0].logprobs.content]
    assert stream[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    smp = direct(messages=MSGS, temperature=0, logprobs=True, max_new_tokens=30).samples[0]
    assert text == smp.text and lps == list(smp.token_logprobs)


def test_stream_is_server_sent_events_ending_in_done(served):
    _, server, _ = served
    host, port = server.server_address[:2]
    conn = HTTPConnection(host, port, timeout=10)
    conn.request("POST", "/v1/completions", json.dumps({"model": "b", "prompt": "x", "stream": True}),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read().decode()
    conn.close()
    assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"} and "usage" not in chunks[0]


def test_top_logprobs_20_and_21(served):
    _, _, client = served
    resp = client.chat.completions.create(model="a", messages=MSGS, logprobs=True, top_logprobs=20, temperature=0,
                                          max_tokens=30)
    smp = direct(messages=MSGS, temperature=0, logprobs=True, top_logprobs=20, max_new_tokens=30).samples[0]
    content = resp.choices[0].logprobs.content
    assert [len(t.top_logprobs) for t in content] == [20] * smp.n_tokens
    assert [[(a.token, a.logprob) for a in t.top_logprobs] for t in content] == [
        [(k, v) for k, v in dict(step).items()] for step in smp.top_logprobs]
    comp = client.completions.create(model="a", prompt="x", logprobs=20, max_tokens=4, temperature=0)
    want = direct("x", temperature=0, logprobs=True, top_logprobs=20, max_new_tokens=4).samples[0]
    assert comp.choices[0].logprobs.top_logprobs == [dict(step) for step in want.top_logprobs]
    for call in (lambda: client.chat.completions.create(model="a", messages=MSGS, logprobs=True, top_logprobs=21),
                 lambda: client.completions.create(model="a", prompt="x", logprobs=21)):
        with pytest.raises(openai.BadRequestError, match="less than or equal to 20") as e:
            call()
        assert e.value.status_code == 400 and e.value.body["param"] in ("top_logprobs", "logprobs")


def test_an_engine_without_top_logprobs_says_so():
    class NoTop(FakeEngine):
        def generate(self, requests):
            from dataclasses import replace

            return [replace(o, samples=tuple(replace(s, top_logprobs=()) for s in o.samples))
                    for o in super().generate(requests)]

    with loopback(NoTop()) as server:
        status, body = http("POST", server.url + "/completions", {"model": "a", "prompt": "x", "logprobs": 3})
        assert status == 501 and "engine 'fake' does not report top logprobs" in body["error"]["message"]
        status, body = http("POST", server.url + "/completions", {"model": "a", "prompt": "x", "logprobs": 0})
        assert status == 200 and body["choices"][0]["logprobs"]["top_logprobs"] is None


def test_health_and_models(served):
    _, server, client = served
    assert http("GET", server.url.removesuffix("/v1") + "/health") == (200, {})
    assert [m.id for m in client.models.list()] == ["a", "b", "base"]


# --- malformed requests -----------------------------------------------------------------------------

OK_CHAT = {"model": "a", "messages": MSGS}
MALFORMED: list[tuple[str, str, str, Any, int, str]] = [  # (kind, method, path, body | raw bytes, status, text)
    ("bad JSON", "POST", "/v1/completions", b'{"model": "a", "prompt": ', 400, "not valid JSON"),
    ("body not an object", "POST", "/v1/chat/completions", b"[1, 2]", 400, "must be a JSON object"),
    ("empty body", "POST", "/v1/completions", b"", 400, "request body: Field required"),
    ("missing model", "POST", "/v1/completions", {"prompt": "x"}, 400, "field 'model': Field required"),
    ("unknown model", "POST", "/v1/completions", {"model": "zz", "prompt": "x"}, 404, "The model 'zz' does not exist"),
    ("wrong type", "POST", "/v1/completions", {"model": "a", "prompt": "x", "temperature": "hot"}, 400,
     "field 'temperature'"),
    ("n < 1", "POST", "/v1/completions", {"model": "a", "prompt": "x", "n": 0}, 400, "field 'n'"),
    ("temperature > 2", "POST", "/v1/chat/completions", {**OK_CHAT, "temperature": 2.5}, 400, "field 'temperature'"),
    ("top_logprobs > 20", "POST", "/v1/chat/completions", {**OK_CHAT, "logprobs": True, "top_logprobs": 21}, 400,
     "field 'top_logprobs'"),
    ("top_logprobs without logprobs", "POST", "/v1/chat/completions", {**OK_CHAT, "top_logprobs": 2}, 400,
     "`logprobs` must be set to true"),
    ("empty messages", "POST", "/v1/chat/completions", {"model": "a", "messages": []}, 400, "field 'messages'"),
    ("bad role", "POST", "/v1/chat/completions", {"model": "a", "messages": [{"role": "bot", "content": "x"}]}, 400,
     "field 'messages.0.role'"),
    ("content not text", "POST", "/v1/chat/completions", {"model": "a", "messages": [{"role": "user", "content": 3}]},
     400, "field 'messages.0.content'"),
    ("prompt list of wrong type", "POST", "/v1/completions", {"model": "a", "prompt": [1, "x"]}, 400, "field 'prompt'"),
    ("token-id prompt", "POST", "/v1/completions", {"model": "a", "prompt": [[1, 2]]}, 400, "token-id prompts"),
    ("max_tokens < 0", "POST", "/v1/completions", {"model": "a", "prompt": "x", "max_tokens": -1}, 400,
     "field 'max_tokens'"),
    ("top_p = 0", "POST", "/v1/completions", {"model": "a", "prompt": "x", "top_p": 0}, 400, "field 'top_p'"),
    ("stop not text", "POST", "/v1/completions", {"model": "a", "prompt": "x", "stop": 5}, 400, "field 'stop'"),
    ("stream_options without stream", "POST", "/v1/completions",
     {"model": "a", "prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ("echo with logprobs", "POST", "/v1/completions", {"model": "a", "prompt": "x", "echo": True, "logprobs": 1}, 400,
     "echo with logprobs"),
    ("tokenize prompt and messages", "POST", "/tokenize", {"model": "a", "prompt": "x", "messages": MSGS}, 400,
     "exactly one of"),
    ("score without options", "POST", "/v1/ensemble/score_choices", {"model": "a", "prompt": "x", "options": []}, 400,
     "field 'options'"),
    ("unknown route", "POST", "/v1/embeddings", {"model": "a", "input": "x"}, 404, "no route POST /v1/embeddings"),
    ("wrong method", "GET", "/v1/completions", None, 405, "Method Not Allowed"),
    ("body too large", "POST", "/v1/completions", {"model": "a", "prompt": "x" * (MAX_BODY_BYTES + 1)}, 413,
     "request body over"),
]


def test_at_least_15_kinds_of_malformed_requests():
    assert len({kind for kind, *_ in MALFORMED}) >= 15


@pytest.mark.parametrize("kind, method, path, body, status, text", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_request_is_a_4xx_json_error_and_serving_goes_on(served, kind, method, path, body, status, text):
    _, server, client = served
    root = server.url.removesuffix("/v1")
    got, resp = http(method, root + path, **({"raw": body} if isinstance(body, bytes) else {"body": body}))
    assert got == status, resp
    err = resp["error"]
    assert set(err) == {"message", "type", "param", "code"} and text in err["message"]
    assert err["type"] == "invalid_request_error"
    # the next well-formed request on a fresh connection is answered
    assert client.chat.completions.create(**OK_CHAT, temperature=0).choices[0].message.content.startswith("a:")


def test_malformed_requests_on_one_keep_alive_connection(served):
    """All the malformed kinds over ONE HTTP/1.1 connection, then a good request on it."""
    _, server, _ = served
    host, port = server.server_address[:2]
    conn = HTTPConnection(host, port, timeout=10)
    statuses = []
    for _, method, path, body, _status, _ in MALFORMED:
        data = body if isinstance(body, bytes) else (None if body is None else json.dumps(body).encode())
        try:
            conn.request(method, path, data, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            statuses.append(resp.status)
            assert "error" in json.loads(resp.read())
        except (OSError, HTTPException):
            conn.close()  # the server may close a connection whose body it refused: reconnect
            conn = HTTPConnection(host, port, timeout=10)
            statuses.append(-1)
    conn.request("POST", "/v1/completions", json.dumps({"model": "b", "prompt": "fine"}),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["choices"][0]["text"].startswith("b:")
    conn.close()
    assert statuses == [m[4] for m in MALFORMED]


# --- the serve extra --------------------------------------------------------------------------------


def test_missing_fastapi_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    with pytest.raises(EnsembleError, match=r"vote serve needs fastapi, which are not installed: pip install "
                                            r"'ensemble\[serve\]'"):
        require_serve_extra()
    with pytest.raises(EnsembleError, match="vote serve needs fastapi"):
        make_server(FakeEngine())


# --- the HF engine's top-k logprobs --------------------------------------------------------------


def test_hf_top_logprobs_agree_with_the_chosen_tokens(tiny_model):
    """Greedy: the best alternative is the chosen token (same logprob); asking for the top-k
    changes nothing else; k alternatives per generated token, best first."""
    from ensemble.engines.base import EngineSpec, build_engine

    engine = build_engine(EngineSpec(engine="hf", model=str(tiny_model)))
    try:
        plain = SamplingSettings(max_new_tokens=6, logprobs=True)
        top = SamplingSettings(max_new_tokens=6, logprobs=True, top_logprobs=20)
        sampled = SamplingSettings(max_new_tokens=6, logprobs=True, top_logprobs=3, temperature=0.9, seed=1)
        reqs = [GenRequest(adapter=None, prompt="The answer is", sampling=s) for s in (plain, top, sampled)]
        a, b, c = (o.samples[0] for o in engine.generate(reqs))
    finally:
        engine.close()
    assert (b.text, b.token_logprobs, a.top_logprobs) == (a.text, a.token_logprobs, ())
    assert len(b.top_logprobs) == b.n_tokens and all(len(step) == 20 for step in b.top_logprobs)
    assert [step[0][1] for step in b.top_logprobs] == pytest.approx(list(b.token_logprobs), abs=1e-6)
    for step in (*b.top_logprobs, *c.top_logprobs):
        values = [v for _, v in step]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
    # sampled: the chosen token's logprob is at most the best alternative's
    assert all(lp <= step[0][1] + 1e-6 for lp, step in zip(c.token_logprobs, c.top_logprobs))
    assert len(c.top_logprobs[0]) == 3


def test_bench_malformed_round_passes_against_the_server(served):
    """experiments/bench_serve.py's malformed kinds: each a 4xx OpenAI error body, as it expects."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    try:
        import bench_serve
    finally:
        sys.path.pop(0)
    _, server, _ = served
    results = bench_serve.malformed_round(server.url.removesuffix("/v1"), "base")
    assert len(results) >= 15 and [r["kind"] for r in results if not r["ok"]] == []
    assert bench_serve.percentile([3.0, 1.0, 2.0], 50) == 2.0 and bench_serve.percentile([], 99) is None


def test_vote_serve_names_the_missing_extra_before_loading(tmp_path, monkeypatch):
    import importlib.util

    from click.testing import CliRunner
    from test_engine_vllm import write_adapter
    from test_serve import serve_config

    from ensemble.cli.app import main
    from ensemble.engines import base

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    monkeypatch.setattr(base, "build_engine", lambda spec: pytest.fail("the model was loaded first"))
    res = CliRunner().invoke(main, ["serve", str(serve_config(tmp_path, {"a": write_adapter(tmp_path, "a", 8)}))])
    assert res.exit_code == 2, res.output
    assert "vote serve needs uvicorn, which are not installed: pip install 'ensemble[serve]'" in " ".join(res.output.split())


def test_a_batch_larger_than_the_default_thread_pool_fills():
    """48 concurrent requests with max_batch 48 reach the engine as ONE call (anyio's default
    pool of 40 threads would hold 8 of them back until the batching wait ran out)."""
    from concurrent.futures import ThreadPoolExecutor

    engine = FakeEngine()
    with loopback(engine, max_wait_s=20.0, max_batch=48) as server, ThreadPoolExecutor(48) as pool:
        results = list(pool.map(lambda i: http("POST", server.url + "/completions",
                                               {"model": "ab"[i % 2], "prompt": f"q{i}", "temperature": 0}),
                                range(48)))
    assert [s for s, _ in results] == [200] * 48
    assert [len(batch) for kind, batch in engine.calls if kind == "generate"] == [48]
