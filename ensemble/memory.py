"""Give freed memory back to the operating system between the phases of a long job.

Why: tensors below glibc's mmap threshold (``training.loop.bound_heap`` fixes it at 4
MiB; SmolLM2 activations of a training pass are 1-2 MB each) live in the malloc heap.
When a phase ends (a variant trained, the engine's scoring done) they are freed to
malloc, not to the kernel, so resident memory stays at the phase's peak and the next
phase (the engine loading its own copy of the model, the next variant) stacks on top:
measured on the quickstart (experiments/quickstart_memory.py), the process kept
~1.7 GB after training and peaked 2.5 GB while the engine loaded, on a reduced config.
``release_memory()`` runs the garbage collector (models in reference cycles) and then
``malloc_trim(0)``, which returns every free heap page to the kernel.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from pathlib import Path
from typing import Any

# oneDNN (torch's CPU matmul library for bf16) keeps every kernel it builds in a process-wide
# cache, one entry per (operation, shape), 1024 entries by default, never released between
# phases. Each entry holds ~0.2 MB (350 linear shapes fwd + bwd: +244 MB). Training and scoring
# meet a new shape with nearly every batch, so the cache only grows. 128 entries hold every
# kernel one forward + backward pass reuses layer after layer (measured: even 16 kept the
# quickstart's training speed, while 0, no cache, made its steps 1.35x slower).
KERNEL_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
KERNEL_CACHE_CAPACITY = 128


def bound_kernel_cache(capacity: int = KERNEL_CACHE_CAPACITY) -> bool:
    """Cap oneDNN's kernel cache at ``capacity`` entries unless the environment already sets it;
    True when this call set it. oneDNN reads the variable once, when it builds its first
    kernel (not at ``import torch``): call this before any model runs."""
    if KERNEL_CACHE_ENV in os.environ:
        return False
    os.environ[KERNEL_CACHE_ENV] = str(capacity)
    return True


def release_memory() -> bool:
    """gc.collect(), then glibc's ``malloc_trim(0)``; False where there is no glibc (macOS, musl)."""
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return False
    if trim is None:
        return False
    trim(0)
    return True


def rss_mb() -> int | None:
    """Resident memory of this process in MB (Linux ``/proc``), None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except OSError:
        return None
    return None


def copy_frozen_float32(model: Any) -> int:
    """Give the frozen float32 parameters left after ``training.loop.frozen_weights_in_bf16``
    (the norms, and any weight it left fp32) storage of their own; return the bytes copied.

    Why: transformers maps a safetensors file into memory and the loaded tensors are
    views of that mapping. Storing the Linear weights in bf16 reads every page of it
    (SmolLM2: the whole 538 MB fp32 file), and the mapping stays (resident, in RSS) while
    any tensor still views it: the fp32 norms (a few KB) are enough to keep all of it, for
    the whole training run (the input embeddings did too, 113 MB of it, before they were
    stored in bf16). Copying them lets the mapping go; values are unchanged."""
    import torch

    copied = 0
    with torch.no_grad():
        for p in model.parameters():
            if not p.requires_grad and p.dtype == torch.float32:
                p.data = p.data.clone()
                copied += p.numel() * 4
    return copied
