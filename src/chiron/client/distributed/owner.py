"""The owner's side of a distributed job: attest every member, authorize, collect the model.

A distributed job has one parameter-server enclave (rank 0) and N training enclaves
(ranks 1..N). `run_distributed_training` attests every one of them, seals the data key
to each training enclave, passes every member the list of attested identities (so the
enclaves admit exactly these peers), and checks one escrowed model from worker 1 like a
single enclave's. How the members were started (`local`, `relay`) is not its concern:
it talks to each through a `MemberSession`.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

from chiron.client.attestation import SimRootSource, verify_enclave
from chiron.client.sessions import EventHandler
from chiron.client.training import (
    TrainOutcome,
    authorize,
    check_training_result,
    seal_data_key,
    seal_job_secret,
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
    TrainResult,
)
from chiron.core.errors import ChironError, EnclaveError, JobFailed, PeerFailure, UsageError
from chiron.core.keys import DataKey, Identity, PublicIdentity
from chiron.core.manifest import DatasetRef, Plan
from chiron.core.recipe_statement import SignedRecipeStatement
from chiron.core.roles import Role

# How long the other members may take to report after the first failed: they normally
# fail at once (the failing member aborts the job); after this they are stopped.
FAILURE_GRACE_SECONDS = 30.0
ANNOUNCE_TIMEOUT_SECONDS = 600.0


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
                # Each training enclave gets the data key sealed to the key it attested,
                # and the job's secret, which its checkpoints are sealed under: derived
                # from the owner's key and the job, so a resumed group's new enclaves
                # open them (each its own rank's: they are bound to it).
                seal_data_key(identities[rank], data_key, manifest),
                timeouts.group(rank, identities),
                sealed_job_secret=seal_job_secret(identities[rank], owner, manifest),
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


def new_job_id() -> str:
    """A fresh id per distributed job: it names the job's keys in the rendezvous store."""
    return uuid.uuid4().hex
