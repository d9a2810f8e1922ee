"""The package's structure: no import cycles, and dependencies pointing one way
(experiments → nn → gradients → solvers)."""

from __future__ import annotations

import ast
from pathlib import Path

import neurode

ROOT = Path(neurode.__file__).parent
LAYERS = {"solvers": 0, "gradients": 1, "nn": 2, "data": 2, "experiments": 3}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every neurode module ``path`` imports, at any depth (function-level imports included)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("neurode"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("neurode"):
                found.add(mod)
                found.update(f"{mod}.{a.name}" for a in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path, name) if m in modules and m != name}
    return graph


def _is_package_init(name: str, graph) -> bool:
    return any(other.startswith(name + ".") for other in graph)


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    # a package's __init__ re-exports its modules: an edge from a module to its own package (or
    # a parent package) is how Python imports it, not a dependency, so it is left out
    edges = {m: {d for d in deps if not (_is_package_init(d, graph) and m.startswith(d + "."))}
             for m, deps in graph.items()}
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(edges, WHITE)
    stack: list[str] = []
    cycles = []

    def visit(m):
        color[m] = GREY
        stack.append(m)
        for d in sorted(edges[m]):
            if color[d] == GREY:
                cycles.append([*stack[stack.index(d):], d])
            elif color[d] == WHITE:
                visit(d)
        stack.pop()
        color[m] = BLACK

    for m in sorted(edges):
        if color[m] == WHITE:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" → ".join(c) for c in cycles)


def test_dependencies_point_from_experiments_to_solvers_only():
    graph = _graph()
    wrong = []
    for m, deps in graph.items():
        parts = m.split(".")
        if len(parts) < 2 or parts[1] not in LAYERS:
            continue
        for d in deps:
            dp = d.split(".")
            if len(dp) >= 2 and dp[1] in LAYERS and LAYERS[dp[1]] > LAYERS[parts[1]]:
                wrong.append(f"{m} imports {d}")
    assert not wrong, wrong


def test_the_graph_walk_sees_function_level_imports():
    """The checks above would pass vacuously if the walk missed imports: it must see the lazy
    import of the plotting module inside the command-line code."""
    graph = _graph()
    assert "neurode.experiments.plots" in graph["neurode.experiments.cli"]
    assert "neurode.solvers.api" in graph["neurode.gradients.adjoint"]
