"""Authenticated random access to an encrypted stream's chunks, and to a dataset's.

The sequential readers (`container.authenticated_views`, `dataset.load_dataset`) serve
readers that take a file from start to end; an enclave streaming a data set larger than
its memory (`enclave.streamed_data`) visits chunks in an order drawn from the job's
seed instead. Each chunk is checked exactly as in a sequential read: under its own
index and final flag, and the digest of the header the caller checked.

    DatasetChunks(path, key).chunk(i) -> (record bytes, labels)   # one chunk at a time
"""

from __future__ import annotations

import os

import numpy as np

from chiron.core.container import (
    MAX_CHUNKS,
    StreamHeader,
    chunk_associated_data,
    chunk_key,
    chunk_nonce,
)
from chiron.core.crypto import TAG_BYTES, aead_decrypt_into
from chiron.core.dataset import LABEL_DTYPE, check_labels, open_checked
from chiron.core.errors import InputError, IntegrityError


class ChunkReader:
    """Authenticated random access to the chunks of one stream whose chunk count is known.

    For readers that visit chunks out of order (an enclave streaming a data set larger
    than its memory). Each chunk is checked under its own index and final flag, so a
    host serving another chunk, another file's chunk, or a chunk cut short in its
    place fails authentication exactly as in a sequential read; the caller fixes the
    chunk count (and so which chunk is final) from facts it already checked, such as
    the file's size against its header.
    """

    def __init__(
        self, fd: int, key: bytes, header: StreamHeader, what: str, chunk_count: int
    ) -> None:
        key = chunk_key(key, header, what)
        if not 0 < chunk_count <= MAX_CHUNKS:
            raise IntegrityError(f"{what} has too many chunks")
        self._fd, self._key, self._header, self._what = fd, key, header, what
        self._digest = header.digest
        self._chunk_count = chunk_count
        self._buffer = bytearray(header.chunk_size + TAG_BYTES)

    def read(self, index: int, size: int) -> memoryview:
        """Chunk `index`'s `size` bytes of plaintext, authenticated.

        The view points into a buffer the next `read` overwrites.
        """
        if not 0 <= index < self._chunk_count or not 0 < size <= self._header.chunk_size:
            raise ValueError("no such chunk")
        sealed = memoryview(self._buffer)[: size + TAG_BYTES]
        offset = self._header.size + index * (self._header.chunk_size + TAG_BYTES)
        filled = 0
        while filled < len(sealed):
            count = os.preadv(self._fd, [sealed[filled:]], offset + filled)
            if not count:
                raise IntegrityError(f"{self._what} is truncated")
            filled += count
        out = sealed[:size]
        try:
            aead_decrypt_into(
                self._key,
                chunk_nonce(index),
                sealed,
                chunk_associated_data(self._digest, index, index == self._chunk_count - 1),
                out,
            )
        except IntegrityError:
            raise IntegrityError(
                f"{self._what} has been tampered with: chunk {index} does not authenticate "
                "(modified, truncated, extended, reordered or spliced)"
            ) from None
        return out


class DatasetChunks:
    """Authenticated random access to a dataset's chunks, for a reader that streams them.

    Opening checks the file's size against its header and the key against the key
    commitment; each chunk is authenticated under its own index when it is read, and
    its labels are checked against the schema.
    """

    def __init__(self, path: str | os.PathLike[str], key: bytes) -> None:
        self._what = f"dataset {path}"
        self._source, stream_header, self.header = open_checked(path, self._what)
        # What this very file's chunks authenticate under (see read_dataset_header_and_digest).
        self.header_sha256 = stream_header.digest.hex()
        try:
            self._reader = ChunkReader(
                self._source.fileno(), key, stream_header, self._what, self.header.chunk_count
            )
        except BaseException:
            self._source.close()
            raise

    def __enter__(self) -> DatasetChunks:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        self.close()

    def close(self) -> None:
        self._source.close()

    def chunk(self, index: int) -> tuple[memoryview, np.ndarray]:
        """Chunk `index`'s record bytes and labels: views valid until the next call."""
        header = self.header
        count = header.records_in_chunk(index)
        plaintext = self._reader.read(index, count * header.stored_record_bytes)
        x_bytes = count * header.schema.record_bytes
        y = np.frombuffer(plaintext, dtype=LABEL_DTYPE, count=count, offset=x_bytes)
        first = index * header.records_per_chunk
        try:
            check_labels(y, header.schema.num_classes, first)
        except InputError as exc:
            raise InputError(f"{self._what}: {exc}") from None
        return plaintext[:x_bytes], y
