"""Atomic file output: a file either appears whole under its final name or not at all.

Output goes to a hidden temporary file in the destination directory, is fsynced, and
is renamed into place only when the writer finished without any exception (including
KeyboardInterrupt), so a crash or Ctrl-C never leaves a half-written artifact.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from chiron.core.errors import InputError


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str], *, mode: int = 0o644, overwrite: bool = True
) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes `path` only if the block completes."""
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
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if not overwrite and target.exists():
            raise InputError(f"refusing to overwrite existing file {target}")
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def try_lock_file(path: str | os.PathLike[str]) -> int | None:
    """An exclusive lock on `path` (made if missing) as an open descriptor, or None if
    another process holds it. The lock ends when the descriptor is closed or the
    process ends, however it ends."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def sync_directory(path: str | os.PathLike[str]) -> None:
    """Make the renames and new names in a directory durable (fsync of the directory).

    A file's own fsync makes its bytes durable, not its name: after a power cut the
    directory may still show the old file. Callers whose ordering of renames matters
    (a checkpoint kept as the previous one before the next is written) sync here.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def preallocate(handle: BinaryIO, size: int) -> None:
    """Reserve disk blocks for a file about to be written to exactly `size` bytes.

    The file system then allocates one extent up front instead of chunk by chunk when
    the data is flushed, which makes the final fsync of a large file cheaper. It also
    sets the file's length to `size` at once: the caller must write exactly that much
    (atomic_output discards a file whose writer failed). Where the file system cannot
    preallocate, nothing happens.
    """
    with contextlib.suppress(OSError):  # an optimization only: writes allocate anyway
        os.posix_fallocate(handle.fileno(), 0, size)


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
