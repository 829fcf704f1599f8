"""Sampled generation: the n samples of a request sharing one prompt prefill, or not.

    python experiments/bench_samples.py            # ~8 minutes on 2 CPU cores
    python experiments/bench_samples.py --quick    # n = 1 and 4, 4 questions (~90 s)

Issue 11's setting (generate mode, K voters x S samples, short replies) spends most of
its time reading prompts: a bundled-benchmark question is ~100 tokens, a reply ~10.
The HF engine prefills each distinct (voter, prompt) once and copies its KV cache to
the request's n sample rows (engine option ``share_prefix``, default true); with
``share_prefix: false`` every sample row prefills its own copy of the prompt.

K = 5 random rank-8 plain LoRA voters (q, k, v, o) on SmolLM2-135M-Instruct, P
bundled-benchmark questions per voter, n samples each at temperature 0.7, a fixed
--new-tokens per sample (EOS ignored, so both paths do the same decoding work). Two
engines (shared / per-sample prefill) are alive at once; timed calls alternate between
them over --repeats rounds and each keeps its best (CPU clock of this process). Also
counts the samples whose text differs between the two paths (seeded: they should not).

Writes experiments/results/bench_samples.json; the last line printed is one JSON object
of per-n speedups ``{"n4_speedup": ..., ...}`` (per-sample prefill time / shared time).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.bench_shared_prefix import load_items, make_adapters


def requests(items, voters: list[str], n: int, new_tokens: int) -> list:
    from ensemble.engines.base import GenRequest, SamplingSettings

    return [GenRequest(v, messages=messages, sampling=SamplingSettings(n=n, temperature=0.7,
                                                                       max_new_tokens=new_tokens, seed=17 + i))
            for i, (messages, _) in enumerate(items) for v in voters]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ns", default="1,4,8", help="samples per request")
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--voters", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=12)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "bench_samples.json"))
    args = ap.parse_args()
    ns = (1, 4) if args.quick else tuple(int(x) for x in args.ns.split(","))
    n_questions = 4 if args.quick else args.questions

    import torch
    from transformers import AutoConfig, AutoTokenizer

    from ensemble.engines.base import EngineSpec
    from ensemble.engines.hf.engine import HFEngine
    from ensemble.engines.models import resolve_model

    base = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(base)
    n_layers = AutoConfig.from_pretrained(base).num_hidden_layers
    items = load_items(n_questions, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        folders = make_adapters(Path(base), Path(tmp), "lora", args.voters, tok, n_layers)
        engines = {share: HFEngine.from_spec(EngineSpec("hf", str(base), {k: str(v) for k, v in folders.items()},
                                                        {"dtype": args.dtype, "ignore_eos": True,
                                                         "share_prefix": share}))
                   for share in (True, False)}
        voters = list(folders)
        best: dict[tuple[bool, int], float] = {}
        texts: dict[tuple[bool, int], list[str]] = {}
        for engine in engines.values():
            engine.generate(requests(items[:1], voters, 2, args.new_tokens))  # warm-up
        for _ in range(args.repeats):
            for n in ns:
                for share, engine in engines.items():
                    t0 = time.process_time()
                    outs = engine.generate(requests(items, voters, n, args.new_tokens))
                    best[share, n] = min(best.get((share, n), float("inf")), time.process_time() - t0)
                    texts[share, n] = [s.text for o in outs for s in o.samples]
        for engine in engines.values():
            engine.close()
    rows = []
    for n in ns:
        shared, alone = best[True, n], best[False, n]
        differ = sum(a != b for a, b in zip(texts[True, n], texts[False, n]))
        rows.append({"n": n, "rows": len(texts[True, n]), "shared_s": round(shared, 3),
                     "per_sample_prefill_s": round(alone, 3), "speedup": round(alone / shared, 2),
                     "shared_s_per_row": round(shared / len(texts[True, n]), 4), "texts_differ": differ})
        print(f"n={n}: {len(texts[True, n])} sample rows, shared prefill {shared:.2f} s, per-sample prefill "
              f"{alone:.2f} s -> {alone / shared:.2f}x; texts differing: {differ}")
    summary = {f"n{r['n']}_speedup": r["speedup"] for r in rows}
    result = {"command": "python " + " ".join(sys.argv), "model": args.model, "dtype": args.dtype,
              "voters": args.voters, "questions": n_questions, "new_tokens": args.new_tokens,
              "threads": torch.get_num_threads(), "clock": "process CPU time, best of repeats",
              "results": rows, "summary": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
