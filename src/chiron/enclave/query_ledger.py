"""A query model's sealed ledger: its lifetime use, shared by every query enclave of it.

Each query channel opened and each evaluation accepted is recorded here once, so a
replay is refused by every enclave of the model on this state directory, not only by
the one that saw it first; every input queried and every record evaluated is charged
to the budget here, under an exclusive lock, before the recipe runs, so concurrent
enclaves cannot overspend it. What a host can still do to the file (cut it short or
replace it) is the rollback docs/query.md describes.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from chiron.core.errors import InputError, IntegrityError
from chiron.core.identifiers import check_model_id
from chiron.enclave.context import EnclaveContext
from chiron.enclave.sealing import SealingKey

BUDGET_DIRECTORY = "query-budget"
REPLAYED = "this request was already received (replayed request)"


def _budget_key(context: EnclaveContext) -> SealingKey:
    return SealingKey(
        state_dir=context.state_dir,
        platform_name=context.platform_name,
        measurement=context.measurement,
        purpose="query-budget",
    )


def _budget_path(context: EnclaveContext, model_id: str) -> Path:
    """Where a model's sealed ledger lies; the name comes from a checked model id only."""
    return context.state_dir / BUDGET_DIRECTORY / f"{check_model_id(model_id)}.sealed"


# The ledger is a file of fixed-size sealed records, appended one at a time: a channel
# opened or an evaluation accepted (its 16-byte id), or units charged (negative: given
# back). Each record is sealed to the runtime measurement and bound to the model id,
# its own index and the tag of the record before it, so the host can neither read,
# forge, edit, reorder nor splice records (from this file or another model's); it can
# only cut the file short or replace it, which is the rollback docs/query.md describes.
# Every record has one size whatever it says: the host learns how many channels,
# evaluations and charged queries there were (it relays each of them anyway), never
# how many units they cost.
_RECORD = struct.Struct(">B16sq")  # kind, id (zeros for a charge), units
OPENED, EVALUATED, CHARGED = 1, 2, 3
_NO_ID = bytes(16)


class Ledger:
    """One model's lifetime use, shared through its sealed file by every enclave of it.

    This enclave keeps the file open and, in memory, the state as of the last record it
    read: under the exclusive lock it reads only the records other enclaves appended
    since, then checks and appends, so a query costs a lock, a small read at most and a
    write of one record, not a rewrite of the whole ledger.
    """

    def __init__(self, context: EnclaveContext, model_id: str) -> None:
        self._path = _budget_path(context, model_id)
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._key = _budget_key(context)
        self._model_id = model_id
        self._record_bytes = len(self._seal(0, b"", _RECORD.pack(0, _NO_ID, 0)))
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        stat = os.fstat(self._fd)
        self._file = (stat.st_dev, stat.st_ino)
        self._records = 0
        self._previous = b""  # the tag of the last record read or written
        self.used = 0
        self.ids: set[bytes] = set()

    def close(self) -> None:
        os.close(self._fd)

    def _seal(self, index: int, previous: bytes, plaintext: bytes) -> bytes:
        return self._key.seal(plaintext, self._binding(index, previous))

    def _binding(self, index: int, previous: bytes) -> dict[str, object]:
        return {"model_id": self._model_id, "record": index, "previous": previous.hex()}

    @contextmanager
    def locked(self) -> Iterator[Ledger]:
        """Hold the ledger's lock, caught up with every record: one check-and-write at a time.

        Every query enclave of a model on this state directory takes the same exclusive
        `flock`, so two of them cannot both read "one unit left" and both spend it.
        """
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self._catch_up()
            yield self
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _catch_up(self) -> None:
        try:
            on_disk = os.stat(self._path)
        except FileNotFoundError:
            on_disk = None
        # A ledger deleted, replaced or cut short under a running enclave is a rollback
        # this enclave can see: it refuses to go on rather than forget what it knows.
        size = os.fstat(self._fd).st_size
        known = self._records * self._record_bytes
        if on_disk is None or (on_disk.st_dev, on_disk.st_ino) != self._file or size < known:
            raise IntegrityError("the model's query ledger was replaced or rolled back")
        if (size - known) % self._record_bytes:
            raise IntegrityError("the model's sealed query ledger is malformed")
        if size > known:
            data = os.pread(self._fd, size - known, known)
            for offset in range(0, len(data), self._record_bytes):
                self._apply(data[offset : offset + self._record_bytes])

    def _apply(self, blob: bytes) -> None:
        plaintext = self._key.unseal(blob, self._binding(self._records, self._previous))
        kind, request_id, units = _RECORD.unpack(plaintext)
        if kind not in (OPENED, EVALUATED, CHARGED):
            raise IntegrityError("the model's sealed query ledger is malformed")
        self._count(blob, kind, request_id, units)

    def _count(self, blob: bytes, kind: int, request_id: bytes, units: int) -> None:
        if kind != CHARGED:
            self.ids.add(request_id)
        self.used += units
        self._records += 1
        self._previous = blob[-16:]

    def append(self, kind: int, request_id: bytes, units: int, *, durable: bool) -> None:
        """Append one record (call inside `locked`).

        Every enclave of the model sees it once written (the page cache is shared);
        `durable` also syncs it to disk. What a crash before a sync forgets, a host can
        forget at will by rolling the file back, so only the rare records that refuse
        replays pay for a sync, never a query's charge (docs/query.md).
        """
        blob = self._seal(self._records, self._previous, _RECORD.pack(kind, request_id, units))
        os.pwrite(self._fd, blob, self._records * self._record_bytes)
        if durable:
            os.fsync(self._fd)
        self._count(blob, kind, request_id, units)

    def accept(self, request_id: str, kind: int, units: int, budget: int | None) -> int | None:
        """Record a channel or an evaluation, refusing an id already spent; the budget left."""
        key = bytes.fromhex(request_id)
        with self.locked():
            if key in self.ids:
                raise InputError(REPLAYED)
            _check_budget(self.used, units, budget)
            self.append(kind, key, units, durable=True)
            return None if budget is None else budget - self.used

    def charge(self, units: int, budget: int) -> int:
        """Charge `units` of `budget` before the recipe runs; the budget left.

        One locked step: the budget check and the write that spends it. Charging before
        answering means an answer is never given on budget that a concurrent request has
        already spent.
        """
        with self.locked():
            _check_budget(self.used, units, budget)
            self.append(CHARGED, _NO_ID, units, durable=False)
            return budget - self.used

    def refund(self, units: int) -> None:
        """Give back the units of a request whose prediction failed; its id stays spent.

        The owner got no answer, only a one-line failure, and the recipe's sandbox is gone
        with it (this enclave answers nothing more), so a refund cannot buy answers.
        """
        with self.locked():
            self.append(CHARGED, _NO_ID, -units, durable=False)

    def spent(self, request_id: str) -> bool:
        with self.locked():
            return bytes.fromhex(request_id) in self.ids


def _check_budget(used: int, units: int, budget: int | None) -> None:
    if budget is not None and used + units > budget:
        raise InputError(
            f"query budget exhausted: {budget - used} of {budget} left, this request needs {units}"
        )
