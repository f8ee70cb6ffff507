"""Members across machines: the relay through the rendezvous store that torchrun hosts.

Node agents (`chiron node-agent`, one per rank under torchrun; `node_agent`) start their
rank's enclave and relay its boundary calls through the store; the owner's client
reaches each enclave there as a `RelayedSession` (`chiron train --rendezvous HOST:PORT`).
The relay is untrusted, like the host: it carries only what a host may see.

Keys under "chiron/relay/<rank>/": "call/<i>" holds the i-th boundary request for that
rank's enclave; "reply/<i>/<j>" the j-th answer frame to it (kind byte ‖ message: EVENT,
RESULT or FAILURE, exactly as on the enclave's stdout); "kill" asks the agent to stop
its enclave at once.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
from pathlib import Path
from typing import Any

from chiron.client.distributed.owner import (
    ANNOUNCE_TIMEOUT_SECONDS,
    DistributedOutcome,
    new_job_id,
    run_distributed_training,
)
from chiron.client.sessions import EventHandler
from chiron.core.attestation import Policy
from chiron.core.errors import ChironError, UsageError
from chiron.core.keys import DataKey, Identity
from chiron.core.limits import CALL_SILENCE_SECONDS, TRAIN_SILENCE_SECONDS
from chiron.core.manifest import DatasetRef, Plan
from chiron.core.recipe_statement import SignedRecipeStatement
from chiron.enclave.boundary import (
    EVENT,
    FAILURE,
    RESULT,
    decode_message,
    encode_message,
    rebuild_error,
)


def call_silence(name: str) -> float:
    """The longest silence tolerated during call `name` (training reports only now and then)."""
    return TRAIN_SILENCE_SECONDS if name in ("train", "exchange") else CALL_SILENCE_SECONDS


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not host or not 0 < number < 65536:
        raise UsageError(f"{endpoint!r} is not HOST:PORT")
    return host.strip("[]"), number


def relay_store(host: str, port: int, rank: int, timeout: float) -> Any:
    import torch.distributed as dist  # the client needs torch only for this path

    try:
        store = dist.TCPStore(
            host, port, is_master=False, timeout=datetime.timedelta(seconds=timeout)
        )
    except RuntimeError:
        raise ChironError(f"cannot reach the rendezvous store at {host}:{port}") from None
    return dist.PrefixStore(f"chiron/relay/{rank}/", store)


class RelayedSession:
    """An enclave behind a node agent, reached through the rendezvous store."""

    def __init__(self, host: str, port: int, rank: int) -> None:
        self._endpoint = (host, port, rank)
        self._store = relay_store(host, port, rank, ANNOUNCE_TIMEOUT_SECONDS)
        self._calls = itertools.count()

    def evidence(self, nonce: bytes) -> bytes:
        return self.call("attest", {"nonce": nonce})["evidence"]

    def call(
        self, name: str, args: dict[str, Any], on_event: EventHandler | None = None
    ) -> dict[str, Any]:
        index = next(self._calls)
        silence = call_silence(name)
        self._store.set(f"call/{index}", encode_message({"call": name, "args": args}))
        self._store.set_timeout(datetime.timedelta(seconds=silence))
        frames = itertools.count()
        while True:
            try:
                raw = bytes(self._store.get(f"reply/{index}/{next(frames)}"))
            except RuntimeError:
                raise ChironError(
                    f"the node agent of rank {self._endpoint[2]} did not answer within "
                    f"{silence:g} s"
                ) from None
            kind, message = raw[0], decode_message(raw[1:])
            if kind == EVENT:
                if on_event is not None:
                    on_event(message)
            elif kind == RESULT:
                return message
            elif kind == FAILURE:
                raise rebuild_error(message)
            else:
                raise ChironError("the node agent relayed an unknown message kind")

    def kill(self) -> None:
        host, port, rank = self._endpoint
        with contextlib.suppress(ChironError, RuntimeError):
            relay_store(host, port, rank, 10.0).set("kill", b"1")

    def close(self) -> None:
        with contextlib.suppress(ChironError, RuntimeError):
            self._store.set(f"call/{next(self._calls)}", encode_message({"call": "shutdown"}))

    def __enter__(self) -> RelayedSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def train_through_rendezvous(
    endpoint: str,
    *,
    data_key: DataKey,
    dataset: DatasetRef,
    owner: Identity,
    statement: SignedRecipeStatement,
    plan: Plan,
    policy: Policy,
    state_dir: Path,
    on_event: EventHandler | None = None,
) -> DistributedOutcome:
    """`chiron train --rendezvous HOST:PORT --workers N`: members run by node agents."""
    host, port = parse_endpoint(endpoint)
    with contextlib.ExitStack() as stack:
        sessions = [
            stack.enter_context(RelayedSession(host, port, rank))
            for rank in range(plan.workers + 1)
        ]
        return run_distributed_training(
            sessions[0],
            sessions[1:],
            job_id=new_job_id(),
            data_key=data_key,
            dataset=dataset,
            owner=owner,
            statement=statement,
            plan=plan,
            policy=policy,
            state_dir=state_dir,
            store_host=None,
            on_event=on_event,
        )
