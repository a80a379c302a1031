"""The engine's shape: no import cycle (engine and benchmarks), short functions, a small
public surface with documented names, and no process-wide faiss setting left behind."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "MemorizationIndex" / "MemorizationIndexLib"
BENCHMARKS = ROOT / "Testing" / "benchmarks"
MAX_FUNCTION_LINES = 60
LONG_REASON = "most of this function is"  # a docstring that says why a function is longer


def module_name(path: Path, base: Path, prefix: str) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([prefix, *parts]) if parts else prefix


def modules() -> dict[str, Path]:
    found = {}
    for base, prefix in ((ENGINE, "MemorizationIndexLib"), (BENCHMARKS, "Testing.benchmarks")):
        for path in base.rglob("*.py"):
            found[module_name(path, base, prefix)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of `known` that a module imports anywhere (also inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_in_the_engine_or_the_benchmarks():
    found = modules()
    graph = {name: imports_of(name, path, set(found)) for name, path in found.items()}
    # A package's __init__ that re-exports its modules is not a cycle with them.
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_engine_functions_are_short_or_say_why():
    long = []
    for path in ENGINE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                doc = ast.get_docstring(node) or ""
                if lines > MAX_FUNCTION_LINES and LONG_REASON not in doc:
                    long.append(f"{path.relative_to(ENGINE)}:{node.name} ({lines} lines)")
    assert not long, long


def test_public_surface_is_small_documented_and_cheap_to_import():
    import MemorizationIndexLib as mi

    names = [n for n in mi.__all__ if n != "__version__"]
    assert len(names) <= 16
    for name in names:
        obj = getattr(mi, name)
        assert (obj.__doc__ or "").strip(), f"{name} has no docstring"
    # Importing the package loads none of the heavy dependencies.
    assert heavy_imports("MemorizationIndexLib") == []


def test_combining_scores_loads_neither_the_search_nor_torch():
    assert heavy_imports("MemorizationIndexLib.calibration.combination") == []


def heavy_imports(module: str) -> list[str]:
    """Which of torch, faiss and SimpleITK a fresh interpreter has loaded after `import module`."""
    code = (
        f"import sys, {module}; "
        "print(','.join(m for m in ('torch', 'faiss', 'SimpleITK') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ENGINE.parent)},
    )
    return [m for m in out.stdout.strip().split(",") if m]


def test_faiss_setting_is_scoped_to_the_engines_searches():
    import faiss
    from MemorizationIndexLib.search.index import QuerySlices, SliceIndex

    before = faiss.cvar.distance_compute_blas_threshold
    rng = np.random.default_rng(0)
    features = [rng.standard_normal((40, 8)).astype(np.float32)]
    index = SliceIndex(top_k=3).fit(features, np.arange(40) // 10, np.zeros((40, 8, 8), np.uint8))
    result = index.search(QuerySlices([(np.arange(5), [features[0][:5]])], np.zeros((5, 8, 8))))
    assert np.array_equal(result.match_rows, np.arange(5))
    assert faiss.cvar.distance_compute_blas_threshold == before
