"""Fixtures shared by every test room."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

CHIRON = [sys.executable, "-m", "chiron"]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def chiron_home(tmp_path: Path) -> Path:
    home = tmp_path / "chiron-home"
    home.mkdir()
    return home


@pytest.fixture
def run_chiron(chiron_home: Path):
    """Run the real `chiron` command line in a subprocess with its own state directory."""

    def run(*args: str | os.PathLike[str], timeout: float = 600, check: bool = False) -> Result:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHIRON_")}
        env["CHIRON_HOME"] = str(chiron_home)
        completed = subprocess.run(
            [*CHIRON, *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        result = Result(completed.returncode, completed.stdout, completed.stderr)
        if check and result.returncode != 0:
            raise AssertionError(f"chiron {' '.join(map(str, args))} failed: {result.stderr}")
        return result

    return run
