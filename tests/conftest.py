"""Shared fixtures. Tests never touch the network: hub access is switched off here."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "ensemble" / "examples"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer random Llama with a local tokenizer (built once per session)."""
    from ensemble.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """Three random LoRA adapters over the tiny model."""
    from ensemble.testing import make_tiny_adapters

    return make_tiny_adapters(tiny_model, tmp_path_factory.mktemp("adapters"), ["v1", "v2", "v3"])


@pytest.fixture
def fake_served():
    """(engine, server): tests/conftest_serve.FakeEngine (voters a, b; no tokenizer) served by
    `vote serve` on loopback, closed after the test."""
    from conftest_serve import FakeEngine, loopback

    engine = FakeEngine()
    with loopback(engine) as server:
        yield engine, server


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module, the thread count restored after: tiny matmuls on a busy
    2-core machine are ~20x slower with two intra-op threads, and CPU sums may take another
    order with another thread count (pytest_configure sets one for the session too)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_configure(config) -> None:
    # Tiny models are latency-bound: one thread avoids oversubscription on a 2-core machine
    # (measured ~20x slower with 2 threads when another process was busy).
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
