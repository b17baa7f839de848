"""The README's quickstart is examples/quickstart.py, and it runs on both backends."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart.py"

pytestmark = pytest.mark.anyio


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_quickstart_is_the_example_file() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    assert QUICKSTART.read_text(encoding="utf-8") in blocks


async def test_quickstart_prints_the_results(capsys: pytest.CaptureFixture[str]) -> None:
    await load(QUICKSTART).main()
    assert capsys.readouterr().out.splitlines() == [f"Result: {n}" for n in range(2, 6)]


def test_quickstart_runs_as_a_script() -> None:
    done = subprocess.run(
        [sys.executable, str(QUICKSTART)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"Result: {n}" for n in range(2, 6)]
