"""A training job's sealed checkpoints: what a resumed job continues from.

They lie in a folder the host provides and keeps; the host may delete or roll them back,
never read, alter or move them to another job, another worker of a group or another
runtime (the sealing key is the job's secret, the binding names the job and the rank).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from chiron.core.errors import IntegrityError
from chiron.core.fileio import sync_directory
from chiron.core.recipe_protocol import TrainingPlan, decode_json
from chiron.enclave.accepted_job import AcceptedJob
from chiron.enclave.context import EnclaveContext
from chiron.enclave.padding import WIDEST_FLOAT, padded_json
from chiron.enclave.sealing import SealingKey, sealed_size


@dataclass
class Progress:
    """Owner metrics so far; sealed inside every checkpoint so a resume keeps them."""

    step: int = 0
    epoch_accuracy: list[float] = field(default_factory=list)

    def to_bytes(self, plan: TrainingPlan) -> bytes:
        """Of one size for `plan`, whatever the accuracies (see `padded_json`)."""
        return padded_json(
            {"step": self.step, "epoch_accuracy": self.epoch_accuracy},
            {"step": plan.total_steps, "epoch_accuracy": [WIDEST_FLOAT] * plan.epochs},
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Progress:
        doc = decode_json(data)
        return cls(int(doc["step"]), [float(a) for a in doc["epoch_accuracy"]])


class Checkpoints:
    """Sealed checkpoints in a host directory, bound to this exact job and runtime.

    The host stores them and may delete or roll them back, which costs it only time:
    the schedule and seed make the final weights the same either way. It cannot read,
    alter, or move them to another job (the binding is authenticated).
    """

    FILE = "checkpoint.sealed"
    PREVIOUS = "checkpoint.previous.sealed"

    def __init__(
        self,
        directory: Path | None,
        key: SealingKey | None,
        binding: dict[str, object],
        *,
        keep_previous: bool = False,
    ) -> None:
        # Without a folder or a key there are no checkpoints (an asynchronous group's
        # worker; a job on a platform without sealing whose owner released no secret).
        self._directory = directory if key is not None else None
        self._key = key
        self._binding = binding
        # A worker of a group keeps its last two: the group resumes from a step all of
        # its workers hold, and a worker may have sealed one more than another when the
        # group stopped (never two more: see `trainer._train`).
        self._keep_previous = keep_previous
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None
        # A job's checkpoints all have one size (the declared state and the metadata,
        # padded), so the writer fills the same two buffers each time: no fresh 2 x 5 MB
        # to fault in per write, on cores the training needs.
        self._plain = bytearray()
        self._sealed = bytearray()

    def load(self) -> list[tuple[Progress, bytes]]:
        """The checkpoints that open under this job's key and binding, latest first."""
        names = (self.FILE, self.PREVIOUS) if self._keep_previous else (self.FILE,)
        found = [checkpoint for name in names if (checkpoint := self._open(name)) is not None]
        return sorted(found, key=lambda checkpoint: -checkpoint[0].step)

    def _open(self, name: str) -> tuple[Progress, bytes] | None:
        """The checkpoint in file `name`, or None: missing, or it does not open (another
        job's, another rank's or runtime's, or tampered: not this one)."""
        if self._directory is None or self._key is None:
            return None
        try:
            plain = self._key.unseal((self._directory / name).read_bytes(), self._binding)
        except (OSError, IntegrityError):
            return None
        split = int.from_bytes(plain[:4], "big")
        return Progress.from_bytes(plain[4 : 4 + split]), plain[4 + split :]

    def _latest_step(self) -> int | None:
        """The step of the latest checkpoint on disk; None if there is none that opens.

        One that does not open is overwritten rather than kept as the previous, which
        may still be good.
        """
        latest = self._open(self.FILE)
        return None if latest is None else latest[0].step

    def save(self, progress: Progress, child_state: bytes, plan: TrainingPlan) -> None:
        """Seal and write in the background: the loop goes on while the host's disk syncs.

        The write starts now (a fixed-rate job calls this on a slot boundary); how long
        the host's disk takes is the host's business and delays no later slot.
        """
        if self._directory is None or self._key is None:
            return
        self.wait()  # the buffers are the last writer's until then
        meta = progress.to_bytes(plan)
        self._writer = threading.Thread(
            target=self._write, args=(progress.step, meta, child_state), daemon=True
        )
        self._writer.start()

    def _write(self, step: int, meta: bytes, child_state: bytes) -> None:
        try:
            assert self._directory is not None and self._key is not None
            size = 4 + len(meta) + len(child_state)
            if len(self._plain) != size:
                self._plain, self._sealed = bytearray(size), bytearray(sealed_size(size))
            self._plain[:4] = len(meta).to_bytes(4, "big")
            self._plain[4 : 4 + len(meta)] = meta
            self._plain[4 + len(meta) :] = child_state
            self._directory.mkdir(parents=True, exist_ok=True)
            latest = self._latest_step() if self._keep_previous else None
            if latest is not None and latest < step:
                # The latest becomes the previous. Not when the latest is this step or a
                # later one (a worker that resumed from its previous, one behind its own
                # latest, and writes that latest's step again): the step it resumed from,
                # which every worker holds, must stay.
                os.replace(self._directory / self.FILE, self._directory / self.PREVIOUS)
            self._key.seal_to_file(
                self._directory / self.FILE, self._plain, self._binding, buffer=self._sealed
            )
            if self._keep_previous:
                # Both names durable before the next exchange's parameters leave.
                sync_directory(self._directory)
        except BaseException as exc:  # re-raised by wait(), in the training loop
            self._error = exc

    def wait(self) -> None:
        """The last checkpoint is written (or its error raised here)."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def checkpoint_key(context: EnclaveContext, job: AcceptedJob) -> SealingKey | None:
    """The job's secret when the owner released one (any platform); else `sim`'s own."""
    if job.checkpoint_dir is None:
        return None
    purpose = "training-checkpoint"
    if job.job_secret is not None:
        return SealingKey.for_job(job.job_secret, measurement=context.measurement, purpose=purpose)
    if context.platform_name != "sim":
        return None
    return SealingKey(
        state_dir=context.state_dir,
        platform_name=context.platform_name,
        measurement=context.measurement,
        purpose=purpose,
    )
