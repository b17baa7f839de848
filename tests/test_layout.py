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
