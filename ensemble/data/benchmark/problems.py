"""Problems, splits, files: a kind's question pool -> nested benchmark rows on disk."""
from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ensemble.data.benchmark.kinds import KINDS, Question
from ensemble.data.items import LETTERS
from ensemble.errors import EnsembleError

ZH_SHARE = 0.25  # fraction of problems written in Chinese
MAX_RETRIES = 1000  # duplicate problem texts in a row before giving up


def _options(rng: random.Random, q: Question) -> tuple[list[str], str]:
    """2..5 options: the correct one at a uniformly drawn position among n."""
    wrong = [w for w in dict.fromkeys(q.wrong) if w != q.correct]
    n = rng.randint(2, min(5, len(wrong) + 1))
    options = rng.sample(wrong, n - 1)
    at = rng.randrange(n)
    options.insert(at, q.correct)
    return options, LETTERS[at]


def _problem(rng: random.Random, kind: str, zh: bool) -> dict[str, Any]:
    text, pool = KINDS.get(kind)(rng, zh)
    header = "选择题 {k}：\n" if zh else "Question {k}:\n"
    questions = []
    for k, q in enumerate(rng.sample(pool, rng.randint(1, min(3, len(pool)))), 1):
        options, letter = _options(rng, q)
        questions.append({"question": header.format(k=k) + q.text, "options": options, "answer": letter})
    return {"kind": kind, "problem": text, "questions": questions}


def check_kinds(kinds: Sequence[str] | None) -> tuple[str, ...]:
    """The kinds to draw from (``None`` = every registered kind); unknown names fail with did-you-mean."""
    if kinds is None:
        return tuple(KINDS.names())
    if not kinds:
        raise EnsembleError("no problem kinds given; name at least one of " + ", ".join(KINDS.names()))
    for kind in kinds:
        KINDS.get(kind)  # raises "Unknown problem kind 'x'. Did you mean ...? Available: ..."
    return tuple(dict.fromkeys(kinds))


def generate_problems(n: int, seed: int, *, split: str, exclude: frozenset[str] | set[str] = frozenset(),
                      kinds: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """n problems with ids ``<split>_<00000>``; none repeats a problem text (nor one in ``exclude``).

    Each problem's kind is drawn uniformly from ``kinds`` (default: all registered)."""
    rng = random.Random(f"ensemble-benchmark/{seed}/{split}")
    seen, kinds = set(exclude), list(check_kinds(kinds))
    out: list[dict[str, Any]] = []
    while len(out) < n:
        kind, zh = rng.choice(kinds), rng.random() < ZH_SHARE
        for _ in range(MAX_RETRIES):  # retry the same kind and language, so the mix stays as drawn
            row = _problem(rng, kind, zh)
            if row["problem"] not in seen:
                break
        else:
            raise RuntimeError(f"{MAX_RETRIES} duplicate '{kind}' problems in a row after {len(out)}: "
                               "ask for fewer problems")
        seen.add(row["problem"])
        out.append({"id": f"{split}_{len(out):05d}", **row})
    return out


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_benchmark(out_dir: str | Path, *, n_train: int, n_dev: int, n_test: int, seed: int = 0,
                    kinds: Sequence[str] | None = None) -> dict[str, Path]:
    """train/dev/test.jsonl (with answers) and test_questions.jsonl (the test file without them)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    paths: dict[str, Path] = {}
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        rows = generate_problems(n, seed, split=split, exclude=seen, kinds=kinds)
        seen.update(r["problem"] for r in rows)
        paths[split] = _write_jsonl(out_dir / f"{split}.jsonl", rows)
    blank = [{**r, "questions": [{k: v for k, v in q.items() if k != "answer"} for q in r["questions"]]}
             for r in rows]
    paths["test_questions"] = _write_jsonl(out_dir / "test_questions.jsonl", blank)
    return paths


SETTINGS_FILE = "benchmark.json"


def ensure_benchmark(out_dir: str | Path, *, n_train: int, n_dev: int, n_test: int, seed: int = 0,
                     kinds: Sequence[str] | None = None) -> dict[str, Path]:
    """The benchmark in ``out_dir``, generated only when absent or made with other settings.

    ``benchmark.json`` (written last, atomically) records the settings the files were
    made with, so a killed generation or a config that changed the sizes / kinds / seed
    regenerates instead of silently reusing the old files."""
    from ensemble.io import atomic_write_text

    out_dir = Path(out_dir)
    settings = {"n_train": n_train, "n_dev": n_dev, "n_test": n_test, "seed": seed,
                "kinds": list(check_kinds(kinds))}
    marker = out_dir / SETTINGS_FILE
    names = ("train", "dev", "test", "test_questions")
    paths = {name: out_dir / f"{name}.jsonl" for name in names}
    try:
        same = json.loads(marker.read_text(encoding="utf-8")) == settings
    except (OSError, ValueError):
        same = False
    if not (same and all(p.is_file() for p in paths.values())):
        marker.unlink(missing_ok=True)
        paths = write_benchmark(out_dir, n_train=n_train, n_dev=n_dev, n_test=n_test, seed=seed, kinds=kinds)
        atomic_write_text(marker, json.dumps(settings, indent=1))
    return paths
