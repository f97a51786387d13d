"""Imports run one way: no cycle between adaptive_think's packages or modules, and the runtime never imports the
training pipeline.

The graph is read from the source (AST), function-level imports included, so an import that only runs on some
path still counts. Nodes are modules (adaptive_think/**.py and the kernels under kernels/, which install as
adaptive_think.kernels.<op>); `from pkg import name` is an edge to pkg.name when that is a module, else to pkg.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = "adaptive_think.training"  # the offline pipeline: no running model imports any of it
RUNTIME = ("adaptive_think.thinker", "adaptive_think.patching", "adaptive_think.integrations.vllm")


def _modules() -> dict[str, Path]:
    """Module name -> file, for the package and the kernels installed under it."""
    out = {}
    for path in (ROOT / "adaptive_think").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in (ROOT / "kernels").rglob("*.py"):
        parts = ("adaptive_think",) + path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The adaptive_think modules `name` imports anywhere in its file (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name inside a module: its module
                target = target.rpartition(".")[0]
            if target.startswith("adaptive_think") and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _package(module: str, modules) -> str:
    """The package a module belongs to (a package's __init__ is the package itself); top-level modules stand alone."""
    parts = module.split(".")
    if len(parts) <= 2:
        return module
    return module if module in modules and (modules[module].name == "__init__.py") else ".".join(parts[:-1])


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def _package_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for module, targets in _graph().items():
        src = _package(module, modules)
        for target in targets:
            dst = _package(target, modules)
            if dst != src and not src.startswith(dst + ".") and not dst.startswith(src + "."):
                graph.setdefault(src, set()).add(dst)
            elif dst != src and dst.startswith(src + "."):  # a package reaching into its own sub-package
                graph.setdefault(src, set()).add(dst)
    return graph


def test_the_graph_sees_function_level_imports():
    graph = _graph()
    # controller.dispatch imports the host side of the kernel inside its function only
    assert "adaptive_think.controller.kernel_buffers" in graph["adaptive_think.controller.dispatch"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_cycle_between_packages():
    cycles = _cycles(_package_graph())
    assert not cycles, f"packages that import each other: {cycles}"


def test_kernel_packages_import_only_the_kernels_home():
    """kernels/<op> reads its layouts as arguments: nothing of adaptive_think but adaptive_think.kernels."""
    graph = _graph()
    for module, targets in graph.items():
        if module.startswith("adaptive_think.kernels."):
            outside = {t for t in targets if not t.startswith("adaptive_think.kernels")}
            assert not outside, f"{module} imports {outside}"


def test_no_cycle_between_modules():
    cycles = _cycles(_graph())
    assert not cycles, f"modules that import each other: {cycles}"


@pytest.mark.parametrize("module", RUNTIME)
def test_runtime_does_not_import_the_training_pipeline(module):
    """Importing the runtime (AdaptiveThinker, patch, the vLLM integration) loads none of the offline pipeline."""
    code = (f"import sys, {module}\n"
            f"print(sorted(m for m in sys.modules if m.startswith({PIPELINE!r})))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", f"{module} imports {out.stdout.strip()}"
