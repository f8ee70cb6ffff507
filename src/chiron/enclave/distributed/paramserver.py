"""The parameter-server enclave: the `exchange` call.

Rank 0 of a job. It attests every worker and grants them the group key (`membership`),
checks that all of them agree on the job and the plan (HELLO), starts them (START), and
then serves the exchange rounds of the fixed schedule over gloo:

  sync   (default) each round, the PARAMS of every worker, in rank order; then the
         average of all of them to every worker (AVERAGE). A sync group started again
         resumes from the latest step whose checkpoint every worker holds (each lists
         its own in HELLO): START names it and the rounds start with that step's;
  async  each worker's PARAMS as it comes; the server adds the worker's progress since
         its last answer (its parameters minus that answer, over the number of workers)
         to the global parameters and answers with them, but holds the answer while any
         worker is more than `staleness` rounds behind (`schedule.StalenessGate`).

The parameter server never sees data, only parameter vectors, which it checks against
the layout the workers declared. If anything fails, every worker still waiting for an
answer gets an ABORT in its place, and the server closes every connection, so no
member waits for a message that will not come.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

from chiron.core.contract import ExchangeRequest, ExchangeResult
from chiron.core.encoding import canonical_json
from chiron.core.errors import InputError, IntegrityError
from chiron.enclave.context import EnclaveContext
from chiron.enclave.distributed.averaging import AsynchronousModel, ParameterLayout
from chiron.enclave.distributed.group import Board, Transport, rendezvous_store, store_port
from chiron.enclave.distributed.membership import admit_workers, await_verdicts
from chiron.enclave.distributed.messages import (
    CONTROL_SLOT_BYTES,
    MessageKind,
    SecureChannel,
    WireTrace,
    abort_error,
    abort_payload,
    header_sender,
    parameter_slot_bytes,
    wire_bytes,
)
from chiron.enclave.distributed.schedule import SYNC, ExchangeSchedule, StalenessGate
from chiron.enclave.distributed.settings import GroupSettings
from chiron.enclave.fixed_rate import Rate


def handle_exchange(
    context: EnclaveContext, request: ExchangeRequest, emit: Callable[[dict[str, Any]], None]
) -> ExchangeResult:
    """Serve one job's parameter exchanges, as the manifest's rank 0.

    Events: {"event": "rendezvous", "host", "port"} once the store it hosts listens;
    {"event": "progress", "step": rounds done, "total": rounds} after every round.
    Result: the rounds served and the wire trace (what it sent and received).
    """
    settings = GroupSettings.from_request(
        request.manifest, request.group, request.rendezvous, own=context.identity.public
    )
    if settings.rank != 0:
        raise InputError("the parameter server is rank 0 of its job")
    job_id = settings.job_id
    # One job per enclave: the workers check that this server serves their manifest.
    context.bind(request.manifest.digest)
    trace = WireTrace()
    with rendezvous_store(settings.rendezvous, rank=0, timeout=settings.handshake_timeout) as store:
        if settings.rendezvous.host_store:
            emit(
                {"event": "rendezvous", "host": settings.rendezvous.host, "port": store_port(store)}
            )
        board = Board(store, job_id=settings.job_id, manifest=settings.manifest_digest, trace=trace)
        key = admit_workers(context, board, settings)
        server = _Server(settings, board, SecureChannel(key, job_id=job_id, rank=0), trace, emit)
        try:
            rounds = server.run()
        except BaseException as exc:
            server.abort(exc)
            raise
        finally:
            server.close()
    return ExchangeResult(rounds, trace.entries)


class _Server:
    """One job's parameter server once the group key is granted: agreement, then rounds."""

    def __init__(
        self,
        settings: GroupSettings,
        board: Board,
        channel: SecureChannel,
        trace: WireTrace,
        emit: Callable[[dict[str, Any]], None],
    ) -> None:
        self._settings = settings
        self._board = board
        self._channel = channel
        self._trace = trace
        self._emit = emit
        self._workers = tuple(range(1, settings.workers + 1))
        self._transport: Transport | None = None
        self._slot = 0
        # Workers owed a START (before training) or an answer to their PARAMS (during):
        # on failure, each gets an ABORT there instead.
        self._owed_start: set[int] = set(self._workers)
        self._owed_answer: dict[int, int] = {}

    def run(self) -> int:
        await_verdicts(self._board, self._settings)
        schedule, model_nbytes, rate, resume_step = self._agree()
        self._slot = parameter_slot_bytes(model_nbytes)
        start = canonical_json(
            {"rate": rate.to_dict() if rate is not None else None, "resume_step": resume_step}
        )
        for worker in self._workers:
            self._post_start(worker, MessageKind.START, start)
        self._transport = Transport(
            self._board,
            rank=0,
            world_size=len(self._settings.members),
            address=self._settings.rendezvous.address,
            timeout=self._settings.exchange_timeout,
            trace=self._trace,
        )
        if self._settings.mode == SYNC:
            self._synchronous(schedule, schedule.round_at(resume_step) or 0)
        else:
            self._asynchronous(schedule)
        return schedule.rounds

    def _agree(self) -> tuple[ExchangeSchedule, int, Rate | None, int]:
        """Every worker's HELLO: the same job, members and plan, the same parameter size.

        In a fixed-rate job each worker also says the rate it needs; the group's is the
        widest of them (every period and slot count the largest), sent to all in START.
        A sync group resumes from the latest step every worker holds a checkpoint of.
        """
        expected = self._settings.agreement()
        first: dict[str, Any] | None = None
        rates: list[Rate] = []
        held: list[set[int]] = []
        for worker in self._workers:
            kind, payload = self._channel.open(
                self._board.fetch(
                    f"hello/{worker}",
                    sender=worker,
                    kind="HELLO",
                    timeout=self._settings.handshake_timeout,
                ),
                sender=worker,
                kinds=(MessageKind.HELLO, MessageKind.ABORT),
                round_number=0,
                slot_bytes=CONTROL_SLOT_BYTES,
            )
            if kind == MessageKind.ABORT:
                self._owed_start.discard(worker)
                raise abort_error(payload, worker)
            try:
                hello = json.loads(payload.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                hello = None
            if not isinstance(hello, dict) or hello.get("agreement") != expected:
                raise IntegrityError(
                    f"worker {worker} was given other job settings than the parameter server"
                )
            try:
                rate = hello.get("rate")
                if rate is not None:
                    rates.append(Rate.from_dict(rate))
            except IntegrityError:
                raise IntegrityError(f"worker {worker} sent a malformed HELLO") from None
            if (rate is not None) != self._settings.fixed_rate:
                raise IntegrityError(f"worker {worker} disagrees on the fixed rate")
            checkpoints = hello.get("checkpoints")
            if not isinstance(checkpoints, list) or not all(
                type(step) is int for step in checkpoints
            ):
                raise IntegrityError(f"worker {worker} sent a malformed HELLO")
            held.append(set(checkpoints))
            plan = {"plan": hello.get("plan"), "model_nbytes": hello.get("model_nbytes")}
            if first is None:
                first = plan
            elif plan != first:
                raise IntegrityError(
                    f"worker {worker} declared another plan or model size than worker 1"
                )
        try:
            total_steps = int(first["plan"]["steps_per_epoch"]) * int(first["plan"]["epochs"])  # type: ignore[index]
            model_nbytes = int(first["model_nbytes"])  # type: ignore[index]
            every = int(first["plan"]["checkpoint_every"])  # type: ignore[index]
        except (KeyError, TypeError, ValueError):
            raise IntegrityError("worker 1 sent a malformed HELLO") from None
        if model_nbytes <= 0 or every <= 0:
            raise IntegrityError("worker 1 sent a malformed HELLO")
        rate = Rate.widest(rates) if rates else None
        schedule = ExchangeSchedule(self._settings.exchange_every, total_steps)
        common = set.intersection(*held) if self._settings.mode == SYNC else set()
        # Each worker lists only its schedule's checkpoint steps; the server keeps to the
        # same rule, so a START never names a step that is not an exchange point.
        resumable = [step for step in common if schedule.checkpoint_at(step, every)]
        return schedule, model_nbytes, rate, max(resumable, default=0)

    def _synchronous(self, schedule: ExchangeSchedule, first_round: int) -> None:
        layout: ParameterLayout | None = None
        for round_number in range(first_round, schedule.rounds):
            assert self._transport is not None
            vectors = []
            # Every worker's receive is posted at once: one message arrives while the
            # one before it is opened. Still opened in rank order, each checked.
            for worker, message in self._transport.receive_each(
                self._workers, wire_bytes(self._slot)
            ):
                vector = self._open_params(worker, round_number, message)
                self._owed_answer[worker] = round_number
                if layout is None:
                    layout = ParameterLayout(vector)
                layout.check(vector, who=f"worker {worker}")
                vectors.append(vector)
            assert layout is not None
            average = layout.average(vectors)
            answers = [
                (worker, self._seal_answer(worker, round_number, average))
                for worker in self._workers
            ]
            for worker in self._transport.send_each(answers):
                del self._owed_answer[worker]
            self._emit({"event": "progress", "step": round_number + 1, "total": schedule.rounds})

    def _asynchronous(self, schedule: ExchangeSchedule) -> None:
        gate = StalenessGate(
            self._settings.workers,
            staleness=self._settings.staleness,
            final_round=schedule.final_round,
        )
        model: AsynchronousModel | None = None
        while not gate.finished:
            assert self._transport is not None
            message = self._transport.receive_any(wire_bytes(self._slot))
            worker = header_sender(message)
            if worker not in self._workers:
                raise IntegrityError("a message claims a sender that is not a worker of the job")
            round_number = gate.next_round(worker)
            vector = self._open_params(worker, round_number, message)
            if model is None:
                model = AsynchronousModel(ParameterLayout(vector), len(self._workers))
            model.layout.check(vector, who=f"worker {worker}")
            if round_number == 0:
                model.start(worker, vector)
            else:
                model.update(worker, vector)
            gate.submit(worker, round_number)
            self._owed_answer[worker] = round_number
            for ready, ready_round in gate.release():
                self._answer(ready, ready_round, model.answer(ready))
            done = min(gate.next_round(w) for w in self._workers)
            self._emit({"event": "progress", "step": done, "total": schedule.rounds})

    def _open_params(self, worker: int, round_number: int, message: bytearray) -> bytearray:
        kind, payload = self._channel.open(
            message,
            sender=worker,
            kinds=(MessageKind.PARAMS, MessageKind.ABORT),
            round_number=round_number,
            slot_bytes=self._slot,
        )
        if kind == MessageKind.ABORT:
            raise abort_error(payload, worker)
        return payload

    def _answer(self, worker: int, round_number: int, payload: bytes) -> None:
        assert self._transport is not None
        self._transport.send(worker, self._seal_answer(worker, round_number, payload))
        del self._owed_answer[worker]

    def _seal_answer(self, worker: int, round_number: int, payload: bytes) -> bytearray:
        return self._channel.seal(
            MessageKind.AVERAGE,
            receiver=worker,
            round_number=round_number,
            payload=payload,
            slot_bytes=self._slot,
        )

    def _post_start(self, worker: int, kind: MessageKind, payload: bytes) -> None:
        message = self._channel.seal(
            kind,
            receiver=worker,
            round_number=0,
            payload=payload,
            slot_bytes=CONTROL_SLOT_BYTES,
        )
        self._board.post(f"start/{worker}", message, to=worker, kind=kind.name)
        self._owed_start.discard(worker)

    def abort(self, error: BaseException) -> None:
        """Send every worker still owed a message an ABORT in its place (best effort)."""
        payload = abort_payload(error)
        with contextlib.suppress(Exception):
            for worker in sorted(self._owed_start):
                self._post_start(worker, MessageKind.ABORT, payload)
        if self._transport is None:
            return
        for worker, round_number in sorted(self._owed_answer.items()):
            with contextlib.suppress(Exception):
                message = self._channel.seal(
                    MessageKind.ABORT,
                    receiver=worker,
                    round_number=round_number,
                    payload=payload,
                    slot_bytes=self._slot,
                )
                self._transport.send(worker, message)
        self._owed_answer.clear()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
