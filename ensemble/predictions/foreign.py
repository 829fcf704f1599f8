"""Several prediction inputs -> one list of rows: this project's files, lm-eval runs, LLaMA-Factory files.

An input is ``PATH`` or ``NAME=PATH``:
  predictions file    this project's rows (JSONL / CSV / Parquet); NAME renames its voter
                      (or prefixes ``NAME/`` when the file holds several)
  lm-eval run         an ``--output_path`` folder or one ``samples_<task>_<ts>.jsonl`` file
  LLaMA-Factory file  a ``generated_predictions.jsonl`` (prompt, predict, label)
lm-eval and LLaMA-Factory inputs are one voter each, named NAME or after the input's
folder. Voter names must be unique across inputs, and inputs that share an item must
agree on its gold answer.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ensemble.data.rows import read_rows as data_rows
from ensemble.errors import EnsembleError
from ensemble.extraction import Extractor, build_extractor
from ensemble.predictions.llamafactory import llamafactory_rows, looks_like_llamafactory
from ensemble.predictions.lmeval import is_samples_file, lmeval_rows

Row = dict[str, Any]
Located = tuple[Path, int, Row]  # (file, line, row) for file:line errors


def parse_input(spec: str | Path) -> tuple[str | None, Path]:
    """``NAME=PATH`` -> (NAME, PATH); a plain path (even one with '=' in it) -> (None, PATH)."""
    text = str(spec)
    name, sep, rest = text.partition("=")
    if not sep or Path(text).exists() or not name.strip() or "/" in name:
        return None, Path(text)
    return name.strip(), Path(rest)


def input_kind(path: Path) -> str:
    """'lmeval', 'llamafactory' or 'native' (this project's predictions file)."""
    if path.is_dir():
        return "lmeval"
    if not path.is_file():
        raise EnsembleError(f"{path}: no such file or folder; give a predictions file, an lm-eval "
                            "--output_path folder or a LLaMA-Factory generated_predictions.jsonl")
    if is_samples_file(path):
        return "lmeval"
    if (path.suffix.lower() in (".jsonl", ".json") and path.stat().st_size
            and looks_like_llamafactory(data_rows(path)[0][1])):
        return "llamafactory"
    return "native"


def default_name(path: Path) -> str:
    """An input's voter name: the folder it is, or the folder it is in."""
    return (path if path.is_dir() else path.parent).resolve().name or str(path)


def gather_rows(specs: Sequence[str | Path], extract: str | Sequence[str] | Extractor = "text") -> list[Located]:
    """Every input's rows, located, voters named; errors name the inputs involved."""
    from ensemble.predictions.rows import read_rows, validate_row

    if not specs:
        raise EnsembleError("no predictions given; pass one or more files or folders")
    extractor = build_extractor(extract, origin="--extract")
    parsed = [(name, path, input_kind(path)) for name, path in map(parse_input, specs)]
    out: list[Located] = []
    owner: dict[str, Path] = {}  # voter -> the input it came from
    lf = [(name or default_name(path), path) for name, path, kind in parsed if kind == "llamafactory"]
    for name, path, kind in parsed:
        if kind == "native":
            rows = [(path, 0, r) for r in read_rows(path)]
            if name is not None:
                voters = {r["voter"] for _, _, r in rows}
                for _, _, r in rows:
                    r["voter"] = name if len(voters) == 1 else f"{name}/{r['voter']}"
        elif kind == "lmeval":
            rows = [(f, no, validate_row(r, f, no)) for f, no, r in lmeval_rows(path, name or default_name(path),
                                                                                 extractor)]
            _check_unique(rows)
        else:
            continue
        _claim(owner, rows, path)
        out += rows
    if lf:
        rows = [(f, no, validate_row(r, f, no)) for f, no, r in llamafactory_rows(lf, extractor)]
        for voter, path in lf:
            _claim(owner, [r for r in rows if r[0] == path], path)
        out += rows
    _check_gold(out)
    return out


def _claim(owner: dict[str, Path], rows: Sequence[Located], path: Path) -> None:
    for voter in dict.fromkeys(r["voter"] for _, _, r in rows):
        if voter in owner and owner[voter] != path:
            raise EnsembleError(f"voter '{voter}' comes from both {owner[voter]} and {path}; name the inputs "
                                "apart with NAME=PATH")
        owner[voter] = path


def _check_unique(rows: Sequence[Located]) -> None:
    """One row per item within an lm-eval run (other inputs are checked as they are read;
    voters never span inputs, see _claim)."""
    seen: dict[str, tuple[Path, int]] = {}
    for path, line, r in rows:
        if r["item"] in seen:
            first = seen[r["item"]]
            raise EnsembleError(f"{path}:{line}: document '{r['item']}' again (first at {first[0]}:{first[1]}); "
                                "keep one line per doc_id and filter")
        seen[r["item"]] = (path, line)


def _check_gold(rows: Sequence[Located]) -> None:
    seen: dict[str, tuple[str, Path]] = {}
    for path, _, r in rows:
        gold = r.get("gold")
        if gold in (None, ""):
            continue
        first = seen.setdefault(r["item"], (str(gold), path))
        if first[0] != str(gold):
            raise EnsembleError(f"item '{r['item']}': gold {first[0]!r} in {first[1]} but {gold!r} in {path}; "
                                "the inputs disagree on the answer (are they runs of the same data?)")
