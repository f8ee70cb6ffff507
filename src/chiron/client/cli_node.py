"""`chiron node-agent`: one member of a distributed training job, run under torchrun.

    torchrun --nnodes 3 --nproc-per-node 1 --node-rank R --master-addr HOST0 \
        --master-port 29500 -m chiron node-agent [--recipe F --dataset F] ...

Reads RANK, MASTER_ADDR and MASTER_PORT as torchrun sets them; rank 0 runs the
parameter server. See `chiron.client.distributed.node_agent` and docs/distributed.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from chiron.client.options import STATE_DIR, default_state_dir
from chiron.core.errors import UsageError


def node_agent(
    recipe: Path | None = typer.Option(
        None, "--recipe", help="the provider's recipe (training nodes)"
    ),
    dataset: Path | None = typer.Option(
        None, "--dataset", help="the encrypted dataset (training nodes)"
    ),
    statement: Path | None = typer.Option(
        None, "--statement", help="the recipe's signed statement (default: beside the recipe)"
    ),
    state_dir: Path | None = STATE_DIR,
    platform: str = typer.Option("sim", "--platform", help="enclave platform: sim or tsm"),
    address: str | None = typer.Option(
        None, "--address", help="this machine's address for the exchange (gloo)"
    ),
    wait: float = typer.Option(
        3600.0, "--wait", min=1.0, help="seconds to wait for the owner's client between calls"
    ),
) -> None:
    """Run one member of a distributed job under torchrun (rank 0: the parameter server).

    Starts this rank's enclave and relays its calls through the rendezvous store
    torchrun hosts, until the owner's client (`chiron train --rendezvous`) shuts it down.
    """
    from chiron.client.distributed.node_agent import serve_node

    try:
        rank = int(os.environ["RANK"])
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    except (KeyError, ValueError):
        raise UsageError(
            "RANK, MASTER_ADDR and MASTER_PORT must be set (run under torchrun)"
        ) from None
    try:
        serve_node(
            rank=rank,
            store_host=host,
            store_port=port,
            state_dir=state_dir or default_state_dir(),
            platform=platform,
            address=address,
            recipe=recipe,
            dataset=dataset,
            wait_seconds=wait,
            statement=statement,
        )
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def register(app: typer.Typer) -> None:
    """Add this room's commands to the `chiron` app."""
    app.command("node-agent")(node_agent)
