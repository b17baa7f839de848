"""The backends every async test runs on, as ``conftest.py`` sets them up."""

from __future__ import annotations

import asyncio
from typing import Any

import _support
import pytest
import sniffio
from _support import DEBUG_GUARD_FACTOR, HANG_GUARD, backend_id, not_in_debug_mode

pytestmark = pytest.mark.anyio

#: The guard as this module imported it, before any test scaled it.
UNSCALED = HANG_GUARD


async def test_asyncio_runs_in_debug_mode_exactly_on_its_debug_backend(anyio_backend: Any) -> None:
    name = backend_id(anyio_backend)
    library = sniffio.current_async_library()
    assert library == ("trio" if name == "trio" else "asyncio")
    if library == "asyncio":
        assert asyncio.get_running_loop().get_debug() == (name == "asyncio-debug")


async def test_the_hang_guard_is_longer_in_debug_mode(anyio_backend: Any) -> None:
    factor = DEBUG_GUARD_FACTOR if backend_id(anyio_backend) == "asyncio-debug" else 1
    # Both the name a test module imported and the one the _support helpers read.
    assert HANG_GUARD == _support.HANG_GUARD == UNSCALED * factor
    assert DEBUG_GUARD_FACTOR > 1


def test_the_hang_guard_is_restored_after_a_debug_mode_test() -> None:
    assert HANG_GUARD == _support.HANG_GUARD == UNSCALED


@not_in_debug_mode()
async def test_a_volume_test_runs_on_every_backend_but_debug_mode(anyio_backend: Any) -> None:
    assert backend_id(anyio_backend) != "asyncio-debug"


def test_a_volume_test_keeps_the_other_backends() -> None:
    ids = [param.id for param in not_in_debug_mode().args[1]]
    assert ids == [param.id for param in _support.BACKENDS if param.id != "asyncio-debug"]
    assert {"asyncio", "trio"} <= set(ids)
