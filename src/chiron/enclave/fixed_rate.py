"""Fixed-rate training: everything the host observes of a job happens on one clock.

A recipe controls how long its steps take, so without this the timing of progress
events, checkpoint writes, parameter exchanges and the job's end can carry data. In a
fixed-rate job (the owner's `Plan.fixed_rate`) the enclave fixes a period T before the
recipe sees any data, starts a clock, and does every observable action only at a slot
boundary `start + k·T`, where k is a function of public facts alone (the plan):

    load       the records (and a resumed checkpoint) handed to the child   `load` slots
    step       one optimizer step (its TICK)                                 1 slot
    checkpoint the child's state at a checkpoint point                       `checkpoint`
    evaluate   the held-out predictions at an epoch end                      `evaluate`
    collect    the child's parameters before an exchange                    `exchange`
    exchange   a parameter exchange, from sending PARAMS to the child loaded `exchange`
    finish     the final weights and predictions, the child's exit, escrow   `finish`

Work must be done by the end of its slots (absolute deadlines from the start, so no
drift accumulates; the child may run ahead of the clock within a RUN). The enclave then
waits out the rest of the slot and only then acts (emits progress, writes a
checkpoint, sends an exchange message, returns). Work that is not done by its slot's
end fails the job as `timeout` at that instant, and every failure is reported at the
next boundary, so a failure's time is a boundary too.

T and the slot counts come from the owner's `period_ms` (every piece of work then gets
one slot, so T must cover the slowest of them, but the two edges of the job get at least
`EDGE_SECONDS`), or from a calibration before the data: the recipe runs a few steps on
synthetic records of the dataset's public shape in a sandbox of its own; T is `MARGIN`
times its median step (the first excepted) rounded up to a coarse grid (`grid_period_ms`), and
each other kind of work gets as many slots as `MARGIN` times its measured time plus
`SLACK_SECONDS` needs.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from chiron.core.errors import IntegrityError
from chiron.core.recipe_protocol import (
    LABEL_DTYPE,
    FromChild,
    ReasonClass,
    ToChild,
    TrainingPlan,
    encode_json,
)
from chiron.core.schema import DatasetSchema
from chiron.enclave.recipe_session import (
    Declaration,
    predict_logits,
    receive_declaration,
    share_training_data,
    spawn_recipe,
)
from chiron.enclave.sandbox import Sandbox, SandboxFailure

# How much slower than the calibration the real run may be before it times out.
MARGIN = 3.0
# The shortest calibrated period; calibrated periods are rounded up to the grid
# 10, 15, 20, 30, 40, 60, 80, 120, ... ms (1 and 1.5 times a power of two, times 10 ms).
MIN_PERIOD_MS = 10
CALIBRATION_STEPS = 12
# Added to every calibrated piece of work but a step: a busy machine's hiccups. The child
# starts the next run of steps as soon as that work is done, so the slack it leaves
# becomes the child's lead over the clock for the steps that follow.
SLACK_SECONDS = 0.25
# With the owner's period, the two edges of the job (handing over the records; the final
# weights, the child's exit and escrow) get at least this long, in whole slots.
EDGE_SECONDS = 2.0
_MAX_SLOTS = 1_000_000


def grid_period_ms(seconds: float) -> int:
    """The smallest period of the grid (10, 15, 20, 30, 40, 60, ... ms) of at least `seconds`.

    Coarse on purpose: neighbouring values are a factor of 1.33 or 1.5 apart, so the
    period says little even about the machine, and nothing about the owner's data
    (it is measured on synthetic records).
    """
    wanted = max(MIN_PERIOD_MS, math.ceil(seconds * 1000))
    base = MIN_PERIOD_MS
    while True:
        for candidate in (base, base * 3 // 2):
            if candidate >= wanted:
                return candidate
        base *= 2


@dataclass(frozen=True)
class Rate:
    """A fixed-rate job's clock: the period and the slots of each kind of work."""

    period_ms: int
    load: int = 1
    checkpoint: int = 1
    evaluate: int = 1
    exchange: int = 1
    finish: int = 1
    calibrated: bool = False

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "calibrated":
                if not isinstance(value, bool):
                    raise IntegrityError("malformed fixed rate")
            elif isinstance(value, bool) or not isinstance(value, int) or not 1 <= value:
                raise IntegrityError("malformed fixed rate")
            elif value > _MAX_SLOTS * (1 if field.name != "period_ms" else 10):
                raise IntegrityError("malformed fixed rate")

    @property
    def period(self) -> float:
        return self.period_ms / 1000

    @classmethod
    def of_period(cls, period_ms: int) -> Rate:
        """The owner's period: one slot per piece of work, `EDGE_SECONDS` at each edge."""
        edge = max(1, math.ceil(EDGE_SECONDS * 1000 / period_ms))
        return cls(period_ms=period_ms, load=edge, finish=edge)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: object) -> Rate:
        names = {field.name for field in fields(cls)}
        if not isinstance(value, dict) or set(value) != names:
            raise IntegrityError("malformed fixed rate")
        return cls(**value)

    @classmethod
    def widest(cls, rates: list[Rate]) -> Rate:
        """One clock for a group: every figure the largest any member needs."""
        return cls(
            **{
                field.name: max(getattr(rate, field.name) for rate in rates)
                for field in fields(cls)
                if field.name != "calibrated"
            },
            calibrated=any(rate.calibrated for rate in rates),
        )


class Pacer:
    """Absolute slot boundaries from one start; does nothing for a job without a rate."""

    def __init__(self, rate: Rate | None = None) -> None:
        self.rate = rate
        self._start: float | None = None
        self.slots = 0

    @property
    def active(self) -> bool:
        return self.rate is not None and self._start is not None

    def start(self, at: float | None = None) -> None:
        if self.rate is not None:
            self._start = time.monotonic() if at is None else at
            self.slots = 0

    def boundary(self, slot: int) -> float:
        assert self.rate is not None and self._start is not None
        return self._start + slot * self.rate.period

    def reserve(self, units: int) -> float | None:
        """The end of the next `units` slots (None without a rate), now taken."""
        if not self.active:
            return None
        self.slots += units
        return self.boundary(self.slots)

    def arrive(self, end: float | None) -> None:
        """Wait for `end`; work still running past it has overrun its slot: `timeout`."""
        if end is None:
            return
        if time.monotonic() > end:
            raise SandboxFailure(ReasonClass.TIMEOUT)
        _sleep_until(end)

    @contextlib.contextmanager
    def slot(self, units: int, sandbox: Sandbox | None = None) -> Iterator[None]:
        """Work that must end within the next `units` slots; leaves at their end."""
        end = self.reserve(units)
        with sandbox.until(end) if sandbox is not None else contextlib.nullcontext():
            yield
        self.arrive(end)

    def settle(self) -> None:
        """After a failure: wait for the next boundary, so the failure shows only there."""
        if not self.active:
            return
        assert self.rate is not None and self._start is not None
        elapsed = time.monotonic() - self._start
        _sleep_until(self.boundary(math.floor(elapsed / self.rate.period) + 1))

    def describe(self) -> dict[str, Any] | None:
        """For the receipt and the owner's report: the clock and the slots it took."""
        if self.rate is None:
            return None
        return {**self.rate.to_dict(), "slots": self.slots}


def _sleep_until(deadline: float) -> None:
    while (remaining := deadline - time.monotonic()) > 0:
        time.sleep(remaining)


def calibrate(
    *,
    schema: DatasetSchema,
    recipe_name: str,
    recipe_source: bytes,
    overrides: dict[str, Any],
    plan: TrainingPlan,
    declaration: Declaration,
    holdout_records: int,
    exchanges: bool,
) -> Rate:
    """Time the recipe on synthetic records of the dataset's public shape; fix the rate.

    Runs in a sandbox of its own before the recipe has seen any of the owner's data,
    with the job's plan (so the same record count, batch size and model), and measures
    what each kind of slot holds. Nothing of the owner's data goes in, so nothing of it
    comes out in the rate.
    """
    rng = np.random.default_rng(plan.seed)
    dtype = np.dtype(schema.dtype)
    shape = (plan.num_train, *schema.input_shape)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    else:
        x = rng.standard_normal(shape).astype(dtype)
    y = rng.integers(0, schema.num_classes, size=plan.num_train).astype(LABEL_DTYPE)
    holdout = x[: max(1, min(holdout_records, plan.num_train))]
    steps = min(CALIBRATION_STEPS, plan.total_steps)
    with spawn_recipe() as sandbox:
        own = receive_declaration(
            sandbox,
            mode="train",
            schema=schema,
            recipe_name=recipe_name,
            recipe_source=recipe_source,
            overrides=overrides,
        )
        if (own.model_nbytes, own.checkpoint_nbytes, own.batch_size, own.epochs) != (
            declaration.model_nbytes,
            declaration.checkpoint_nbytes,
            declaration.batch_size,
            declaration.epochs,
        ):
            raise SandboxFailure(ReasonClass.BAD_OUTPUT)
        started = time.monotonic()
        sandbox.send(ToChild.PLAN, encode_json(plan.to_dict()))
        share_training_data(sandbox, x, y, schema)
        sandbox.expect(FromChild.READY, size=0)
        load = time.monotonic() - started
        sandbox.send(ToChild.RUN, encode_json({"until_step": steps, "checkpoint": True}))
        # The first step warms up (allocations, lazy initialisation): it is charged to
        # the load's slots, where the real job's first step starts too.
        gaps = []
        last = time.monotonic()
        for _ in range(steps):
            sandbox.expect(FromChild.TICK, size=0)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
        # A typical step, not the slowest: a step slowed by the machine (not by the
        # recipe, which has no data to react to here) is absorbed by the child's lead
        # over the clock, which grows by T minus a step with every step.
        first, step = gaps[0], statistics.median(gaps[1:] or gaps)
        sandbox.expect(FromChild.CHECKPOINT, size=declaration.checkpoint_nbytes)
        checkpoint = time.monotonic() - last
        started = time.monotonic()
        predict_logits(sandbox, holdout, schema, declaration.num_outputs)
        evaluate = time.monotonic() - started
        exchange = 0.0
        if exchanges:
            started = time.monotonic()
            sandbox.send(ToChild.GET_PARAMS)
            params = sandbox.expect(FromChild.PARAMS, size=declaration.model_nbytes)
            sandbox.send(ToChild.SET_PARAMS, params)
            sandbox.expect(FromChild.READY, size=0)
            exchange = time.monotonic() - started
        started = time.monotonic()
        sandbox.send(ToChild.FINISH)
        sandbox.expect(FromChild.MODEL, size=declaration.model_nbytes)
        sandbox.close()
        finish = time.monotonic() - started + evaluate
    period_ms = grid_period_ms(MARGIN * step)
    period = period_ms / 1000

    def slots(seconds: float, extra: int = 0) -> int:
        return max(1, math.ceil((MARGIN * seconds + SLACK_SECONDS) / period)) + extra

    return Rate(
        period_ms=period_ms,
        load=slots(load + first + checkpoint),
        checkpoint=slots(checkpoint),
        evaluate=slots(evaluate),
        # The exchange also crosses the network and waits for the slowest member.
        exchange=slots(exchange, extra=1) if exchanges else 1,
        # The final weights and predictions, the child's exit, and escrow.
        finish=slots(finish, extra=1),
        calibrated=True,
    )
