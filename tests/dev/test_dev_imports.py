"""relay/dev has no import cycle, counting imports made only for type checking or inside
functions: the status service's core knows no transport, the transports know the core, and
upstream.py wires them (issue 11)."""

from __future__ import annotations

import ast
from pathlib import Path

import relay.dev

PACKAGE = "relay.dev"
FOLDER = Path(relay.dev.__file__).parent


def _imports(path: Path) -> set[str]:
    """The relay.dev modules that ``path`` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from relay.dev import status_http` imports a module named by the alias
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if _is_module(name))
    return found


def _is_module(name: str) -> bool:
    if not name.startswith(PACKAGE + "."):
        return False
    return (FOLDER / f"{name.removeprefix(PACKAGE + '.')}.py").exists()


def _graph() -> dict[str, set[str]]:
    return {
        f"{PACKAGE}.{path.stem}": _imports(path) - {f"{PACKAGE}.{path.stem}"}
        for path in sorted(FOLDER.glob("*.py"))
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules, or None (depth-first search with colours)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_relay_dev_has_no_import_cycle() -> None:
    graph = _graph()
    assert "relay.dev.status_service" in graph["relay.dev.status_http"]
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_status_core_imports_no_transport() -> None:
    core = _graph()["relay.dev.status_service"]
    assert not core & {"relay.dev.status_http", "relay.dev.status_rsocket", "relay.dev.upstream"}


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
