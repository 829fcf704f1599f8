"""The predictions long table: read, validate, store (append + resume), build the vote matrix.

One row per vote::

    item (str)  voter (str)  sample (int, default 0)  answer (str; "" / null = abstain)
    confidence (float in [0, 1], optional)  probs ({label: p}, optional)  gold (optional)
    + anything else (raw text, n_tokens, latency_s...) kept on disk, ignored by voting

Files are JSONL (the store's own format), CSV, or Parquet (when pyarrow is installed).
``build_matrix`` encodes the labels once (sorted classes, see ensemble.predictions.matrix).
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ensemble.data.rows import json_cell
from ensemble.data.rows import read_rows as data_rows
from ensemble.errors import EnsembleError
from ensemble.predictions.matrix import ABSTAIN, LabelEncoder, VoteMatrix

Row = dict[str, Any]
Key = tuple[str, str, int]  # (item, voter, sample)


# -- reading -----------------------------------------------------------------
def read_rows(path: str | Path) -> list[Row]:
    """Read and validate prediction rows; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise EnsembleError(f"{path}: predictions file not found")
    if path.suffix.lower() == ".parquet":
        raw = _read_parquet(path)
    elif path.stat().st_size == 0:
        raw = []
    else:
        # The dataset reader: JSONL / JSON list / CSV with file:line errors, BOM and encoding checks.
        raw = [(line, _csv_cells(row, path, line) if path.suffix.lower() == ".csv" else row)
               for line, row in data_rows(path)]
    if not raw:
        raise EnsembleError(f"{path}: no prediction rows (the file is empty); expected one row per vote "
                            "with item, voter, answer")
    rows = [validate_row(row, path, line) for line, row in raw]
    _check_duplicates(rows, [line for line, _ in raw], path)
    return rows


def _csv_cells(row: Row, path: Path, line: int) -> Row:
    """CSV cells are strings: empty cells are absent, ``probs`` holds a JSON object."""
    clean = {k: v for k, v in row.items() if v not in ("", None)}
    if "probs" in clean:
        clean["probs"] = json_cell(path, line, clean["probs"],
                                   "field 'probs' is not a JSON object (write it like {\"A\": 0.7, \"B\": 0.3})")
    return clean


def _read_parquet(path: Path) -> list[tuple[int, Row]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise EnsembleError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow), "
                            "or save the predictions as JSONL/CSV") from None
    table = pq.read_table(path).to_pylist()
    return [(i + 1, {k: v for k, v in row.items() if v is not None}) for i, row in enumerate(table)]


def validate_row(row: Row, path: Path, line: int) -> Row:
    """Normalise one row: types checked, answer '' -> None, sample default 0, group as text."""
    def fail(field: str, msg: str) -> EnsembleError:
        return EnsembleError(f"{path}:{line}: field '{field}' {msg}")

    for field in ("item", "voter"):
        value = row.get(field)
        if value is None or str(value).strip() == "":
            raise fail(field, "is missing; every row needs item, voter and answer")
        row[field] = str(value)
    answer = row.get("answer")
    row["answer"] = None if answer is None or str(answer).strip() == "" else str(answer).strip()
    try:
        sample = int(row.get("sample", 0))
    except (TypeError, ValueError):
        raise fail("sample", f"is {row.get('sample')!r}; use a whole number (0 for the first sample)") from None
    if sample < 0:
        raise fail("sample", f"is {sample}; use 0 or more")
    row["sample"] = sample
    if row.get("confidence") is not None:
        try:
            conf = float(row["confidence"])
        except (TypeError, ValueError):
            raise fail("confidence", f"is {row['confidence']!r}; use a number in [0, 1]") from None
        if not 0.0 <= conf <= 1.0 or math.isnan(conf):
            raise fail("confidence", f"is {conf}; use a number in [0, 1]")
        row["confidence"] = conf
    if row.get("probs") is not None:
        row["probs"] = _validate_probs(row["probs"], fail)
    if row.get("gold") is not None:
        row["gold"] = str(row["gold"]).strip() or None
    if row.get("group") is not None:
        row["group"] = str(row["group"]).strip() or None
    return row


def _validate_probs(probs: Any, fail: Any) -> dict[str, float]:
    if not isinstance(probs, Mapping):
        raise fail("probs", 'must be an object of label -> probability, like {"A": 0.7, "B": 0.3}')
    out = {str(k): float(v) for k, v in probs.items()}
    if any(v < 0 or math.isnan(v) for v in out.values()):
        raise fail("probs", "has a negative or NaN probability")
    total = sum(out.values())
    if abs(total - 1.0) > 1e-3:
        raise fail("probs", f"sums to {total:.4f}; probabilities must sum to 1")
    return out


def _check_duplicates(rows: Sequence[Row], lines: Sequence[int], path: Path) -> None:
    seen: dict[Key, int] = {}
    for row, line in zip(rows, lines):
        key = (row["item"], row["voter"], row["sample"])
        if key in seen:
            raise EnsembleError(
                f"{path}:{line}: duplicate vote for item '{key[0]}', voter '{key[1]}', sample {key[2]} "
                f"(first at line {seen[key]}); keep one row per (item, voter, sample)")
        seen[key] = line


# -- the vote matrix ---------------------------------------------------------
def build_matrix(rows: Sequence[Row], *, gold: Mapping[str, str] | None = None,
                 options: Mapping[str, Sequence[str]] | None = None,
                 groups: Mapping[str, str] | None = None, adaptive: bool = False) -> VoteMatrix:
    """Encode rows into a VoteMatrix (items and voters in order of first appearance).

    gold     item -> gold label (overrides a ``gold`` column); items with gold but no
             votes are not added, their count is kept in ``meta["n_gold_without_votes"]``.
    options  item -> its valid labels (e.g. the option letters), for ``valid``.
    groups   item -> its group (subject / category / kind; overrides a ``group`` column).
    adaptive the rows come from an adaptive run: a cell with a stored row was asked (its
             answer may still abstain), a cell without one was not asked (``asked`` False,
             ABSTAIN label). Without it, a missing row is an abstention, as always.
    """
    items = list(dict.fromkeys(r["item"] for r in rows))
    voters = list(dict.fromkeys(r["voter"] for r in rows))
    gold_map = {r["item"]: r["gold"] for r in rows if r.get("gold")}
    if gold is not None:
        gold_map.update({str(k): str(v) for k, v in gold.items() if v not in (None, "")})
    values: list[str] = [r["answer"] for r in rows if r["answer"]]
    values += [g for i, g in gold_map.items()]
    values += [k for r in rows if r.get("probs") for k in r["probs"]]
    if options:
        values += [o for opts in options.values() for o in opts]
    enc = LabelEncoder.fit(values)
    code = {c: i for i, c in enumerate(enc.classes)}

    I, V, S, C = len(items), len(voters), 1 + max(r["sample"] for r in rows), len(enc)
    item_ix = {x: i for i, x in enumerate(items)}
    voter_ix = {v: j for j, v in enumerate(voters)}
    ii = np.array([item_ix[r["item"]] for r in rows])
    jj = np.array([voter_ix[r["voter"]] for r in rows])
    ss = np.array([r["sample"] for r in rows])
    labels = np.full((I, V, S), ABSTAIN, dtype=np.int32)
    labels[ii, jj, ss] = [code[r["answer"]] if r["answer"] else ABSTAIN for r in rows]
    asked = None
    if adaptive:
        asked = np.zeros((I, V, S), dtype=bool)
        asked[ii, jj, ss] = True

    confidence = probs = None
    if any(r.get("confidence") is not None for r in rows):
        confidence = np.full((I, V, S), np.nan)
        confidence[ii, jj, ss] = [r.get("confidence", np.nan) for r in rows]
    if any(r.get("probs") for r in rows):
        probs = np.full((I, V, S, C), np.nan)
        for i, j, s, r in zip(ii, jj, ss, rows):
            if r.get("probs"):
                probs[i, j, s] = 0.0
                for label, p in r["probs"].items():
                    probs[i, j, s, code[label]] = p
    gold_arr = None
    if gold_map:
        gold_arr = np.array([code.get(gold_map.get(x, ""), ABSTAIN) for x in items], dtype=np.int32)
    valid = None
    if options:
        valid = np.zeros((I, C), dtype=bool)
        for x, opts in options.items():
            if x in item_ix:
                valid[item_ix[x], [code[o] for o in opts]] = True
        valid[~valid.any(axis=1)] = True  # items without known options: every class allowed
    n_missing = len(set(gold_map) - set(items))
    group_map = {r["item"]: r["group"] for r in reversed(rows) if r.get("group")}  # first row wins
    group_map.update({str(k): str(v) for k, v in (groups or {}).items() if v not in (None, "")})
    item_groups = tuple(group_map.get(x, "") for x in items) if group_map else None
    return VoteMatrix(labels=labels, items=tuple(items), voters=tuple(voters), encoder=enc,
                      confidence=confidence, probs=probs, gold=gold_arr, valid=valid, groups=item_groups,
                      asked=asked, meta={"n_gold_without_votes": n_missing})


def load_predictions(paths: str | Path | Sequence[str | Path],
                     gold: str | Path | Mapping[str, str] | None = None, *,
                     extract: str | Sequence[str] = "text", adaptive: bool | None = None) -> VoteMatrix:
    """Read one or more prediction inputs into a VoteMatrix.

    paths    a predictions file (JSONL / CSV / Parquet), an lm-eval output folder or samples
             file, a LLaMA-Factory generated_predictions.jsonl, each optionally ``NAME=PATH``
             (see ensemble.predictions.foreign), or a list of them
    gold     a file (rows with item/id and answer, or any dataset file), or a mapping
    extract  extraction steps for generated text (lm-eval generate_until, LLaMA-Factory)
    adaptive the rows come from an adaptive run: a vote without a row was not asked
             (``build_matrix(..., adaptive=True)``), not abstained. None (default): read it
             from the stores' ``<file>.meta.json`` (``vote run`` records its adaptive section)
    """
    from ensemble.predictions.foreign import gather_rows

    specs = [paths] if isinstance(paths, (str, Path)) else list(paths)
    located = gather_rows(specs, extract)
    if gold is not None and not isinstance(gold, Mapping):
        from ensemble.data.formats import read_gold

        gold = read_gold(gold)
    if adaptive is None:
        adaptive = any(from_adaptive_run(path) for path in {str(p) for p, _, _ in located})
    return build_matrix([r for _, _, r in located], gold=gold, adaptive=adaptive)


def from_adaptive_run(path: str | Path) -> bool:
    """Whether a predictions file is an adaptive `vote run` store (its meta names an adaptive section)."""
    meta = Path(path).with_name(Path(path).name + ".meta.json")
    try:
        settings = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # no store meta: a plain predictions file, where a missing row is an abstention
    return isinstance(settings, dict) and bool(settings.get("adaptive"))


def rows_from_matrix(m: VoteMatrix) -> Iterable[Row]:
    """The inverse of build_matrix for labels/confidence (used by tests and tools).

    Not-asked cells have no row (``build_matrix(..., adaptive=True)`` reads them back).
    """
    for i, item in enumerate(m.items):
        for j, voter in enumerate(m.voters):
            for s in range(m.n_samples):
                if m.asked is not None and not m.asked[i, j, s]:
                    continue
                code = int(m.labels[i, j, s])
                row: Row = {"item": item, "voter": voter, "sample": s,
                            "answer": m.classes[code] if code >= 0 else None}
                if m.confidence is not None and not np.isnan(m.confidence[i, j, s]):
                    row["confidence"] = float(m.confidence[i, j, s])
                yield row
