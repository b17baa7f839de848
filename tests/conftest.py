"""Shared fixtures: every async test runs on asyncio, trio, asyncio in debug mode and uvloop.

uvloop is a fourth backend when it is installed (the ``tests`` dependency group installs it
where it builds). The session fails if a backend had tests set up but none of them passed:
anyio's plugin skips a backend that is missing, and a silently skipped trio run must not
look green.

asyncio's debug mode runs every async test but the tests of volume (thousands of items or
workers, many random instants: ``_support.not_in_debug_mode``), with a longer hang guard.
"""

from __future__ import annotations

import collections
from collections.abc import Generator, Iterator
from typing import Any

import _support
import pytest
from _support import BACKENDS, DEBUG_GUARD_FACTOR, assert_no_unclosed_streams, backend_id


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Parametrise every ``pytest.mark.anyio`` test over the backends."""
    return request.param


@pytest.fixture
def no_unclosed_streams() -> Iterator[None]:
    """After the test, fail if it left a memory stream unclosed (a ResourceWarning).

    A module asks for it with ``pytestmark = pytest.mark.usefixtures("no_unclosed_streams")``.
    """
    yield
    assert_no_unclosed_streams()


@pytest.fixture(autouse=True)
def _hang_guard_for_the_backend(request: pytest.FixtureRequest) -> Iterator[None]:
    """In asyncio's debug mode, a longer hang guard (:data:`_support.HANG_GUARD`).

    Test modules import the guard by name, so the module's own name is scaled too.
    """
    if _backend_id(request.node) != "asyncio-debug":
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        scaled = _support.HANG_GUARD * DEBUG_GUARD_FACTOR
        patch.setattr(_support, "HANG_GUARD", scaled)
        if hasattr(request.module, "HANG_GUARD"):
            patch.setattr(request.module, "HANG_GUARD", scaled)
        yield


_SET_UP: collections.Counter[str] = collections.Counter()
_PASSED: collections.Counter[str] = collections.Counter()


def _backend_id(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None or "anyio_backend" not in callspec.params:
        return None
    return backend_id(callspec.params["anyio_backend"])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    backend = _backend_id(item)
    if backend is not None:
        if report.when == "setup":
            _SET_UP[backend] += 1
        elif report.when == "call" and report.passed:
            _PASSED[backend] += 1
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a backend had tests set up but none of them passed."""
    silent = [name for name in _SET_UP if not _PASSED[name]]
    if silent and exitstatus == pytest.ExitCode.OK:
        session.config.get_terminal_writer().line(
            f"no async test passed on: {', '.join(silent)}", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
