"""The package's import graph: presentation only in poller/cli/, no cycles, no import hidden in
a function, the development tools out of the daemon's way."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "poller"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> tuple[set[str], list[tuple[str, int]]]:
    """The poller modules ``name`` imports when it runs (not those under TYPE_CHECKING), and
    the imports inside functions (target, line)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    runtime: set[str] = set()
    nested: list[tuple[str, int]] = []

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        base = node.module or ""
        if node.level:
            parent = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*parent, base] if base else parent)
        return [base, *(f"{base}.{alias.name}" for alias in node.names)]

    def visit(body: list[ast.stmt], top: bool) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in targets(node):
                    if target in MODULES and target != name:
                        runtime.add(target)
                        if not top:
                            nested.append((target, node.lineno))
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    inside = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                    visit([child], top and not inside)

    visit(tree.body, True)
    return runtime, nested


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_only_the_cli_imports_the_cli() -> None:
    outside = {
        name: sorted(t for t in targets if t.startswith("poller.cli"))
        for name, (targets, _) in GRAPH.items()
        if not name.startswith("poller.cli") and name != "poller.__main__"
    }
    assert {name: t for name, t in outside.items() if t} == {}


def test_no_import_inside_a_function() -> None:
    nested = {name: found for name, (_, found) in GRAPH.items() if found}
    assert nested == {}


def test_no_import_cycle() -> None:
    edges = {name: targets for name, (targets, _) in GRAPH.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                walk(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node)
    assert cycles == []


def test_the_daemon_never_imports_the_development_tools() -> None:
    users = sorted(
        name
        for name, (targets, _) in GRAPH.items()
        if any(t.startswith("poller.devtools") for t in targets)
        and not name.startswith(("poller.devtools", "poller.cli.devtools"))
    )
    assert users == []
