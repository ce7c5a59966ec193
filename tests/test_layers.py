"""Imports point one way: beam_pipeline (CLI, assembly) -> transforms (Beam steps) -> lantern (plain).

Read from the source with ``ast``, lazy imports inside functions included, so a
shortcut taken in a function body is caught too.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("beam_pipeline", "transforms", "lantern")  # each may import only those after it


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    modules = {_module(p): p for layer in LAYERS for p in (ROOT / layer).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            deps.update(t for t in targets if t in modules and t != name)
        graph[name] = deps
    return graph


def test_imports_point_one_way():
    wrong = []
    for module, deps in _graph().items():
        rank = LAYERS.index(module.split(".")[0])
        wrong += [f"{module} imports {dep}" for dep in deps
                  if LAYERS.index(dep.split(".")[0]) < rank]
    assert not wrong, "; ".join(sorted(wrong))


def test_no_import_cycles():
    graph = _graph()
    # A package's __init__ importing its own modules is not a cycle through the package.
    for module in graph:
        graph[module] = {d for d in graph[module] if not module.startswith(d + ".")}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join([*stack[stack.index(dep):], dep]))
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "; ".join(cycles)
