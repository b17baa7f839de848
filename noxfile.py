"""Every check of flowrhythm runs through nox: ``nox -l`` lists the sessions.

CI calls nox and nothing else (see ``.ci/run``). The test sessions install the
package itself, not the working tree, so they test what users get.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import nox

nox.needs_version = ">=2025.2.9"

nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "no"
nox.options.error_on_external_run = True
nox.options.sessions = ["tests-3.11", "lint", "typecheck"]

PYTHONS = ["3.11", "3.12", "3.13"]
# ``pip install --group`` (PEP 735 dependency groups) arrived in pip 25.1.
PIP_WITH_GROUPS = "pip>=25.1"


def _find_pyenv_pythons() -> None:
    """Let nox find Pythons that pyenv installed but has not activated.

    A pyenv shim such as ``python3.12`` only works for versions named in
    ``pyenv global``/``local``; for the others it is on ``PATH`` but fails.
    For each supported version that is missing from ``PATH`` or only present
    as a shim, put the ``bin`` of the newest matching pyenv install in front
    of ``PATH``. Without pyenv (no ``$PYENV_ROOT`` or ``~/.pyenv/versions``)
    this does nothing.
    """
    versions_dir = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    if not versions_dir.is_dir():
        return

    found: list[str] = []
    for minor in PYTHONS:
        exe = f"python{minor}"
        on_path = shutil.which(exe)
        if on_path is not None and Path(on_path).parent.name != "shims":
            continue
        installs = [
            (tuple(int(part) for part in d.name.split(".")), d / "bin")
            for d in versions_dir.glob(f"{minor}.*")
            if re.fullmatch(r"\d+\.\d+\.\d+", d.name) and os.access(d / "bin" / exe, os.X_OK)
        ]
        if installs:
            found.append(str(max(installs)[1]))

    if found:
        os.environ["PATH"] = os.pathsep.join([*found, os.environ.get("PATH", "")])


_find_pyenv_pythons()


def _install(session: nox.Session, *groups: str) -> None:
    """Install the package (not editable) and the given dependency groups."""
    session.install("--upgrade", PIP_WITH_GROUPS)
    args = ["."]
    for group in groups:
        args += ["--group", group]
    session.install(*args)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite on the installed package (asyncio and trio, via anyio_backend)."""
    _install(session, "tests")

    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff."""
    session.install("--upgrade", PIP_WITH_GROUPS)
    session.install("--group", "lint")

    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the package with mypy --strict."""
    _install(session, "typecheck")

    session.run("mypy", "--strict", "flowrhythm", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the HTML docs and run their examples, failing on any warning.

    Set FLOWRHYTHM_DOCS_INTERSPHINX=1 to link to other projects' docs (needs
    network access); see docs/conf.py.
    """
    _install(session, "docs")
    # Sphinx only re-reads changed pages and so would not repeat their warnings.
    shutil.rmtree("docs/_build", ignore_errors=True)

    session.run("sphinx-build", "-W", "-n", "-b", "html", "docs", "docs/_build/html")
    session.run("sphinx-build", "-W", "-b", "doctest", "docs", "docs/_build/doctest")


BENCHMARKS = ["hop", "accounting", "scaling", "options", "offload", "memory", "adaptive"]


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks: all of them, or those named after ``--`` (``-- hop scaling``)."""
    _install(session, "bench")
    # slurry pins trio<0.22, which anyio's trio backend cannot use; it runs on current trio.
    session.install("--no-deps", "-r", "benchmarks/requirements-nodeps.txt")
    for name in session.posargs or BENCHMARKS:
        if name not in BENCHMARKS:
            session.error(f"unknown benchmark {name!r}; choose from {BENCHMARKS}")
        session.run("python", f"benchmarks/{name}.py")
