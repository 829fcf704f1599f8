"""Bounded load test of `vote serve` on loopback: N concurrent clients over K voters.

    python experiments/bench_serve.py --quick          # ~15 s of load (+ setup): tiny random model, 4 voters, 8 clients
    python experiments/bench_serve.py --model PATH --voters 8 --clients 16 --seconds 120

The server (the FastAPI app on uvicorn, HF engine, dynamic batcher) runs in a child process
so its RSS is its own. Each client thread holds one official ``openai`` client and, until
the time is up, asks voter ``(client + i) % (K + 1)`` (K voters and the base model) in turn:
chat and completions alternate, and every other request streams (``stream: true`` with
``stream_options.include_usage``). A client's request latency is from the call to the last
byte; a stream's time to first chunk is also kept. Meanwhile one more thread sends the
malformed requests of ``MALFORMED`` (one of each kind) and checks each gets a 4xx with an
OpenAI error body; after the load a last request checks the server still answers.
Writes experiments/results/bench_serve.json; the last line printed is that JSON object.
Numbers from a shared machine are indicative only.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MSG = [{"role": "user", "content": "Which is larger, 9 or 12? Answer briefly."}]
BIG = 9 * 1024 * 1024  # over the server's 8 MiB body limit

# (kind, method, path, JSON body or raw bytes, expected status)
MALFORMED: list[tuple[str, str, str, Any, int]] = [
    ("bad JSON", "POST", "/v1/completions", b'{"model": ', 400),
    ("body not an object", "POST", "/v1/chat/completions", b"[1, 2]", 400),
    ("empty body", "POST", "/v1/completions", b"", 400),
    ("missing model", "POST", "/v1/completions", {"prompt": "x"}, 400),
    ("unknown model", "POST", "/v1/completions", {"model": "no-such-voter", "prompt": "x"}, 404),
    ("wrong type", "POST", "/v1/completions", {"model": "@base", "prompt": "x", "temperature": "hot"}, 400),
    ("n < 1", "POST", "/v1/completions", {"model": "@base", "prompt": "x", "n": 0}, 400),
    ("temperature > 2", "POST", "/v1/chat/completions", {"model": "@base", "messages": MSG, "temperature": 3}, 400),
    ("top_logprobs > 20", "POST", "/v1/chat/completions",
     {"model": "@base", "messages": MSG, "logprobs": True, "top_logprobs": 21}, 400),
    ("logprobs > 20", "POST", "/v1/completions", {"model": "@base", "prompt": "x", "logprobs": 21}, 400),
    ("empty messages", "POST", "/v1/chat/completions", {"model": "@base", "messages": []}, 400),
    ("bad role", "POST", "/v1/chat/completions", {"model": "@base", "messages": [{"role": "bot", "content": "x"}]}, 400),
    ("prompt list of wrong type", "POST", "/v1/completions", {"model": "@base", "prompt": [1, "x"]}, 400),
    ("max_tokens < 0", "POST", "/v1/completions", {"model": "@base", "prompt": "x", "max_tokens": -1}, 400),
    ("top_p = 0", "POST", "/v1/completions", {"model": "@base", "prompt": "x", "top_p": 0}, 400),
    ("stop not text", "POST", "/v1/completions", {"model": "@base", "prompt": "x", "stop": 5}, 400),
    ("stream_options without stream", "POST", "/v1/completions",
     {"model": "@base", "prompt": "x", "stream_options": {"include_usage": True}}, 400),
    ("unknown route", "POST", "/v1/embeddings", {"model": "@base", "input": "x"}, 404),
    ("wrong method", "GET", "/v1/chat/completions", None, 405),
    ("body too large", "POST", "/v1/completions", {"model": "@base", "prompt": "x" * BIG}, 413),
]


# --- the server (child process) -----------------------------------------------------------------


def serve_child(model: str, adapters: dict[str, str]) -> None:
    """Load the HF engine, serve on a free loopback port, print the URL, serve until stdin closes."""
    from ensemble.engines.base import EngineSpec, build_engine
    from ensemble.serve.app import make_server

    engine = build_engine(EngineSpec(engine="hf", model=model, adapters=adapters))
    sizes: list[tuple[int, int]] = []  # per engine.generate call: (requests, distinct voters)
    generate = engine.generate

    def counted(requests: list) -> list:
        sizes.append((len(requests), len({r.adapter for r in requests})))
        return generate(requests)

    engine.generate = counted  # type: ignore[method-assign]
    server, thread = make_server(engine, "127.0.0.1", 0, base_model="base", base_root=model, adapter_roots=adapters)
    print(json.dumps({"url": server.url}), flush=True)
    sys.stdin.readline()  # the parent's "stop"
    server.close()
    thread.join(timeout=10)
    print(json.dumps({"engine_calls": len(sizes), "mean_requests_per_call": sum(n for n, _ in sizes) / max(1, len(sizes)),
                      "max_requests_per_call": max((n for n, _ in sizes), default=0),
                      "mean_voters_per_call": sum(v for _, v in sizes) / max(1, len(sizes))}), flush=True)


# --- clients ------------------------------------------------------------------------------------


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


def client_loop(url: str, models: list[str], k: int, deadline: float, max_tokens: int, out: list[dict]) -> None:
    import openai

    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)
    i = 0
    while time.monotonic() < deadline:
        model, chat, stream = models[(k + i) % len(models)], i % 2 == 0, (i // 2) % 2 == 1
        args: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": 0.8, "seed": k * 1000 + i}
        if stream:
            args.update(stream=True, stream_options={"include_usage": True})
        t0, first, tokens, error = time.perf_counter(), None, 0, None
        try:
            resp = (client.chat.completions.create(messages=MSG, **args) if chat
                    else client.completions.create(prompt="The answer is", **args))
            if stream:
                for chunk in resp:
                    first = first if first is not None else time.perf_counter() - t0
                    tokens = chunk.usage.completion_tokens if chunk.usage else tokens
            else:
                tokens = resp.usage.completion_tokens
        except Exception as e:  # noqa: BLE001  (counted, reported)
            error = f"{type(e).__name__}: {e}"[:200]
        out.append({"seconds": time.perf_counter() - t0, "first_s": first, "tokens": tokens, "stream": stream,
                    "chat": chat, "error": error})
        i += 1
    client.close()


def send(url_root: str, method: str, path: str, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url_root + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw[:200].decode(errors="replace")
    except OSError as e:
        return -1, f"{type(e).__name__}: {e}"


def malformed_round(url_root: str, base: str) -> list[dict]:
    results = []
    for kind, method, path, body, want in MALFORMED:
        if isinstance(body, dict):
            body = {k: (base if v == "@base" else v) for k, v in body.items()}
        status, resp = send(url_root, method, path, body)
        err = resp.get("error") if isinstance(resp, dict) else None
        ok = (status == want and isinstance(err, dict) and {"message", "type", "param", "code"} <= set(err))
        results.append({"kind": kind, "status": status, "expected": want, "json_error": isinstance(err, dict), "ok": ok})
    return results


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="base model folder (default: a tiny random Llama)")
    ap.add_argument("--adapters", nargs="*", default=None, help="name=path LoRA folders (default: K random ones)")
    ap.add_argument("--voters", type=int, default=4, help="K random voters for the tiny model")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="15 s of load")
    ap.add_argument("--out", default=str(ROOT / "experiments/results/bench_serve.json"))
    ap.add_argument("--serve-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_child:
        spec = json.loads(args.serve_child)
        return serve_child(spec["model"], spec["adapters"])
    if args.quick:
        args.seconds = 15.0
    run(args)


def run(args: argparse.Namespace) -> None:
    import subprocess

    import psutil

    tmp = tempfile.TemporaryDirectory()
    if args.model:
        model = args.model
        adapters = dict(a.split("=", 1) for a in (args.adapters or []))
    else:
        from ensemble.testing import make_tiny_adapters, make_tiny_model

        model = str(make_tiny_model(Path(tmp.name) / "tiny"))
        adapters = {k: str(v) for k, v in make_tiny_adapters(model, Path(tmp.name) / "adapters",
                                                             [f"v{i}" for i in range(args.voters)]).items()}
    child = subprocess.Popen([sys.executable, __file__, "--serve-child", json.dumps({"model": model,
                              "adapters": adapters})], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = json.loads(child.stdout.readline())["url"]
        root, models = url.removesuffix("/v1"), [*adapters, "base"]
        rss_idle = rss_mb(child.pid)
        records: list[dict] = []
        deadline = time.monotonic() + args.seconds
        threads = [threading.Thread(target=client_loop, args=(url, models, k, deadline, args.max_tokens, records))
                   for k in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        malformed, peak = malformed_round(root, "base"), rss_idle
        while any(t.is_alive() for t in threads):
            peak = max(peak, rss_mb(child.pid))
            time.sleep(0.5)
        wall = time.perf_counter() - t0
        after = send(root, "POST", "/v1/completions", {"model": models[0], "prompt": "still there?", "max_tokens": 4})
        health = send(root, "GET", "/health", None)[0]
        child.stdin.write("stop\n")
        child.stdin.flush()
        batching = json.loads(child.stdout.readline())
    finally:
        child.stdin.close()
        child.wait(timeout=30)
        tmp.cleanup()
    report(args, model, adapters, records, wall, rss_idle, peak, malformed, after[0], health,
           cores=psutil.cpu_count(), batching=batching)


def report(args: argparse.Namespace, model: str, adapters: dict, records: list[dict], wall: float, rss_idle: float,
           peak: float, malformed: list[dict], after_status: int, health: int, cores: int | None,
           batching: dict[str, float]) -> None:
    ok = [r for r in records if r["error"] is None]

    def lat(rs: list[dict], key: str = "seconds") -> dict[str, float | None]:
        xs = [r[key] for r in rs if r[key] is not None]
        return {"p50_s": percentile(xs, 50), "p99_s": percentile(xs, 99), "n": len(xs)}

    result = {
        "model": "tiny random Llama (ensemble.testing)" if not args.model else model, "voters": len(adapters),
        "clients": args.clients, "seconds": round(wall, 1), "max_tokens": args.max_tokens, "cpu_cores": cores,
        "requests": len(records), "errors": len(records) - len(ok),
        "error_examples": sorted({r["error"] for r in records if r["error"]})[:3],
        "latency": lat(ok), "latency_plain": lat([r for r in ok if not r["stream"]]),
        "latency_stream": lat([r for r in ok if r["stream"]]), "stream_first_chunk": lat(ok, "first_s"),
        "requests_per_s": round(len(ok) / wall, 2), "completion_tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 1),
        "batching": {k: round(v, 2) for k, v in batching.items()},
        "server_rss_mb": {"idle": round(rss_idle, 1), "peak": round(peak, 1)},
        "malformed": {"kinds": len(malformed), "all_4xx_json": all(m["ok"] for m in malformed), "results": malformed},
        "served_after": after_status == 200 and health == 200,
        "note": "shared 2-core machine; indicative numbers",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    lt = result["latency"]
    print(f"{result['requests']} requests ({result['errors']} errors) from {args.clients} clients over "
          f"{len(adapters)} voters + base in {wall:.1f} s: {result['requests_per_s']} req/s, "
          f"{result['completion_tokens_per_s']} completion tokens/s, p50 {lt['p50_s'] or 0:.3f} s, p99 {lt['p99_s'] or 0:.3f} s; "
          f"{batching['mean_requests_per_call']:.1f} requests per engine call; "
          f"server RSS {rss_idle:.0f} -> {peak:.0f} MB; malformed kinds {len(malformed)}, all 4xx JSON: "
          f"{result['malformed']['all_4xx_json']}; still serving: {result['served_after']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
