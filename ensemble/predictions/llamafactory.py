"""LLaMA-Factory ``generated_predictions.jsonl`` files -> prediction rows (one voter per file).

LLaMA-Factory writes one JSON object per line with ``prompt`` (the decoded input),
``predict`` (the generation) and ``label`` (the reference answer); see
src/llamafactory/train/sft/trainer.py ``save_predictions`` and scripts/vllm_infer.py.
``predict`` and ``label`` go through the extraction steps.

The files carry no ids, so items are matched across files by prompt text; when a prompt
repeats within a file, by line order, and then each line's prompt must equal the first
file's. Either way the labels of matched lines must agree. Item ids are the 1-based line
numbers of the first file, as text.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ensemble.data.items import Item
from ensemble.data.rows import read_rows as data_rows
from ensemble.errors import EnsembleError, where
from ensemble.extraction import Extractor

Row = dict[str, Any]
KEYS = ("prompt", "predict", "label")


def looks_like_llamafactory(first_row: Row) -> bool:
    return all(k in first_row for k in KEYS) and "item" not in first_row


def _read(path: Path) -> list[tuple[int, Row]]:
    rows = data_rows(path)
    for no, row in rows:
        missing = [k for k in KEYS if k not in row]
        if missing:
            raise EnsembleError(f"{where(path, no)}: missing field '{missing[0]}'; a LLaMA-Factory "
                                f"generated_predictions.jsonl line has {', '.join(KEYS)} (found: {', '.join(row)})")
    return rows


def llamafactory_rows(inputs: Sequence[tuple[str, Path]], extractor: Extractor) -> list[tuple[Path, int, Row]]:
    """Rows (file, line, row) of every (voter, file), items matched across the files."""
    files = [(voter, path, _read(path)) for voter, path in inputs]
    _, ref_path, ref = files[0]
    prompts = [str(r["prompt"]) for _, r in ref]
    by_order = any(len({str(r["prompt"]) for _, r in rows}) < len(rows) for _, _, rows in files)
    index = {p: k for k, p in enumerate(prompts)}
    gold: list[str | None] = [None] * len(ref)
    out: list[tuple[Path, int, Row]] = []
    for n, (voter, path, rows) in enumerate(files):
        if by_order and len(rows) != len(ref):
            raise EnsembleError(f"{path}: {len(rows)} lines but {ref_path} has {len(ref)}; prompts repeat, so "
                                "files are matched by line order and need the same lines in the same order")
        if not by_order and {str(r["prompt"]) for _, r in rows} != set(prompts):
            extra = next((no for no, r in rows if str(r["prompt"]) not in index), None)
            missing = len(set(prompts) - {str(r["prompt"]) for _, r in rows})
            problem = (f"{where(path, extra)}: this prompt is not in {ref_path}" if extra is not None
                       else f"{path}: {missing} prompts of {ref_path} are missing")
            raise EnsembleError(f"{problem}; every file must answer the same prompts")
        for pos, (no, row) in enumerate(rows):
            k = pos if by_order else index[str(row["prompt"])]
            if str(row["prompt"]) != prompts[k]:
                raise EnsembleError(f"{where(path, no)}: the prompt differs from {where(ref_path, ref[k][0])}; "
                                    "prompts repeat, so lines are matched by order and must be in the same order")
            item = Item(str(k + 1), prompts[k])
            label = extractor.extract(str(row["label"]), item)
            if n == 0:
                gold[k] = label
            elif label != gold[k]:
                raise EnsembleError(f"{where(path, no, 'label')}: {row['label']!r} does not match the label of the "
                                    f"same prompt in {where(ref_path, ref[k][0])}; are these answers to the same data?")
            answer = extractor.extract(str(row["predict"]), item)
            out.append((path, no, {"item": item.id, "voter": voter, "answer": answer, "gold": label,
                                   "raw": row["predict"]}))
    return out
