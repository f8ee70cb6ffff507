"""What is fixed before training: the exchange schedule, the data shards, the staleness rule.

All of it is a function of public facts (record count, batch size, epochs, worker count,
the exchange interval) and the seed, never of the data: how often the group talks, what
it sends and which worker trains on which records are known before any record is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chiron.core.errors import InputError

SYNC = "sync"
ASYNC = "async"
MODES = (SYNC, ASYNC)
_SHARD_STREAM = 0x5348415244  # "SHARD": keeps the shard permutation apart from the others


@dataclass(frozen=True)
class ExchangeSchedule:
    """Exchange rounds at steps 0, k, 2k, ... and always at the last step.

    Round 0 (before the first step) makes every worker start from the same weights; the
    last round makes the model that is escrowed the group's.
    """

    every: int
    total_steps: int

    def __post_init__(self) -> None:
        if self.every <= 0 or self.total_steps <= 0:
            raise InputError("the exchange interval and the step count must be positive")

    @property
    def rounds(self) -> int:
        """Number of rounds, round 0 included."""
        return 1 + -(-self.total_steps // self.every)

    @property
    def final_round(self) -> int:
        return self.rounds - 1

    def step_of(self, round_number: int) -> int:
        return min(round_number * self.every, self.total_steps)

    def round_at(self, step: int) -> int | None:
        """The round held after `step`, or None if `step` is not an exchange point."""
        if step == self.total_steps:
            return self.final_round
        return step // self.every if step % self.every == 0 else None

    def next_step(self, step: int) -> int:
        """The first exchange point after `step`."""
        return min((step // self.every + 1) * self.every, self.total_steps)

    def checkpoint_at(self, step: int, checkpoint_every: int) -> bool:
        """Whether the workers checkpoint at `step`: the first exchange point at or after
        each multiple of `checkpoint_every`, the last step aside (nothing follows it).

        A group resumes by holding again the exchange of a step every worker checkpointed
        just before it, so its checkpoints come at exchange points only, the same for all.
        """
        if self.round_at(step) is None or not 0 < step < self.total_steps:
            return False
        return step // checkpoint_every > (step - self.every) // checkpoint_every


def shard_indices(train_index: np.ndarray, *, worker: int, workers: int, seed: int) -> np.ndarray:
    """Worker `worker`'s (1-based) share of the training indices, sorted.

    Shards are disjoint and all of one size, so every worker runs the same number of
    steps; the fewer than `workers` records left over are not used.
    """
    if not 1 <= worker <= workers:
        raise InputError(f"worker {worker} is not one of {workers}")
    size = len(train_index) // workers
    if size == 0:
        raise InputError(f"{len(train_index)} training records cannot be shared by {workers}")
    order = np.random.Generator(np.random.PCG64([seed, _SHARD_STREAM])).permutation(
        len(train_index)
    )
    return np.sort(np.asarray(train_index)[order[(worker - 1) * size : worker * size]])


class StalenessGate:
    """Asynchronous updates: when the server may answer a worker that submitted a round.

    A worker gets its answer (and so continues) only while no worker is more than
    `staleness` rounds behind the round it submitted. Round 0 and the final round are
    barriers: everyone starts from one model, and the final answer is the model after
    every worker's last update.
    """

    def __init__(self, workers: int, *, staleness: int, final_round: int) -> None:
        if staleness < 0:
            raise InputError("the staleness bound must be 0 or more")
        self._staleness = staleness
        self._final_round = final_round
        self._submitted = dict.fromkeys(range(1, workers + 1), -1)
        self._waiting: dict[int, int] = {}

    def next_round(self, worker: int) -> int:
        """The round `worker` must submit next."""
        return self._submitted[worker] + 1

    def submit(self, worker: int, round_number: int) -> None:
        if worker in self._waiting or round_number != self.next_round(worker):
            raise ValueError("a worker submits its rounds in order, one answer at a time")
        self._submitted[worker] = round_number
        self._waiting[worker] = round_number

    @property
    def waiting(self) -> tuple[int, ...]:
        """Workers that submitted a round and wait for its answer."""
        return tuple(sorted(self._waiting))

    def release(self) -> list[tuple[int, int]]:
        """(worker, round) of the answers that may go out now, in rank order."""
        slowest = min(self._submitted.values())
        released = []
        for worker, round_number in sorted(self._waiting.items()):
            if round_number in (0, self._final_round):
                allowed = slowest >= round_number
            else:
                allowed = slowest >= round_number - self._staleness
            if allowed:
                released.append((worker, round_number))
        for worker, _ in released:
            del self._waiting[worker]
        return released

    @property
    def finished(self) -> bool:
        return not self._waiting and all(
            round_number == self._final_round for round_number in self._submitted.values()
        )
