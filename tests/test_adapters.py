"""check_adapter / register_adapter: adapters trained elsewhere, checked without loading weights."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ensemble.errors import EnsembleError
from ensemble.testing import make_tiny_adapters, make_tiny_model
from ensemble.training.adapters import check_adapter, load_voters, register_adapter


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {"h32": make_tiny_model(root / "h32"), "h64": make_tiny_model(root / "h64", hidden_size=64)}


@pytest.fixture(scope="module")
def adapters(bases, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ad")
    good = make_tiny_adapters(bases["h32"], root / "good", ["good"], rank=4)["good"]
    wide = make_tiny_adapters(bases["h64"], root / "wide", ["wide"], rank=4)["wide"]
    return {"good": good, "wide": wide}


def copy_with_weights(src: Path, dst: Path, edit) -> Path:
    """A copy of the adapter folder ``src`` whose weights are ``edit(tensors)``."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    save_file(edit(load_file(dst / "adapter_model.safetensors")), dst / "adapter_model.safetensors")
    return dst


def test_accepts_a_matching_adapter(bases, adapters):
    info = check_adapter(bases["h32"], adapters["good"])
    assert (info.name, info.rank, info.alpha) == ("good", 4, 8.0)
    assert info.target_modules == ("q_proj", "v_proj")  # sorted: PEFT saves a set
    assert info.base_model_name == str(bases["h32"])
    # a PretrainedConfig works as the base too
    from transformers import AutoConfig

    assert check_adapter(AutoConfig.from_pretrained(bases["h32"]), adapters["good"], name="x").name == "x"


def test_rejects_an_adapter_for_a_wider_base(bases, adapters):
    said = f"adapter says base_model_name_or_path={bases['h64']}"
    with pytest.raises(EnsembleError, match=(
            r"^adapter wide: lora_A of model\.layers\.0\.self_attn\.q_proj has in_features 64, base has 32 "
            r"— trained for a different base \(" + said.replace(".", r"\.") + r"\)$")):
        check_adapter(bases["h32"], adapters["wide"])


def test_rejects_out_features_mismatch(bases, adapters, tmp_path):
    # same in_features, but lora_B says the layer has a different output width
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    bad = copy_with_weights(adapters["good"], tmp_path / "narrow",
                            lambda t: {**t, key: t[key][:8].contiguous()})  # (16, r) -> (8, r)
    with pytest.raises(EnsembleError, match=r"adapter narrow: lora_B of model\.layers\.1\.self_attn\.v_proj has "
                                            r"out_features 8, base has 16 — trained for a different base"):
        check_adapter(bases["h32"], bad)


def test_rejects_missing_target_module(bases, adapters, tmp_path):
    bad = tmp_path / "gpt2ish"
    shutil.copytree(adapters["good"], bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["target_modules"] = ["c_attn"]
    cfg["base_model_name_or_path"] = "gpt2"
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(EnsembleError, match=(
            r"^adapter gpt2ish: target module 'c_attn' matches no module of the base \(it has down_proj, "
            r"embed_tokens, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj\) — trained for a "
            r"different architecture \(adapter says base_model_name_or_path=gpt2\)$")):
        check_adapter(bases["h32"], bad)


def test_rejects_weights_for_modules_the_base_lacks(bases, adapters, tmp_path):
    src = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    bad = copy_with_weights(adapters["good"], tmp_path / "deep", lambda t: {
        **t, "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight": t[src].clone()})
    with pytest.raises(EnsembleError, match=r"adapter deep: has weights for model\.layers\.7\.self_attn\.q_proj, "
                                            r"which the base does not have"):
        check_adapter(bases["h32"], bad)


def test_config_file_errors_name_the_file(bases, adapters, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EnsembleError, match=f"{empty / 'adapter_config.json'}: not found; an adapter is a PEFT"):
        check_adapter(bases["h32"], empty)
    broken = tmp_path / "broken"
    shutil.copytree(adapters["good"], broken)
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA",\n  oops}')
    with pytest.raises(EnsembleError, match=f"{broken / 'adapter_config.json'}:2: invalid JSON"):
        check_adapter(bases["h32"], broken)
    (broken / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3", "r": 4, "target_modules": ["q_proj"]}))
    with pytest.raises(EnsembleError, match=r"peft_type is 'IA3'; only LoRA adapters"):
        check_adapter(bases["h32"], broken)
    (broken / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    with pytest.raises(EnsembleError, match=r"adapter_config.json: field 'target_modules' is missing"):
        check_adapter(bases["h32"], broken)
    noweights = tmp_path / "noweights"
    shutil.copytree(adapters["good"], noweights)
    (noweights / "adapter_model.safetensors").unlink()
    with pytest.raises(EnsembleError, match=r"adapter_model.safetensors: not found; save the adapter"):
        check_adapter(bases["h32"], noweights)


def test_register_writes_voters_json(bases, adapters, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(EnsembleError, match=r"manifest.json: not found; give the base model"):
        register_adapter(out, adapters["good"])
    info = register_adapter(out, adapters["good"], base=bases["h32"])
    assert info.name == "good"
    assert load_voters(out) == {"good": str(adapters["good"].resolve())}
    register_adapter(out, adapters["good"], name="again", base=bases["h32"])
    assert list(load_voters(out)) == ["good", "again"]
    with pytest.raises(EnsembleError, match=r"lora_A of .* has in_features 64, base has 32"):
        register_adapter(out, adapters["wide"], name="w", base=bases["h32"])
    assert "w" not in load_voters(out)  # a rejected adapter is not recorded
    other = tmp_path / "other" / "good"
    shutil.copytree(adapters["good"], other)
    with pytest.raises(EnsembleError, match=r"voters.json: voter 'good' already points to"):
        register_adapter(out, other, base=bases["h32"])


def test_register_uses_the_manifest_base(bases, adapters, tmp_path):
    from ensemble.training.manifest import base_model_info, new_manifest, write_manifest

    out = tmp_path / "run"
    write_manifest(out, new_manifest(base_model_info(bases["h64"])))
    assert register_adapter(out, adapters["wide"]).name == "wide"
    with pytest.raises(EnsembleError, match=r"in_features 32, base has 64"):
        register_adapter(out, adapters["good"])
