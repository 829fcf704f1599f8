"""Configs are checked before any work starts: names at load, files in the pre-flight.

Each bad config is pinned by its message: the file, the field, the value and the fix.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ensemble.config.checks import FITTED, fits_on_dev
from ensemble.config.loader import ConfigError, load_config
from ensemble.config.preflight import preflight_run
from ensemble.errors import EnsembleError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "ensemble" / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, message", [
    # voting methods, did-you-mean
    ("run: {methods: [majority, majorty]}",
     r"bad.yaml: field 'run.methods' is 'majorty'; Unknown voting method 'majorty'. Did you mean 'majority'\?"),
    ("run: {methods: []}", r"bad.yaml: field 'run.methods' is \[\]; name at least one voting method: majority"),
    ("run: {methods: [stack, stack]}", (r"bad.yaml: field 'run.methods' is \['stack', 'stack'\]; stack is listed "
                                       r"twice; list each method once")),
    # method options: method names, option names, option values (names and types)
    ("run: {method_options: {majorty: {samples: voter}}}",
     r"bad.yaml: field 'run.method_options' is 'majorty'; Unknown voting method 'majorty'. Did you mean 'majority'"),
    ("run: {method_options: {majority: {sample: voter}}}",
     (r"bad.yaml: field 'run.method_options.majority' has option 'sample'; Unknown majority option 'sample'. "
     r"Did you mean 'samples'\? Available: samples")),
    ("run: {method_options: {weighted: {samples: votr}}}",
     (r"bad.yaml: field 'run.method_options.weighted.samples' is 'votr'; Unknown samples value 'votr'. "
     r"Did you mean 'voter'\? Available: each, voter")),
    ("run: {method_options: {majority: {tie_break: frist}}}",
     (r"bad.yaml: field 'run.method_options.majority.tie_break' is 'frist'; Unknown tie_break value 'frist'. "
     r"Did you mean 'first'\? Available: first, random, confidence, abstain")),
    ("run: {method_options: {stack: {features: prob}}}",
     r"bad.yaml: field 'run.method_options.stack.features' is 'prob'; .*Did you mean 'probs'\?"),
    ("run: {method_options: {select: {max_rounds: 2.5}}}",
     r"bad.yaml: field 'run.method_options.select.max_rounds' is 2.5; expected a whole number, like the default 50"),
    ("run: {method_options: {dawid_skene: {tol: small}}}",
     r"bad.yaml: field 'run.method_options.dawid_skene.tol' is 'small'; expected a number, like the default 1e-05"),
    # extractor, engine, prompt, splits
    ("run: {extractor: mcq}",
     r"bad.yaml: field 'run.extractor' is 'mcq'; Unknown extractor 'mcq'. Did you mean 'mc'\?"),
    ("run: {extractor: [letter, lettr]}",
     (r"bad.yaml: field 'run.extractor' is \['letter', 'lettr'\]; Unknown extraction step 'lettr'. "
     r"Did you mean 'letter'\?")),
    ("run: {extractor: ['regex:(']}",
     r"bad.yaml: field 'run.extractor' is \['regex:\('\]; .*does not compile.*fix the regular expression"),
    ("run: {engine: vlm}", (r"bad.yaml: field 'run.engine' is 'vlm'; Unknown engine 'vlm'. Did you mean 'vllm'\? "
                           r"Available: hf, vllm, openai")),
    ("prompt: mc_autoo", (r"bad.yaml: field 'prompt' is 'mc_autoo'; Unknown prompt template 'mc_autoo'. "
                         r"Did you mean 'mc_auto'\?")),
    ("prompt: {usr: '{question}'}", r"bad.yaml: field 'prompt' is \{'usr': '\{question\}'\}; .*Did you mean 'user'\?"),
    ("train: {grid: {prompts: [mc, mcc]}}",
     r"bad.yaml: field 'train.grid.prompts' is 'mcc'; Unknown prompt template 'mcc'. Did you mean 'mc'\?"),
    ("train: {grid: {variants: [{name: a, prompt: opne}]}}",
     r"bad.yaml: field 'variant.prompt' is 'opne'; Unknown prompt template 'opne'. Did you mean 'open'\?"),
    ("run: {splits: [dev, tset]}",
     r"bad.yaml: field 'run.splits' is 'tset'; Unknown split 'tset'. Did you mean 'test'\? Available: train, dev"),
    ("run: {splits: []}", r"bad.yaml: field 'run.splits' is \[\]; name the splits to answer, e.g. \[dev, test\]"),
    ("run: {splits: [test, test]}", r"bad.yaml: field 'run.splits' is \['test', 'test'\]; list each split once"),
    # submission, fallback, data format
    ("run: {submission_method: stak}",
     r"bad.yaml: field 'run.submission_method' is 'stak'; Unknown voting method 'stak'. Did you mean 'stack'\?"),
    ("run: {submission: s.csv, methods: [majority], submission_method: stack}",
     (r"bad.yaml: field 'run.submission_method' is 'stack'; it is not among run.methods \(majority\); "
     r"add it to run.methods")),
    ("data: {dev: d.jsonl}\nrun: {submission: s.csv, splits: [dev], methods: [majority]}",
     (r"bad.yaml: field 'run.submission' is 's.csv'; a submission answers the test split, but run.splits is "
     r"\['dev'\]; add test to run.splits")),
    ("run: {fallback: prio}",
     r"bad.yaml: field 'run.fallback' is 'prio'; Unknown fallback policy 'prio'. Did you mean 'prior'\?"),
    ("data: {format: jsnl}",
     r"bad.yaml: field 'data.format' is 'jsnl'; Unknown data format 'jsnl'. Did you mean 'jsonl'\?"),
    # run.adaptive: stop rule and its parameters, voter order, weights
    ("run: {adaptive: {rule: dirichlt}}",
     r"bad.yaml: field 'run.adaptive.rule' is 'dirichlt'; Unknown stop rule 'dirichlt'. Did you mean 'dirichlet'\?"),
    ("run: {adaptive: {rule: dirichlet, params: {deltaa: 0.1}}}",
     r"bad.yaml: field 'run.adaptive.params' is \{'deltaa': 0.1\}; .*deltaa.*\(parameters of stop rule 'dirichlet'\)"),
    ("run: {adaptive: {order: dev_acuracy}}",
     (r"bad.yaml: field 'run.adaptive.order' is 'dev_acuracy'; Unknown voter order 'dev_acuracy'. "
      r"Did you mean 'dev_accuracy'\? Available: dev_accuracy, given")),
    ("run: {adaptive: {weights: devv}}",
     (r"bad.yaml: field 'run.adaptive.weights' is 'devv'; Unknown vote weights 'devv'. Did you mean 'dev'\? "
      r"Available: none, dev")),
    ("run: {adaptive: {rule: exact, delta: 0.1}}", r"bad.yaml: Unknown key 'run.adaptive.delta'"),
    ("run: {adaptive: dirichlet}", r"bad.yaml: 'run.adaptive' must be a mapping"),
    ("data: {test: t.jsonl}\nrun: {splits: [test], methods: [majority], adaptive: {rule: exact}}",
     (r"bad.yaml: field 'run.adaptive.order' is 'dev_accuracy'; it is fitted on the dev split's gold answers, but "
      r"run.splits is \['test'\]: add dev to run.splits, or set run.adaptive.order: given")),
    # the run section against the data section (a config naming data for `vote run`)
    ("data: {test: t.jsonl}\nrun: {methods: [majority]}",
     (r"bad.yaml: field 'run.splits' is 'dev'; data.dev is not set and there is no data.benchmark; set data.dev "
     r"to a file, add data.benchmark, or remove dev from run.splits")),
    ("data: {test: t.jsonl}\nrun: {splits: [test], methods: [majority, select]}",
     (r"bad.yaml: field 'run.methods' is 'select'; it fits on the dev split's gold answers, but run.splits is "
     r"\['test'\]: add dev to run.splits \(with data.dev or data.benchmark\), or remove select from run.methods")),
    ("data: {test: t.jsonl}\nrun: {splits: [test], methods: [weighted]}",
     r"bad.yaml: field 'run.methods' is 'weighted'; .* or give it weights \(run.method_options.weighted.weights"),
])
def test_bad_names_fail_at_load(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text + "\n"))


@pytest.mark.parametrize("text", [
    "data: {test: t.jsonl}\nrun: {splits: [test], methods: [majority, weighted], weights_from: manifest}",
    "data: {test: t.jsonl}\nrun: {splits: [test], methods: [weighted], method_options: {weighted: {weights: [1, 2]}}}",
    "run: {method_options: {confidence: {top_fraction: 1, soft: true}, weighted: {weights: {a: 1}}}}",
    "run: {extractor: ['regex:Answer: (.*)', letter], engine: openai}",
    "prompt: {user: '{question}', answer_prefix: 'A:'}\ntrain: {grid: {prompts: [mc, open]}}",
    "data: {train: t.jsonl}",  # a training config: its run section is checked by `vote run`
    "data: {test: t.jsonl}\nrun: {splits: [test], methods: [majority], adaptive: {rule: exact, order: given}}",
])
def test_good_configs_load(tmp_path, text):
    load_config(write(tmp_path, text + "\n", "good.yaml"))


def test_overrides_are_checked_too(tmp_path):
    with pytest.raises(ConfigError, match=r"good.yaml: field 'run.methods' is 'dawid_skeen'; .*'dawid_skene'"):
        load_config(write(tmp_path, "", "good.yaml"), ["run.methods=[majority, dawid_skeen]"])


# -- before any model is touched ---------------------------------------------------
@pytest.fixture
def no_model(monkeypatch):
    """Any attempt to resolve, convert or load a model fails the test."""
    import ensemble.engines.models
    import ensemble.pipeline

    def boom(*args, **kwargs):
        raise AssertionError("a model was touched before the config was checked")

    monkeypatch.setattr(ensemble.pipeline, "build_engine", boom)
    monkeypatch.setattr(ensemble.engines.models, "resolve_model", boom)


def items_file(path: Path, n: int = 2) -> Path:
    path.write_text("".join(json.dumps({"id": f"{path.stem}{i}", "question": "q?", "options": ["a", "b"],
                                        "answer": "A"}) + "\n" for i in range(n)))
    return path


def test_misspelled_method_fails_before_any_engine(tmp_path, no_model):
    from ensemble.pipeline import run

    dev, test = items_file(tmp_path / "dev.jsonl"), items_file(tmp_path / "test.jsonl")
    cfg = write(tmp_path, f"out: {tmp_path / 'out'}\ndata: {{dev: {dev}, test: {test}}}\n"
                          "voters: {v1: nowhere}\nrun: {methods: [majority, stak]}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: field 'run.methods' is 'stak'; .*Did you mean 'stack'\?"):
        run(load_config(cfg))
    assert not (tmp_path / "out").exists()


def test_missing_split_file_fails_in_preflight(tmp_path, no_model):
    from ensemble.pipeline import run

    test = items_file(tmp_path / "test.jsonl")
    cfg = load_config(write(tmp_path, f"out: {tmp_path / 'out'}\ndata: {{dev: {tmp_path / 'dve.jsonl'}, "
                                      f"test: {test}}}\nrun: {{include_base: true}}\n"))
    with pytest.raises(ConfigError, match=r"bad.yaml: field 'data.dev' is '.*dve.jsonl'; no such file: fix the "
                                          r"path, or remove dev from run.splits"):
        run(cfg)


def test_split_with_no_items_fails_before_any_model(tmp_path, no_model):
    from ensemble.pipeline import run

    dev, test = items_file(tmp_path / "dev.jsonl"), tmp_path / "test.jsonl"
    test.write_text(json.dumps({"id": "p1", "problem": "nothing asked", "questions": []}) + "\n")
    cfg = load_config(write(tmp_path, f"out: {tmp_path / 'out'}\ndata: {{dev: {dev}, test: {test}}}\n"
                                      "run: {include_base: true}\n"))
    with pytest.raises(ConfigError, match=r"bad.yaml: split 'test' read from '.*test.jsonl' has no items; put "
                                          r"items in the file, point data.test at another one"):
        run(cfg)


def test_training_config_run_is_checked_by_preflight(tmp_path, no_model):
    """A config with only data.train loads (for `vote train`); `vote run` on it fails first thing."""
    from ensemble.pipeline import run

    cfg = load_config(write(tmp_path, f"out: {tmp_path / 'out'}\ndata: {{train: {items_file(tmp_path / 'tr.jsonl')}}}\n"
                                      "run: {include_base: true}\n"))
    with pytest.raises(ConfigError, match=r"bad.yaml: field 'run.splits' is 'dev'; data.dev is not set"):
        run(cfg)


def test_manifest_weights_are_checked_before_any_model(tmp_path, no_model):
    """weights_from: manifest without an accuracy for every voter used to fail after all inference."""
    from ensemble.pipeline import run

    dev, test, out = items_file(tmp_path / "dev.jsonl"), items_file(tmp_path / "test.jsonl"), tmp_path / "out"
    text = (f"out: {out}\ndata: {{dev: {dev}, test: {test}}}\n"
            "run: {include_base: true, methods: [majority, weighted], weights_from: manifest}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: field 'run.weights_from' is 'manifest'; .*manifest.json: not "
                                          r"found; run `vote train CONFIG`.*, or use weights_from: dev"):
        run(load_config(write(tmp_path, text)))
    (out / "adapters" / "v1").mkdir(parents=True)
    (out / "adapters" / "v1" / "adapter_config.json").write_text("{}")
    (out / "manifest.json").write_text(json.dumps({"base_model": {}, "variants": {
        "v1": {"status": "done", "adapter": "adapters/v1", "heldout_accuracy": 0.6}}}))
    with pytest.raises(ConfigError, match=r"bad.yaml: field 'run.weights_from' is 'manifest'; .*manifest.json has "
                                          r"no held-out accuracy for voter\(s\) base: use weights_from: dev"):
        run(load_config(write(tmp_path, text)))


def test_train_preflight_before_the_model(tmp_path, monkeypatch):
    import ensemble.engines.models
    from ensemble.training import train_grid

    monkeypatch.setattr(ensemble.engines.models, "resolve_model",
                        lambda *a, **k: pytest.fail("the model was resolved before the data was checked"))
    cfg = load_config(write(tmp_path, f"out: {tmp_path / 'out'}\ndata: {{train: {tmp_path / 'trian.jsonl'}}}\n"))
    with pytest.raises(ConfigError, match=r"bad.yaml: field 'data.train' is '.*trian.jsonl'; no such file: fix the "
                                          r"path, or remove it to use data.benchmark"):
        train_grid(cfg)
    cfg = load_config(write(tmp_path, f"out: {tmp_path / 'out'}\n"))
    with pytest.raises(ConfigError, match=r"bad.yaml: field 'data.train' is empty; give a training file or set "
                                          r"data.benchmark"):
        train_grid(cfg)


# -- a config never does I/O ----------------------------------------------------------
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_pass_preflight_without_writing(tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)  # the shipped configs' out folders are relative
    cfg = load_config(path)
    preflight_run(cfg)
    assert list(tmp_path.iterdir()) == []


def test_loading_a_benchmark_config_writes_no_files(tmp_path, monkeypatch):
    from ensemble.config.loader import to_dict

    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "out: runs/x\ndata: {benchmark: {n_train: 5, n_dev: 2, n_test: 2}}\n")
    cfg = load_config(path)
    to_dict(cfg)
    assert cfg.data.benchmark is not None and cfg.data.benchmark.settings()["n_dev"] == 2
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bad.yaml"]
    assert not hasattr(cfg.data.benchmark, "files")  # generation lives with the callers now


# -- the static lists agree with the code they stand for ----------------------------
def test_engine_names_are_the_registered_engines():
    from ensemble.engines import openai, vllm  # noqa: F401
    from ensemble.engines.base import ENGINE_NAMES, ENGINES
    from ensemble.engines.hf import engine  # noqa: F401

    assert sorted(ENGINE_NAMES) == sorted(ENGINES.names())


def test_fitted_methods_are_the_ones_that_need_dev():
    """FITTED (checked at load) is exactly the set of methods that refuse dev=None."""
    from ensemble.predictions.rows import build_matrix
    from ensemble.voting import METHODS, vote

    rows = [{"item": f"i{i}", "voter": v, "sample": 0, "answer": "AB"[(i + j) % 2], "confidence": 0.8,
             "probs": {"A": 0.7, "B": 0.3} if (i + j) % 2 == 0 else {"A": 0.3, "B": 0.7}}
            for i in range(6) for j, v in enumerate(("v1", "v2", "v3"))]
    m = build_matrix(rows, gold={f"i{i}": "A" for i in range(6)}, options={f"i{i}": ["A", "B"] for i in range(6)})
    needs_dev = set()
    for name in METHODS.names():
        try:
            vote(m, name)
        except EnsembleError as exc:
            assert "dev=None" in str(exc), (name, exc)
            needs_dev.add(name)
    assert needs_dev == {n for n in METHODS.names() if fits_on_dev(n, {}, "dev")} == set(FITTED)
    vote(m, "weighted", weights=[1.0, 1.0, 1.0])  # given weights: no dev needed
    assert not fits_on_dev("weighted", {"weights": [1, 1, 1]}, "dev")
    assert not fits_on_dev("weighted", {}, "manifest")
    assert np.isfinite(vote(m, "stack", dev=np.ones(6, bool)).scores).all()
