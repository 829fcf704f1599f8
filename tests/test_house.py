"""House rules of the package layout (issue 8, points 19 and 21).

* no module in ``ensemble/`` over 300 lines;
* no import cycles among ``ensemble`` modules, except registration imports (a registry's
  package imports the modules that register into it);
* every public name (``__all__``) imports, and ``import ensemble`` stays cheap;
* ``training/manifest.py`` is the only module that names (so reads) ``manifest.json``.

The rules read the source with ``ast``, so they hold for every module, imported or not.
"""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import ensemble
from ensemble.errors import EnsembleError

PACKAGE = Path(ensemble.__file__).resolve().parent
ROOT = PACKAGE.parent
MAX_LINES = 300

# Being split in parallel; the lead empties this set after merge.
ALLOWED_OVER_300: set[str] = set()

# (importer, imported module or package prefix) -> why the cycle is fine. Each is a
# registration import: the registry's module imports the modules that register into it
# (at its end), and they import the registry back.
ALLOWED_CYCLE_EDGES = {
    ("ensemble.voting", "ensemble.voting."): "voting/__init__ imports the method modules so they register "
                                             "in METHODS; each imports METHODS back",
    ("ensemble.cli.app", "ensemble.cli.jobs"): "cli/app imports cli/jobs so its commands register on the "
                                               "click group `main`; jobs imports `main` back",
}


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# -- no module over 300 lines ---------------------------------------------------------

def test_no_module_over_300_lines() -> None:
    lengths = {rel(p): len(p.read_text(encoding="utf-8").splitlines()) for p in modules().values()}
    too_long = {f: n for f, n in lengths.items() if n > MAX_LINES and f not in ALLOWED_OVER_300}
    assert not too_long, f"modules over {MAX_LINES} lines (split them): {too_long}"
    stale = {f for f in ALLOWED_OVER_300 if lengths.get(f, 0) <= MAX_LINES}
    assert not stale, f"no longer over {MAX_LINES} lines (or gone): remove {sorted(stale)} from ALLOWED_OVER_300"


# -- import cycles --------------------------------------------------------------------

def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: top level, and inside top-level
    if / try blocks, but not ``if TYPE_CHECKING:``. Imports inside functions are lazy
    loading and cannot form an import-time cycle."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            yield from _module_level_imports(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            handlers = [s for h in node.handlers for s in h.body]
            yield from _module_level_imports(node.body + handlers + node.orelse + node.finalbody)


def _resolve(name: str, level: int, importer: str, is_package: bool) -> str:
    """An absolute module name for ``from <level dots><name> import ...``."""
    if not level:
        return name
    base = importer.split(".")
    base = base[: len(base) - level + (1 if is_package else 0)]
    return ".".join(base + ([name] if name else []))


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports at import time. ``from a.b import c`` is an
    edge to ``a.b.c`` when that is a module, else to ``a.b``."""
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        edges: set[str] = set()
        for node in _module_level_imports(ast.parse(path.read_text(encoding="utf-8")).body):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in mods)
                continue
            module = _resolve(node.module or "", node.level, name, path.name == "__init__.py")
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                edges.add(sub if sub in mods else module)
        graph[name] = edges & set(mods)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per back edge of a depth-first search (empty when the graph is acyclic);
    each cycle is listed from its first module back to that module."""
    state: dict[str, int] = {}  # 1 = on the DFS stack, 2 = finished
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def _allowed(src: str, dst: str) -> bool:
    return any(src == a and (dst == b or (b.endswith(".") and dst.startswith(b))) for a, b in ALLOWED_CYCLE_EDGES)


def test_find_cycles_finds_them() -> None:
    """The checker itself: a self-import, a 3-cycle, and an acyclic diamond."""
    assert find_cycles({"a": {"a"}}) == [["a", "a"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) == []


def test_import_graph_reads_edges(tmp_path: Path) -> None:
    """Module-level and relative imports are edges; lazy and TYPE_CHECKING ones are not."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from pkg import a  # registration\n")
    (pkg / "a.py").write_text("from . import b\nfrom typing import TYPE_CHECKING\n"
                              "if TYPE_CHECKING:\n    import pkg.c\n")
    (pkg / "b.py").write_text("from pkg.a import x\ndef f():\n    import pkg.c\n")
    (pkg / "c.py").write_text("import pkg\n")
    mods = {"pkg": pkg / "__init__.py", **{f"pkg.{m}": pkg / f"{m}.py" for m in "abc"}}
    assert import_graph(mods) == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg"}}


def test_no_import_cycles_except_registration() -> None:
    graph = import_graph(modules())
    used = {(a, b) for a, b in ALLOWED_CYCLE_EDGES if any(_allowed(a, d) and (a == s) for s in graph
                                                        for d in graph[s])}
    stale = set(ALLOWED_CYCLE_EDGES) - used
    assert not stale, f"ALLOWED_CYCLE_EDGES entries that match no import any more: {sorted(stale)}; remove them"
    pruned = {src: {dst for dst in dsts if not _allowed(src, dst)} for src, dsts in graph.items()}
    cycles = find_cycles(pruned)
    assert not cycles, ("import cycles (move the shared part into a module both import, or import lazily "
                        "inside the function that needs it): " + "; ".join(" -> ".join(c) for c in cycles))


# -- public names ---------------------------------------------------------------------

def test_every_public_name_of_ensemble_imports() -> None:
    for name in ensemble.__all__:
        obj = getattr(ensemble, name)
        assert obj is not None, name
    with pytest.raises(AttributeError, match="module 'ensemble' has no attribute 'no_such_name'"):
        ensemble.no_such_name  # noqa: B018


@pytest.mark.parametrize("module", sorted(m for m, p in modules().items() if "__all__" in p.read_text("utf-8")))
def test_every_all_name_resolves(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert not missing, f"{module}.__all__ names {missing}, which the module does not define"


def test_import_ensemble_stays_cheap() -> None:
    """``import ensemble`` loads no submodule (the API is resolved on first use)."""
    code = ("import sys, ensemble; "
            "print(sorted(m for m in sys.modules if m.startswith('ensemble.') or m in ('torch', 'numpy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# -- manifest.json has one reader -----------------------------------------------------

def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring nodes (documentation may name the file)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def string_literals(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every string constant that is not a docstring, f-string parts included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.lineno, node.value


def test_string_literals_sees_fstrings_not_docstrings(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text('"""reads manifest.json"""\ndef f(out):\n    """manifest.json"""\n'
                    '    return f"{out}/manifest.json"\n')
    assert [t for _, t in string_literals(path)] == ["/manifest.json"]


def test_only_training_manifest_names_manifest_json() -> None:
    hits = [f"{rel(p)}:{line}" for p in modules().values() for line, text in string_literals(p)
            if "manifest.json" in text and rel(p) != "ensemble/training/manifest.py"]
    assert not hits, f"'manifest.json' outside training/manifest.py (read it through that module): {hits}"


# -- the former direct readers now go through training/manifest.py ----------------------

def _manifest(out: Path, variants: dict[str, dict]) -> None:
    from ensemble.training.manifest import new_manifest, write_manifest

    manifest = new_manifest({"path": "/base", "name": "base", "config_hash": "h", "architecture": None})
    for name, entry in variants.items():
        manifest = manifest.with_variant(name, entry)
        (out / "adapters" / name).mkdir(parents=True)
        (out / "adapters" / name / "adapter_config.json").write_text("{}")
    write_manifest(out, manifest)


def test_resolve_voters_takes_the_done_variants(tmp_path: Path) -> None:
    from ensemble.config.schema import Config
    from ensemble.pipeline import resolve_voters

    _manifest(tmp_path, {"a": {"status": "done", "adapter": "adapters/a"},
                         "old": {"status": "stale", "adapter": "adapters/old"}})
    assert resolve_voters(Config(out=str(tmp_path))) == {"a": str(tmp_path / "adapters" / "a")}


def test_resolve_voters_broken_manifest_names_the_file(tmp_path: Path) -> None:
    """Regression: a broken manifest was a raw JSONDecodeError traceback."""
    from ensemble.config.schema import Config
    from ensemble.pipeline import resolve_voters

    (tmp_path / "manifest.json").write_text('{"variants": ')
    with pytest.raises(EnsembleError, match=r"manifest.json: not a valid training manifest .*delete it to retrain"):
        resolve_voters(Config(out=str(tmp_path)))


def test_manifest_weights_without_manifest_says_train_first(tmp_path: Path) -> None:
    """Regression: weights_from: manifest with no training run was a raw FileNotFoundError."""
    from ensemble.evaluation.protocol import manifest_weights

    with pytest.raises(EnsembleError, match=r"manifest.json: not found; run `vote train CONFIG` with out: "):
        manifest_weights(str(tmp_path), None)


def test_manifest_weights_reads_heldout_accuracy(tmp_path: Path) -> None:
    from ensemble.evaluation.protocol import manifest_weights
    from ensemble.predictions.matrix import from_arrays
    from ensemble.voting.weighted import log_odds_weights

    _manifest(tmp_path, {"a": {"status": "done", "adapter": "adapters/a", "heldout_accuracy": 0.9},
                         "b": {"status": "done", "adapter": "adapters/b", "heldout_accuracy": 0.6}})
    m = from_arrays(np.array([[0, 1], [1, 1]]), ["A", "B"], voters=["a", "b"])  # (I=2, V=2) labels
    expected = log_odds_weights([0.9, 0.6], 2)
    assert manifest_weights(str(tmp_path), m) == pytest.approx(dict(zip(["a", "b"], expected)))
    # Items with 2 and 4 options (of 4 classes): chance is their mean, (1/2 + 1/4) / 2 = 0.375,
    # not 1/4 from the class count: b (0.6) gets log(0.6/0.4) - log(0.375/0.625).
    valid = np.array([[True, True, False, False], [True, True, True, True]])
    m4 = from_arrays(np.array([[0, 1], [3, 3]]), ["A", "B", "C", "D"], voters=["a", "b"], valid=valid)
    got = manifest_weights(str(tmp_path), m4)
    assert got["b"] == pytest.approx(np.log(0.6 / 0.4) - np.log(0.375 / 0.625))
    assert got["a"] == pytest.approx(np.log(0.9 / 0.1) - np.log(0.375 / 0.625))
