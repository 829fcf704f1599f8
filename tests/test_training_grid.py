"""Variant grid expansion, the split maths (no model needed), and whole runs of
``train_grid`` on the tiny model: manifest, resume after SIGKILL, stale variants."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from conftest_training import killed_at_marker

from ensemble.config.loader import load_config
from ensemble.config.schema import GridConfig, VariantConfig
from ensemble.data.items import Item
from ensemble.errors import EnsembleError
from ensemble.training.grid import Variant, expand_grid, parse_split
from ensemble.training.splits import SPLITS, problem_groups, problem_key, split_indices


def names(variants: list[Variant]) -> list[str]:
    return [v.name for v in variants]


# --- grid ----------------------------------------------------------------------------------


def test_product_seeds_ranks_kfold_spelled_out():
    grid = GridConfig(seeds=(0, 1), ranks=(4, 8), splits=("kfold:3",))
    variants = expand_grid(grid, "mc")
    assert names(variants) == [
        "s0-r4-attn-kfold3.0-lora", "s0-r4-attn-kfold3.1-lora", "s0-r4-attn-kfold3.2-lora",
        "s0-r8-attn-kfold3.0-lora", "s0-r8-attn-kfold3.1-lora", "s0-r8-attn-kfold3.2-lora",
        "s1-r4-attn-kfold3.0-lora", "s1-r4-attn-kfold3.1-lora", "s1-r4-attn-kfold3.2-lora",
        "s1-r8-attn-kfold3.0-lora", "s1-r8-attn-kfold3.1-lora", "s1-r8-attn-kfold3.2-lora",
    ]
    v = variants[5]
    assert (v.seed, v.rank, v.alpha, v.split, v.split_param, v.split_index, v.flavour, v.prompt) == \
        (0, 8, 16.0, "kfold", 3, 2, "lora", None)
    assert v.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert v.split_spec == "kfold:3:2"


def test_alpha_rule_ratio_or_fixed():
    assert [v.alpha for v in expand_grid(GridConfig(ranks=(4, 8), alpha_ratio=1.5))] == [6.0, 12.0]
    assert [v.alpha for v in expand_grid(GridConfig(ranks=(4, 8), alpha=16))] == [16.0, 16.0]


def test_every_factor_names_and_order():
    grid = GridConfig(target_modules=(("q_proj", "v_proj"), ("gate_proj", "up_proj", "down_proj")),
                      splits=("full", "bootstrap", "subsample:0.5", "shard:2"),
                      flavours=("lora", "dora"), prompts=("mc", "mc_zh"))
    variants = expand_grid(grid, "mc")
    assert len(variants) == 2 * 5 * 2 * 2
    assert names(variants)[:6] == ["s0-r8-qv-full-lora-mc", "s0-r8-qv-full-lora-mc_zh", "s0-r8-qv-full-dora-mc",
                                   "s0-r8-qv-full-dora-mc_zh", "s0-r8-qv-boot-lora-mc", "s0-r8-qv-boot-lora-mc_zh"]
    assert "s0-r8-mlp-sub0.5-dora-mc_zh" in names(variants)
    assert "s0-r8-mlp-shard2.1-lora-mc" in names(variants)
    # the config's own prompt is stored as None; another template by name
    assert [v.prompt for v in variants[:2]] == [None, "mc_zh"]


def test_explicit_variants_alone_unless_the_product_is_set():
    only = expand_grid(GridConfig(variants=(VariantConfig(name="a"), VariantConfig(name="b", seed=1))), "mc")
    assert names(only) == ["a", "b"]  # no default product variant sneaks in
    both = expand_grid(GridConfig(seeds=(0,), variants=(VariantConfig(name="a"),)), "mc")
    assert names(both) == ["s0-r8-attn-full-lora", "a"]


def test_explicit_variants_after_product():
    grid = GridConfig(seeds=(0,), variants=(
        VariantConfig(name="mine", rank=16, split="bootstrap", flavour="rslora"),
        VariantConfig(seed=3, target_modules=("q_proj", "v_proj")),
        VariantConfig(name="kf", split="kfold:2", alpha=5.0),
        VariantConfig(name="one", split="shard:4:3"),
    ))
    variants = expand_grid(grid, "mc")
    assert names(variants) == ["s0-r8-attn-full-lora", "mine", "s3-r8-qv-full-lora", "kf.0", "kf.1", "one"]
    mine = variants[1]
    assert (mine.rank, mine.alpha, mine.split, mine.flavour) == (16, 32.0, "bootstrap", "rslora")
    assert [(v.split_index, v.alpha) for v in variants[3:5]] == [(0, 5.0), (1, 5.0)]
    assert (variants[5].split, variants[5].split_param, variants[5].split_index) == ("shard", 4, 3)


def test_max_variants_keeps_the_first():
    grid = GridConfig(seeds=(0, 1, 2), splits=("kfold:3",), max_variants=4,
                      variants=(VariantConfig(name="late"),))
    assert names(expand_grid(grid)) == ["s0-r8-attn-kfold3.0-lora", "s0-r8-attn-kfold3.1-lora",
                                        "s0-r8-attn-kfold3.2-lora", "s1-r8-attn-kfold3.0-lora"]


def test_duplicate_names_are_an_error():
    with pytest.raises(EnsembleError, match="two variants are named 's0-r8-attn-full-lora'"):
        expand_grid(GridConfig(seeds=(0, 0)))
    with pytest.raises(EnsembleError, match="two variants are named 's0-r8-attn-full-lora'; give the explicit"):
        expand_grid(GridConfig(ranks=(8,), variants=(VariantConfig(),)))  # the same settings as the product's one
    with pytest.raises(EnsembleError, match="two variants are named 'a'"):
        expand_grid(GridConfig(variants=(VariantConfig(name="a"), VariantConfig(name="a", seed=1))))


def test_bad_names_and_splits():
    with pytest.raises(EnsembleError, match=r"variant name 'x/y' cannot be a folder name"):
        expand_grid(GridConfig(variants=(VariantConfig(name="x/y"),)))
    with pytest.raises(EnsembleError, match=r"field 'train.grid.variants\[0\].split' is 'kfold:1'; use full"):
        expand_grid(GridConfig(variants=(VariantConfig(split="kfold:1"),)))
    for bad in ("kfold:x", "kfold", "kfold:3:3", "subsample:1.5", "subsample", "bootstrap:2", "full:1"):
        with pytest.raises(EnsembleError, match=f"field 'train.grid.splits' is '{bad}'; use full, kfold:K"):
            parse_split(bad)
    assert parse_split("subsample:0.25") == ("subsample", 0.25, None)


def test_settings_hash_is_stable_and_sensitive():
    a, b = expand_grid(GridConfig(ranks=(4, 8)))
    assert a.settings_hash() == expand_grid(GridConfig(ranks=(4, 8)))[0].settings_hash()
    assert a.settings_hash() != b.settings_hash()
    assert a.settings_hash({"recipe": {"lr": 1}}) != a.settings_hash({"recipe": {"lr": 2}})
    # a literal: changing the hash definition would silently retrain every finished run
    v = expand_grid(GridConfig(splits=("kfold:2",)))[0]
    assert v.settings_hash() == "e2806b5af729edf2"
    assert "name" not in v.settings()


# --- splits ----------------------------------------------------------------------------------


def variant(split: str, seed: int = 0, index: int = 0) -> Variant:
    kind, param, given = parse_split(split)
    return Variant("v", seed, 8, 16.0, ("q_proj",), kind, param, index if given is None else given, "lora", None)


def test_registered_split_kinds():
    assert sorted(SPLITS.names()) == ["bootstrap", "full", "kfold", "shard", "subsample"]


def test_exact_small_kfold():
    # seeded permutation of the 4 problems, cut in 2 folds; rows 0,1 and 3,4 are one problem each
    groups = [0, 0, 1, 2, 2, 3]
    train, held = split_indices(variant("kfold:2", index=0), 6, groups=groups)
    assert (train.tolist(), held.tolist()) == ([2, 5], [0, 1, 3, 4])
    train, held = split_indices(variant("kfold:2", index=1), 6, groups=groups)
    assert (train.tolist(), held.tolist()) == ([0, 1, 3, 4], [2, 5])


def test_kfold_folds_partition_the_data():
    n, k = 10, 3
    helds = []
    for i in range(k):
        train, held = split_indices(variant(f"kfold:{k}", index=i), n)
        assert sorted(train.tolist() + held.tolist()) == list(range(n))  # train = all but fold i
        assert not set(train) & set(held)
        helds.append(held)
    assert sorted(len(h) for h in helds) == [3, 3, 4]  # near-equal folds
    assert sorted(np.concatenate(helds).tolist()) == list(range(n))  # folds partition the rows


def test_full_holds_out_a_seeded_slice():
    train, held = split_indices(variant("full"), 20, heldout_fraction=0.1)
    assert len(held) == 2 and sorted(train.tolist() + held.tolist()) == list(range(20))
    again = split_indices(variant("full"), 20, heldout_fraction=0.1)
    assert held.tolist() == again[1].tolist()
    others = {tuple(split_indices(variant("full", seed=s), 20)[1]) for s in range(5)}
    assert len(others) > 1  # the seed moves the slice


def test_bootstrap_reproducible_with_out_of_bag_heldout():
    n = 30
    train, held = split_indices(variant("bootstrap", seed=7), n)
    assert len(train) == n and len(set(train.tolist())) < n  # draws with replacement repeat rows
    assert held.tolist() == sorted(set(range(n)) - set(train.tolist()))  # out-of-bag
    assert train.tolist() == split_indices(variant("bootstrap", seed=7), n)[0].tolist()
    assert train.tolist() != split_indices(variant("bootstrap", seed=8), n)[0].tolist()


def test_shards_are_disjoint_and_cover():
    n, k = 21, 4
    trains = []
    for i in range(k):
        train, held = split_indices(variant(f"shard:{k}", index=i), n, heldout_fraction=0.2)
        assert not set(train) & set(held)
        assert len(held) == round(0.2 * n)
        trains.append(train)
    flat = np.concatenate(trains).tolist()
    assert sorted(flat) == list(range(n))  # disjoint (no repeats) and covering


def test_subsample_fraction_without_replacement():
    train, held = split_indices(variant("subsample:0.25"), 40)
    assert len(train) == 10 and len(set(train.tolist())) == 10
    assert sorted(train.tolist() + held.tolist()) == list(range(40))


@pytest.mark.parametrize("split", ["full", "kfold:3", "bootstrap", "shard:3", "subsample:0.5"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_groups_never_straddle(split: str, seed: int):
    # 12 problems with 1..3 sub-questions each, interleaved in the file
    groups = np.array([g for g in range(12) for _ in range(1 + g % 3)])
    groups = groups[np.random.default_rng(99).permutation(len(groups))]
    for index in range(3 if ":" in split and split.startswith(("kfold", "shard")) else 1):
        train, held = split_indices(variant(split, seed, index), len(groups), groups=groups)
        assert not set(groups[train]) & set(groups[held])
        for g in set(groups[train]):  # a problem in training brings all its sub-questions
            assert set(np.flatnonzero(groups == g)) <= set(train.tolist())


def test_too_few_problems():
    with pytest.raises(EnsembleError, match="split kfold:5 needs at least 5 training problems, there are 3"):
        split_indices(variant("kfold:5"), 3)
    with pytest.raises(EnsembleError, match="split shard:4 needs at least 4 training problems, there are 2"):
        split_indices(variant("shard:4"), 4, groups=[0, 0, 1, 1])
    with pytest.raises(EnsembleError, match=r"variant 'v': 1 training problem\(s\); a split needs at least 2"):
        split_indices(variant("full"), 3, groups=[5, 5, 5])


def test_problem_keys_of_nested_items():
    rows = [Item("p1#1", "q", ("a", "b"), "A", "ctx", {"problem_id": "p1"}),
            Item("p1#2", "q", ("a", "b"), "B", "ctx", {"problem_id": "p1"}),
            Item("solo", "q", ("a", "b"), "A")]
    assert [problem_key(r) for r in rows] == ["p1", "p1", "solo"]
    assert problem_groups([problem_key(r) for r in rows]).tolist() == [0, 0, 1]


# --- train_grid: the whole run, resume after a kill --------------------------------------------

NAMES = ["s0-r4-attn-full-lora", "s1-r4-attn-full-lora", "boot"]
# The killed run stops inside the second variant: after its 2nd step it sleeps until killed.
KILLED_RUN = """
import sys, time, pathlib
from ensemble.config.loader import load_config
from ensemble.training import train_grid
def progress(event, **info):
    if event == "step" and info["name"] == "s1-r4-attn-full-lora" and info["step"] == 2:
        pathlib.Path(sys.argv[2]).write_text("inside variant 2")
        time.sleep(600)
train_grid(load_config(sys.argv[1]), progress=progress)
"""


def write_problems(path: Path, n: int) -> Path:
    """Nested rows, two "pick yes" sub-questions per problem."""
    rng = random.Random(0)
    rows = []
    for p in range(n):
        qs = []
        for k in range(2):
            options = ["yes", "no"] if rng.random() < 0.5 else ["no", "yes"]
            qs.append({"question": f"Problem {p}.{k}: pick one", "options": options,
                       "answer": "AB"[options.index("yes")]})
        rows.append({"id": f"p{p}", "problem": f"Story {p}.", "questions": qs})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    from ensemble.testing import make_tiny_model

    root = tmp_path_factory.mktemp("grid")
    return {"root": root, "base": make_tiny_model(root / "base"), "data": write_problems(root / "train.jsonl", 10)}


def config_file(setup: dict[str, Path], out: str, *, seeds: str = "[0, 1]", lr: float = 0.01,
                model: Path | None = None, extra: str = "") -> Path:
    path = setup["root"] / f"{out}-{seeds}-{lr}.yaml".replace(" ", "")
    path.write_text(f"""
model: {model or setup['base']}
out: {setup['root'] / out}
prompt: mc
data: {{train: {setup['data']}}}
train:
  max_steps: 3
  batch_size: 4
  learning_rate: {lr}
  dtype: float32
  lora_dropout: 0.0
  heldout_fraction: 0.2
  grid:
    seeds: {seeds}
    ranks: [4]
    variants: [{{name: boot, rank: 4, split: bootstrap}}]
{extra}""")
    return path


def run_grid(path: Path) -> tuple[object, list[tuple[str, str]]]:
    from ensemble.training import train_grid

    events: list[tuple[str, str]] = []
    manifest = train_grid(load_config(path), progress=lambda e, **i: events.append((e, i.get("name", ""))))
    return manifest, [(e, n) for e, n in events if e in ("variant", "variant_skipped")]


def weights(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(adapter / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(setup):
    manifest, events = run_grid(config_file(setup, "whole"))
    return manifest, events


def test_grid_trains_every_variant_into_the_manifest(setup, uninterrupted):
    import torch

    from ensemble.training import heldout_accuracies, load_manifest

    manifest, events = uninterrupted
    assert events == [("variant", n) for n in NAMES]
    out = setup["root"] / "whole"
    on_disk = load_manifest(out)
    assert on_disk.to_json() == manifest.to_json()
    assert list(on_disk.variants) == NAMES
    assert on_disk.base_model["path"] == str(setup["base"].resolve())
    assert on_disk.base_model["architecture"] == "LlamaForCausalLM"
    entry = on_disk.variants["s0-r4-attn-full-lora"]
    assert set(entry) == {"settings", "settings_hash", "status", "train_items_hash", "heldout_items_hash",
                          "n_train", "n_heldout", "train_ids", "heldout_ids", "loss_curve", "eval_curve",
                          "heldout_accuracy", "heldout_loss", "n_steps", "seconds", "adapter"}
    assert (entry["status"], entry["adapter"], entry["n_train"], entry["n_heldout"]) == \
        ("done", "adapters/s0-r4-attn-full-lora", 16, 4)  # 10 problems x 2, 2 problems held out
    assert [p[0] for p in entry["loss_curve"]] == [1, 2, 3]
    assert entry["settings"]["rank"] == 4 and entry["settings"]["recipe"]["learning_rate"] == 0.01
    problem = lambda i: i.split("#")[0]
    for e in on_disk.variants.values():  # whole problems on each side
        assert not {problem(i) for i in e["train_ids"]} & {problem(i) for i in e["heldout_ids"]}
    assert set(heldout_accuracies(on_disk)) == set(NAMES)
    ws = [weights(out / "adapters" / n) for n in NAMES]
    for a, b in [(0, 1), (0, 2), (1, 2)]:  # the three adapters differ
        assert not all(torch.allclose(ws[a][k], ws[b][k]) for k in ws[a])


def test_kill_and_resume(setup, uninterrupted):
    import torch

    from ensemble.training import load_manifest

    cfg = config_file(setup, "killed")
    out = setup["root"] / "killed"
    with killed_at_marker(KILLED_RUN, cfg, setup["root"] / "killed.marker", "variant 2"):
        assert load_manifest(out).done().keys() == {NAMES[0]}  # variant 1 saved and recorded
    first = out / "adapters" / NAMES[0] / "adapter_model.safetensors"
    mtime = first.stat().st_mtime_ns
    (out / "adapters" / ".tmp-boot").mkdir()  # as if killed while saving "boot"
    (out / "adapters" / ".tmp-boot" / "adapter_config.json").write_text("{")

    manifest, events = run_grid(cfg)
    assert events == [("variant_skipped", NAMES[0]), ("variant", NAMES[1]), ("variant", NAMES[2])]
    assert first.stat().st_mtime_ns == mtime  # the finished variant was not retrained
    assert sorted(p.name for p in (out / "adapters").iterdir()) == sorted(NAMES)  # .tmp-boot is gone
    whole = uninterrupted[0]
    assert list(manifest.variants) == list(whole.variants)
    for name in NAMES:
        got, want = manifest.variants[name], whole.variants[name]
        for key in ("settings", "settings_hash", "status", "train_ids", "heldout_ids", "loss_curve"):
            assert got[key] == want[key], (name, key)
        w1, w2 = weights(out / "adapters" / name), weights(setup["root"] / "whole" / "adapters" / name)
        assert all(torch.equal(w1[k], w2[k]) for k in w1)  # bit-identical to the uninterrupted run

    _, again = run_grid(cfg)
    assert again == [("variant_skipped", n) for n in NAMES]


def test_missing_adapter_folder_is_retrained(setup, uninterrupted):
    import shutil

    shutil.copytree(setup["root"] / "whole", setup["root"] / "gone")
    shutil.rmtree(setup["root"] / "gone" / "adapters" / NAMES[1])
    _, events = run_grid(config_file(setup, "gone"))
    assert events == [("variant_skipped", NAMES[0]), ("variant", NAMES[1]), ("variant_skipped", NAMES[2])]


def test_changed_settings_retrain_and_dropped_variants_go_stale(setup, uninterrupted):
    import shutil

    from ensemble.training import heldout_accuracies, load_manifest

    shutil.copytree(setup["root"] / "whole", setup["root"] / "stale")
    manifest, events = run_grid(config_file(setup, "stale", seeds="[0]", lr=0.02))
    assert events == [("variant", NAMES[0]), ("variant", NAMES[2])]  # lr changed: both retrained
    assert {n: e["status"] for n, e in manifest.variants.items()} == \
        {NAMES[0]: "done", NAMES[2]: "done", NAMES[1]: "stale"}
    assert set(heldout_accuracies(load_manifest(setup["root"] / "stale"))) == {NAMES[0], NAMES[2]}


def test_stale_variant_comes_back_without_training(setup, uninterrupted):
    import shutil

    shutil.copytree(setup["root"] / "whole", setup["root"] / "back")
    run_grid(config_file(setup, "back", seeds="[0]"))
    manifest, events = run_grid(config_file(setup, "back"))
    assert events == [("variant_skipped", n) for n in NAMES]
    assert all(e["status"] == "done" for e in manifest.variants.values())


def test_other_base_model_needs_another_out(setup, uninterrupted):
    from ensemble.testing import make_tiny_model

    other = make_tiny_model(setup["root"] / "wide", hidden_size=64)
    with pytest.raises(EnsembleError, match=r"manifest.json: trained for base model .*; use another out folder"):
        run_grid(config_file(setup, "whole", model=other))


def test_data_limit_and_missing_train_file(setup):
    from ensemble.training import load_training_rows

    cfg = load_config(config_file(setup, "limit", extra="data: {}"), [f"data.train={setup['data']}", "data.limit=3"])
    rows = load_training_rows(cfg, setup["root"] / "limit")
    assert [r.id for r in rows] == ["p0#1", "p0#2", "p1#1", "p1#2", "p2#1", "p2#2"]  # 3 problems
    cfg = load_config(config_file(setup, "limit"), ["data.train=null"])
    with pytest.raises(EnsembleError, match=r"field 'data.train' is empty; give a training file"):
        load_training_rows(cfg, setup["root"] / "limit")
    cfg = load_config(config_file(setup, "limit"), ["data.train=nowhere.jsonl"])
    with pytest.raises(EnsembleError, match=r"field 'data.train' is 'nowhere.jsonl': no such file"):
        load_training_rows(cfg, setup["root"] / "limit")


def test_benchmark_is_generated_into_out_data(setup):
    from ensemble.training import load_training_rows

    cfg = load_config(config_file(setup, "bench"), ["data.train=null", "data.benchmark={n_train: 4, n_dev: 1, n_test: 1}"])
    rows = load_training_rows(cfg, setup["root"] / "bench")
    assert (setup["root"] / "bench" / "data" / "train.jsonl").is_file()
    assert len({r.meta["problem_id"] for r in rows}) == 4
