"""A node agent (`chiron node-agent`): one member of a distributed job, run under torchrun.

On each machine, torchrun starts one agent per rank; the agent starts its rank's enclave
(rank 0: the parameter server, others: training enclaves) and relays the enclave's
boundary calls through the rendezvous store (`relay`) until the owner's client shuts it
down. What only the host holds (the recipe, the dataset's location, the rendezvous)
joins the client's arguments here. The agent is untrusted, like any host code.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from pathlib import Path
from typing import Any

from chiron.client.distributed.relay import call_silence, relay_store
from chiron.client.statements import load_statement, statement_path_for
from chiron.core.contract import Rendezvous, TrainMaterials
from chiron.core.errors import ChironError, UsageError
from chiron.core.fileio import read_input_file
from chiron.core.limits import MAX_RECIPE_BYTES
from chiron.core.roles import Role
from chiron.enclave.boundary import (
    EVENT,
    FAILURE,
    RESULT,
    EnclaveProcess,
    decode_message,
    encode_message,
    failure_document,
)


def serve_node(
    *,
    rank: int,
    store_host: str,
    store_port: int,
    state_dir: Path,
    platform: str,
    address: str | None,
    recipe: Path | None,
    dataset: Path | None,
    wait_seconds: float,
    statement: Path | None = None,
) -> None:
    """A node agent: start this rank's enclave and relay its calls until shutdown."""
    role = Role.PARAMSERVER if rank == 0 else Role.TRAIN
    rendezvous = Rendezvous(host=store_host, port=store_port, address=address).to_wire()
    host_args: dict[str, dict[str, Any]] = {"exchange": {"rendezvous": rendezvous}}
    if role == Role.TRAIN:
        if recipe is None or dataset is None:
            raise UsageError("a training node needs --recipe and --dataset")
        source = read_input_file(recipe, what="recipe", limit=MAX_RECIPE_BYTES)
        statement_file = statement or statement_path_for(recipe)
        materials = TrainMaterials(
            recipe_name=recipe.name,
            recipe_source=source,
            recipe_statement=load_statement(statement_file),
            dataset_path=str(dataset.resolve()),
            rendezvous=Rendezvous(host=store_host, port=store_port, address=address),
        )
        host_args["train"] = materials.to_wire()
    relay = relay_store(store_host, store_port, rank, wait_seconds)
    finished = threading.Event()
    with EnclaveProcess.start(role=role, state_dir=state_dir, platform=platform) as enclave:
        watcher = threading.Thread(
            target=_watch_for_kill,
            args=(store_host, store_port, rank, enclave, finished),
            daemon=True,
        )
        watcher.start()
        try:
            _relay_calls(relay, enclave, host_args)
        finally:
            finished.set()


def _relay_calls(relay: Any, enclave: EnclaveProcess, host_args: dict[str, dict[str, Any]]) -> None:
    for index in itertools.count():
        try:
            request = decode_message(bytes(relay.get(f"call/{index}")))
        except RuntimeError:
            raise ChironError("no call came from the owner's client in time") from None
        if not _relay_call(relay, enclave, index, request, host_args):
            return


def _relay_call(
    relay: Any,
    enclave: EnclaveProcess,
    index: int,
    request: dict[str, Any],
    host_args: dict[str, dict[str, Any]],
) -> bool:
    """Relay one call and its answers; False once the client asked to shut down."""
    frames = itertools.count()

    def post(kind: int, message: dict[str, Any]) -> None:
        relay.set(f"reply/{index}/{next(frames)}", bytes([kind]) + encode_message(message))

    name = str(request.get("call"))
    if name == "shutdown":
        post(RESULT, {})
        return False
    # What only the host holds (recipe, dataset, rendezvous) joins the client's arguments.
    args = {**host_args.get(name, {}), **dict(request.get("args") or {})}
    silence = call_silence(name)
    try:
        result = enclave.call(
            name, args, on_event=lambda event: post(EVENT, event), timeout=silence
        )
    except ChironError as exc:
        post(FAILURE, failure_document(exc))
    else:
        post(RESULT, result)
    return True


def _watch_for_kill(
    host: str, port: int, rank: int, enclave: EnclaveProcess, finished: threading.Event
) -> None:
    # Its own connection: the relay's is busy in a blocking get for hours at a time.
    with contextlib.suppress(ChironError, RuntimeError):
        store = relay_store(host, port, rank, 10.0)
        while not finished.wait(1.0):
            if store.check(["kill"]):
                enclave.kill()
                return
