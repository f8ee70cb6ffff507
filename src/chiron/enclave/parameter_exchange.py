"""What the training loop asks of a group: the hook a distributed worker implements.

The loop (`trainer`) calls it at points fixed by the plan only; the worker
(`distributed.worker`) implements it over the group's sealed channel. Defined apart
from both so that the loop never imports its caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from chiron.core.contract import TrainResult
from chiron.core.recipe_protocol import TrainingPlan
from chiron.enclave.fixed_rate import Rate
from chiron.enclave.recipe_session import Declaration
from chiron.enclave.sandbox import Sandbox


@dataclass(frozen=True)
class GroupStart:
    """What a group agreed before training: its fixed rate, and the step it resumes from."""

    rate: Rate | None
    resume_step: int = 0


class ParameterExchange(Protocol):
    """A training enclave's part in a distributed job (chiron.enclave.distributed.worker).

    The loop below calls it at fixed points only: which records this worker trains on,
    the plan once it is fixed, and the exchange points of a schedule fixed with it.
    """

    @property
    def lead(self) -> bool:
        """Whether this worker escrows the group's model and writes the owner's report."""

    @property
    def rank(self) -> int:
        """This worker's rank in the group (1..N): its checkpoints are bound to it."""

    def shard(self, train_index: np.ndarray, seed: int) -> np.ndarray:
        """This worker's share of the training indices."""

    def begin(
        self,
        plan: TrainingPlan,
        declaration: Declaration,
        rate: Rate | None,
        checkpointed: tuple[int, ...],
    ) -> GroupStart:
        """Agree on the plan and the fixed rate with the group; then the schedule is fixed.

        `checkpointed`: the steps this worker holds checkpoints of. Returns the group's
        rate (every member's the same) and the step every worker resumes from (0, or
        one of `checkpointed`); the clock starts on return.
        """

    def checkpoint_due(self, step: int) -> bool:
        """Whether the workers checkpoint just before the exchange at `step`."""

    def next_exchange(self, step: int) -> int:
        """The first exchange point after `step`."""

    def due(self, step: int) -> bool:
        """Whether `step` is an exchange point (step 0 always is)."""

    def collect(self, sandbox: Sandbox, declaration: Declaration) -> bytes:
        """The child's parameters for the next exchange."""

    def synchronize(
        self, sandbox: Sandbox, step: int, declaration: Declaration, params: bytes
    ) -> None:
        """Exchange `params` with the group and load the result into the child."""

    def describe(self) -> dict[str, Any]:
        """The group, for the receipt and the owner's report."""

    def summary(self) -> TrainResult:
        """What this worker's call returns besides the model (the wire trace, timings)."""
