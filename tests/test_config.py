"""Configs: every file in configs/ loads; unknown keys, bad types and bad values are named."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ensemble.config.loader import ConfigError, apply_overrides, load_config, to_dict
from ensemble.config.schema import Config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "ensemble" / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config) and cfg.source == str(path)
    assert to_dict(cfg)["run"]["engine"] in ("hf", "vllm", "openai")


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_overrides_parse_yaml_values(tmp_path):
    cfg = load_config(write(tmp_path, "run: {mode: generate}\n"),
                      ["run.samples=3", "run.temperature=0.5", "train.grid.ranks=[4, 8]", "out=x"])
    assert cfg.run.samples == 3 and cfg.run.temperature == 0.5 and cfg.train.grid.ranks == (4, 8) and cfg.out == "x"


def test_defaults_are_frozen(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run.samples = 2  # type: ignore[misc]


@pytest.mark.parametrize("text, overrides, message", [
    ("run: {samlpes: 2}\n", [], r"c.yaml: Unknown key 'run.samlpes'. Did you mean 'run.samples'\? Available: run.engine"),
    ("bogus: 1\n", [], r"Unknown key 'bogus'. Available: model, out"),
    ("run: {mode: gen}\n", [], r"field 'run.mode' is 'gen'; use one of 'generate', 'cloze', 'letter'"),
    ("train: {epochs: x}\n", [], r"field 'train.epochs' is 'x'; expected a number"),
    ("train: {batch_size: 0}\n", [], r"c.yaml: field 'train.batch_size' is 0; use 1 or more"),
    ("train: {grid: {ranks: [8, 0]}}\n", [], r"field 'train.grid.ranks' is \(8, 0\); use positive ranks"),
    ("train: {grid: {splits: [folds]}}\n", [], r"field 'train.grid.splits' is 'folds'; use full, kfold:K"),
    ("run: {samples: 4}\n", [], r"field 'run.samples' is 4; several samples need mode: generate"),
    ("run: {mode: generate, samples: 4}\n", [], r"several samples need temperature > 0"),
    ("run: [1, 2]\n", [], r"'run' must be a mapping"),
    ("- a\n- b\n", [], r"the top level must be a mapping"),
    ("run: {samples: 2\n", [], r"c.yaml:\d+: invalid YAML"),
    ("", ["run.samples"], r"override 'run.samples': expected KEY=VALUE"),
    ("model: smollm2\n", ["model.x=1"], r"override 'model.x=1': 'model' is not a section"),
    ("voters: [a]\n", [], r"field 'voters' is \['a'\]; expected a mapping"),
    ("run: {include_base: 'yes'}\n", [], r"field 'run.include_base' is 'yes'; expected true or false"),
    ("data: {benchmark: {kinds: [arith, ordr]}}\n", [], r"field 'data.benchmark.kinds' is 'ordr'; valid kinds: compare"),
    ("data: {benchmark: {kinds: []}}\n", [], r"field 'data.benchmark.kinds' is \[\]; name at least one of"),
])
def test_bad_configs_name_field_value_and_fix(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), overrides)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_apply_overrides_does_not_mutate():
    data = {"run": {"samples": 1}}
    assert apply_overrides(data, ["run.samples=2"]) == {"run": {"samples": 2}}
    assert data == {"run": {"samples": 1}}
