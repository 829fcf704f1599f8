"""`vote quickstart` on the tiny model: the shipped config's voter kind, and the equal-budget
single LoRA printed beside the ensemble from the runs' own report data."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ensemble.cli.jobs import find_config
from ensemble.config.loader import ConfigError, load_config
from ensemble.errors import EnsembleError
from ensemble.isolate import IN_PROCESS_ENV
from ensemble.quickstart import RESULT_FILE, baseline_config
from ensemble.training.grid import expand_grid


def tiny_overrides(tmp_path: Path, tiny_model: Path) -> list[str]:
    return [f"model={tiny_model}", f"out={tmp_path / 'qs'}", "data.benchmark.n_train=40",
            "data.benchmark.n_dev=10", "data.benchmark.n_test=14", "train.max_steps=2", "train.batch_size=4",
            "train.dtype=float32", "train.heldout_fraction=0.2", "run.dtype=float32", "run.batch_size=8",
            f"run.submission={tmp_path / 'qs' / 'submission.jsonl'}", "baseline.max_steps=3"]


def test_shipped_config_trains_alora_voters_on_shared_batches_and_has_a_baseline():
    cfg = load_config(find_config("quickstart.yaml"))
    assert cfg.train.shared_batches
    voters = expand_grid(cfg.train.grid, cfg.prompt)
    assert {v.flavour for v in voters} == {"alora"}
    # online bagging on every training row (chosen on dev over disjoint shards)
    assert {(v.split, v.bagging) for v in voters} == {("full", "poisson")} and len(voters) == 5
    single = baseline_config(cfg)
    (variant,) = expand_grid(single.train.grid, single.prompt)
    assert (variant.flavour, variant.split, variant.name) == ("lora", "full", cfg.baseline.name)
    assert single.train.max_steps == cfg.baseline.max_steps and not single.train.shared_batches
    assert single.out == str(Path(cfg.out) / "baseline") and single.run.splits == ("test",)
    assert single.run.submission is None and single.voters == {}


def test_baseline_max_batch_tokens_overrides_the_train_sections_or_inherits_it():
    cfg = load_config(find_config("quickstart.yaml"))
    assert (cfg.train.max_batch_tokens, baseline_config(cfg).train.max_batch_tokens) == (128, 384)
    inherited = load_config(find_config("quickstart.yaml"), ["baseline.max_batch_tokens=null"])
    assert baseline_config(inherited).train.max_batch_tokens == 128
    with pytest.raises(ConfigError, match=r"field 'baseline.max_batch_tokens' is -1; use 0 \(whole batches\), "
                                          r"a token count such as 384, or leave it out"):
        load_config(find_config("quickstart.yaml"), ["baseline.max_batch_tokens=-1"])


def test_baseline_config_needs_the_section(tmp_path, tiny_model):
    cfg = load_config(find_config("quickstart.yaml"), ["baseline=null"])
    with pytest.raises(EnsembleError, match="no 'baseline' section; add baseline: {max_steps: N}"):
        baseline_config(cfg)


def _row_latency(out: Path, voters: set[str]) -> float:
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return sum(r["latency_s"] for r in rows if r["voter"] in voters)


def test_quickstart_prints_the_equal_budget_comparison_from_report_data(tmp_path, tiny_model):
    """Run as `vote quickstart` is: its own process, each model phase in a child (ensemble.isolate)."""
    args = ["quickstart", "--config", str(find_config("quickstart.yaml"))]
    for o in tiny_overrides(tmp_path, tiny_model):
        args += ["--set", o]
    script = ("import sys\nfrom ensemble.cli.app import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
              "    print('torch imported by the parent:', 'torch' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != IN_PROCESS_ENV}
    res = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    # The parent stays small: every phase that loads a model ran in a child.
    assert "torch imported by the parent: False" in res.stdout
    out = tmp_path / "qs"
    cmp = json.loads((out / RESULT_FILE).read_text())
    ens_report = json.loads((out / "report.json").read_text())
    one_report = json.loads((out / "baseline" / "report.json").read_text())
    ens, one, test = cmp["ensemble"], cmp["single"], cmp["mcnemar"]

    # The ensemble's numbers are its dev-chosen method's row; the single LoRA's its voter row.
    method = ens_report["selected_on_dev"]["method"]
    assert ens["method"] == method and ens["n_voters"] == 5
    assert (ens["accuracy"], ens["ci"]) == (ens_report["methods"][method]["accuracy"],
                                            ens_report["methods"][method]["accuracy_ci"])
    assert (one["accuracy"], one["ci"]) == (one_report["voters"]["single-lora"]["accuracy"],
                                            one_report["voters"]["single-lora"]["accuracy_ci"])
    assert cmp["n_items"] == ens_report["n_eval_items"] == one_report["n_eval_items"] >= 14  # test items
    # The paired counts agree with the two accuracies on the same items.
    assert np.isclose(test["delta"], ens["accuracy"] - one["accuracy"])
    assert np.isclose(test["delta"], (test["ensemble_only"] - test["single_only"]) / cmp["n_items"])
    # Seconds: the manifests' training time and the stored rows' scoring time.
    manifest = json.loads((out / "manifest.json").read_text())["variants"]
    assert ens["seconds"]["train"] == round(5 * max(v["seconds"] for v in manifest.values()), 1)
    assert ens["seconds"]["score"] == round(_row_latency(out, set(manifest)), 1)
    single_manifest = json.loads((out / "baseline" / "manifest.json").read_text())["variants"]
    assert one["seconds"]["train"] == round(single_manifest["single-lora"]["seconds"], 1)
    single_latency = _row_latency(out / "baseline", {"single-lora"})
    assert one["seconds"]["score"] == round(single_latency, 1) and single_latency > 0
    assert single_manifest["single-lora"]["n_steps"] == one["max_steps"] == 3

    # What was printed is those numbers.
    text = " ".join(re.sub("[│┃]", " ", res.stdout).split())  # table cells, box lines dropped
    assert "5/5 the same budget spent on one LoRA" in text
    assert f"5 voters, {method} (chosen on dev) {ens['accuracy']:.3f} [{ens['ci'][0]:.3f}, {ens['ci'][1]:.3f}]" in text
    assert f"single LoRA: single-lora, 3 steps {one['accuracy']:.3f} [{one['ci'][0]:.3f}, {one['ci'][1]:.3f}]" in text
    assert f"{ens['seconds']['train']:.0f} {ens['seconds']['score']:.0f} {ens['seconds']['total']:.0f}" in text
    assert f"McNemar exact p = {test['p_value']:.3g}" in text


def test_study_config_trains_the_quickstarts_voters():
    """experiments/study.py --reuse runs/quickstart skips training only if the recipes match."""
    study, quick = load_config(find_config("study.yaml")), load_config(find_config("quickstart.yaml"))
    assert study.train == quick.train and study.prompt == quick.prompt
    assert study.data.benchmark.n_train == quick.data.benchmark.n_train
    assert study.data.benchmark.seed == quick.data.benchmark.seed
