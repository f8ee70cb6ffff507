"""Length-prefixed frames: the only wire format between processes of one machine.

A frame is `kind` (1 byte) ‖ `length` (4 bytes, big-endian) ‖ payload. The reader
checks the declared length against the caller's limit *before* reading the payload,
so a hostile peer cannot make the reader allocate or wait for more than it allows.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from dataclasses import dataclass

from chiron.core.errors import ChironError

_HEADER = struct.Struct(">BI")
HEADER_BYTES = _HEADER.size
MAX_FRAME_PAYLOAD = 2**32 - 1
PIPE_BYTES = 1 << 20  # a pipe's buffer: fewer wake-ups when records or models cross
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), not in Python 3.11's fcntl


def widen_pipe(fd: int) -> None:
    """Give the pipe `fd` belongs to a `PIPE_BYTES` buffer (64 KiB is Linux's default);
    best effort: a system whose limit is lower keeps its own size."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_BYTES)


class FramingError(ChironError):
    """The peer sent something that is not a well-formed frame within limits."""


@dataclass(frozen=True)
class Frame:
    kind: int
    payload: bytes


def encode_frame(kind: int, payload: bytes) -> bytes:
    if not 0 <= kind <= 255:
        raise ValueError("frame kind must fit in one byte")
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise ValueError("frame payload too large")
    return _HEADER.pack(kind, len(payload)) + payload


def write_frame(fd: int, kind: int, payload: bytes | memoryview) -> None:
    """Write one whole frame to a raw file descriptor (retrying short writes)."""
    view = memoryview(_HEADER.pack(kind, len(payload)))
    _write_all(fd, view)
    _write_all(fd, memoryview(payload).cast("B"))


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_exact(fd: int, count: int) -> bytes | None:
    """Read exactly `count` bytes; None on EOF before the first byte."""
    buffer = bytearray(count)
    view = memoryview(buffer)
    got = 0
    while got < count:
        n = os.readv(fd, [view[got:]])
        if n == 0:
            if got == 0:
                return None
            raise FramingError("stream ended in the middle of a frame")
        got += n
    return bytes(buffer)


def read_frame(fd: int, *, max_payload: int) -> Frame | None:
    """Read one frame from `fd`; None on clean EOF between frames."""
    header = read_exact(fd, HEADER_BYTES)
    if header is None:
        return None
    kind, length = _HEADER.unpack(header)
    if length > max_payload:
        raise FramingError(f"frame of {length} bytes exceeds the limit of {max_payload}")
    payload = read_exact(fd, length) if length else b""
    if payload is None:
        raise FramingError("stream ended in the middle of a frame")
    return Frame(kind, payload)
