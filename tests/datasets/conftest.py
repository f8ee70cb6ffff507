"""The `chiron` command line run in-process for the dataset tests."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `chiron ARGS...` through the real entry point, as a user's shell would."""
    from chiron.client.cli import main

    def run(*args: object) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["chiron", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
