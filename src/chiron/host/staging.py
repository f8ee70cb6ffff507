"""The pieces of a staging file an upload is built in: appends, a running digest, durability.

`host.uploads` keeps the protocol (create, chunk, complete) and the database; this
module holds what it does to the bytes: gathering a chunk's blocks into few `writev`
calls, hashing them in order off the request's thread, and reading the `<id>.synced`
record that says how much of the file a reboot would keep.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

# Blocks gathered by one writev call (POSIX guarantees at least 16; Linux takes 1024).
try:
    _IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))
except (ValueError, OSError):
    _IOV_MAX = 16
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """This boot of the machine ("unknown" where the kernel does not say)."""
    try:
        return _BOOT_ID.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def durable_length(record: Path) -> int:
    """The length an `<id>.synced` record vouches for after a reboot (0 if unreadable)."""
    try:
        size, _ = record.read_text().split()
        return int(size)
    except (OSError, ValueError):
        return 0


def recorded_boot(record: Path) -> str | None:
    try:
        return record.read_text().split()[1]
    except (OSError, IndexError):
        return None


Buffer = bytes | bytearray | memoryview


def update(digest: hashlib._Hash, blocks: Sequence[Buffer]) -> None:
    for block in blocks:
        digest.update(block)


def append(fd: int, blocks: Sequence[Buffer]) -> None:
    """Write `blocks` in order at the end of `fd`, gathering them into few system calls."""
    pending = [memoryview(block).cast("B") for block in blocks if len(block)]
    while pending:
        written = os.writev(fd, pending[:_IOV_MAX])
        if not written:
            raise OSError(errno.EIO, "no progress appending to a staging file")
        while written:
            head = pending[0]
            if written < len(head):
                pending[0], written = head[written:], 0
            else:
                pending.pop(0)
                written -= len(head)


class RunningDigest:
    """The SHA-256 of the bytes appended to one staging file, updated in order off-thread."""

    def __init__(self) -> None:
        self.covered = 0
        self._state = hashlib.sha256()
        self._last: Future[None] | None = None

    def add(self, helper: ThreadPoolExecutor, blocks: Sequence[Buffer], size: int) -> None:
        # One helper thread runs the updates in submission order; each holds its blocks.
        self._last = helper.submit(update, self._state, blocks)
        self.covered += size

    def hexdigest(self) -> str:
        if self._last is not None:
            self._last.result()
        return self._state.hexdigest()
