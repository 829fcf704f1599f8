"""Choice scoring: HFEngine.score_choices vs lm-evaluation-harness's HFLM.loglikelihood.

    python experiments/bench_choice.py            # ~3-6 minutes on 2 busy CPU cores

Same items (multiple-choice questions from ensemble.data.benchmark, prompt =
problem + question + "Answer:", options scored as " <option text>"), same model
(SmolLM2-135M-Instruct, float32, CPU), same adapter (one random rank-8 LoRA on
q, k, v, o). Both score every option's summed log-likelihood (cloze, normalize="sum");
the chosen option is the argmax. lm-eval runs prompt+option once per option; the
engine runs each prompt once and only the option tokens per option (KV cache copy).

Both models live in this one process; the timed runs alternate (ours, theirs, ours,
...) and each side reports its best of --repeats (the machine is shared). Checks:
identical chosen option on every item, and our questions/s >= 1.5x theirs.
Writes experiments/results/bench_choice.json.
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


def load_items(n: int, seed: int) -> list[tuple[str, tuple[str, ...]]]:
    """(prompt, options) for the first ``n`` generated questions."""
    from ensemble.data.benchmark import generate_problems

    items: list[tuple[str, tuple[str, ...]]] = []
    for row in generate_problems(n, seed, split="bench_choice"):
        for q in row["questions"]:
            items.append((f"{row['problem']}\n{q['question']}\nAnswer:", tuple(" " + o for o in q["options"])))
    return items[:n]


def argmax(xs) -> int:
    return max(range(len(xs)), key=lambda i: xs[i])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32, help="ours: questions per batch; lm-eval: rows per batch")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "bench_choice.json"))
    args = ap.parse_args()

    import lm_eval
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from ensemble.engines.base import ChoiceRequest, EngineSpec
    from ensemble.engines.hf.engine import HFEngine
    from ensemble.engines.models import resolve_model
    from ensemble.testing import make_tiny_adapters

    base = resolve_model("smollm2")
    items = load_items(args.items, args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_choice_") as tmp:
        adapter = make_tiny_adapters(base, tmp, ["r0"], rank=8, scale=0.02,
                                     target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))["r0"]
        ours = HFEngine.from_spec(EngineSpec("hf", str(base), {"r0": str(adapter)},
                                             {"dtype": "float32", "device": "cpu", "batch_size": args.batch_size}))
        theirs = HFLM(pretrained=str(base), peft=str(adapter), device="cpu", dtype="float32",
                      batch_size=args.batch_size)
        reqs = [ChoiceRequest("r0", options=opts, prompt=prompt, normalize="sum") for prompt, opts in items]
        instances = [Instance("loglikelihood", {}, (prompt, o), i) for i, (prompt, opts) in enumerate(items)
                     for o in opts]

        def run_ours() -> list[list[float]]:
            return [list(o.logliks) for o in ours.score_choices(reqs)]

        def run_theirs() -> list[list[float]]:
            flat = iter(ll for ll, _greedy in theirs.loglikelihood(instances, disable_tqdm=True))
            return [[next(flat) for _ in opts] for _prompt, opts in items]

        run_ours(), run_theirs()  # warm-up on the full set: allocations, kernels
        best = {"ours": float("inf"), "lm_eval": float("inf")}
        scores: dict[str, list[list[float]]] = {}
        for _ in range(args.repeats):
            for name, fn in (("ours", run_ours), ("lm_eval", run_theirs)):
                t0 = time.perf_counter()
                scores[name] = fn()
                best[name] = min(best[name], time.perf_counter() - t0)

    a, b = scores["ours"], scores["lm_eval"]
    same = [argmax(x) == argmax(y) for x, y in zip(a, b)]
    diff = max(abs(u - v) for x, y in zip(a, b) for u, v in zip(x, y))
    tokens = sum(len(ours.tokenizer(p)["input_ids"]) for p, _ in items)
    report = {
        "model": "smollm2 (SmolLM2-135M-Instruct)", "dtype": "float32", "device": "cpu",
        "adapter": "random LoRA rank 8 on q,k,v,o_proj", "lm_eval_version": lm_eval.__version__ if hasattr(
            lm_eval, "__version__") else "unknown", "torch_threads": torch.get_num_threads(),
        "items": len(items), "options_total": sum(len(o) for _, o in items),
        "mean_prompt_tokens": tokens / len(items), "batch_size": args.batch_size, "repeats": args.repeats,
        "seconds": best, "questions_per_s": {k: len(items) / v for k, v in best.items()},
        "speedup_ours_vs_lm_eval": best["lm_eval"] / best["ours"],
        "identical_choices": sum(same), "all_identical": all(same),
        "max_abs_loglik_diff": diff, "targets": {"all_identical": True, "speedup": ">= 1.5"},
        "wall_s": time.perf_counter() - started,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
