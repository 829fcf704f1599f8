"""A random-weight copy of a model folder: same config and tokenizer, seeded weights.

    python experiments/random_model.py SRC_DIR OUT_DIR [--seed 0]

SRC_DIR needs the config and the tokenizer files only (no weights): the GPU machine
cannot download SmolLM2 and its 514 MB of weights are too large to carry there, but its
config.json + tokenizer (3.5 MB) travel, and speed does not depend on the weights' values.
The benchmarks take OUT_DIR as ``--model``. Timings only: answers from random weights are noise.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


def random_copy(src: Path, out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and f.name != "ensemble_model.json":
            shutil.copy2(f, out / f.name)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src))
    model.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(random_copy(args.src, args.out, args.seed))


if __name__ == "__main__":
    main()
