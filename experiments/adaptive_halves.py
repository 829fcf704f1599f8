"""How far apart are two full votes over independent draws? (the live run's noise floor)

    python experiments/adaptive_halves.py --generate runs/adaptive_generate8

A live adaptive run whose samples are not the full run's (before ``first_sample``, or where
bf16 rounds a draw apart) is compared with a full vote over other draws of the same voters.
This script measures how much independent draws alone move the test accuracy: it splits a full generate-mode run's samples into two halves (samples
0..S/2-1 and S/2..S-1: two independent runs with S/2 samples each), takes the ``majority``
decision of each half on the test items, and reports both accuracies, how many decisions
differ, and McNemar's exact test between them. Test items = not dev, with gold (as in
bench_adaptive). Writes experiments/results/adaptive_halves.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from bench_adaptive import load_run

from ensemble.evaluation.metrics import paired_test
from ensemble.predictions.matrix import VoteMatrix
from ensemble.voting import vote

RESULTS = Path(__file__).resolve().parent / "results"


def halves(m: VoteMatrix, test: np.ndarray) -> dict[str, Any]:
    """Majority of samples 0..S/2-1 vs majority of S/2..S-1 on the (I,) bool ``test`` items."""
    if m.n_samples < 2:
        raise SystemExit(f"adaptive_halves: the run has {m.n_samples} sample per voter; it needs at least 2")
    half = m.n_samples // 2
    first = vote(m.select_samples(range(half)), "majority").labels[test]
    second = vote(m.select_samples(range(half, 2 * half)), "majority").labels[test]
    gold = m.gold[test]  # type: ignore[index]
    test_ = paired_test(gold, first, second)
    return {"n_test": int(test.sum()), "samples_per_half": half,
            "accuracy_first": float(np.mean(first == gold)), "accuracy_second": float(np.mean(second == gold)),
            "decisions_differ": int((first != second).sum()), "p_value": test_["p_value"],
            "delta": test_["delta"], "delta_ci": test_["delta_ci"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generate", type=Path, required=True, help="a full generate-mode run folder")
    ap.add_argument("--out", type=Path, default=RESULTS / "adaptive_halves.json")
    args = ap.parse_args(argv)
    m, dev, _ = load_run(args.generate)
    result = {"command": "python experiments/adaptive_halves.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "source": str(args.generate), **halves(m, ~dev & m.has_gold())}
    print(f"{result['n_test']} test items, {result['samples_per_half']} samples per half: accuracy "
          f"{result['accuracy_first']:.3f} vs {result['accuracy_second']:.3f}, {result['decisions_differ']} decisions "
          f"differ (McNemar p={result['p_value']:.3g})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
