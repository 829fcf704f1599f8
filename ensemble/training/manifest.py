"""``<out>/manifest.json``: what a training run produced, rewritten after every variant.

    {"base_model": {"path", "name", "config_hash", "architecture"},
     "variants": {name: {"settings", "settings_hash", "status", "train_items_hash",
                         "heldout_items_hash", "n_train", "n_heldout", "train_ids"?,
                         "heldout_ids"?, "loss_curve": [[step, loss, lr], ...],
                         "eval_curve": [[step, heldout_loss, heldout_accuracy], ...],
                         "heldout_accuracy", "heldout_loss", "seconds",
                         "adapter": "adapters/<name>"}},
     "created", "ensemble_version"}

``status`` is "done" for variants of the current grid, "stale" for variants trained
earlier in this folder that the current grid no longer has (kept, not voters). Id
lists are stored when they have at most ``MAX_STORED_IDS`` entries (else only the
hash). The file is replaced atomically (temp file + os.replace), so a killed run
leaves the previous complete manifest.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ensemble import __version__
from ensemble.errors import EnsembleError
from ensemble.io import atomic_write_text

MANIFEST = "manifest.json"
MAX_STORED_IDS = 50_000


@dataclass(frozen=True)
class Manifest:
    base_model: dict[str, Any]
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: str = ""
    ensemble_version: str = __version__

    def with_variant(self, name: str, entry: dict[str, Any]) -> Manifest:
        return dataclasses.replace(self, variants={**self.variants, name: entry})

    def done(self) -> dict[str, dict[str, Any]]:
        """Entries of finished variants of the current grid (the voters)."""
        return {k: v for k, v in self.variants.items() if v.get("status") == "done"}

    def to_json(self) -> dict[str, Any]:
        return {"base_model": self.base_model, "variants": self.variants, "created": self.created,
                "ensemble_version": self.ensemble_version}


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def ids_hash(ids: Sequence[str]) -> str:
    """Order-sensitive hash of a list of item ids (bootstrap repeats count)."""
    h = hashlib.sha256()
    for i in ids:
        h.update(str(i).encode("utf-8") + b"\n")
    return h.hexdigest()[:16]


def base_model_info(path: str | Path, name: str | None = None) -> dict[str, Any]:
    """Identity of the base model: its folder, a name, the hash of config.json, the architecture."""
    path = Path(path)
    config = path / "config.json"
    if not config.is_file():
        raise EnsembleError(f"{config}: not found; the base model must be a local Hugging Face folder")
    archs = json.loads(config.read_text(encoding="utf-8")).get("architectures") or [None]
    return {"path": str(path.resolve()), "name": name or path.name, "config_hash": file_hash(config),
            "architecture": archs[0]}


def new_manifest(base_model: dict[str, Any]) -> Manifest:
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return Manifest(base_model=base_model, created=now)


def load_manifest(out: str | Path) -> Manifest:
    """Read ``<out>/manifest.json`` (EnsembleError when missing or unreadable)."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise EnsembleError(f"{path}: not found; run `vote train CONFIG` with out: {out} first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Manifest(base_model=data["base_model"], variants=data.get("variants", {}),
                        created=data.get("created", ""), ensemble_version=data.get("ensemble_version", ""))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise EnsembleError(f"{path}: not a valid training manifest ({exc}); delete it to retrain "
                            "or use another out folder") from None


def write_manifest(out: str | Path, manifest: Manifest) -> Path:
    """Write atomically: a complete old file or a complete new one, never half of one."""
    path = Path(out) / MANIFEST
    return atomic_write_text(path, json.dumps(manifest.to_json(), indent=1, ensure_ascii=False), fsync=True)


def find_manifest(out: str | Path) -> Manifest | None:
    """The manifest of ``out``, or None when nothing was trained there (a broken file still fails)."""
    return load_manifest(out) if (Path(out) / MANIFEST).is_file() else None


def open_manifest(out: str | Path, base_model: dict[str, Any]) -> Manifest:
    """The existing manifest of ``out`` if it was made for this base model, else a new one."""
    old = find_manifest(out)
    if old is None:
        return new_manifest(base_model)
    if old.base_model.get("config_hash") != base_model["config_hash"]:
        raise EnsembleError(
            f"{Path(out) / MANIFEST}: trained for base model {old.base_model.get('name')} "
            f"({old.base_model.get('path')}), not {base_model['name']} ({base_model['path']}); "
            "use another out folder for a different base model")
    return dataclasses.replace(old, base_model=base_model)


def ids_fields(prefix: str, ids: Sequence[str]) -> dict[str, Any]:
    """{"<prefix>_items_hash", "n_<prefix>", "<prefix>_ids" (when short enough)}."""
    out: dict[str, Any] = {f"{prefix}_items_hash": ids_hash(ids), f"n_{prefix}": len(ids)}
    if len(ids) <= MAX_STORED_IDS:
        out[f"{prefix}_ids"] = list(ids)
    return out


def heldout_accuracies(manifest: Manifest) -> dict[str, float]:
    """name -> held-out accuracy of every finished variant that has one (for `weighted`)."""
    return {name: float(e["heldout_accuracy"]) for name, e in manifest.done().items()
            if e.get("heldout_accuracy") is not None}


def adapter_paths(manifest: Manifest, out: str | Path) -> dict[str, Path]:
    """name -> adapter folder of every finished variant."""
    return {name: Path(out) / e["adapter"] for name, e in manifest.done().items()}
