"""The data splits a config names (dev / test / train), read into items: the pipeline's first step.

A split asked for but not given is an error, never skipped; `data.limit` keeps whole problems.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ensemble.config.schema import Config
from ensemble.data.items import Item
from ensemble.errors import EnsembleError


def load_split_items(cfg: Config, splits: Sequence[str]) -> dict[str, list[Item]]:
    """Items of each requested split; generates the bundled benchmark when configured."""
    from ensemble.config.preflight import check_items
    from ensemble.data.formats import read_items

    paths = data_paths(cfg)
    out: dict[str, list[Item]] = {}
    for split in splits:
        path = paths.get(split)
        if path is None:  # a split asked for but not given is an error, never skipped
            raise EnsembleError(f"{cfg.source or 'config'}: run.splits asks for '{split}' but data.{split} is "
                                f"not set; set data.{split} (or data.benchmark), or drop '{split}' from run.splits")
        items = read_items(path, format=cfg.data.format, columns=cfg.data.columns)
        if cfg.data.limit:
            keep = list(dict.fromkeys(_problem_id(it) for it in items))[: cfg.data.limit]
            items = [it for it in items if _problem_id(it) in set(keep)]
        check_items(cfg, split, path, items)
        out[split] = items
    if not out:
        raise EnsembleError(f"{cfg.source or 'config'}: run.splits is empty; list the splits to answer, "
                            "e.g. run.splits: [dev, test]")
    return out


def data_paths(cfg: Config) -> dict[str, Path]:
    paths = {k: Path(v) for k in ("train", "dev", "test") if (v := getattr(cfg.data, k))}
    if cfg.data.benchmark is not None:
        from ensemble.data.benchmark import ensure_benchmark

        bench = ensure_benchmark(Path(cfg.out) / "data", **cfg.data.benchmark.settings())
        for split in ("train", "dev", "test"):
            paths.setdefault(split, bench[split])
    return paths


def _problem_id(item: Item) -> str:
    return str(item.meta.get("problem_id", item.id))
