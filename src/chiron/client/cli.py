"""The `chiron` command line.

Each room of commands lives in its own module and registers itself here. Every
ChironError becomes exactly one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from chiron.core.errors import ChironError
from chiron.core.keys import Identity

app = typer.Typer(
    name="chiron",
    help="Privacy-preserving machine learning as a service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Privacy-preserving machine learning as a service."""


@app.command()
def keygen(
    out: Path = typer.Option(
        ..., "--out", help="private key file to write (0600); FILE.pub beside it"
    ),
    force: bool = typer.Option(False, "--force", help="overwrite existing key files"),
) -> None:
    """Create an identity: an Ed25519 signing key and an X25519 HPKE key."""
    identity = Identity.generate()
    public_path = identity.save(out, overwrite=force)
    typer.echo(f"wrote {out} (private, 0600) and {public_path}")
    typer.echo(f"fingerprint {identity.public.fingerprint}")


def _register_rooms() -> None:
    from chiron.client import (
        cli_attest,
        cli_dataset,
        cli_demo,
        cli_evidence,
        cli_keys,
        cli_recipe,
        cli_service,
        cli_train,
    )

    rooms = (cli_dataset, cli_attest, cli_evidence, cli_train, cli_recipe, cli_service, cli_demo)
    rooms += (cli_keys,)
    for room in rooms:
        room.register(app)


_register_rooms()


def main() -> None:
    try:
        app()
    except ChironError as exc:
        print(f"chiron: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
