"""The resumable predictions store: an append-only JSONL file plus a settings header.

Crash safety without a database: every row is one JSON line, appended and fsync'ed
per batch. A process killed mid-write (even ``kill -9``) leaves at most one partial
last line; ``PredictionStore.open`` cuts it off, so a rerun sees exactly the rows
that were fully written, recomputes only what is missing, and never duplicates a
(item, voter, sample) key. ``<file>.meta.json`` records the settings the rows were
made with: resuming with different settings is refused instead of mixing results.
It also records a fingerprint per voter (its adapter's files): a voter whose adapter
changed since its rows were written (retrained under the same name) is refused too,
while new voters simply join.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ensemble.errors import EnsembleError
from ensemble.io import atomic_write_text
from ensemble.predictions.rows import Key, Row

VOTERS_KEY = "voter_fingerprints"


def fingerprint(adapter: str | Path | None) -> str:
    """What a voter's answers depend on besides the run settings: its adapter's files
    (sha256 of the config and the weights), or "base" for the plain base model."""
    if adapter is None:
        return "base"
    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        f = Path(adapter) / name
        if f.is_file():
            h.update(name.encode() + b"\0")
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


class PredictionStore:
    def __init__(self, path: Path, rows: list[Row], n_dropped: int) -> None:
        self.path = path
        self.rows = rows
        self.keys: set[Key] = {(r["item"], r["voter"], int(r.get("sample", 0))) for r in rows}
        self.n_dropped_partial = n_dropped  # partial lines cut off at open (a killed writer)

    @classmethod
    def open(cls, path: str | Path, settings: Mapping[str, Any], *, restart: bool = False,
             voters: Mapping[str, str] | None = None) -> PredictionStore:
        """Open (or create) the store; refuse if it was made with other settings, or if a
        voter in ``voters`` (name -> fingerprint) has stored rows made by another version."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta_path = path.with_name(path.name + ".meta.json")
        if restart:
            path.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
        settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
        old_voters: dict[str, str] = {}
        if meta_path.exists() and path.exists():
            old = json.loads(meta_path.read_text(encoding="utf-8"))
            old_voters = old.pop(VOTERS_KEY, {})
            diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
            if diff:
                k = diff[0]
                raise EnsembleError(
                    f"{path}: these predictions were made with other settings ({k}: {old.get(k)!r} -> "
                    f"{settings.get(k)!r}); use another `out` directory, or pass --restart to discard them")
        rows, dropped = _read_and_repair(path)
        stored = {r["voter"] for r in rows}
        for name, print_ in (voters or {}).items():
            if name in stored and name in old_voters and old_voters[name] != print_:
                raise EnsembleError(
                    f"{path}: voter '{name}' changed since its predictions were stored (its adapter files, or the "
                    "model its server reports, differ); pass --restart to recompute everything, or give the new "
                    "adapter another name")
        meta = {**settings, VOTERS_KEY: {**old_voters, **(voters or {})}}
        atomic_write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True))
        return cls(path, rows, dropped)

    def has(self, item: str, voter: str, sample: int = 0) -> bool:
        return (item, voter, sample) in self.keys

    def append(self, rows: Iterable[Row]) -> int:
        """Append rows whose key is new; flush + fsync before returning. Returns rows written."""
        fresh = []
        for row in rows:
            key = (row["item"], row["voter"], int(row.get("sample", 0)))
            if key not in self.keys:
                self.keys.add(key)
                fresh.append(row)
        if not fresh:
            return 0
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in fresh)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        self.rows.extend(fresh)
        return len(fresh)


def stored_rows(path: str | Path) -> list[Row]:
    """The complete rows of a store file, without opening it for writing: a trailing partial
    line (a killed writer's) is skipped, not cut off; a corrupt line elsewhere is an error."""
    path = Path(path)
    if not path.exists():
        raise EnsembleError(f"{path}: no predictions store here; run `vote run` on its config first")
    return _parse(path, path.read_bytes())[0]


def _parse(path: Path, data: bytes) -> tuple[list[Row], int]:
    """(rows of the complete lines of ``data``, offset where a trailing partial line starts)."""
    end = data.rfind(b"\n") + 1  # everything after the last newline is a partial line
    rows: list[Row] = []
    for line_no, line in enumerate(data[:end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise EnsembleError(f"{path}:{line_no}: corrupt line in the predictions store (not JSON); "
                                "delete that line, or pass --restart to recompute everything") from None
    return rows, end


def _read_and_repair(path: Path) -> tuple[list[Row], int]:
    """Read complete lines; truncate a trailing partial line left by a killed writer."""
    if not path.exists():
        path.touch()
        return [], 0
    data = path.read_bytes()
    rows, end = _parse(path, data)
    dropped = 1 if data[end:].strip() else 0
    if end < len(data):
        with path.open("r+b") as fh:
            fh.truncate(end)
    return rows, dropped
