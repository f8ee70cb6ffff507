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
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable

from chiron.core.errors import EnclaveError

_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


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

    def close(self) -> None:
        self.release_reader()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
