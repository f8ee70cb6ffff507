"""A training job's data as the run sees it: held whole, or streamed when it is too large.

The trainer asks the same of both: the held-out records, the plan's record count and
stream layout for a batch size, the child's shared data file filled for a run that
continues at some step, and a word before and after each step (which only the streamed
data uses, to keep its ring of windows ahead of the child). Which one a job gets follows
from the public header alone (`core.data_windows.streams`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from chiron.core import dataset
from chiron.core.data_windows import GROUP_DATA_LIMIT, StreamLayout, streams
from chiron.core.dataset import DatasetHeader
from chiron.core.errors import InputError
from chiron.core.recipe_protocol import TrainingPlan, holdout_split
from chiron.enclave.accepted_job import AcceptedJob
from chiron.enclave.parameter_exchange import ParameterExchange
from chiron.enclave.recipe_session import share_training_data
from chiron.enclave.sandbox import Sandbox
from chiron.enclave.streamed_data import StreamedData


class TrainingData(Protocol):
    header: DatasetHeader

    def __enter__(self) -> TrainingData: ...
    def __exit__(self, *exc: object) -> None: ...

    def stream_layout(self, batch_size: int) -> StreamLayout | None:
        """The plan's stream (None: the training set goes into the shared file whole)."""

    def num_train(self, batch_size: int) -> int: ...

    def holdout(self) -> tuple[np.ndarray, np.ndarray]:
        """The held-out records and their labels, which the recipe never sees."""

    def share(self, sandbox: Sandbox, plan: TrainingPlan, step: int) -> None:
        """Fill the child's shared data file for a run that continues at `step`."""

    def before_step(self, step: int) -> None: ...

    def steps_done(self, done: int) -> None: ...


def open_training_data(job: AcceptedJob, exchange: ParameterExchange | None) -> TrainingData:
    """The job's data set, held whole or streamed as its size says; the caller closes it."""
    header = job.header
    if not streams(header.record_count, header.schema.record_bytes):
        return DataInMemory(job, exchange)
    if exchange is not None:
        raise InputError(GROUP_DATA_LIMIT)
    return StreamedData(
        job.dataset_path, job.data_key, job.manifest.dataset.header_sha256, job.manifest.plan.seed
    )


def calibration_plan(plan: TrainingPlan) -> TrainingPlan:
    """The plan a fixed-rate job's calibration times, on synthetic records held whole.

    A streamed plan's steps, checkpoints and evaluations cost what they would on data
    held whole; what the ring adds (decrypting windows, in the background, and the first
    ones within the load's slots) is the size of the two slots, so the calibration loads
    that many records, not the whole data set.
    """
    if plan.stream is None:
        return plan
    windows = plan.stream.windows(plan.seed, plan.batch_size)
    return TrainingPlan.fixed(
        num_train=min(plan.num_train, 2 * windows.slot_records),
        batch_size=plan.batch_size,
        epochs=plan.epochs,
        seed=plan.seed,
        checkpoint_every=plan.checkpoint_every,
    )


class DataInMemory:
    """The whole data set decrypted; the training part goes into the shared file once."""

    def __init__(self, job: AcceptedJob, exchange: ParameterExchange | None) -> None:
        self.header, x, y = dataset.load_dataset(job.dataset_path, job.data_key)
        seed = job.manifest.plan.seed
        train_index, holdout_index = holdout_split(len(y), seed)
        if exchange is not None:
            train_index = exchange.shard(train_index, seed)
        self._holdout = x[holdout_index], y[holdout_index]
        self._data: tuple[np.ndarray, np.ndarray, np.ndarray] | None = (x, y, train_index)
        self._num_train = len(train_index)

    def __enter__(self) -> DataInMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self._data = None

    def stream_layout(self, batch_size: int) -> StreamLayout | None:
        return None

    def num_train(self, batch_size: int) -> int:
        return self._num_train

    def holdout(self) -> tuple[np.ndarray, np.ndarray]:
        return self._holdout

    def share(self, sandbox: Sandbox, plan: TrainingPlan, step: int) -> None:
        if self._data is None:
            raise InputError("the training data was already shared")
        x, y, train_index = self._data
        share_training_data(sandbox, x, y, self.header.schema, train_index)
        # The child's shared file holds the training set; one copy is enough.
        self._data = None

    def before_step(self, step: int) -> None:
        pass

    def steps_done(self, done: int) -> None:
        pass
