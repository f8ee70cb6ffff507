"""Distributed training from the client's side: the owner's flow, and the node agent.

A distributed job has one parameter-server enclave (rank 0) and N training enclaves
(ranks 1..N). The owner's client attests every one of them, seals the data key to each
training enclave, passes every member the list of attested identities (so the enclaves
admit exactly these peers), and collects one escrowed model from worker 1, checked like
a single enclave's. The enclaves attest each other, share a group key and exchange
parameters themselves over torch.distributed (see chiron.enclave.distributed).

Two ways to run the members:

  `train_locally`    (`chiron train --local --workers N`) starts the N+1 enclave
                     processes on this machine; the parameter server hosts the
                     rendezvous store on 127.0.0.1 and announces its free port.
  node agents        (`torchrun ... -m chiron.client.distributed ...`, one per rank, on
                     any machines) each start their enclave and relay its boundary
                     calls through the rendezvous store `torchrun` hosts; the owner's
                     client reaches them there (`chiron train --rendezvous HOST:PORT`).
                     The relay is untrusted, like the host: it carries only what a
                     host may see. docs/distributed.md gives the commands.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import os
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

from chiron.client.attestation import SimRootSource, verify_enclave
from chiron.client.sessions import TRAIN_SILENCE_SECONDS, EventHandler, LocalEnclaveSession
from chiron.client.statements import load_statement, statement_path_for
from chiron.client.training import (
    TrainOutcome,
    authorize,
    check_training_result,
    seal_data_key,
)
from chiron.core.attestation import Policy
from chiron.core.contract import (
    DEFAULT_EXCHANGE_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT,
    ExchangeRequest,
    ExchangeResult,
    GroupMembership,
    Rendezvous,
    TrainAuthorization,
    TrainMaterials,
    TrainResult,
)
from chiron.core.errors import ChironError, EnclaveError, JobFailed, PeerFailure, UsageError
from chiron.core.fileio import read_input_file
from chiron.core.keys import DataKey, Identity, PublicIdentity
from chiron.core.limits import MAX_RECIPE_BYTES
from chiron.core.manifest import DatasetRef, Plan
from chiron.core.recipe_statement import SignedRecipeStatement
from chiron.core.roles import Role
from chiron.enclave.boundary import (
    EVENT,
    FAILURE,
    RESULT,
    EnclaveProcess,
    decode_message,
    encode_message,
    failure_document,
    rebuild_error,
)

DEFAULT_EXCHANGE_EVERY = 10
DEFAULT_STALENESS = 2
# How long the other members may take to report after the first failed: they normally
# fail at once (the failing member aborts the job); after this they are stopped.
FAILURE_GRACE_SECONDS = 30.0
ANNOUNCE_TIMEOUT_SECONDS = 600.0
CALL_SILENCE_SECONDS = 600.0
LOOPBACK = "127.0.0.1"


class MemberSession(Protocol):
    """One enclave of a distributed job, as the client reaches it."""

    def evidence(self, nonce: bytes) -> bytes: ...

    def call(
        self, name: str, args: dict[str, Any], on_event: EventHandler | None = None
    ) -> dict[str, Any]: ...

    def kill(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ExchangeTimeouts:
    """How long members wait for each other (host-side availability, not security)."""

    handshake: float = DEFAULT_HANDSHAKE_TIMEOUT
    exchange: float = DEFAULT_EXCHANGE_TIMEOUT

    def group(self, rank: int, members: Sequence[PublicIdentity]) -> GroupMembership:
        return GroupMembership(
            rank=rank,
            members=tuple(members),
            handshake_timeout=self.handshake,
            exchange_timeout=self.exchange,
        )


@dataclass(frozen=True)
class DistributedOutcome:
    training: TrainOutcome
    # Per member ("parameter server", "worker 1", ...): what it sent and received.
    wire_traces: dict[str, list[dict[str, Any]]]
    # Per worker: seconds of its training loop, of exchanging within it (round 0 aside),
    # and of that, waiting for the server's answer (for the other workers, the average).
    timings: dict[str, dict[str, float]]


def member_label(rank: int) -> str:
    return "parameter server" if rank == 0 else f"worker {rank}"


def run_distributed_training(
    paramserver: MemberSession,
    workers: Sequence[MemberSession],
    *,
    job_id: str,
    data_key: DataKey,
    dataset: DatasetRef,
    owner: Identity,
    statement: SignedRecipeStatement,
    plan: Plan,
    policy: Policy,
    state_dir: Path,
    store_host: str | None,
    timeouts: ExchangeTimeouts | None = None,
    on_event: EventHandler | None = None,
    sim_roots: SimRootSource | None = None,
) -> DistributedOutcome:
    """Attest every member, sign the manifest naming them, start the job, check worker 1's model.

    With `store_host`, the parameter server hosts the rendezvous store there and this
    flow tells the workers where it listens; without, every member's host supplies the
    rendezvous itself (node agents under torchrun).
    """
    timeouts = timeouts or ExchangeTimeouts()
    members = [paramserver, *workers]
    if plan.workers != len(workers):
        raise UsageError(f"the plan has {plan.workers} workers; {len(workers)} were started")
    attested = [
        verify_enclave(
            member.evidence,
            policy,
            state_dir=state_dir,
            sim_roots=sim_roots,
            role=Role.PARAMSERVER if rank == 0 else Role.TRAIN,
        )
        for rank, member in enumerate(members)
    ]
    identities = [enclave.identity for enclave in attested]
    manifest = authorize(
        job_id=job_id,
        owner=owner,
        statement=statement,
        dataset=dataset,
        plan=plan,
        enclaves=tuple(identities),
    )
    announced: dict[str, Any] = {}
    ready = threading.Event()

    def on_server_event(event: dict[str, Any]) -> None:
        if event.get("event") == "rendezvous":
            announced.update(host=event.get("host"), port=event.get("port"))
            ready.set()

    server_request = ExchangeRequest(
        manifest=manifest,
        group=timeouts.group(0, identities),
        rendezvous=(
            None
            if store_host is None
            else Rendezvous(host=store_host, port=0, address=store_host, host_store=True)
        ),
    )
    with _Members(members) as running:
        running.start(0, "exchange", server_request.to_wire(), on_server_event)
        worker_rendezvous = None
        if store_host is not None:
            if not running.wait_for(ready, 0, ANNOUNCE_TIMEOUT_SECONDS):
                running.raise_failure(
                    stalled="the parameter server did not open its rendezvous in time"
                )
            worker_rendezvous = Rendezvous(
                host=str(announced["host"]), port=int(announced["port"]), address=store_host
            )
        for rank in range(1, len(members)):
            authorization = TrainAuthorization(
                manifest,
                # Each training enclave gets the data key sealed to the key it attested.
                seal_data_key(identities[rank], data_key, manifest),
                timeouts.group(rank, identities),
            )
            args = authorization.to_wire()
            if worker_rendezvous is not None:
                # Where to meet is the host's part; here the client relays it.
                args["rendezvous"] = worker_rendezvous.to_wire()
            running.start(rank, "train", args, on_event if rank == 1 else None)
        results = running.results()
    lead = TrainResult.from_wire(results[1])
    outcome = check_training_result(lead, manifest, identities[1], owner)
    traces = {member_label(0): ExchangeResult.from_wire(results[0]).wire_trace}
    timings = {}
    for rank in range(1, len(members)):
        result = lead if rank == 1 else TrainResult.from_wire(results[rank])
        traces[member_label(rank)] = result.wire_trace
        timings[member_label(rank)] = {
            name: float(result.timings.get(name, 0.0))
            for name in ("training_seconds", "exchange_seconds", "waiting_seconds")
        }
    return DistributedOutcome(training=outcome, wire_traces=traces, timings=timings)


class _Members:
    """The members' calls, one thread each; the job's one error if any of them fails.

    When a member fails, the others normally fail at once (the group aborts); any that
    still runs after `FAILURE_GRACE_SECONDS` is stopped. The error reported is the first
    member's (workers by rank, then the server) that failed on its own account, not
    because another member ended the job (`PeerFailure`) or because it was stopped.
    """

    def __init__(self, sessions: Sequence[MemberSession]) -> None:
        self._sessions = list(sessions)
        self._pool = ThreadPoolExecutor(max_workers=len(sessions))
        self._futures: dict[int, Future[dict[str, Any]]] = {}
        self._stopped: set[int] = set()

    def start(
        self, rank: int, name: str, args: dict[str, Any], on_event: EventHandler | None
    ) -> None:
        self._futures[rank] = self._pool.submit(self._sessions[rank].call, name, args, on_event)

    def wait_for(self, event: threading.Event, rank: int, timeout: float) -> bool:
        """Wait until `event` is set; False if member `rank`'s call ended first, or time ran out."""
        deadline = time.monotonic() + timeout
        while not event.wait(0.1):
            if self._futures[rank].done() or time.monotonic() > deadline:
                return False
        return True

    def results(self) -> dict[int, dict[str, Any]]:
        wait(self._futures.values(), return_when=FIRST_EXCEPTION)
        if any(future.done() and future.exception() for future in self._futures.values()):
            self.raise_failure()
        return {rank: future.result() for rank, future in self._futures.items()}

    def raise_failure(self, *, stalled: str | None = None) -> NoReturn:
        """Raise the job's error; `stalled` says what is wrong if no member failed itself."""
        if stalled is None:
            wait(self._futures.values(), timeout=FAILURE_GRACE_SECONDS)
        self._stop_pending()
        failures = []
        for rank in sorted(self._futures, key=lambda r: (r == 0, r)):
            error = self._futures[rank].exception()
            if error is not None:
                failures.append((rank, error))
        own = [
            (rank, error)
            for rank, error in failures
            if rank not in self._stopped and not isinstance(error, PeerFailure)
        ]
        candidates = own or ([] if stalled else failures)
        if not candidates:
            raise EnclaveError(stalled or "a member of the job stopped without a reason")
        rank, error = candidates[0]
        raise _labelled(error, member_label(rank)) from None

    def _stop_pending(self) -> None:
        for rank, future in self._futures.items():
            if not future.done():
                self._stopped.add(rank)
                self._sessions[rank].kill()
        wait(self._futures.values())

    def __enter__(self) -> _Members:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_pending()
        self._pool.shutdown(wait=True)


def _labelled(error: BaseException, who: str) -> BaseException:
    """`error`, its message prefixed with the member it happened in."""
    if isinstance(error, JobFailed):
        return JobFailed(error.reason_class, f"{who}: {error}")
    if isinstance(error, ChironError):
        return type(error)(f"{who}: {error}")
    return error


# -- on this machine -------------------------------------------------------------------


def train_locally(
    *,
    recipe_path: Path,
    recipe_source: bytes,
    dataset_path: Path,
    data_key: DataKey,
    dataset: DatasetRef,
    owner: Identity,
    statement: SignedRecipeStatement,
    plan: Plan,
    policy: Policy,
    state_dir: Path,
    on_event: EventHandler | None = None,
) -> DistributedOutcome:
    """`chiron train --local --workers N`: every member as a process on this machine."""
    materials = TrainMaterials(
        recipe_name=recipe_path.name,
        recipe_source=recipe_source,
        recipe_statement=statement,
        dataset_path=str(dataset_path.resolve()),
    )
    host_args = {"train": materials.to_wire()}
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(LocalEnclaveSession("paramserver", state_dir))
        workers = [
            stack.enter_context(LocalEnclaveSession("train", state_dir, extra_args=host_args))
            for _ in range(plan.workers)
        ]
        return run_distributed_training(
            server,
            workers,
            job_id=new_job_id(),
            data_key=data_key,
            dataset=dataset,
            owner=owner,
            statement=statement,
            plan=plan,
            policy=policy,
            state_dir=state_dir,
            store_host=LOOPBACK,
            on_event=on_event,
        )


def new_job_id() -> str:
    """A fresh id per distributed job: it names the job's keys in the rendezvous store."""
    return uuid.uuid4().hex


# -- across machines: the relay through the rendezvous store ----------------------------
#
# Keys under "chiron/relay/<rank>/": "call/<i>" holds the i-th boundary request for that
# rank's enclave; "reply/<i>/<j>" the j-th answer frame to it (kind byte ‖ message: EVENT,
# RESULT or FAILURE, exactly as on the enclave's stdout); "kill" asks the agent to stop
# its enclave at once.


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not host or not 0 < number < 65536:
        raise UsageError(f"{endpoint!r} is not HOST:PORT")
    return host.strip("[]"), number


def _relay_store(host: str, port: int, rank: int, timeout: float) -> Any:
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
        self._store = _relay_store(host, port, rank, ANNOUNCE_TIMEOUT_SECONDS)
        self._calls = itertools.count()

    def evidence(self, nonce: bytes) -> bytes:
        return self.call("attest", {"nonce": nonce})["evidence"]

    def call(
        self, name: str, args: dict[str, Any], on_event: EventHandler | None = None
    ) -> dict[str, Any]:
        index = next(self._calls)
        silence = TRAIN_SILENCE_SECONDS if name in ("train", "exchange") else CALL_SILENCE_SECONDS
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
            _relay_store(host, port, rank, 10.0).set("kill", b"1")

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
    role = "paramserver" if rank == 0 else "train"
    rendezvous = Rendezvous(host=store_host, port=store_port, address=address).to_wire()
    host_args: dict[str, dict[str, Any]] = {"exchange": {"rendezvous": rendezvous}}
    if role == "train":
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
    relay = _relay_store(store_host, store_port, rank, wait_seconds)
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
    silence = TRAIN_SILENCE_SECONDS if name in ("train", "exchange") else CALL_SILENCE_SECONDS
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
        store = _relay_store(host, port, rank, 10.0)
        while not finished.wait(1.0):
            if store.check(["kill"]):
                enclave.kill()
                return


def main(argv: list[str] | None = None) -> None:
    """Entry point of a node agent: `torchrun ... -m chiron.client.distributed ...`."""
    parser = argparse.ArgumentParser(
        prog="python -m chiron.client.distributed",
        description="Run one member of a distributed Chiron training job (rank 0: the "
        "parameter server). Reads RANK, MASTER_ADDR and MASTER_PORT as torchrun sets them.",
    )
    parser.add_argument("--recipe", type=Path, help="the provider's recipe (training nodes)")
    parser.add_argument("--dataset", type=Path, help="the encrypted dataset (training nodes)")
    parser.add_argument(
        "--statement",
        type=Path,
        default=None,
        help="the recipe's signed statement (default: beside the recipe)",
    )
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--platform", default="sim", help="sim or tsm")
    parser.add_argument(
        "--address", default=None, help="this machine's address for the exchange (gloo)"
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=3600.0,
        help="seconds to wait for the owner's client between calls",
    )
    options = parser.parse_args(argv)
    try:
        rank = int(os.environ["RANK"])
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    except (KeyError, ValueError):
        print(
            "error: RANK, MASTER_ADDR and MASTER_PORT must be set (run under torchrun)",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    from chiron.client.options import default_state_dir

    try:
        serve_node(
            rank=rank,
            store_host=host,
            store_port=port,
            state_dir=options.state_dir or default_state_dir(),
            platform=options.platform,
            address=options.address,
            recipe=options.recipe,
            dataset=options.dataset,
            wait_seconds=options.wait,
            statement=options.statement,
        )
    except ChironError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
