"""Does a live adaptive run draw exactly the full run's samples? float32 vs bfloat16, side by side.

    python experiments/adaptive_exact.py --config experiments/configs/adaptive_generate8.yaml \
        --limit 10 --samples 4 --root runs/adaptive_exact

An adaptive generate run asks sample s of an (item, voter) alone, with the full run's seed and
``first_sample = s`` (``SamplingSettings``); the HF engine seeds every sample row on its own, so
the draw is the full run's, whatever else is in the batch, as long as the logits are the same.
In batches of other shapes they are the same in float32 but can round apart in bfloat16, and a
seeded draw then picks another token. For each dtype this runs the config (its voters, prompt,
temperature and seed; the test split, ``data.limit`` problems, ``--samples`` samples) twice: as a
plain full run, and as an adaptive run that asks every cell (``rule: none, order: given``) in
its own rounds and batches. It counts the samples whose text differs, and times both runs.
Writes experiments/results/adaptive_exact.json (--out).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from adaptive_live import sample_texts, split_config

from ensemble.config.loader import load_config
from ensemble.pipeline import run
from ensemble.predictions.rows import read_rows

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = ("float32", "bfloat16")


def config_for(base: Path, root: Path, dtype: str, adaptive: bool, limit: int, samples: int) -> Path:
    """The full (or every-cell adaptive) run of ``base`` in ``dtype``, in ``root/<dtype>-<full|adaptive>``."""
    every = {"rule": "none", "order": "given", "weights": "none"} if adaptive else None
    return split_config(base, root / f"{dtype}-{'adaptive' if adaptive else 'full'}",
                        {"samples": samples, "dtype": dtype, "adaptive": every}, limit)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=Path("experiments/configs/adaptive_generate8.yaml"))
    ap.add_argument("--limit", type=int, default=10, help="test problems (data.limit)")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--root", type=Path, default=Path("runs/adaptive_exact"))
    ap.add_argument("--out", type=Path, default=RESULTS / "adaptive_exact.json")
    args = ap.parse_args(argv)
    result: dict[str, Any] = {"command": "python experiments/adaptive_exact.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "config": str(args.config), "samples": args.samples}
    for dtype in DTYPES:
        got, seconds = {}, {}
        for adaptive in (False, True):
            cfg = load_config(config_for(args.config, args.root, dtype, adaptive, args.limit, args.samples))
            t0 = time.perf_counter()
            run(cfg)
            seconds["adaptive" if adaptive else "full"] = round(time.perf_counter() - t0, 1)
            got[adaptive] = sample_texts(read_rows(Path(cfg.out) / "predictions.jsonl"))
        full, live = got[False], got[True]
        if set(full) != set(live):
            raise SystemExit(f"{dtype}: the two runs asked different cells ({len(full)} vs {len(live)})")
        differ = sorted(k for k in full if full[k] != live[k])
        result[dtype] = {"samples": len(full), "differ": len(differ), "same": len(full) - len(differ),
                         "seconds": seconds, "first_differing": [list(k) for k in differ[:5]]}
        print(f"{dtype}: {len(differ)} of {len(full)} samples differ between the full and the adaptive run "
              f"(full {seconds['full']} s, adaptive {seconds['adaptive']} s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
