"""The product's import graph: no circles and no layer violations, from EVERY import statement.

Built with ``ast`` from the source of the product packages (module-level, function-level and
``TYPE_CHECKING`` imports alike, since an import inside a function hides a circle rather than removing
it). Layers: capture -> engine -> refine -> sonograde, calibration beside:
- capture imports nothing of ours but capture; refine nothing of ours but refine;
- engine nothing from calibration or sonograde;
- calibration nothing from sonograde;
- no product package imports ``research`` (research imports the product like any user).
A circle is a strongly connected set of two or more modules (or a module importing itself).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("capture", "engine", "refine", "calibration", "sonograde")
OURS = (*PRODUCT, "research")

FORBIDDEN: dict[str, frozenset[str]] = {
    "capture": frozenset({"engine", "refine", "calibration", "sonograde", "research"}),
    "refine": frozenset({"capture", "engine", "calibration", "sonograde", "research"}),
    "engine": frozenset({"calibration", "sonograde", "research"}),
    "calibration": frozenset({"sonograde", "research"}),
    "sonograde": frozenset({"research"}),
    "research": frozenset(),  # research may import the whole product; it is in the graph for circles
}

# Known edges allowed until the change that removes them lands; each names why. Keep this empty.
KNOWN_EXCEPTIONS: frozenset[tuple[str, str]] = frozenset()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_modules() -> dict[str, Path]:
    modules = {}
    for package in OURS:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules[module_name(path)] = path
    return modules


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest known module that ``name`` is or lies in (``a.b.c`` -> ``a.b`` if ``a.b.c`` is a name
    inside module ``a.b``)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """Every module of ours that ``module`` imports, wherever the statement is."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from pkg import submodule` imports the submodule (as `import pkg.submodule` does); `from pkg
            # import name` imports pkg itself
            names = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in known else prefix
                     for alias in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) \
                == "import_module" and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            names = [node.args[0].value]  # importlib.import_module("x.y") with a literal name
        for name in names:
            if name.split(".")[0] not in OURS:
                continue
            target = _resolve(name, known)
            if target is None and name.split(".")[0] == "research":
                target = name
            if target is not None and target != module:
                targets.add(target)
    return targets


def import_graph() -> dict[str, set[str]]:
    modules = product_modules()
    known = set(modules)
    return {module: imports_of(module, path, known) for module, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in graph:
                continue
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _cycle_path(graph: dict[str, set[str]], component: list[str]) -> str:
    """One concrete circle through a component, for the failure message."""
    members = set(component)
    start = component[0]
    path, seen, node = [start], {start}, start
    while True:
        node = sorted(n for n in graph[node] if n in members)[0]
        if node in seen:
            return " -> ".join([*path[path.index(node):], node])
        path.append(node)
        seen.add(node)


def test_the_graph_sees_function_level_imports() -> None:
    """Sanity: a known function-level import is an edge (the graph does not only read module tops)."""
    graph = import_graph()
    assert len(graph) > 50
    assert "capture.phantom" in graph["engine.data.datasets"]  # inside phantom_samples


def test_no_import_circles() -> None:
    graph = import_graph()
    for source, target in KNOWN_EXCEPTIONS:
        graph[source].discard(target)
    circles = [_cycle_path(graph, c) for c in strongly_connected(graph)]
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_layers() -> None:
    violations = []
    for module, targets in import_graph().items():
        forbidden = FORBIDDEN[module.split(".")[0]]
        for target in sorted(targets):
            if target.split(".")[0] in forbidden and (module, target) not in KNOWN_EXCEPTIONS:
                violations.append(f"{module} imports {target}")
    assert not violations, "layer violations:\n" + "\n".join(violations)


def test_known_exceptions_still_exist() -> None:
    """An exception whose edge is gone must be removed from KNOWN_EXCEPTIONS (it would hide a new one)."""
    graph = import_graph()
    stale = [f"{a} -> {b}" for a, b in KNOWN_EXCEPTIONS if b not in graph.get(a, set())]
    assert not stale, "remove from KNOWN_EXCEPTIONS: " + ", ".join(stale)
