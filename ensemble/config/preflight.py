"""Pre-flight: the checks that need the filesystem, run first thing by `vote run` / `vote train`.

Loading a config resolves every name but touches no file (ensemble.config.checks). These
run at the top of ``ensemble.pipeline.run`` and ``ensemble.training.train_grid``, before a
model is resolved, loaded or downloaded: each split to read has data and its file
exists, fitted methods have the dev split (or, for weighted with weights_from: manifest,
a held-out accuracy for every voter), and a file that reads as zero items fails
when it is read (``check_items``) rather than being skipped.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ensemble.config import checks
from ensemble.config.loader import ConfigError
from ensemble.config.schema import Config


def _source(cfg: Config) -> str:
    return cfg.source or "config"


def _check_file(cfg: Config, field: str, path: str, fix: str) -> None:
    if not Path(path).exists():
        raise ConfigError(f"{_source(cfg)}: field '{field}' is {path!r}; no such file: {fix}")


def preflight_run(cfg: Config) -> None:
    """`vote run`: run.splits all have data, their files exist, fitted methods have dev."""
    try:
        checks.check_run_data(cfg.data, cfg.run)
    except ConfigError as exc:
        raise ConfigError(f"{_source(cfg)}: {exc}") from None
    for split in cfg.run.splits:
        path = getattr(cfg.data, split)
        if path is not None:
            _check_file(cfg, f"data.{split}", path, f"fix the path, or remove {split} from run.splits")
    _check_manifest_weights(cfg)


def _check_manifest_weights(cfg: Config) -> None:
    """weights_from: manifest needs a held-out accuracy for every voter (else the run
    would fail only after every voter had answered every item)."""
    run = cfg.run
    if ("weighted" not in run.methods or run.weights_from != "manifest"
            or "weights" in run.method_options.get("weighted", {})):
        return
    from ensemble.errors import EnsembleError
    from ensemble.pipeline import resolve_voters
    from ensemble.training.manifest import MANIFEST, heldout_accuracies, load_manifest

    field = f"{_source(cfg)}: field 'run.weights_from' is 'manifest'"
    try:
        accuracy = heldout_accuracies(load_manifest(cfg.out))
    except EnsembleError as exc:
        raise ConfigError(f"{field}; {exc}, or use weights_from: dev") from None
    missing = [v for v in resolve_voters(cfg) if v not in accuracy]
    if missing:
        raise ConfigError(f"{field}; {Path(cfg.out) / MANIFEST} has no held-out accuracy for voter(s) "
                          f"{', '.join(missing)}: use weights_from: dev, or give weighted its weights in "
                          "run.method_options.weighted.weights")


def preflight_train(cfg: Config) -> None:
    """`vote train`: a training file (or the benchmark to generate one), and it exists."""
    if cfg.data.train is None and cfg.data.benchmark is None:
        raise ConfigError(f"{_source(cfg)}: field 'data.train' is empty; give a training file "
                          "or set data.benchmark to generate one")
    if cfg.data.train is not None:
        _check_file(cfg, "data.train", cfg.data.train, "fix the path, or remove it to use data.benchmark")


def check_items(cfg: Config, split: str, path: str | Path, items: Sequence[Any]) -> None:
    """A configured split whose file reads as zero items is an error, not a skipped split."""
    if not items:
        limit = f" (after data.limit: {cfg.data.limit})" if cfg.data.limit else ""
        raise ConfigError(f"{_source(cfg)}: split '{split}' read from {str(path)!r} has no items{limit}; "
                          f"put items in the file, point data.{split} at another one, or remove "
                          f"{split} from run.splits")
