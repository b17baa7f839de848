"""How the tests are laid out: no test module imports another.

(The package's own layout -- which of its modules may import the run machinery -- is
checked in ``test_layout.py``.)

Shared test helpers live in ``tests/_support.py`` (and, for what runs in worker
processes, ``tests/offload_helpers.py``). A test module that imports another hides
where its helpers live and ties the two together (moving or splitting one breaks the
other; a fixture imported with a helper silently applies in both).
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    """Every module named by an ``import`` or ``from ... import`` in the file at ``path``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import test_x, from .test_x import y
                base = node.module or ""
                names.update([base] if base else [alias.name for alias in node.names])
            elif node.module is not None:
                names.add(node.module)
    return names


def is_test_module(name: str) -> bool:
    """``test_x``, ``tests.test_x`` and the like: a module pytest collects tests from."""
    return any(part.startswith("test_") for part in name.split("."))


def test_the_check_sees_every_kind_of_import_of_a_test_module(tmp_path: Path) -> None:
    source = tmp_path / "test_sample.py"
    source.write_text(
        "import test_a\n"
        "import tests.test_b as b\n"
        "from test_c import x\n"
        "from tests.test_d import y\n"
        "from .test_e import z\n"
        "from . import test_f\n"
        "def f():\n"
        "    from test_g import w\n"
        "from _support import Sink\n"
        "import flowrhythm.testing\n",
        encoding="utf-8",
    )
    found = sorted(name for name in imported_modules(source) if is_test_module(name))
    assert found == [
        "test_a",
        "test_c",
        "test_e",
        "test_f",
        "test_g",
        "tests.test_b",
        "tests.test_d",
    ]


def test_no_test_module_imports_another_test_module() -> None:
    offenders = {
        path.name: sorted(name for name in imported_modules(path) if is_test_module(name))
        for path in sorted(TESTS.glob("test_*.py"))
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_helper_modules_import_no_test_module() -> None:
    for path in [TESTS / "_support.py", TESTS / "offload_helpers.py", TESTS / "conftest.py"]:
        assert not [name for name in imported_modules(path) if is_test_module(name)], path.name
