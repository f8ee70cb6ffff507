"""Training on data larger than memory: which chunks hold out, and the windows an epoch visits.

A dataset of more than `STREAM_ABOVE_BYTES` is not decrypted whole. The enclave keeps
only the held-out records and a ring of two windows, each some `window_chunks` chunks
of the encrypted file, in the child's shared data file; it decrypts the next window
while the child trains on the last one. Everything here is a function of public facts
(the dataset header's counts, the batch size, the plan's seed), computed alike by the
enclave, which fills the ring, and by the sandboxed child, which reads it, so the step
at which each window is needed and released is fixed before the recipe sees any data.

The order of an epoch, from the seed:

- whole chunks are held out (as many as first reach `holdout_records(N)` records, in a
  permutation of the chunks drawn from the seed); the recipe never sees them;
- the training chunks are permuted for each epoch and cut into windows of
  `window_chunks` to `2 * window_chunks - 1` chunks;
- the records of each window are permuted again, and the epoch visits the windows one
  after another; batch `b` is positions `[b * B, (b + 1) * B)` of that sequence.

A window holds at least one batch, so a batch spans at most two windows, which is why
a ring of two suffices. The host sees which chunks the enclave reads in which order:
that order is drawn from the seed and the public counts only, never from the data.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from chiron.core.errors import InputError

# Data sets larger than this (their plaintext records and labels) are streamed.
STREAM_ABOVE_BYTES = 1 << 30
# A window holds at least this many bytes of chunks (and at least one batch).
WINDOW_BYTES = 64 << 20
# The most the ring of two slots may take: a quarter of the sandbox's address space
# (`SandboxLimits.memory_bytes`), which also holds torch, the model and a batch. Only a
# recipe's batch of very large records needs more; it is refused with the reason.
MAX_RING_BYTES = 2 << 30
# A label in the ring: `recipe_protocol.LABEL_DTYPE`'s size, spelled here because the
# protocol imports this module, not the other way round.
LABEL_BYTES = 8
# A group's workers shard records held in memory; streamed data trains on one enclave.
GROUP_DATA_LIMIT = "a group trains on data sets of at most 1 GiB; train a larger one on one enclave"

# Stream labels of the seeded generators: keep the permutations apart from each other
# and from the loop's, the shard's and the in-memory hold-out split's.
HOLDOUT_STREAM = 0x484F4C44  # "HOLD": `recipe_protocol.holdout_split` draws from it too
_CHUNK_STREAM = 0x43484E4B  # "CHNK"
_RECORD_STREAM = 0x52454344  # "RECD"
_LAYOUT_FIELDS = ("record_count", "records_per_chunk", "window_chunks")


def holdout_records(num_records: int) -> int:
    """How many records an enclave holds out of `num_records` to measure accuracy on."""
    if num_records < 2:
        raise InputError("a data set needs at least two records")
    return min(num_records // 10, 5000) if num_records >= 20 else 1


def streams(record_count: int, record_bytes: int) -> bool:
    """Whether a data set of this many records of this size is streamed."""
    return record_count * (record_bytes + LABEL_BYTES) > STREAM_ABOVE_BYTES


@dataclass(frozen=True)
class StreamLayout:
    """The public facts a streamed run is laid out from (part of the PLAN it is bound to)."""

    record_count: int
    records_per_chunk: int
    window_chunks: int

    @classmethod
    def for_dataset(
        cls, *, record_count: int, records_per_chunk: int, record_bytes: int, batch_size: int
    ) -> StreamLayout:
        """Windows of about `WINDOW_BYTES`, each holding at least one whole batch."""
        chunk_bytes = records_per_chunk * (record_bytes + LABEL_BYTES)
        # One chunk more than a batch needs: the data set's last chunk may be short.
        window_chunks = max(WINDOW_BYTES // chunk_bytes, -(-batch_size // records_per_chunk) + 1)
        return cls(record_count, records_per_chunk, window_chunks)

    def to_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in _LAYOUT_FIELDS}

    @classmethod
    def from_dict(cls, data: Any) -> StreamLayout:
        if not isinstance(data, dict) or set(data) != set(_LAYOUT_FIELDS):
            raise ValueError("malformed stream layout")
        values = [data[name] for name in _LAYOUT_FIELDS]
        if any(type(value) is not int or value < 1 for value in values):
            raise ValueError("malformed stream layout")
        return cls(*values)

    @property
    def chunk_count(self) -> int:
        return -(-self.record_count // self.records_per_chunk)

    def records_in(self, chunks: np.ndarray) -> np.ndarray:
        """The record count of each chunk in `chunks` (only the data set's last is short)."""
        last = self.record_count - (self.chunk_count - 1) * self.records_per_chunk
        return np.where(chunks == self.chunk_count - 1, last, self.records_per_chunk)

    def split(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(training chunks, held-out chunks), each sorted."""
        return split_chunks(self.record_count, self.records_per_chunk, seed)

    def windows(self, seed: int, batch_size: int) -> EpochWindows:
        return EpochWindows(self, seed, batch_size)


@functools.lru_cache(maxsize=4)
def split_chunks(
    record_count: int, records_per_chunk: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(training chunks, held-out chunks) of a streamed data set, each sorted."""
    layout = StreamLayout(record_count, records_per_chunk, 1)
    chunks = layout.chunk_count
    order = np.random.Generator(np.random.PCG64([seed, HOLDOUT_STREAM])).permutation(chunks)
    counts = np.cumsum(layout.records_in(order))
    wanted = holdout_records(record_count)
    held = int(np.searchsorted(counts, wanted)) + 1
    if held >= chunks:
        raise InputError("the data set has too few chunks to hold some out and stream the rest")
    train, holdout = np.sort(order[held:]), np.sort(order[:held])
    # Cached and shared by every caller: nobody may shuffle a held-out chunk into training.
    train.flags.writeable = holdout.flags.writeable = False
    return train, holdout


class EpochWindows:
    """Where each record of each epoch comes from, and when each window is needed.

    Windows are numbered across epochs: window `g` is window `g % W` of epoch `g // W`,
    and lives in slot `g % 2` of the ring. Steps are numbered from 0 like the loop's.
    """

    def __init__(self, layout: StreamLayout, seed: int, batch_size: int) -> None:
        self.layout = layout
        self.seed = seed
        self.batch_size = batch_size
        self.train_chunks, self.holdout_chunks = layout.split(seed)
        self.num_train = int(layout.records_in(self.train_chunks).sum())
        self.per_epoch = max(1, len(self.train_chunks) // layout.window_chunks)
        self.steps_per_epoch = -(-self.num_train // batch_size)
        # The largest window has ceil(T / W) chunks (W windows share T chunks evenly):
        # that many full chunks size a slot of the ring.
        self.slot_records = -(-len(self.train_chunks) // self.per_epoch) * layout.records_per_chunk
        smallest_window = (layout.window_chunks - 1) * layout.records_per_chunk + 1
        if self.per_epoch > 1 and batch_size > smallest_window:
            raise InputError("a window must hold a whole batch")
        # The few most recent answers, as the loop asks about the same windows step by step.
        self._chunk_orders: dict[int, np.ndarray] = {}
        self._record_orders: dict[int, np.ndarray] = {}
        self._offsets: dict[int, np.ndarray] = {}

    def slot_bytes(self, record_bytes: int) -> int:
        """One slot of the ring: its labels, then its records."""
        return self.slot_records * (LABEL_BYTES + record_bytes)

    def check_ring(self, record_bytes: int) -> None:
        """Refuse a ring over `MAX_RING_BYTES` (a batch of very large records needs one)."""
        ring = 2 * self.slot_bytes(record_bytes)
        if ring > MAX_RING_BYTES:
            raise InputError(
                f"a batch of {self.batch_size} records of {record_bytes} bytes needs "
                f"{ring / 2**30:.1f} GiB of windows in the sandbox, more than its "
                f"{MAX_RING_BYTES / 2**30:.0f} GiB: use a smaller batch size"
            )

    def chunks(self, window: int) -> np.ndarray:
        """The chunks of window `window`, in the order its slot holds them."""
        epoch, index = divmod(window, self.per_epoch)
        order = _remember(self._chunk_orders, epoch, lambda: self._chunk_order(epoch))
        cuts = len(order) * np.arange(self.per_epoch + 1) // self.per_epoch
        return order[cuts[index] : cuts[index + 1]]

    def _chunk_order(self, epoch: int) -> np.ndarray:
        generator = np.random.Generator(np.random.PCG64([self.seed, epoch, _CHUNK_STREAM]))
        return self.train_chunks[generator.permutation(len(self.train_chunks))]

    def record_order(self, window: int) -> np.ndarray:
        """The order in which the epoch visits the records of `window`, by slot position."""

        def draw() -> np.ndarray:
            count = int(self.layout.records_in(self.chunks(window)).sum())
            generator = np.random.Generator(np.random.PCG64([self.seed, window, _RECORD_STREAM]))
            return generator.permutation(count)

        return _remember(self._record_orders, window, draw)

    def _epoch_offsets(self, epoch: int) -> np.ndarray:
        """The epoch position at which each of its windows starts, and the epoch's end."""

        def count() -> np.ndarray:
            sizes = [
                int(self.layout.records_in(self.chunks(epoch * self.per_epoch + w)).sum())
                for w in range(self.per_epoch)
            ]
            return np.concatenate([[0], np.cumsum(sizes)])

        return _remember(self._offsets, epoch, count)

    def _span(self, step: int) -> tuple[int, np.ndarray, int, int]:
        """Step `step`'s epoch, that epoch's window offsets, and its batch's positions."""
        epoch, index = divmod(step, self.steps_per_epoch)
        start = index * self.batch_size
        return (
            epoch,
            self._epoch_offsets(epoch),
            start,
            min(start + self.batch_size, self.num_train),
        )

    def windows_of(self, step: int) -> range:
        """The windows (one or two) step `step`'s batch draws from."""
        epoch, offsets, start, end = self._span(step)
        first = int(np.searchsorted(offsets, start, side="right")) - 1
        last = int(np.searchsorted(offsets, end - 1, side="right")) - 1
        return range(epoch * self.per_epoch + first, epoch * self.per_epoch + last + 1)

    def batch_positions(self, step: int) -> list[tuple[int, np.ndarray]]:
        """The records of step `step`'s batch: (window, positions in its slot) per window."""
        epoch, offsets, start, end = self._span(step)
        parts = []
        for window in self.windows_of(step):
            first = int(offsets[window - epoch * self.per_epoch])
            following = int(offsets[window - epoch * self.per_epoch + 1])
            low, high = max(start, first) - first, min(end, following) - first
            parts.append((window, self.record_order(window)[low:high]))
        return parts

    def last_step_of(self, window: int) -> int:
        """The last step whose batch draws from `window`."""
        epoch, index = divmod(window, self.per_epoch)
        offsets = self._epoch_offsets(epoch)
        return epoch * self.steps_per_epoch + (int(offsets[index + 1]) - 1) // self.batch_size


def _remember(
    cache: dict[int, np.ndarray], key: int, compute: Callable[[], np.ndarray]
) -> np.ndarray:
    """`cache[key]`, computed once; only the three newest keys are kept.

    The enclave's main thread and its window loader ask the same windows: the value is
    returned as computed, never read back from a cache the other thread may trim.
    """
    value = cache.get(key)
    if value is None:
        value = cache[key] = compute()
        for old in sorted(cache)[:-3]:
            cache.pop(old, None)
    return value
