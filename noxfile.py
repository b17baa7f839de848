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

PYPROJECT = nox.project.load_toml("pyproject.toml")
#: The supported Pythons, read from the classifiers in pyproject.toml (one list).
PYTHONS = nox.project.python_versions(PYPROJECT)
# ``pip install --group`` (PEP 735 dependency groups) arrived in pip 25.1.
PIP_WITH_GROUPS = "pip>=25.1"

nox.options.sessions = [*(f"tests-{v}" for v in PYTHONS), "lint", "typecheck", "docs"]


def _find_pyenv_pythons() -> None:
    """Put pyenv's newest install of each supported Python on ``PATH``.

    A pyenv shim such as ``python3.12`` fails for a version not named in
    ``pyenv global``; the install's own ``bin`` works. Without pyenv this
    changes nothing.
    """
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    installs = sorted(
        (tuple(map(int, d.name.split("."))), d / "bin")
        for d in root.glob("3.*")
        if re.fullmatch(r"3\.\d+\.\d+", d.name)
    )
    newest = {f"{v[0]}.{v[1]}": str(bin_dir) for v, bin_dir in installs}
    found = [newest[v] for v in PYTHONS if v in newest]
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

    options = []
    if session.python == PYTHONS[0] and not session.posargs:
        # Branch coverage of the installed package, printed once (first Python).
        options = ["--cov=flowrhythm", "--cov-branch", "--cov-report=term:skip-covered"]
    if session.python != PYTHONS[-1] and not session.posargs:
        # asyncio's debug mode runs the same code: once, on the newest Python, is enough.
        options += ["-k", "not asyncio-debug"]
    session.run("pytest", *options, *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff."""
    session.install("--upgrade", PIP_WITH_GROUPS)
    session.install("--group", "lint")

    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the package and its tests with mypy --strict."""
    _install(session, "typecheck")

    session.run("mypy", "--strict", "flowrhythm", "tests", *session.posargs)


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


BENCHMARKS = [
    "hop",
    "paths",
    "accounting",
    "scaling",
    "options",
    "offload",
    "memory",
    "routing",
    "adaptive",
    "wrappers",
    "ledger",
]


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
