"""The `chiron` command line: the app, its rooms, and the one error rule.

Every room of commands is a `cli_*` module with a `register(app)` that adds its
commands: `app.command(NAME)(function)` for a top-level command, or a `typer.Typer`
group built inside `register` and added with `app.add_typer(group, name=NAME)`. No room
keeps an app at module level or wires itself anywhere else; `ROOMS` below is the whole
command line (tests/layout checks both). Every ChironError becomes exactly one line on
stderr and a non-zero exit status.
"""

from __future__ import annotations

import sys

import typer

from chiron.client import (
    cli_attest,
    cli_dataset,
    cli_demo,
    cli_evidence,
    cli_keys,
    cli_node,
    cli_recipe,
    cli_service,
    cli_train,
)
from chiron.core.errors import ChironError

# In the order `chiron --help` lists them.
ROOMS = (
    cli_keys,  # keygen, keys serve|revoke|trust-sim-root
    cli_dataset,  # dataset encrypt|inspect|verify (local files)
    cli_attest,  # measure, attest
    cli_evidence,  # evidence verify
    cli_train,  # train, evaluate, query, receipt verify
    cli_recipe,  # recipe dry-run|sign (local files)
    cli_service,  # serve, service account|recipes|datasets|jobs|models ...
    cli_node,  # node-agent
    cli_demo,  # demo
)

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


for _room in ROOMS:
    _room.register(app)


def main() -> None:
    try:
        app()
    except ChironError as exc:
        print(f"chiron: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
