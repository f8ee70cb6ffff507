"""The enclave's side of a data set larger than memory: held-out records and the ring's filler.

A streamed run (`core.data_windows`) never decrypts the whole data set. The enclave
decrypts the held-out chunks once (at most `holdout_records` records and a chunk) and
then, on a thread of its own, one window at a time into a slot of the child's ring,
while the child trains on the other slot. Which window goes where, and after which
step, is fixed by the plan; the thread only runs ahead of the main loop, which
announces each window (WINDOW) before the first step that needs it. Peak memory is the
held-out records (at most 5000 and a chunk's), two slots of the ring (each the largest
window: `EpochWindows.slot_records`) and one chunk's buffer, whatever the data set's
size; a batch so large that the ring would pass `MAX_RING_BYTES` is refused up front.

What the host sees of it: which chunks are read, in which order (drawn from the seed and
the public counts, never from the data), and when. The trainer starts each window's
reads at a step's slot boundary (`steps_done`), so in a fixed-rate job they start on
the job's clock like everything else, however fast the recipe's steps are.

Each chunk is authenticated under its own index and the header digest the owner signed
in the manifest (`core.container.ChunkReader`): a host that serves another chunk, a
chunk of another file or a shortened file in the middle of a run fails it with an
integrity error, and nothing that did not authenticate reaches the child.
"""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import numpy as np

from chiron.core.data_windows import LABEL_BYTES, EpochWindows, StreamLayout, split_chunks
from chiron.core.dataset import LABEL_DTYPE
from chiron.core.dataset_chunks import DatasetChunks
from chiron.core.errors import EnclaveError, IntegrityError
from chiron.core.recipe_protocol import ReasonClass, ToChild, TrainingPlan
from chiron.enclave.sandbox import Sandbox, SandboxFailure
from chiron.enclave.sandbox.shared_file import RingWriter

# How long closing waits for a load in progress to reach its next chunk.
_STOP_SECONDS = 30.0


class StreamedData:
    """One streamed run's reading of its data set (a context manager)."""

    def __init__(self, path: Path, key: bytes, header_sha256: str, seed: int) -> None:
        self._seed = seed
        self._chunks = DatasetChunks(path, key)
        try:
            if self._chunks.header_sha256 != header_sha256:
                raise IntegrityError("the dataset file is not the one the job names")
        except BaseException:
            self._chunks.close()
            raise
        self.header = self._chunks.header
        self._loader: ThreadPoolExecutor | None = None
        self._pending: dict[int, Future[None]] = {}
        self._windows: EpochWindows | None = None
        self._ring: RingWriter | None = None
        self._sandbox: Sandbox | None = None
        self._stopping = False

    def __enter__(self) -> StreamedData:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stream_layout(self, batch_size: int) -> StreamLayout:
        header = self.header
        return StreamLayout.for_dataset(
            record_count=header.record_count,
            records_per_chunk=header.records_per_chunk,
            record_bytes=header.schema.record_bytes,
            batch_size=batch_size,
        )

    def num_train(self, batch_size: int) -> int:
        windows = self.stream_layout(batch_size).windows(self._seed, batch_size)
        windows.check_ring(self.header.schema.record_bytes)
        return windows.num_train

    def holdout(self) -> tuple[np.ndarray, np.ndarray]:
        """The held-out records and labels, decrypted once into memory of their own."""
        header = self.header
        schema = header.schema
        dtype = np.dtype(schema.dtype).newbyteorder("<")
        _, held = split_chunks(header.record_count, header.records_per_chunk, self._seed)
        # Filled chunk by chunk: the held-out records are in memory once, never twice.
        count = sum(header.records_in_chunk(int(index)) for index in held)
        x = np.empty((count, *schema.input_shape), dtype=dtype)
        y = np.empty(count, dtype=LABEL_DTYPE)
        position = 0
        for index in held:
            x_bytes, labels = self._chunks.chunk(int(index))
            end = position + len(labels)
            x[position:end] = np.frombuffer(x_bytes, dtype=dtype).reshape(-1, *schema.input_shape)
            y[position:end] = labels
            position = end
        return x, y

    def share(self, sandbox: Sandbox, plan: TrainingPlan, step: int) -> None:
        """Make the child's ring, begin filling it for a run that continues at `step`, send DATA.

        The child maps the ring when DATA arrives; each window's WINDOW follows later.
        """
        if plan.stream is None:
            raise EnclaveError("a streamed data set needs a plan with a stream")
        windows = EpochWindows(plan.stream, plan.seed, plan.batch_size)
        epochs = plan.epochs
        self._ring = sandbox.share_ring(2 * windows.slot_bytes(self.header.schema.record_bytes))
        self._sandbox = sandbox
        self._windows = windows
        self._total = epochs * windows.per_epoch
        steps = epochs * windows.steps_per_epoch
        self._first = windows.windows_of(step).start if step < steps else self._total
        self._next = self._first  # the next window to load
        self._announced = self._first - 1
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chiron-window")
        self._submit_freed(step)
        sandbox.send(ToChild.DATA)
        if step < steps:
            # The first windows are in before the load's slot ends (a fixed-rate job's
            # first step has one slot only).
            self.before_step(step)

    def steps_done(self, done: int) -> None:
        """The child sent its `done`-th TICK: load what that frees, announce what is in."""
        self._submit_freed(done)
        # Announce at once what is already in; wait for nothing here.
        while self._announced + 1 in self._pending and self._pending[self._announced + 1].done():
            self._announce()

    def _submit_freed(self, done: int) -> None:
        """Start loading every window whose slot is free once `done` steps are done."""
        windows = self._require()
        while self._next < self._total and (
            self._next - 2 < self._first or windows.last_step_of(self._next - 2) < done
        ):
            assert self._loader is not None
            self._pending[self._next] = self._loader.submit(self._load, self._next)
            self._next += 1

    def before_step(self, step: int) -> None:
        """Step `step` (from 0) runs next: every window it draws from is announced."""
        needed = self._require().windows_of(step)[-1]
        while self._announced < needed:
            if self._announced + 1 not in self._pending:
                raise EnclaveError("a window the next step needs was never loaded")
            self._announce()

    def _announce(self) -> None:
        window = self._announced + 1
        assert self._sandbox is not None
        try:
            # A chunk that did not authenticate raises here. A host that stalls the file
            # does not hold the job past its deadline (or a fixed-rate job past its slot).
            self._pending.pop(window).result(timeout=self._sandbox.time_left())
        except FutureTimeout:
            raise SandboxFailure(ReasonClass.TIMEOUT) from None
        self._sandbox.notify(ToChild.WINDOW, json.dumps({"window": window}).encode())
        self._announced = window

    def _load(self, window: int) -> None:
        """Decrypt `window`'s chunks into its slot (on the loader thread)."""
        windows, ring = self._require(), self._ring
        assert ring is not None
        record_bytes = self.header.schema.record_bytes
        base = (window % 2) * windows.slot_bytes(record_bytes)
        records_at = base + windows.slot_records * LABEL_BYTES
        position = 0
        for index in windows.chunks(window):
            if self._stopping:
                return
            x_bytes, y = self._chunks.chunk(int(index))
            ring.write_at(base + position * LABEL_BYTES, y.data)
            ring.write_at(records_at + position * record_bytes, x_bytes)
            position += len(y)

    def _require(self) -> EpochWindows:
        if self._windows is None:
            raise EnclaveError("the ring was not started")
        return self._windows

    def close(self) -> None:
        """Stop loading (a load in progress stops at its next chunk) and close the data set."""
        self._stopping = True
        if self._loader is not None:
            self._loader.shutdown(wait=False, cancel_futures=True)
            in_flight = [future for future in self._pending.values() if future.running()]
            self._loader = None
            if wait(in_flight, timeout=_STOP_SECONDS).not_done:
                # A read the host stalls: the loader still owns the ring's descriptor and
                # the file's, so they stay open (closing them could hand their numbers to
                # other files under its writes); the enclave process ends with the job.
                return
        if self._ring is not None:
            self._ring.close()  # only now: the loader wrote through it until it stopped
        self._chunks.close()
