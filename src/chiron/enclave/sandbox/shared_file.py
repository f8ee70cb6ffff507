"""A memory file the enclave writes once and the sandboxed child maps read-only.

The training data reaches the child through it rather than through the pipe: one copy
in memory serves both ends, where a stream of bytes meant a serialised copy, a pipe's
worth of small writes and a second array in the child (`core.recipe_protocol` gives
the layout).

Why this gives the child nothing it should not have:
- It is a memfd: it has no path, so nothing but this enclave and the child it is
  passed to can open it.
- The child's descriptor is an open file description of its own, opened read-only
  (through /proc/self/fd), so the child can neither write nor resize the file; seccomp
  lets it map files only MAP_PRIVATE.
- The child holds that descriptor from its start, before it declares, but the file is
  empty until the enclave has the declaration: a recipe cannot read data before it
  declares the sizes that leave the sandbox.
- Once written, the file is sealed (no write, grow, shrink or new seal): what the
  child maps is exactly what the enclave wrote.

A data set too large to hold (`core.data_windows`) uses the file as a ring instead: its
size is fixed and sealed (no grow, shrink or new seal) and the enclave writes window
after window into it. The child sees each write as it happens, and may read a slot
before it is told the window is there: all it can see early is training data it is
about to be given anyway, never a held-out record, and the enclave never reads the
file back, so nothing the child does to its own view reaches the enclave.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable

from chiron.core.errors import EnclaveError

_SIZE_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
_SEALS = _SIZE_SEALS | fcntl.F_SEAL_WRITE


class SharedFile:
    """The enclave's end of one shared file, and the read-only descriptor for the child."""

    def __init__(self, name: str) -> None:
        self._fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            self._reader: int | None = os.open(
                f"/proc/self/fd/{self._fd}", os.O_RDONLY | os.O_CLOEXEC
            )
        except OSError:
            os.close(self._fd)
            raise
        self._sealed = False

    @property
    def reader_fd(self) -> int:
        """The descriptor to pass to the child (once; `release_reader` closes it here)."""
        if self._reader is None:
            raise EnclaveError("the shared file's reader was already handed over")
        return self._reader

    def release_reader(self) -> None:
        """Close this process's copy of the child's descriptor once the child has it."""
        if self._reader is not None:
            os.close(self._reader)
            self._reader = None

    def write_once(self, parts: Iterable[bytes | memoryview]) -> int:
        """Write `parts` in order, then seal the file; return the size written."""
        if self._sealed:
            raise EnclaveError("the shared file was already written")
        size = 0
        for part in parts:
            view = memoryview(part).cast("B")
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
                size += written
        fcntl.fcntl(self._fd, fcntl.F_ADD_SEALS, _SEALS)
        self._sealed = True
        return size

    def make_ring(self, size: int) -> RingWriter:
        """Fix the file at `size` bytes, to be written again and again by the returned writer."""
        if self._sealed:
            raise EnclaveError("the shared file was already written")
        os.ftruncate(self._fd, size)
        fcntl.fcntl(self._fd, fcntl.F_ADD_SEALS, _SIZE_SEALS)
        self._sealed = True
        return RingWriter(self._fd)

    def close(self) -> None:
        self.release_reader()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class RingWriter:
    """Writes windows into a ring, from any thread, through a descriptor of its own.

    The writer's thread may still be writing a window when the sandbox closes (the child
    failed); the sandbox then closes its shared file's descriptor, and the next file this
    process opens (a checkpoint on the host's disk, say) may get that number. Writing
    through a duplicate that only `close` ends means decrypted records can only ever
    land in the ring.
    """

    def __init__(self, fd: int) -> None:
        self._fd = os.dup(fd)

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        """Write `data` at `offset` of the ring."""
        if self._fd < 0:
            raise EnclaveError("the ring's writer is closed")
        view = memoryview(data).cast("B")
        while view:
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
