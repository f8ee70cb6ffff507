"""`chiron demo`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from chiron.client.demo import run_demo


def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", help="where to leave keys and results"),
    epochs: int = typer.Option(3, "--epochs", min=1, help="training epochs"),
    queries: int = typer.Option(8, "--queries", min=1, max=1024, help="test images to query"),
    as_json: bool = typer.Option(False, "--json", help="print a summary as JSON on stdout"),
) -> None:
    """Tell the whole story on this machine: service, keys, encryption, training, queries."""
    result = run_demo(out, epochs=epochs, queries=queries)
    if as_json:
        typer.echo(json.dumps(result))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
