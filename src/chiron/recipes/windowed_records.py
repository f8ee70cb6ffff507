"""The sandboxed child's view of a streamed data set: batches drawn from a ring of two windows.

The enclave fills the ring (`core.recipe_protocol` gives its layout, `core.data_windows`
the order); this side only reads it. Before a step draws from a window the child has not
been told of, it waits for that window's WINDOW frame (`wait_for`); it also refuses a
batch whose window the enclave has already announced a successor over, which would mean
the slot was overwritten under it.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable

import numpy as np

from chiron.core.data_windows import EpochWindows
from chiron.core.errors import ChironError
from chiron.core.recipe_protocol import LABEL_DTYPE, TrainingPlan
from chiron.core.schema import DatasetSchema


class WindowError(ChironError):
    """The enclave's ring or its announcements do not follow the protocol."""


class WindowedRecords:
    """Batches of a streamed plan, read from the ring in the shared data file."""

    def __init__(
        self,
        data_fd: int,
        plan: TrainingPlan,
        schema: DatasetSchema,
        wait_for: Callable[[int], int],
    ) -> None:
        """`wait_for(window)` blocks until `window` was announced; returns the newest one."""
        if plan.stream is None:
            raise WindowError("the plan streams no data")
        self.windows = EpochWindows(plan.stream, plan.seed, plan.batch_size)
        if self.windows.num_train != plan.num_train:
            raise WindowError("the plan's record count is not its stream's")
        self.num_records = plan.num_train
        self.input_shape = schema.input_shape
        slot_bytes = self.windows.slot_bytes(schema.record_bytes)
        if os.fstat(data_fd).st_size != 2 * slot_bytes:
            raise WindowError("the shared data file is not the plan's ring")
        region = mmap.mmap(data_fd, 2 * slot_bytes, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
        slot_records = self.windows.slot_records
        dtype = np.dtype(schema.dtype).newbyteorder("<")
        self._slots = []
        for slot in range(2):
            base = slot * slot_bytes
            labels = np.frombuffer(region, dtype=LABEL_DTYPE, count=slot_records, offset=base)
            records = np.frombuffer(
                region,
                dtype=dtype,
                count=slot_records * schema.input_elements,
                offset=base + labels.nbytes,
            )
            self._slots.append((records.reshape(slot_records, *schema.input_shape), labels))
        self._wait_for = wait_for

    def batch(self, step: int, plan: TrainingPlan) -> tuple[np.ndarray, np.ndarray]:
        parts = self.windows.batch_positions(step)
        newest = self._wait_for(parts[-1][0])
        if newest > parts[0][0] + 1:
            raise WindowError("a window was replaced while a batch still draws from it")
        xs, ys = [], []
        for window, positions in parts:
            records, labels = self._slots[window % 2]
            xs.append(records[positions])
            ys.append(labels[positions])
        if len(parts) == 1:
            return xs[0], ys[0]
        return np.concatenate(xs), np.concatenate(ys)


class WindowedRecordsInMemory:
    """A streamed plan's batches, drawn from the whole data set held in file order.

    The plain reference for a streamed run (`sdk.train_plain`): the same records in the
    same order as the enclave's ring gives the child, from arrays (or memory maps) of
    every record, the held-out ones included (they are never picked).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, plan: TrainingPlan) -> None:
        if plan.stream is None:
            raise WindowError("the plan streams no data")
        if len(x) != plan.stream.record_count or len(y) != len(x):
            raise WindowError("the data set does not have the plan's record count")
        self.windows = EpochWindows(plan.stream, plan.seed, plan.batch_size)
        self.num_records = self.windows.num_train
        self.input_shape = tuple(x.shape[1:])
        self._x, self._y = x, y

    def batch(self, step: int, plan: TrainingPlan) -> tuple[np.ndarray, np.ndarray]:
        layout = self.windows.layout
        ids = []
        for window, positions in self.windows.batch_positions(step):
            chunks = self.windows.chunks(window)
            slot = np.concatenate(
                [
                    np.arange(first, first + count)
                    for first, count in zip(
                        chunks * layout.records_per_chunk, layout.records_in(chunks), strict=True
                    )
                ]
            )
            ids.append(slot[positions])
        picked = np.concatenate(ids)
        return self._x[picked], self._y[picked]
