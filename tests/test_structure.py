"""The shape of the code, checked from its source: module size, import cycles, which layers may
use which libraries, and how test modules share code.

Everything here reads files and parses them with `ast`; nothing is imported or run, so a cycle
is found even where Python would tolerate it (a function-level import, an `if TYPE_CHECKING:`
block) and each failure lists every offender at once.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "relay"
TESTS = ROOT / "tests"
MAX_LINES = 400


def _module_name(path: Path, top: Path) -> str:
    parts = list(path.relative_to(top.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def _modules(top: Path) -> dict[str, Path]:
    return {
        _module_name(p, top): p
        for p in sorted(top.rglob("*.py"))
        if "node_modules" not in p.parts and "__pycache__" not in p.parts
    }


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the module imported (a package's __init__ when a name is not a module)
    line: int
    kind: str  # "module-level", "function-level" or "TYPE_CHECKING"
    names: tuple[str, ...] = ()  # for `from X import a, b`: a, b (to tell X.a modules apart)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _ImportScan(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[tuple[str, tuple[str, ...], int, str]] = []
        self._depth = 0  # inside a function
        self._type_checking = 0

    def _kind(self) -> str:
        if self._type_checking:
            return "TYPE_CHECKING"
        return "function-level" if self._depth else "module-level"

    def _function(self, node: ast.AST) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._type_checking += 1
            for child in node.body:
                self.visit(child)
            self._type_checking -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((alias.name, (), node.lineno, self._kind()))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        names = tuple(a.name for a in node.names)
        self.found.append((target, names, node.lineno, self._kind()))


@functools.cache
def _imports(path: Path, module: str) -> list[tuple[str, tuple[str, ...], int, str]]:
    scan = _ImportScan(module, path.name == "__init__.py")
    scan.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return scan.found


def _resolve(target: str, names: tuple[str, ...], known: dict[str, Path]) -> list[str]:
    """The known modules an import statement loads: `from relay.x import y` is relay.x.y when
    that is a module, else relay.x; `import relay.x.y.Z` (no such module) is relay.x.y."""
    resolved = []
    rest = []
    for name in names:
        if f"{target}.{name}" in known:
            resolved.append(f"{target}.{name}")
        else:
            rest.append(name)
    if rest or not names:
        parts = target.split(".")
        while parts and ".".join(parts) not in known:
            parts.pop()
        if parts:
            resolved.append(".".join(parts))
    return resolved


def _edges(top: Path) -> list[Import]:
    known = _modules(top)
    edges = []
    for module, path in known.items():
        for target, names, line, kind in _imports(path, module):
            for resolved in _resolve(target, names, known):
                if resolved != module:
                    edges.append(Import(module, resolved, line, kind, names))
    return edges


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively: the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _shortest_cycle(start: str, graph: dict[str, set[str]], members: set[str]) -> list[str]:
    """The shortest path start -> ... -> start inside one component (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{start} is on no cycle")


def import_cycles(top: Path = PACKAGE) -> list[str]:
    """One entry per set of modules under `top` that import one another in a circle (a strongly
    connected component): its shortest cycle through the set's first module, the whole set, and
    for each step the importing line and the kinds of import (module-level, function-level,
    TYPE_CHECKING)."""
    edges = _edges(top)
    graph: dict[str, set[str]] = {}
    how: dict[tuple[str, str], list[Import]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
        how.setdefault((edge.source, edge.target), []).append(edge)
    described = []
    for component in _strongly_connected(graph):
        cycle = _shortest_cycle(component[0], graph, set(component))
        steps = []
        for source, target in zip(cycle, cycle[1:], strict=False):
            first = min(how[source, target], key=lambda e: (e.kind != "module-level", e.line))
            kinds = sorted({e.kind for e in how[source, target]})
            steps.append(f"{source} -> {target} (line {first.line}, {'/'.join(kinds)})")
        pairs = list(zip(cycle, cycle[1:], strict=False))
        typing_edges = [any(e.kind == "TYPE_CHECKING" for e in how[p]) for p in pairs]
        if all(all(e.kind == "TYPE_CHECKING" for e in how[p]) for p in pairs):
            typing_note = " [closed only through TYPE_CHECKING imports]"
        elif any(typing_edges):
            typing_note = " [uses TYPE_CHECKING imports]"
        else:
            typing_note = ""
        rest = f" (component of {len(component)}: {', '.join(component)})"
        described.append(
            " -> ".join(cycle) + typing_note + rest + "\n      " + "\n      ".join(steps)
        )
    return described


# ---- size ----------------------------------------------------------------------------------


def test_no_module_in_relay_is_over_400_lines() -> None:
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
        for p in _modules(PACKAGE).values()
    }
    over = sorted(((n, p) for p, n in sizes.items() if n > MAX_LINES), reverse=True)
    assert not over, f"{len(over)} module(s) over {MAX_LINES} lines: " + ", ".join(
        f"{p} ({n})" for n, p in over
    )


# ---- cycles --------------------------------------------------------------------------------


def test_no_import_cycles_in_relay() -> None:
    cycles = import_cycles()
    assert not cycles, f"{len(cycles)} import cycle(s) in relay/:\n  " + "\n  ".join(cycles)


def test_the_cycle_finder_finds_cycles(tmp_path: Path) -> None:
    """The scan itself: a three-module cycle closed by a function-level import, a relative
    import, a `from package import module` and a TYPE_CHECKING-only pair are all found."""
    pkg = tmp_path / "relay"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from relay import b\n",
        "b.py": "from .sub import c\n",
        "sub/__init__.py": "",
        "sub/c.py": "def f():\n    import relay.a.thing\n",
        "x.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from relay import y\n",
        "y.py": "import relay.x\n",
        "z.py": "import relay.a\nimport os\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text, encoding="utf-8")
    cycles = import_cycles(pkg)
    assert len(cycles) == 2, cycles
    first, second = sorted(cycles)
    assert first.startswith("relay.a -> relay.b -> relay.sub.c -> relay.a (")
    assert "function-level" in first and "TYPE_CHECKING" not in first
    assert second.startswith("relay.x -> relay.y -> relay.x [uses TYPE_CHECKING imports]")


# ---- layers and libraries ------------------------------------------------------------------


def _uses(top: Path, library: str) -> list[str]:
    """file:line of every import of `library` (or a submodule) in the files under `top`."""
    hits = []
    for module, path in _modules(top).items():
        for target, _names, line, kind in _imports(path, module):
            if target == library or target.startswith(library + "."):
                hits.append(f"{path.relative_to(ROOT)}:{line} ({kind})")
    return hits


def test_sources_do_not_use_prometheus() -> None:
    # Sources keep plain counters; relay/ops reads them at scrape time.
    hits = _uses(PACKAGE / "sources", "prometheus_client")
    assert not hits, "Prometheus imported in relay/sources: " + ", ".join(hits)


def test_sources_do_not_import_ops() -> None:
    hits = _uses(PACKAGE / "sources", "relay.ops")
    assert not hits, "relay/sources imports relay.ops: " + ", ".join(hits)


def test_sqlite3_only_in_the_spool() -> None:
    allowed = {PACKAGE / "dev" / "status_store.py"}  # the stand-in's own record of what it got
    hits = [
        hit
        for hit in _uses(PACKAGE, "sqlite3")
        if not hit.startswith("relay/spool/") and ROOT / hit.split(":")[0] not in allowed
    ]
    assert not hits, "sqlite3 imported outside relay/spool: " + ", ".join(hits)


# ---- tests ---------------------------------------------------------------------------------


def _is_test_module(module: str) -> bool:
    last = module.rsplit(".", 1)[-1]
    return last.startswith("test_") or last == "conftest"


def test_test_modules_share_code_only_through_tests_helpers() -> None:
    """A test module imports no other test module; code shared between folders lives in
    tests/helpers/. A helper next to the one test module that uses it may stay there."""
    known = _modules(TESTS)
    bad = []
    for module, path in known.items():
        if module.startswith("tests.helpers"):
            continue
        folder = module.rpartition(".")[0] if path.name != "__init__.py" else module
        for target, names, line, _kind in _imports(path, module):
            if target != "tests" and not target.startswith("tests."):
                continue
            for resolved in _resolve(target, names, known) or [target]:
                if resolved == "tests.helpers" or resolved.startswith("tests.helpers."):
                    continue
                if _is_test_module(resolved):
                    why = "a test module"
                elif resolved.rpartition(".")[0] != folder:
                    why = "another folder's helper (shared helpers go to tests/helpers/)"
                else:
                    continue
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {resolved}, {why}")
    assert not bad, f"{len(bad)} import(s) between test modules:\n  " + "\n  ".join(bad)


def test_tests_wait_for_conditions_through_tests_helpers() -> None:
    """A test waits for a condition with `wait_until` / `eventually` (tests/helpers/waiting.py),
    which say what they waited for when it never came, not with a loop of its own against a
    deadline. (A fixed window that measures a rate or an absence is a loop of another shape,
    with a comment saying so.)"""
    helpers = TESTS / "helpers"
    loop = re.compile(r"deadline\s*=\s*time\.monotonic\(\)")
    bad = []
    for path in sorted(TESTS.rglob("*.py")):
        if helpers in path.parents:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if loop.search(line):
                bad.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not bad, "hand-written deadline loops (use wait_until / eventually):\n  " + "\n  ".join(
        bad
    )
