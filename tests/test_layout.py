"""The package's shape: definitions never import the run machinery."""

from __future__ import annotations

import ast
from pathlib import Path

import flowrhythm

PACKAGE = Path(flowrhythm.__file__).parent

#: The top-level modules allowed to import ``flowrhythm._run``.
RUN_IMPORTERS = {"__init__.py", "_flow.py"}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports made absolute."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(("flowrhythm", *path.relative_to(PACKAGE).parent.parts))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_only_the_flow_and_the_facade_import_the_run_machinery() -> None:
    offenders = {
        path.name
        for path in PACKAGE.glob("*.py")
        if path.name not in RUN_IMPORTERS
        and any(
            m == "flowrhythm._run" or m.startswith("flowrhythm._run.")
            for m in imported_modules(path)
        )
    }
    assert offenders == set()


def test_the_run_machinery_never_imports_the_flow_or_the_facade() -> None:
    for path in (PACKAGE / "_run").glob("*.py"):
        imported = imported_modules(path)
        assert "flowrhythm._flow" not in imported, path.name
        assert "flowrhythm" not in imported, path.name


def test_the_import_checker_sees_relative_imports() -> None:
    assert "flowrhythm._run._run" in imported_modules(PACKAGE / "_flow.py")
    assert "flowrhythm._options" in imported_modules(PACKAGE / "_run" / "_job.py")


def _module_name(path: Path) -> str:
    parts = ("flowrhythm", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts).removesuffix(".__init__")


def _import_graph() -> dict[str, set[str]]:
    paths = [*PACKAGE.glob("*.py"), *(PACKAGE / "_run").glob("*.py")]
    modules = {_module_name(path): path for path in paths}
    return {
        name: {m for m in imported_modules(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


#: ``FlowStats.report()`` and ``.bottleneck()`` render with ``_report``, whose
#: functions name ``FlowStats`` and ``JobStats`` in their annotations only.
KNOWN_CYCLES = [{"flowrhythm._report", "flowrhythm._stats"}]


def test_imports_point_one_way() -> None:
    assert _cycles(_import_graph()) == KNOWN_CYCLES


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [{"a", "b", "c"}]
