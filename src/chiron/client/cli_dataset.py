"""Commands of this room (filled in by the work on that room)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this room's commands to the `chiron` app."""
