"""The bundled benchmark: procedurally generated multiple-choice reasoning problems.

Rows use the nested competition format plus a ``kind`` field:
``{"id", "kind", "problem", "questions": [{"question", "options", "answer"}]}``.
Six kinds (the KINDS registry, one module each: compare, order, arith, syllogism,
sequence, boxes), each a fixed set of templates filled with random numbers and names,
about a quarter in Chinese. A generator builds an instance, *solves* it
(sorting, transitive closure, expression evaluation, Venn-model enumeration, rule
detection, permutation search) and offers candidate questions as (text, correct
option, wrong options). Exactly one option is correct and its letter is uniform over
the positions. Everything derives from ``random.Random(f"...{seed}/{split}")``, so
the same seed gives byte-identical files. ``problems`` turns question pools into rows,
splits and files (write_benchmark, ensure_benchmark).
"""
from __future__ import annotations

# Importing a kind module registers it in KINDS; the order here is the registry order,
# which the seeded draws depend on (keep it, add new kinds at the end).
# isort: off
from ensemble.data.benchmark import compare, order, arith, syllogism, sequence, boxes  # noqa: F401
# isort: on
from ensemble.data.benchmark.arith import evaluate, show
from ensemble.data.benchmark.boxes import solve_boxes
from ensemble.data.benchmark.kinds import KINDS, Generator, Question
from ensemble.data.benchmark.order import solve_order
from ensemble.data.benchmark.problems import (
    SETTINGS_FILE,
    check_kinds,
    ensure_benchmark,
    generate_problems,
    write_benchmark,
)
from ensemble.data.benchmark.sequence import continue_sequence
from ensemble.data.benchmark.syllogism import solve_syllogism

__all__ = ["KINDS", "SETTINGS_FILE", "Generator", "Question", "check_kinds", "continue_sequence",
           "ensure_benchmark", "evaluate", "generate_problems", "show", "solve_boxes", "solve_order",
           "solve_syllogism", "write_benchmark"]
