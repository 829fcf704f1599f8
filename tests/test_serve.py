"""ensemble.serve.app: the `vllm serve` command line, the OpenAI-compatible routes over an
in-process engine (loopback, port 0), their error JSON, and the cross-adapter batcher."""
from __future__ import annotations

import json
import re
import shlex
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest_serve import CharTokenizer, FakeEngine, http, loopback
from test_engine_vllm import REFUSED, write_adapter

from ensemble.engines.base import ChoiceRequest, GenRequest, SamplingSettings
from ensemble.errors import EnsembleError
from ensemble.serve.app import (
    Batcher,
    EnsembleHTTPServer,
    max_lora_rank_for,
    run_server,
    vllm_serve_command,
)

# --- vllm serve command ---------------------------------------------------------------------


def parse_lora_modules_like_vllm(item: str) -> dict:
    """vLLM's LoRAParserAction rule (vllm/entrypoints/openai/cli_args.py), restated: an item
    with '=' and no ',' is ``name=path`` (split on '='), anything else is a JSON LoRAModulePath."""
    if "=" in item and "," not in item:
        name, path = item.split("=")  # more than one '=' raises here, as in vLLM
        return {"name": name, "path": path}
    return json.loads(item)


def test_vllm_serve_command_exact():
    cmd = vllm_serve_command("/m/base", {"a": "/ad/a", "b": "/ad/b"}, max_lora_rank=16, host="0.0.0.0", port=9000,
                             served_model_name="smollm2", extra=["--dtype", "bfloat16"])
    assert cmd == ["vllm", "serve", "/m/base", "--served-model-name", "smollm2", "--generation-config", "vllm",
                   "--enable-lora", "--max-loras", "2", "--max-lora-rank", "16", "--max-cpu-loras", "2",
                   "--lora-modules", '{"name": "a", "path": "/ad/a", "base_model_name": "smollm2"}',
                   '{"name": "b", "path": "/ad/b", "base_model_name": "smollm2"}',
                   "--host", "0.0.0.0", "--port", "9000", "--dtype", "bfloat16"]


def test_lora_modules_use_the_json_form_for_paths_with_equals_and_commas():
    adapters = {"x": "/runs/lr=1e-4,r=8/adapters/x", "y=z": "/a,b", "w": "/plain"}
    cmd = vllm_serve_command("/m", adapters, max_lora_rank=8)
    items = cmd[cmd.index("--lora-modules") + 1:cmd.index("--host")]
    assert [parse_lora_modules_like_vllm(i) for i in items] == [{"name": n, "path": p} for n, p in adapters.items()]
    with pytest.raises(ValueError):  # the old name=path form breaks on such a path
        parse_lora_modules_like_vllm("x=/runs/lr=1e-4")


def test_vllm_serve_command_without_adapters():
    assert vllm_serve_command("/m/base", {}, max_lora_rank=16) == [
        "vllm", "serve", "/m/base", "--generation-config", "vllm", "--host", "127.0.0.1", "--port", "8000"]


def test_vllm_serve_command_errors():
    with pytest.raises(EnsembleError, match="max_lora_rank 12 is not one vLLM accepts"):
        vllm_serve_command("/m", {"a": "/a"}, max_lora_rank=12)
    with pytest.raises(EnsembleError, match="max_lora_rank 1 is not one vLLM accepts"):  # no vLLM >= 0.11.1 here
        vllm_serve_command("/m", {"a": "/a"}, max_lora_rank=1)
    with pytest.raises(EnsembleError, match="adapter name ' ' cannot be served"):
        vllm_serve_command("/m", {" ": "/a"}, max_lora_rank=16)


def test_max_lora_rank_for_is_exported(tmp_path: Path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 24}))
    assert max_lora_rank_for([tmp_path]) == 32


# --- vote serve --engine vllm (--print) ------------------------------------------------------


def serve_config(tmp_path: Path, voters: dict[str, Path]) -> Path:
    model = tmp_path / "base-model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    cfg = tmp_path / "serve.yaml"
    lines = "\n".join(f"  {k}: {v}" for k, v in voters.items())
    cfg.write_text(f"model: {model}\nout: {tmp_path / 'out'}\nvoters:\n{lines}\n")
    return cfg


@pytest.mark.parametrize("folder, edit, reason, _", REFUSED, ids=[r[0] for r in REFUSED])
def test_vote_serve_vllm_print_refuses_what_vllm_refuses(tmp_path, folder, edit, reason, _):
    from click.testing import CliRunner

    from ensemble.cli.app import main

    voters = {"ok": write_adapter(tmp_path, "ok", 8), f"v_{folder}": write_adapter(tmp_path, folder, 8, **edit)}
    res = CliRunner().invoke(main, ["serve", str(serve_config(tmp_path, voters)), "--engine", "vllm", "--print"])
    assert res.exit_code == 2, res.output
    assert re.search(rf"voter 'v_{folder}' .*vLLM cannot load this adapter: {reason}.*use the hf engine for it",
                     " ".join(res.output.split()))
    assert "vllm serve" not in res.output


def test_vote_serve_vllm_print_shows_the_command(tmp_path):
    from click.testing import CliRunner

    from ensemble.cli.app import main

    voters = {"a": write_adapter(tmp_path / "lr=1e-4,r=4", "a", 4), "b": write_adapter(tmp_path, "b", 12)}
    cfg = serve_config(tmp_path, voters)
    res = CliRunner().invoke(main, ["serve", str(cfg), "--engine", "vllm", "--print", "--port", "9001"])
    assert res.exit_code == 0, res.output
    cmd = shlex.split(res.output.strip())
    assert cmd[:3] == ["vllm", "serve", str(tmp_path / "base-model")]
    assert cmd[cmd.index("--max-lora-rank") + 1] == "16" and cmd[cmd.index("--generation-config") + 1] == "vllm"
    items = cmd[cmd.index("--lora-modules") + 1:cmd.index("--host")]
    assert [parse_lora_modules_like_vllm(i)["path"] for i in items] == [str(p) for p in voters.values()]


# --- routes ---------------------------------------------------------------------------------


def test_models_lists_adapters_and_base(fake_served):
    _, server = fake_served
    status, body = http("GET", server.url + "/models")
    assert status == 200 and body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["a", "b", "base"]
    assert {m["owned_by"] for m in body["data"]} == {"ensemble"}
    assert [m["parent"] for m in body["data"]] == ["base", "base", None]


def test_models_report_roots_like_vllm(tmp_path):
    """root = the adapter folder / base path, parent = the base name, and a hash of the adapter's
    files that changes when the adapter is retrained in place."""
    from ensemble.predictions.store import fingerprint

    folder = write_adapter(tmp_path, "a", 8)
    with loopback(FakeEngine(), base_root="/models/base", adapter_roots={"a": str(folder)}) as server:
        cards = {m["id"]: m for m in http("GET", server.url + "/models")[1]["data"]}
    assert (cards["a"]["root"], cards["a"]["parent"]) == (str(folder), "base")
    assert cards["a"]["ensemble_fingerprint"] == fingerprint(folder)
    assert (cards["b"]["root"], "ensemble_fingerprint" in cards["b"]) == ("b", False)  # no folder given
    assert (cards["base"]["root"], cards["base"]["parent"]) == ("/models/base", None)


@pytest.fixture
def tokenized():
    engine = FakeEngine(tokenizer=CharTokenizer())
    with loopback(engine) as server:
        yield engine, server


def test_tokenize_route_mirrors_vllm(tokenized):
    _, server = tokenized
    root = server.url.removesuffix("/v1")
    tok = CharTokenizer()
    status, resp = http("POST", root + "/tokenize", {"model": "a", "prompt": "Hi"})
    assert status == 200 and resp == {"count": 3, "max_model_len": 4096, "tokens": tok.encode("Hi"), "token_strs": None}
    _, resp = http("POST", root + "/tokenize", {"model": "a", "prompt": "Hi", "add_special_tokens": False,
                                                "return_token_strs": True})
    assert resp["tokens"] == tok.encode("Hi", add_special_tokens=False) and resp["token_strs"] == ["H", "i"]
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "Answer:"}]
    _, resp = http("POST", root + "/tokenize", {"model": "base", "messages": msgs, "add_generation_prompt": False,
                                                "continue_final_message": True})
    assert resp["tokens"] == tok.encode("<user>Q\n<assistant>Answer:", add_special_tokens=False)
    status, resp = http("POST", root + "/tokenize", {"model": "a", "messages": msgs, "continue_final_message": True})
    assert status == 400 and "Cannot set both" in resp["error"]["message"]
    assert http("POST", root + "/tokenize", {"model": "zz", "prompt": "x"})[0] == 404


def test_tokenize_without_a_tokenizer_is_501(fake_served):
    _, server = fake_served
    status, resp = http("POST", server.url.removesuffix("/v1") + "/tokenize", {"model": "a", "prompt": "x"})
    assert status == 501 and "exposes no tokenizer" in resp["error"]["message"]


def test_usage_counts_are_real_token_counts(tokenized, fake_served):
    engine, server = tokenized
    tok = CharTokenizer()
    body = {"model": "a", "prompt": ["Q1?", "Longer question"], "n": 2, "temperature": 0.5, "seed": 1, "max_tokens": 9}
    _, resp = http("POST", server.url + "/completions", body)
    outs = engine.generate(engine.calls[0][1])
    completion = sum(smp.n_tokens for out in outs for smp in out.samples)
    prompt = len(tok.encode("Q1?")) + len(tok.encode("Longer question"))
    assert resp["usage"] == {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion}
    msgs = [{"role": "user", "content": "Hi"}]
    _, resp = http("POST", server.url + "/chat/completions", {"model": "base", "messages": msgs})
    chat_prompt = tok.encode(tok.apply_chat_template(msgs, add_generation_prompt=True), add_special_tokens=False)
    assert resp["usage"]["prompt_tokens"] == len(chat_prompt)
    plain, no_tok = fake_served  # an engine without a tokenizer: prompt tokens unknown (null), not zero
    usage = http("POST", no_tok.url + "/completions", {"model": "a", "prompt": "x"})[1]["usage"]
    n = plain.generate(plain.calls[0][1])[0].samples[0].n_tokens
    assert usage == {"prompt_tokens": None, "completion_tokens": n, "total_tokens": None}


def test_completions_match_the_engine(fake_served):
    engine, server = fake_served
    body = {"model": "b", "prompt": ["Q1", "Q2"], "n": 2, "temperature": 0.7, "top_p": 0.9, "seed": 3,
            "max_tokens": 7, "logprobs": 1, "stop": "\n"}
    status, resp = http("POST", server.url + "/completions", body)
    assert status == 200 and resp["object"] == "text_completion" and resp["model"] == "b"
    s = SamplingSettings(n=2, temperature=0.7, top_p=0.9, seed=3, max_new_tokens=7, stop=("\n",), logprobs=True,
                         top_logprobs=1)
    direct = FakeEngine().generate([GenRequest(adapter="b", prompt=p, sampling=s) for p in ("Q1", "Q2")])
    expected = [(2 * p + j, smp.text, list(smp.token_logprobs), smp.finish_reason)
                for p, out in enumerate(direct) for j, smp in enumerate(out.samples)]
    got = [(c["index"], c["text"], c["logprobs"]["token_logprobs"], c["finish_reason"]) for c in resp["choices"]]
    assert got == expected
    assert engine.calls[0][1][0].sampling == s  # the body's fields reached the engine unchanged


def test_chat_completions_and_base_model(fake_served):
    engine, server = fake_served
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


def test_defaults_follow_openai(fake_served):
    engine, server = fake_served
    http("POST", server.url + "/completions", {"model": "a", "prompt": "x"})
    s = engine.calls[0][1][0].sampling
    assert (s.n, s.temperature, s.top_p, s.max_new_tokens, s.seed, s.logprobs) == (1, 1.0, 1.0, 16, None, False)


def test_echo_without_logprobs_prepends_the_prompt(fake_served):
    _, server = fake_served
    _, resp = http("POST", server.url + "/completions", {"model": "a", "prompt": "Hello", "echo": True})
    assert resp["choices"][0]["text"].startswith("Hello") and resp["choices"][0]["logprobs"] is None


def test_score_choices_route_matches_the_engine(fake_served):
    _, server = fake_served
    body = {"model": "a", "messages": [{"role": "user", "content": "Q?"}], "options": [" A", " B", " C"],
            "mode": "letter", "normalize": "sum", "assistant_prefix": "Answer:"}
    status, resp = http("POST", server.url + "/ensemble/score_choices", body)
    direct = FakeEngine().score_choices([ChoiceRequest(adapter="a", messages=({"role": "user", "content": "Q?"},),
                                                       options=(" A", " B", " C"), mode="letter", normalize="sum",
                                                       assistant_prefix="Answer:")])[0]
    assert status == 200 and resp["logliks"] == list(direct.logliks) and resp["probs"] == list(direct.probs)


@pytest.mark.parametrize("path, body, status, param, text", [
    ("/completions", {"model": "zz", "prompt": "x"}, 404, "model", "The model 'zz' does not exist. Served: a, b, base"),
    ("/completions", {"prompt": "x"}, 400, "model", "field 'model': Field required"),
    ("/completions", {"model": "a"}, 400, "prompt", "field 'prompt': Field required"),
    ("/completions", {"model": "a", "prompt": [1, "x"]}, 400, "prompt", "must be a string or a non-empty list"),
    ("/completions", {"model": "a", "prompt": [1, 2]}, 400, "prompt", "token-id prompts are not supported"),
    ("/completions", {"model": "a", "prompt": "x", "temperature": 5}, 400, "temperature", "field 'temperature': Input should be less than or equal to 2 (got 5)"),
    ("/completions", {"model": "a", "prompt": "x", "n": 0}, 400, "n", "field 'n': Input should be greater than or equal to 1"),
    ("/completions", {"model": "a", "prompt": "x", "max_tokens": 0}, 400, "max_tokens", "field 'max_tokens'"),
    ("/completions", {"model": "a", "prompt": "x", "logprobs": 21}, 400, "logprobs",
     "field 'logprobs': Input should be less than or equal to 20"),
    ("/completions", {"model": "a", "prompt": "x", "stream_options": {"include_usage": True}}, 400, None,
     "stream_options can only be set when stream is true"),
    ("/completions", {"model": "a", "prompt": "x", "echo": True, "logprobs": 1}, 400, "echo", "/v1/ensemble/score_choices"),
    ("/completions", {"model": "a", "prompt": "x", "stop": [""]}, 400, "stop", "field 'stop': must be a non-empty string or a list of them"),
    ("/chat/completions", {"model": "a", "messages": []}, 400, "messages", "field 'messages': List should have at least 1 item"),
    ("/chat/completions", {"model": "a", "messages": [{"role": "bot", "content": "x"}]}, 400, "messages",
     "field 'messages.0.role': Input should be 'system', 'user' or 'assistant'"),
    ("/chat/completions", {"model": "a", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 5}, 400,
     "top_logprobs", "when using `top_logprobs`, `logprobs` must be set to true"),
    ("/chat/completions", {"model": "a", "messages": [{"role": "user", "content": "x"}], "logprobs": True,
                           "top_logprobs": 21}, 400, "top_logprobs", "less than or equal to 20"),
    ("/ensemble/score_choices", {"model": "a", "prompt": "x", "options": []}, 400, "options", "field 'options'"),
    ("/ensemble/score_choices", {"model": "a", "prompt": "x", "options": ["y"], "mode": "z"}, 400, "mode", "Input should be 'cloze' or 'letter'"),
    ("/ensemble/score_choices", {"model": "a", "options": ["y"]}, 400, "prompt", "exactly one of"),
    ("/nope", {"model": "a"}, 404, None, "no route POST /v1/nope"),
])
def test_error_json(fake_served, path, body, status, param, text):
    _, server = fake_served
    got, resp = http("POST", server.url + path, body)
    assert got == status
    err = resp["error"]
    assert text in err["message"] and err["param"] == param and err["type"] == "invalid_request_error"


def test_bad_bodies_and_get_routes(fake_served):
    _, server = fake_served
    assert http("POST", server.url + "/completions", raw=b"{not json")[0] == 400
    status, resp = http("POST", server.url + "/completions", raw=b"[1, 2]")
    assert status == 400 and resp["error"]["message"] == "request body must be a JSON object"
    assert http("GET", server.url + "/nothing")[0] == 404
    assert http("GET", server.url.removesuffix("/v1") + "/health") == (200, {})


def test_engine_errors_become_400_and_500(fake_served):
    engine, server = fake_served

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
    models = ["a", "b", "base", "a"]
    with loopback(engine, max_wait_s=30.0, max_batch=4) as server, ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda m: http("POST", server.url + "/completions",
                                               {"model": m, "prompt": f"to {m}", "temperature": 0}), models))
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


def test_busy_port_is_a_clear_error(fake_served):
    _, server = fake_served
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
