"""The package's import graph: dependencies point down (shared/DESIGN.md's module table).

The graph holds every import of an lmscope module that runs (at module level or inside a
function); imports under `if TYPE_CHECKING:` are for annotations only and left out, and so are
the imports inside the model's methods (its lazy facade: `model.generate` imports generation,
`from_pretrained` the loaders, which import the model; `run_with_cache(compile=...)`, a method of
its base `HookedRootModule`, imports `lmscope.compiled`, which builds on the hook points).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
FACADES = ("lmscope.model", "lmscope.hooks")  # whose class methods' imports are the lazy facade

# Cycles allowed (none: issue 20 removed the last ones); a new one fails the test.
KNOWN_CYCLES: set[frozenset[str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in (SRC / "lmscope").rglob("*.py")}


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The lmscope modules `module` imports when it runs (see the module docstring)."""

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str | None] = set()

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            facade = module in FACADES and isinstance(node, ast.ClassDef)
            child_lazy = lazy or (facade and isinstance(child, ast.FunctionDef))
            if isinstance(child, ast.Import) and not lazy:
                found.update(owner(a.name) for a in child.names if a.name.startswith("lmscope"))
            elif isinstance(child, ast.ImportFrom) and not lazy:
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*up, base] if base else up)
                if base.startswith("lmscope"):
                    for alias in child.names:
                        sub = f"{base}.{alias.name}"
                        found.add(sub if sub in modules else owner(base))
            visit(child, child_lazy)

    visit(ast.parse(path.read_text()), False)
    return {name for name in found if name is not None and name != module}


def _cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for v in graph:
        if v not in index:
            strong(v)
    return found


@functools.cache
def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_cycle_but_the_known_ones() -> None:
    cycles = _cycles(_graph())
    new = [sorted(c) for c in cycles - KNOWN_CYCLES]
    gone = [sorted(c) for c in KNOWN_CYCLES - cycles]
    assert not new, f"new import cycles: {new}"
    assert not gone, f"these cycles are gone: drop them from KNOWN_CYCLES: {gone}"


def test_the_kv_cache_sits_below_the_components_and_generation() -> None:
    graph = _graph()
    below = {"lmscope.kv_cache", "lmscope.tokens", "lmscope.sampling"}
    for name in below:
        above = {m for m in graph[name] if m.startswith(("lmscope.components", "lmscope.model"))}
        assert not above and "lmscope.generation" not in graph[name], (name, graph[name])
    for name in ("attention", "block", "mla"):
        assert "lmscope.generation" not in graph[f"lmscope.components.{name}"]
    assert "lmscope.generation" not in graph["lmscope.utils"]


def test_the_graph_sees_a_cycle() -> None:
    """The checker itself: a cycle in a made-up graph is found, a chain is not."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == {frozenset("abc")}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == set()
