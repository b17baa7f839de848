"""Every Python block of README.md and docs/*.md runs, and the docs stand on their own.

The ``{testcode}`` blocks of the docs run in the Sphinx doctest build (``nox -s docs``);
this module runs the fenced ```` ```python ```` blocks, page by page, in order:

* a block that defines pytest tests (``def test_...``) is run by pytest;
* a block with ``if __name__ == "__main__":`` is a program: it runs as a script;
* any other block runs in one namespace shared with the page's earlier blocks, as if
  typed into ``python -m asyncio`` (top-level ``await`` is allowed).

A block that cannot run (it needs a server, say) is preceded by a comment
``<!-- not run: <the reason> -->``; a marker without a reason fails the test.
"""

from __future__ import annotations

import ast
import inspect
import pydoc
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from _support import (
    ROOT,
)

import flowrhythm

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```python\n(.*?)^```\n", re.DOTALL | re.MULTILINE)
MARKER = re.compile(r"<!-- not run:(.*?)-->\s*\Z", re.DOTALL)


class Block:
    def __init__(self, page: Path, line: int, code: str, skip_reason: str | None) -> None:
        self.page = page
        self.line = line
        self.code = code
        self.skip_reason = skip_reason

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()]
        marker = MARKER.search(before)
        reason = marker.group(1).strip() if marker else None
        line = before.count("\n") + 2  # the block's first line of code
        blocks.append(Block(page, line, match.group(1), reason))
    return blocks


def run_in_subprocess(args: list[str], cwd: Path, where: str) -> None:
    done = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{where} failed:\n{done.stdout}\n{done.stderr}"


def run_page(page: Path, tmp_path: Path) -> None:
    namespace: dict[str, Any] = {"__name__": f"docs_{page.stem}"}
    for index, block in enumerate(blocks_of(page)):
        if block.skip_reason is not None:
            continue
        script = tmp_path / f"block_{index}.py"
        if re.search(r"^(async )?def test_", block.code, re.MULTILINE):
            script.write_text(block.code, encoding="utf-8")
            run_in_subprocess(
                ["-m", "pytest", "-q", "-p", "no:cacheprovider", script.name],
                tmp_path,
                block.where,
            )
        elif 'if __name__ == "__main__":' in block.code:
            script.write_text(block.code, encoding="utf-8")
            run_in_subprocess([script.name], tmp_path, block.where)
        else:
            code = compile(
                "\n" * (block.line - 1) + block.code,
                str(block.page),
                "exec",
                flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            )
            if code.co_flags & inspect.CO_COROUTINE:

                async def main(code: Any = code) -> None:
                    await eval(code, namespace)

                anyio.run(main)
            else:
                exec(code, namespace)  # noqa: S102 - running the docs' code is the point


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_every_python_block_runs(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # blocks may write files (timeline.csv, ...)
    monkeypatch.syspath_prepend(str(tmp_path))
    run_page(page, tmp_path)


def test_a_block_not_run_says_why() -> None:
    skipped = [block for page in PAGES for block in blocks_of(page) if block.skip_reason]
    for block in skipped:
        assert len(block.skip_reason or "") >= 10, f"{block.where}: say why it is not run"


def test_the_pages_have_python_blocks() -> None:
    # The extraction itself works: a change of fence style would silently run nothing.
    counts = {page.name: len(blocks_of(page)) for page in PAGES}
    assert counts["README.md"] >= 2
    assert counts["observing.md"] >= 5
    assert counts["testing.md"] >= 1


def test_no_install_line_sends_users_to_the_package_index() -> None:
    # The name flowrhythm on the Python Package Index belongs to another project.
    pattern = re.compile(r"pip install\s+(-U\s+|--upgrade\s+)?['\"]?flowrhythm\b")
    files = [*PAGES, *sorted((ROOT / "flowrhythm").glob("*.py")), *(ROOT / "examples").glob("*")]
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            assert not pattern.search(line), f"{path.relative_to(ROOT)}:{number}: {line}"


def test_the_docs_cite_no_outside_contract() -> None:
    files = [
        *PAGES,
        *sorted((ROOT / "flowrhythm").glob("*.py")),
        *sorted((ROOT / "tests").glob("*.py")),
        *sorted((ROOT / "examples").glob("*.py")),
    ]
    needle = "API " + "§"  # spelled in two parts so that this file passes its own test
    for path in files:
        assert needle not in path.read_text(encoding="utf-8"), path.relative_to(ROOT)


def test_the_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv")]
    assert len(commands) == 2, "the set-up is two commands"
    assert ".[demo]" in commands[0]
    assert "-m flowrhythm demo" in commands[0]
    assert commands[1] in ci.splitlines()


def test_ci_tests_exactly_the_pythons_the_package_declares() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    declared = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', pyproject)
    assert declared == ["3.11", "3.12", "3.13"]
    assert f'requires-python = ">={declared[0]}"' in pyproject
    # the noxfile reads its list of Pythons from those classifiers: one list
    noxfile = (ROOT / "noxfile.py").read_text(encoding="utf-8")
    assert re.search(
        r"^PYTHONS = nox\.project\.python_versions\(PYPROJECT\)$", noxfile, re.MULTILINE
    )
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "-s tests " in ci  # every Python of PYTHONS, not one of them


@pytest.mark.parametrize("cls", [flowrhythm.Capacity, flowrhythm.UtilizationCapacity])
def test_help_shows_computed_defaults_not_the_attrs_sentinel(cls: type) -> None:
    assert "NOTHING" not in pydoc.render_doc(cls, renderer=pydoc.plaintext)  # type: ignore[attr-defined]
    signature = str(inspect.signature(cls))
    assert "max_workers: 'int' = max(min_workers, 1)" in signature
    assert "initial_workers: 'int' = min_workers" in signature
