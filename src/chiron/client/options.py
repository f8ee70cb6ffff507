"""Command-line options shared by every room of the `chiron` CLI (one definition each)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from chiron.core.errors import UsageError


def default_state_dir() -> Path:
    """Where local enclaves keep non-secret state: $CHIRON_HOME, else ~/.chiron."""
    return Path(os.environ.get("CHIRON_HOME") or Path.home() / ".chiron")


LOCAL = typer.Option(False, "--local", help="run the enclave as a process on this machine")
URL = typer.Option(None, "--url", help="a Chiron service, e.g. http://127.0.0.1:8470")
TOKEN = typer.Option(None, "--token", envvar="CHIRON_TOKEN", help="service access token")
ALLOW_SIMULATION = typer.Option(
    False,
    "--allow-simulation",
    help="accept simulated evidence (no TEE: protects nothing against the host)",
)
POLICY = typer.Option(None, "--policy", help="TOML verification policy", dir_okay=False)
STATE_DIR = typer.Option(
    None, "--state-dir", help="local state directory (default $CHIRON_HOME or ~/.chiron)"
)
JSON = typer.Option(False, "--json", help="print a machine-readable result on stdout")


def require_one_target(local: bool, url: str | None) -> None:
    if local == (url is not None):
        raise UsageError("give exactly one of --local or --url URL")
