#!/usr/bin/env bash
# The GPU check, one prepared script for a lent CUDA machine (the `device` tool; README "GPU").
#   carry: .whl  (transformers 5.24.0, peft 0.21.2, gguf 0.19.0 wheels, cp312 / py3-none)
#          .gpu/smollm2-config  (SmolLM2's config + tokenizer only, no weights)
# Prepare once on the CPU machine (both folders are ignored through .git/info/exclude):
#   printf '/.whl/\n/.gpu/\n' >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl transformers==5.24.0 peft==0.21.2 gguf==0.19.0
#   mkdir -p .gpu/smollm2-config && cp ~/.cache/ensemble/models/smollm2-135m-instruct/{config.json,\
#     generation_config.json,chat_template.jinja,tokenizer.json,tokenizer_config.json} .gpu/smollm2-config/
# then: device run `bash experiments/device_check.sh`, carry [".whl", ".gpu"].
# 1. the HF-engine tests and the shared-prefix exactness tests, on CUDA (the engines pick
#    CUDA when present; references stay PEFT's own full forward pass);
# 2. bench_engine and bench_shared_prefix's scoring on a random-weight SmolLM2-135M
#    (experiments/random_model.py: same shapes and tokenizer, so the same work).
# Worst case ~510 s of commands plus the machine's start: fits one 15-minute lease with room.
# Writes $OUT/{env.txt,pytest.log,bench_engine_cuda.json,bench_shared_prefix_cuda.json,bench.log}.
set -u -o pipefail
OUT=${OUT:-/tmp/device_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# into the image's own environment: test children are started with PYTHONPATH=<repo> only
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade .whl/*.whl || exit 3
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__,
'peft', peft.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))"; } 2>&1 | tee "$OUT/env.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" -m "not slow" -rfE \
  tests/test_engine_hf.py tests/test_shared_prefix.py tests/test_training_stack.py tests/test_training_multi.py \
  tests/test_training_recipe.py \
  2>&1 | tee "$OUT/pytest.log" | tail -25
python3 experiments/random_model.py .gpu/smollm2-config /tmp/smollm2-random >/dev/null 2>&1 || exit 4
{ timeout 110 python3 experiments/bench_shared_prefix.py --sections score --model /tmp/smollm2-random \
    --device cuda --clock wall --batch-size 512 --out "$OUT/bench_shared_prefix_cuda.json"
  # Each configuration is a process of its own (K merged copies: K processes), and on the GPU
  # machine each takes ~10-20 s to start: K = 1 (5 processes) ran in < 160 s; K = 4 (8) and
  # K = 1,8 (17) did not finish in 100 / 160 s (2026-11-26). The JSON is written after each K.
  timeout 220 python3 experiments/bench_engine.py --model /tmp/smollm2-random --device cuda --ks 1,4 \
    --prompts 16 --new-tokens 32 --repeats 2 --out "$OUT/bench_engine_cuda.json"; } 2>&1 | grep -v "it/s\]" | tee "$OUT/bench.log"
