"""The SHA-256 of a file to upload, and of each of its chunks, in one read.

An upload declares the whole file's digest and sends each chunk with its own; both
come from a single pass over the file (the chunk digests on a helper thread beside the
whole-file one), reading into one reused buffer.
"""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from chiron.core.errors import InputError

# Large chunks: each is one request, and the service takes up to 64 MiB.
DEFAULT_CHUNK_BYTES = 32 * 1024 * 1024
_HASH_BLOCK = 4 * 1024 * 1024


@dataclass(frozen=True)
class FileDigests:
    """A file's size and SHA-256, and the SHA-256 of each of its chunks of `chunk_bytes`."""

    size: int
    sha256: str
    chunk_bytes: int
    chunks: tuple[str, ...]

    def of_chunk(self, offset: int, length: int) -> str | None:
        """The digest of the chunk at `offset`, if it is one of `chunks`; else None."""
        index, rest = divmod(offset, self.chunk_bytes)
        if rest or index >= len(self.chunks):
            return None
        if length != min(self.chunk_bytes, self.size - offset):
            return None
        return self.chunks[index]


def file_digests(path: Path, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> FileDigests:
    """Hash a file whole and chunk by chunk in one read.

    The chunk digests are computed on a helper thread while this one computes the whole
    file's (hashlib releases the GIL), and the file is read into two reused buffers.
    """
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes must be positive")
    block_bytes = min(_HASH_BLOCK, chunk_bytes)
    whole = hashlib.sha256()
    chunks: list[str] = []
    size = 0
    with open(path, "rb", buffering=0) as handle, ThreadPoolExecutor(max_workers=1) as helper:
        buffers = (bytearray(block_bytes), bytearray(block_bytes))
        pending: list[Future[None] | None] = [None, None]
        chunk = hashlib.sha256()
        in_chunk = 0
        turn = 0
        while True:
            earlier = pending[turn]
            if earlier is not None:
                earlier.result()  # that buffer's chunk hashing is done; it can be refilled
            buffer = buffers[turn]
            want = min(block_bytes, chunk_bytes - in_chunk)
            count = handle.readinto(memoryview(buffer)[:want])
            if not count:
                break
            block = memoryview(buffer)[:count]
            in_chunk += count
            size += count
            ends_chunk = in_chunk == chunk_bytes
            pending[turn] = helper.submit(_hash_block, chunk, block, chunks if ends_chunk else None)
            whole.update(block)
            if ends_chunk:
                chunk, in_chunk = hashlib.sha256(), 0
            turn ^= 1
        if in_chunk:
            helper.submit(_hash_block, chunk, memoryview(b""), chunks).result()
    return FileDigests(size, whole.hexdigest(), chunk_bytes, tuple(chunks))


def _hash_block(digest: hashlib._Hash, block: memoryview, done: list[str] | None) -> None:
    digest.update(block)
    if done is not None:
        done.append(digest.hexdigest())


def file_sha256(path: Path) -> str:
    return file_digests(path).sha256


def read_into(source: io.RawIOBase, buffer: memoryview) -> int:
    """Fill `buffer` from `source`; fewer bytes only at end of file."""
    filled = 0
    while filled < len(buffer) and (count := source.readinto(buffer[filled:])):
        filled += count
    return filled


def digests_of(path: Path, chunk_bytes: int) -> FileDigests:
    """A file to upload, hashed; InputError if it cannot be read or is empty."""
    try:
        digests = file_digests(path, chunk_bytes)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    if digests.size == 0:
        raise InputError(f"{path} is empty")
    return digests
