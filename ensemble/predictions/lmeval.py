"""lm-evaluation-harness ``--log_samples`` output -> prediction rows (one voter per input).

lm-eval writes ``<output_path>/<model>/samples_<task>_<timestamp>.jsonl`` (one line per
document and filter) and ``results_<timestamp>.json`` (see lm_eval/loggers/
evaluation_tracker.py). Each sample line holds ``doc_id``, ``doc``, ``target``,
``arguments`` ({"gen_args_<i>": {"arg_0": context, "arg_1": continuation}}), ``resps``,
``filtered_resps``, ``filter``, ``metrics`` and the per-sample metric values (``acc``...).
The tracker turns every response into strings (``sanitize_list``) and ``target`` into
``str(target)``, so numbers are parsed back here.

multiple_choice  one loglikelihood request per choice; ``filtered_resps`` is
                 ``[[ll, is_greedy], ...]``. Answer = argmax ll (lm-eval's ``acc``), as a
                 letter A, B, ...; probs = softmax over the choices. Gold = ``target``: a
                 choice index, or a choice's text (the continuations in ``arguments``).
                 The per-sample ``acc`` lm-eval logged is checked against ours.
generate_until   ``filtered_resps`` is ``[text]``; answer and gold (``target``) go through
                 the extraction steps.
Items are ``<task>/<doc_id>``, grouped by task. A task logged several times keeps its
latest file; a task with several filters keeps the first filter in the file.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ensemble.data.items import LETTERS, Item
from ensemble.data.rows import read_rows as data_rows
from ensemble.errors import EnsembleError, where
from ensemble.extraction import Extractor

Row = dict[str, Any]
SAMPLES = re.compile(r"^samples_(?P<task>.+)_(?P<stamp>\d{4}-\d\d-\d\dT[\d\-.]+)\.jsonl$")


def is_samples_file(path: Path) -> bool:
    return path.is_file() and SAMPLES.match(path.name) is not None


def samples_files(path: Path) -> list[Path]:
    """The newest samples file of each task under ``path`` (a folder or one file)."""
    if path.is_file():
        return [path]
    found = [p for p in sorted(path.rglob("samples_*.jsonl")) if SAMPLES.match(p.name)]
    if not found:
        raise EnsembleError(f"{path}: no lm-eval samples_<task>_<timestamp>.jsonl files in this folder; "
                            "run lm_eval with --output_path and --log_samples")
    folders = sorted({str(p.parent.relative_to(path)) for p in found})
    if len(folders) > 1:
        raise EnsembleError(f"{path}: holds lm-eval samples of {len(folders)} runs ({', '.join(folders)}); "
                            "pass each run's folder as its own input (one voter per input)")
    latest: dict[str, Path] = {}
    for p in found:  # ISO timestamps sort in time order
        task = SAMPLES.match(p.name).group("task")  # type: ignore[union-attr]
        if task not in latest or p.name > latest[task].name:
            latest[task] = p
    return [latest[t] for t in sorted(latest)]


def lmeval_rows(path: Path, voter: str, extractor: Extractor) -> list[tuple[Path, int, Row]]:
    """Rows (file, line, row) of one lm-eval run (a folder or one samples file)."""
    out: list[tuple[Path, int, Row]] = []
    for file in samples_files(path):
        match = SAMPLES.match(file.name)
        if match is None:
            raise EnsembleError(f"{file}: not an lm-eval samples file (expected samples_<task>_<timestamp>.jsonl)")
        task = match.group("task")
        first_filter = None
        for no, sample in data_rows(file):
            first_filter = first_filter or sample.get("filter")
            if sample.get("filter") != first_filter:
                continue
            row = _row(file, no, sample, task, extractor)
            row["voter"] = voter
            out.append((file, no, row))
    return out


def _row(file: Path, no: int, sample: Row, task: str, extractor: Extractor) -> Row:
    for key in ("doc_id", "filtered_resps", "target"):
        if key not in sample:
            raise EnsembleError(f"{where(file, no)}: missing field '{key}'; is this an lm-eval --log_samples file?")
    item = f"{task}/{sample['doc_id']}"
    resps = sample["filtered_resps"]
    if _is_loglikelihood(resps):
        return _choice_row(file, no, sample, item, task, resps)
    if not isinstance(resps, list) or len(resps) != 1:
        raise EnsembleError(f"{where(file, no, 'filtered_resps')}: expected [text] (generate_until) or "
                            f"[[loglikelihood, is_greedy], ...] (multiple_choice), got {resps!r}")
    context = _arguments(sample)[0][0] if _arguments(sample) else ""
    it = Item(item, context or item)
    answer = extractor.extract(str(resps[0]), it)
    gold = extractor.extract(str(sample["target"]), it)
    return {"item": item, "answer": answer, "gold": gold, "group": task, "raw": resps[0]}


def _is_loglikelihood(resps: Any) -> bool:
    return (isinstance(resps, list) and len(resps) >= 2
            and all(isinstance(r, (list, tuple)) and len(r) == 2 for r in resps))


def _arguments(sample: Row) -> list[list[Any]]:
    """Request arguments as lists: the tracker's {"gen_args_i": {"arg_j": ...}} or plain lists."""
    args = sample.get("arguments") or []
    if isinstance(args, dict):
        return [[a[f"arg_{j}"] for j in range(len(a))] for _, a in sorted(args.items(), key=lambda kv: int(
            kv[0].rsplit("_", 1)[-1]))]
    return [list(a) for a in args]


def _choice_row(file: Path, no: int, sample: Row, item: str, task: str, resps: list[Any]) -> Row:
    try:
        lls = [float(r[0]) for r in resps]
    except (TypeError, ValueError):
        raise EnsembleError(f"{where(file, no, 'filtered_resps')}: loglikelihoods must be numbers, "
                            f"got {resps!r}") from None
    args = _arguments(sample)
    if "acc_mutual_info" in (sample.get("metrics") or []):
        lls, args = lls[: len(lls) // 2], args[: len(lls) // 2]  # second half: unconditional lls
    if len(lls) > len(LETTERS):
        raise EnsembleError(f"{where(file, no)}: {len(lls)} choices; at most {len(LETTERS)} are supported")
    choices = [str(a[1]).strip() for a in args] if len(args) == len(lls) else []
    letters = LETTERS[: len(lls)]
    pred = max(range(len(lls)), key=lambda k: (lls[k], -k))  # np.argmax: the first maximum
    top = max(lls)
    weights = [math.exp(x - top) for x in lls]  # softmax, shifted by the max for stability
    probs = {letters[k]: w / sum(weights) for k, w in enumerate(weights)}
    gold = _gold_index(file, no, sample["target"], choices, len(lls))
    logged = sample.get("acc")
    if gold is not None and logged is not None and float(logged) != float(pred == gold):
        raise EnsembleError(f"{where(file, no)}: lm-eval logged acc={logged} but the highest loglikelihood "
                            f"is choice {pred} and the target is choice {gold}; the file does not look like "
                            "plain multiple_choice output")
    return {"item": item, "answer": letters[pred], "probs": probs, "group": task,
            "gold": None if gold is None else letters[gold]}


def _gold_index(file: Path, no: int, target: Any, choices: list[str], n: int) -> int | None:
    """lm-eval's rule: an int (written as "2") is a choice index, a string a choice text."""
    text = str(target).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        return index if 0 <= index < n else None
    if text in choices:
        return choices.index(text)
    if text.startswith("["):
        raise EnsembleError(f"{where(file, no, 'target')}: {text} lists several gold choices; tasks with "
                            "several correct choices are not supported")
    raise EnsembleError(f"{where(file, no, 'target')}: {text!r} is neither a choice index nor one of the "
                        f"choices {choices}")
