"""Packaging that tells the truth: the wheel holds every module and the shipped configs,
an installed (not editable) copy finds its configs from any directory, the dependency
floors cover the APIs the code calls, and stacked LoRA refuses a PEFT whose internals
changed instead of returning wrong numbers."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ensemble.errors import EnsembleError

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- the wheel ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel .`` of a copy of the source tree (no build/ or egg-info left in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "ensemble", src / "ensemble", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(out), str(src)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    (whl,) = out.glob("ensemble-*.whl")
    return whl


def test_wheel_holds_every_module_config_and_example(wheel) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "ensemble").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert {"ensemble/configs/quickstart.yaml", "ensemble/examples/predictions.jsonl",
            "ensemble/engines/hf/__init__.py", "ensemble/tokens.py"} <= source
    assert source - names == set()  # every module, config and example file is shipped
    assert not any(n.startswith(("tests/", "experiments/")) for n in names)
    entry_points = zipfile.ZipFile(wheel).read(f"{wheel.name.split('-')[0]}-"
                                               f"{wheel.name.split('-')[1]}.dist-info/entry_points.txt").decode()
    assert "vote = ensemble.cli.app:main" in entry_points


def test_installed_copy_finds_its_configs_from_any_directory(wheel, tmp_path) -> None:
    """`pip install .` (not editable), then `vote quickstart` in an empty directory: the
    config comes from inside the installed package and loads."""
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    code = ("import ensemble; from ensemble.cli.jobs import find_config; from ensemble.config.loader import "
            "load_config; p = find_config('quickstart.yaml'); cfg = load_config(p); "
            "print(ensemble.__file__); print(p); print(cfg.model)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(target)}, check=False)
    assert proc.returncode == 0, proc.stderr
    module, config, model = proc.stdout.splitlines()
    assert module.startswith(str(target)) and config.startswith(str(target / "ensemble" / "configs"))
    assert model == "smollm2"


# --- dependency floors ------------------------------------------------------------------------------


def _floor(requirement: str) -> tuple[int, ...]:
    match = re.search(r">=\s*([\d.]+)", requirement)
    assert match, f"{requirement}: no >= floor"
    return tuple(int(x) for x in match.group(1).split("."))


def _requirements() -> dict[str, str]:
    project = PYPROJECT["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += [r for r in extra if not r.startswith("ensemble[")]
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower(): r for r in reqs}


# (package, the oldest version that has what the code calls, what that is)
FLOORS = [
    ("scikit-learn", (1, 7), "brier_score_loss(labels=..., scale_by_half=...)"),
    ("scipy", (1, 7), "scipy.stats.binomtest"),
    ("transformers", (5, 24), "forward(cache=...) and out.cache (past_key_values deprecated)"),
    ("peft", (0, 18), "aLoRA: LoraConfig(alora_invocation_tokens=...)"),
    ("accelerate", (1, 1), "transformers' Trainer"),
    ("click", (8, 0), "click.version_option(package_name=...)"),
]


@pytest.mark.parametrize("package, floor, why", FLOORS)
def test_dependency_floors_cover_the_apis_called(package, floor, why) -> None:
    assert _floor(_requirements()[package]) >= floor, f"{package} >= {floor} is needed for {why}"


def test_peft_range_in_pyproject_is_the_one_the_lora_check_names() -> None:
    from ensemble.engines.hf.lora import PEFT_RANGE

    assert _requirements()["peft"] == "peft" + PEFT_RANGE


def test_installed_versions_satisfy_the_floors() -> None:
    """The versions these tests run on are inside the declared ranges."""
    from importlib.metadata import PackageNotFoundError, version

    for package, requirement in _requirements().items():
        if package in ("vllm", "crowd-kit"):
            continue  # not installable here (vLLM) / a test-only reference
        try:
            installed = tuple(int(x) for x in re.findall(r"\d+", version(package))[:3])
        except PackageNotFoundError:  # an extra not installed here
            continue
        assert installed >= _floor(requirement), f"{package} {installed} < {requirement}"
        upper = re.search(r"<\s*([\d.]+)", requirement)
        if upper:
            assert installed < tuple(int(x) for x in upper.group(1).split(".")), f"{package} {installed} vs {requirement}"


# --- stacked LoRA checks the PEFT internals it reads --------------------------------------------------


@pytest.fixture
def peft_model(tiny_model, tiny_adapters):
    import torch
    from transformers import AutoModelForCausalLM

    from ensemble.engines.hf.load import attach_adapters

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    return attach_adapters(base, {n: tiny_adapters[n] for n in ("v1", "v2")}, torch.float32)


def _lora_layers(model):
    from peft.tuners.lora.layer import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def _version() -> str:
    import peft

    return re.escape(peft.__version__)


def test_stacked_lora_accepts_this_peft(peft_model) -> None:
    from ensemble.engines.hf.lora import StackedLoRA

    stacked = StackedLoRA(peft_model, ["v1", "v2"])
    assert stacked._patched  # the probe compared every adapter with PEFT's own forward and agreed


@pytest.mark.parametrize("attr", ["scaling", "lora_variant", "lora_bias"])
def test_missing_peft_attribute_stops_with_the_version_and_the_fix(peft_model, monkeypatch, attr) -> None:
    from ensemble.engines.hf.engine import HFEngine
    from ensemble.testing import make_tokenizer

    monkeypatch.delattr(_lora_layers(peft_model)[3], attr)
    with pytest.raises(EnsembleError, match=rf"PEFT {_version()}: LoRA layer Linear has no attribute '{attr}'\. "
                                            r"Stacked LoRA batching reads PEFT internals and is tested with "
                                            r"peft>=0\.18,<0\.22; install one .* or set the hf engine option "
                                            r"lora_batching: separate"):
        HFEngine(peft_model, make_tokenizer(), ["v1", "v2"], device="cpu")


def test_lora_weights_of_another_shape_stop(peft_model) -> None:
    from ensemble.engines.hf.lora import StackedLoRA

    layer = _lora_layers(peft_model)[0]
    layer.lora_A["v1"] = layer.lora_dropout["v1"]  # a module without a 2-D weight (the model is per test)
    with pytest.raises(EnsembleError, match=rf"PEFT {_version()}: LoRA layer Linear: lora_A\['v1'\] is not a "
                                            r"linear layer with a 2-D weight"):
        StackedLoRA(peft_model, ["v1", "v2"])


def test_peft_layer_classes_moved(peft_model, monkeypatch) -> None:
    import peft.tuners.lora.layer

    from ensemble.engines.hf.lora import StackedLoRA

    monkeypatch.delattr(peft.tuners.lora.layer, "LoraLayer")
    with pytest.raises(EnsembleError, match=rf"PEFT {_version()}: cannot import LoraLayer / Linear from "
                                            r"peft\.tuners\.lora\.layer"):
        StackedLoRA(peft_model, ["v1"])


def test_peft_computing_lora_differently_is_caught_and_separate_still_works(peft_model, monkeypatch) -> None:
    """A PEFT whose forward gives another delta (here: twice the LoRA term) than the
    stacked one: the probe stops the engine; lora_batching: separate (PEFT's own path) runs."""
    from peft.tuners.lora.layer import Linear

    from ensemble.engines.base import GenRequest, SamplingSettings
    from ensemble.engines.hf.engine import HFEngine
    from ensemble.testing import make_tokenizer

    original = Linear._mixed_batch_forward

    def doubled(self, x, *args, **kwargs):
        base = self.base_layer(x)
        return base + 2 * (original(self, x, *args, **kwargs) - base)

    monkeypatch.setattr(Linear, "_mixed_batch_forward", doubled)
    with pytest.raises(EnsembleError, match=rf"PEFT {_version()}: adapter 'v1': the stacked LoRA delta differs "
                                            r"from PEFT's own forward by .* so PEFT now computes LoRA differently"):
        HFEngine(peft_model, make_tokenizer(), ["v1", "v2"], device="cpu")
    engine = HFEngine(peft_model, make_tokenizer(), ["v1", "v2"], device="cpu", lora_batching="separate")
    out = engine.generate([GenRequest("v1", prompt="A B", sampling=SamplingSettings(max_new_tokens=2))])
    assert out[0].samples[0].n_tokens == 2


# --- the README's two set-up commands ----------------------------------------------------------


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)]


def test_readme_has_the_two_setup_commands_and_ci_runs_the_test_one() -> None:
    """A fresh machine needs exactly two commands from the README: install + quickstart, and the
    tests; `.ci/run` must run the README's test command verbatim (an edit that cut it went green)."""
    blocks = _bash_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    install = [b for b in blocks if b.endswith("vote quickstart")]
    assert install == [('python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e ".[all]" '
                        "&& .venv/bin/vote quickstart")]
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci.endswith(".venv/bin/python -m pytest -q") and ci in blocks
    assert _bash_blocks("x\n```bash\na && b\n```\n```bash\nc\n```") == ["a && b", "c"]
