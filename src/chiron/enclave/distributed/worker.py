"""A training enclave's side of a distributed job: the `train` call with `distributed` args.

The enclave attests the parameter server and receives the group key (`membership`), then
trains exactly like a single enclave (`trainer.train`) on its shard, with this module's
`WorkerExchange` as the loop's exchange hook. At every exchange point it asks its child
for the parameters, sends them sealed to the server, and loads the answer into the child.

If anything fails here, the other members learn it at once: an ABORT goes out in place
of the next message this worker owes the server, padded to the same size.

A synchronous group checkpoints: each worker seals its state just before the exchanges
that `ExchangeSchedule.checkpoint_at` names, into its own folder, keeping its last two.
A group started again says in HELLO which steps each worker holds; the server picks the
latest that all of them hold and names it in START, and every worker resumes there by
holding that step's exchange again. An asynchronous group does not checkpoint: its
answers depend on the order in which the workers' messages arrived.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from chiron.core.contract import TrainRequest, TrainResult
from chiron.core.encoding import canonical_json
from chiron.core.errors import InputError, IntegrityError
from chiron.core.recipe_protocol import FromChild, ToChild, TrainingPlan
from chiron.enclave import escrow
from chiron.enclave.accepted_job import AcceptedJob
from chiron.enclave.context import EnclaveContext
from chiron.enclave.distributed.group import Board, Transport, rendezvous_store
from chiron.enclave.distributed.membership import join_server
from chiron.enclave.distributed.messages import (
    CONTROL_SLOT_BYTES,
    MessageKind,
    SecureChannel,
    WireTrace,
    abort_error,
    abort_payload,
    parameter_slot_bytes,
    wire_bytes,
)
from chiron.enclave.distributed.schedule import SYNC, ExchangeSchedule, shard_indices
from chiron.enclave.distributed.settings import GroupSettings
from chiron.enclave.fixed_rate import Rate
from chiron.enclave.parameter_exchange import GroupStart
from chiron.enclave.recipe_session import Declaration
from chiron.enclave.sandbox import Sandbox
from chiron.enclave.trainer import train


def train_worker(
    context: EnclaveContext,
    job: AcceptedJob,
    request: TrainRequest,
    emit: Callable[[dict[str, Any]], None],
) -> TrainResult:
    settings = GroupSettings.from_request(
        request.manifest,
        request.authorization.group,
        request.materials.rendezvous,
        own=context.identity.public,
    )
    trace = WireTrace()
    with rendezvous_store(
        settings.rendezvous, rank=settings.rank, timeout=settings.handshake_timeout
    ) as store:
        board = Board(store, job_id=settings.job_id, manifest=settings.manifest_digest, trace=trace)
        key = join_server(context, board, settings)
        channel = SecureChannel(key, job_id=settings.job_id, rank=settings.rank)
        exchange = WorkerExchange(settings, board, channel, trace)
        if settings.mode != SYNC:
            job = dataclasses.replace(job, checkpoint_dir=None)
        try:
            return train(context, job, emit, exchange)
        except BaseException as exc:
            exchange.abort(exc)
            raise
        finally:
            exchange.close()


class WorkerExchange:
    """The trainer's exchange hook (`trainer.ParameterExchange`) for one training enclave."""

    def __init__(
        self, settings: GroupSettings, board: Board, channel: SecureChannel, trace: WireTrace
    ) -> None:
        self._settings = settings
        self._board = board
        self._channel = channel
        self._trace = trace
        self._schedule: ExchangeSchedule | None = None
        self._transport: Transport | None = None
        self._slot = 0
        # Where an ABORT would go: "hello" (the store), "params" (gloo), or nowhere.
        self._stage = "hello"
        self._next_round = 0
        self._first_round = 0
        self._checkpoint_every = 0
        # The training loop's time (from the end of round 0 to the end of the last
        # round) and the part of it spent exchanging, for the owner and benchmarks.
        self._loop_started = 0.0
        self._loop_seconds = 0.0
        self._exchange_seconds = 0.0
        # Of which waiting for the server's answer: the other workers and the averaging.
        self._waiting_seconds = 0.0
        self._collect_started = 0.0
        self._collect_seconds = 0.0

    @property
    def lead(self) -> bool:
        return self._settings.rank == 1

    @property
    def rank(self) -> int:
        return self._settings.rank

    def shard(self, train_index: np.ndarray, seed: int) -> np.ndarray:
        return shard_indices(
            train_index, worker=self._settings.rank, workers=self._settings.workers, seed=seed
        )

    def begin(
        self,
        plan: TrainingPlan,
        declaration: Declaration,
        rate: Rate | None,
        checkpointed: tuple[int, ...],
    ) -> GroupStart:
        """HELLO with what this worker will exchange; START once every member agrees.

        In a fixed-rate job HELLO carries the rate this worker needs and START the
        group's (the widest of them), the same for every member: the clock starts as
        START arrives, at about the same instant for all of them. HELLO also lists the
        steps this worker holds checkpoints of; START names the step the group resumes
        from (0: from the start), one this worker holds.
        """
        settings = self._settings
        self._schedule = schedule = ExchangeSchedule(settings.exchange_every, plan.total_steps)
        self._checkpoint_every = plan.checkpoint_every
        held = sorted(step for step in set(checkpointed) if self.checkpoint_due(step))
        hello = {
            "agreement": settings.agreement(),
            "plan": plan.to_dict(),
            "model_nbytes": declaration.model_nbytes,
            "rate": rate.to_dict() if rate is not None else None,
            "checkpoints": held,
        }
        self._board.post(
            f"hello/{settings.rank}",
            self._channel.seal(
                MessageKind.HELLO,
                receiver=0,
                round_number=0,
                payload=canonical_json(hello),
                slot_bytes=CONTROL_SLOT_BYTES,
            ),
            to=0,
            kind="HELLO",
        )
        self._stage = "none"
        kind, payload = self._channel.open(
            self._board.fetch(
                f"start/{settings.rank}",
                sender=0,
                kind="START",
                timeout=settings.handshake_timeout,
            ),
            sender=0,
            kinds=(MessageKind.START, MessageKind.ABORT),
            round_number=0,
            slot_bytes=CONTROL_SLOT_BYTES,
        )
        if kind == MessageKind.ABORT:
            raise abort_error(payload, 0)
        try:
            start = json.loads(payload.decode("utf-8"))
            agreed = None if start["rate"] is None else Rate.from_dict(start["rate"])
            resume_step = start["resume_step"]
        except (UnicodeDecodeError, ValueError, KeyError, TypeError):
            raise IntegrityError("the parameter server sent a malformed START") from None
        if (agreed is None) != (rate is None):
            raise IntegrityError("the parameter server's START disagrees on the fixed rate")
        if type(resume_step) is not int or not (resume_step == 0 or resume_step in held):
            raise IntegrityError(
                "the parameter server's START resumes from a step this worker has no checkpoint of"
            )
        self._first_round = self._next_round = schedule.round_at(resume_step) or 0
        self._slot = parameter_slot_bytes(declaration.model_nbytes)
        self._transport = Transport(
            self._board,
            rank=settings.rank,
            world_size=len(settings.members),
            address=settings.rendezvous.address,
            timeout=settings.exchange_timeout,
            trace=self._trace,
        )
        self._stage = "params"
        return GroupStart(rate=agreed, resume_step=resume_step)

    def checkpoint_due(self, step: int) -> bool:
        """Whether this worker checkpoints just before the exchange at `step`."""
        if self._settings.mode != SYNC or self._checkpoint_every <= 0:
            return False
        return self._fixed().checkpoint_at(step, self._checkpoint_every)

    def next_exchange(self, step: int) -> int:
        return self._fixed().next_step(step)

    def due(self, step: int) -> bool:
        return self._fixed().round_at(step) is not None

    def collect(self, sandbox: Sandbox, declaration: Declaration) -> bytes:
        self._collect_started = time.monotonic()
        sandbox.send(ToChild.GET_PARAMS)
        params = sandbox.expect(FromChild.PARAMS, size=declaration.model_nbytes)
        escrow.check_weights(params)
        self._collect_seconds = time.monotonic() - self._collect_started
        return params

    def synchronize(
        self, sandbox: Sandbox, step: int, declaration: Declaration, params: bytes
    ) -> None:
        schedule = self._fixed()
        round_number = schedule.round_at(step)
        if self._transport is None or round_number != self._next_round:
            raise InputError(f"step {step} is not the next exchange point")
        # The exchange's own time: collecting the parameters, then this call (a
        # fixed-rate job waits for its boundary in between, which is not exchanging).
        started = time.monotonic() - self._collect_seconds
        message = self._channel.seal(
            MessageKind.PARAMS,
            receiver=0,
            round_number=round_number,
            payload=params,
            slot_bytes=self._slot,
        )
        self._transport.send(0, message)
        self._next_round += 1
        waiting = time.monotonic()
        answer = self._transport.receive(0, wire_bytes(self._slot))
        if round_number > self._first_round:
            self._waiting_seconds += time.monotonic() - waiting
        kind, payload = self._channel.open(
            answer,
            sender=0,
            kinds=(MessageKind.AVERAGE, MessageKind.ABORT),
            round_number=round_number,
            slot_bytes=self._slot,
        )
        if kind == MessageKind.ABORT:
            self._stage = "none"
            raise abort_error(payload, 0)
        if len(payload) != declaration.model_nbytes:
            raise IntegrityError("the parameter server sent parameters of the wrong size")
        sandbox.send(ToChild.SET_PARAMS, payload)
        sandbox.expect(FromChild.READY, size=0)
        finished = time.monotonic()
        if round_number == self._first_round:
            self._loop_started = finished
        else:
            self._exchange_seconds += finished - started
        if round_number == schedule.final_round:
            self._stage = "none"
            self._loop_seconds = finished - self._loop_started

    def abort(self, error: BaseException) -> None:
        """Tell the server why this worker stops, in the slot of the message it owes."""
        stage, self._stage = self._stage, "none"
        # Best effort: the job fails either way, and with this worker's own error.
        with contextlib.suppress(Exception):
            if stage == "hello":
                message = self._channel.seal(
                    MessageKind.ABORT,
                    receiver=0,
                    round_number=0,
                    payload=abort_payload(error),
                    slot_bytes=CONTROL_SLOT_BYTES,
                )
                self._board.post(f"hello/{self._settings.rank}", message, to=0, kind="ABORT")
            elif stage == "params" and self._transport is not None:
                message = self._channel.seal(
                    MessageKind.ABORT,
                    receiver=0,
                    round_number=self._next_round,
                    payload=abort_payload(error),
                    slot_bytes=self._slot,
                )
                self._transport.send(0, message)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def describe(self) -> dict[str, Any]:
        return self._settings.describe()

    def summary(self) -> TrainResult:
        return TrainResult(
            wire_trace=self._trace.entries,
            timings={
                "exchange_seconds": self._exchange_seconds,
                "waiting_seconds": self._waiting_seconds,
                "training_seconds": self._loop_seconds,
            },
        )

    def _fixed(self) -> ExchangeSchedule:
        if self._schedule is None:
            raise InputError("the exchange schedule is not fixed yet")
        return self._schedule
