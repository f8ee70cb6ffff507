"""Atomic file output: a file either appears whole under its final name or not at all.

Output goes to a hidden temporary file in the destination directory, is fsynced, and
is renamed into place only when the writer finished without any exception (including
KeyboardInterrupt), so a crash or Ctrl-C never leaves a half-written artifact.

With `sync_early`, a helper thread has the kernel write the file's data to disk while
the caller is still producing it, so the final fsync finds little left to do: for a
large file, disk writes overlap the work that produces the data instead of following
it. The guarantee is unchanged: the file is renamed into place only after one fsync of
all of it, and an unfinished temporary file is never renamed.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from chiron.core.errors import InputError

# With sync_early, the helper thread starts one fdatasync each time this much more data
# has been written: a few per file, each overlapping the writes that follow it.
SYNC_EARLY_BYTES = 16 << 20


class _SyncingWriter(io.BufferedWriter):
    """A buffered file that starts an fdatasync on a helper thread every SYNC_EARLY_BYTES.

    fdatasync releases the GIL and mostly waits for the device, so the caller keeps
    writing meanwhile. At most one sync runs at a time; a request made while one runs is
    served by the next. Errors of an early sync are ignored: the final fsync in
    atomic_output reports what matters, before anything is renamed.
    """

    def __init__(self, raw: io.FileIO) -> None:
        super().__init__(raw)
        self._fd = raw.fileno()
        self._unsynced = 0
        self._wanted = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def write(self, data: Any) -> int:
        written = super().write(data)
        self._unsynced += written
        if self._unsynced >= SYNC_EARLY_BYTES:
            self._unsynced = 0
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._sync_loop, name="chiron-sync-early", daemon=True
                )
                self._thread.start()
            self._wanted.set()
        return written

    def _sync_loop(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stopping:
                return
            with contextlib.suppress(OSError):
                os.fdatasync(self._fd)

    def stop_syncing(self) -> None:
        """Wait for the helper thread to finish; call before closing the file."""
        if self._thread is not None:
            self._stopping = True
            self._wanted.set()
            self._thread.join()
            self._thread = None


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str],
    *,
    mode: int = 0o644,
    overwrite: bool = True,
    sync_early: bool = False,
) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes `path` only if the block completes.

    `sync_early` suits large files written in a stream (see the module's docstring).
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise InputError(f"cannot write {target}: directory {directory} does not exist")
    if not overwrite and target.exists():
        raise InputError(f"refusing to overwrite existing file {target}")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=directory)
    except OSError as exc:
        raise InputError(f"cannot write {target}: {exc.strerror}") from None
    os.fchmod(fd, mode)
    try:
        handle = _SyncingWriter(io.FileIO(fd, "wb")) if sync_early else os.fdopen(fd, "wb")
        with handle:
            try:
                yield handle
            finally:
                if isinstance(handle, _SyncingWriter):
                    handle.stop_syncing()
            handle.flush()
            os.fsync(handle.fileno())
        if not overwrite and target.exists():
            raise InputError(f"refusing to overwrite existing file {target}")
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_write(
    path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644, overwrite: bool = True
) -> None:
    with atomic_output(path, mode=mode, overwrite=overwrite) as handle:
        handle.write(data)


def _input_error(exc: OSError, path: object, what: str) -> InputError:
    if isinstance(exc, FileNotFoundError):
        return InputError(f"{what} not found: {path}")
    if isinstance(exc, IsADirectoryError):
        return InputError(f"{what} is a directory, not a file: {path}")
    return InputError(f"cannot read {what} {path}: {exc.strerror}")


def open_input(path: str | os.PathLike[str], *, what: str = "file") -> BinaryIO:
    """Open an input file for reading, turning OS errors into one-line InputErrors."""
    try:
        return open(path, "rb")
    except OSError as exc:
        raise _input_error(exc, path, what) from None


def read_exactly(stream: BinaryIO, size: int) -> bytes:
    """Read `size` bytes, looping over short reads; fewer only at end of file."""
    parts = []
    remaining = size
    while remaining:
        part = stream.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def read_input_file(
    path: str | os.PathLike[str], *, what: str = "file", limit: int | None = None
) -> bytes:
    """Read a whole input file, turning OS errors into one-line InputErrors."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(-1 if limit is None else limit + 1)
    except OSError as exc:
        raise _input_error(exc, path, what) from None
    if limit is not None and len(data) > limit:
        raise InputError(f"{what} {path} is larger than {limit} bytes")
    return data
