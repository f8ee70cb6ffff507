"""The encrypted dataset (`.chd`): records in an encrypted stream of kind "dataset".

The stream itself (chunking, keys, associated data) is `core.container`; this module
lays records out in it and reads them back. Records are x in the schema's dtype,
little-endian, C order, and int64 labels; chunk `i` holds records `[i*R, (i+1)*R)` as
all their x bytes followed by all their label bytes. The stream header's metadata is
the public `DatasetHeader` (format version, schema, record count, layout), so every
chunk authenticates it. The byte layout is in docs/formats.md.

    read_dataset_header(path) -> DatasetHeader        # public header only, unauthenticated
    read_dataset_header_and_digest(path) -> (DatasetHeader, header SHA-256 hex)
    encrypt_dataset(batches, out_path, key, *, schema, record_count, ...) -> DatasetHeader
    load_dataset(path, key) -> (DatasetHeader, x, y)  # full authenticated read into memory
    verify_dataset(path, key) -> DatasetHeader        # full authenticated read, constant memory
"""

from __future__ import annotations

import math
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from chiron.core.container import (
    DEFAULT_CHUNK_SIZE,
    FORMAT_VERSION,
    MAX_CHUNKS,
    EncryptedStreamWriter,
    StreamHeader,
    authenticated_views,
    read_header,
)
from chiron.core.crypto import TAG_BYTES
from chiron.core.errors import InputError, IntegrityError
from chiron.core.fileio import atomic_output, open_input, preallocate
from chiron.core.schema import DatasetSchema

DATASET_KIND = "dataset"
DATASET_FORMAT_VERSION = 1
LABEL_DTYPE = np.dtype("<i8")
_DATASET_ID = re.compile(r"[0-9a-f]{32}")
_DATASET_FIELDS = {"format_version", "schema", "record_count", "records_per_chunk", "chunk_count"}


def _element_dtype(schema: DatasetSchema) -> np.dtype:
    return np.dtype("u1" if schema.dtype == "uint8" else "<f4")


@dataclass(frozen=True)
class DatasetHeader:
    """The public facts about an encrypted dataset: what `chiron dataset inspect` shows."""

    dataset_id: str
    schema: DatasetSchema
    record_count: int
    chunk_count: int
    records_per_chunk: int
    format_version: int = DATASET_FORMAT_VERSION

    @classmethod
    def plan(cls, dataset_id: str, schema: DatasetSchema, record_count: int) -> DatasetHeader:
        """Lay `record_count` records out in chunks of about DEFAULT_CHUNK_SIZE bytes."""
        records_per_chunk = max(
            1, DEFAULT_CHUNK_SIZE // (schema.record_bytes + LABEL_DTYPE.itemsize)
        )
        chunk_count = math.ceil(record_count / records_per_chunk)
        return cls(dataset_id, schema, record_count, chunk_count, records_per_chunk)

    @property
    def stored_record_bytes(self) -> int:
        """Bytes of one record in a chunk: its x and its int64 label."""
        return self.schema.record_bytes + LABEL_DTYPE.itemsize

    @property
    def chunk_size(self) -> int:
        return self.records_per_chunk * self.stored_record_bytes

    def records_in_chunk(self, index: int) -> int:
        return min(self.records_per_chunk, self.record_count - index * self.records_per_chunk)

    def encrypted_size(self, header_size: int) -> int:
        """The exact size of the file this header describes, given its header's size."""
        return (
            header_size
            + self.chunk_count * TAG_BYTES
            + self.record_count * self.stored_record_bytes
        )

    def to_metadata(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "schema": self.schema.to_dict(),
            "record_count": self.record_count,
            "records_per_chunk": self.records_per_chunk,
            "chunk_count": self.chunk_count,
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything public, for `inspect --json`."""
        return {"dataset_id": self.dataset_id, "container_format_version": FORMAT_VERSION} | (
            self.to_metadata()
        )

    @classmethod
    def from_stream_header(cls, header: StreamHeader, what: str) -> DatasetHeader:
        meta = header.metadata
        malformed = InputError(f"{what} has a malformed dataset header")
        if set(meta) != _DATASET_FIELDS:
            raise malformed
        if meta["format_version"] != DATASET_FORMAT_VERSION:
            raise InputError(
                f"{what} uses dataset format version {meta['format_version']!r}; "
                f"this Chiron reads version {DATASET_FORMAT_VERSION}"
            )
        counts = {name: meta[name] for name in ("record_count", "chunk_count", "records_per_chunk")}
        if not _DATASET_ID.fullmatch(header.file_id) or any(
            type(n) is not int or n < 1 for n in counts.values()
        ):
            raise malformed
        try:
            schema = DatasetSchema.from_dict(meta["schema"])
        except InputError as exc:
            raise InputError(f"{what}: {exc}") from None
        result = cls(header.file_id, schema, **counts)
        # The layout must be the one the counts imply, so sizes can be checked up front.
        if (
            result.chunk_count != math.ceil(result.record_count / result.records_per_chunk)
            or result.chunk_count > MAX_CHUNKS
            or result.chunk_size != header.chunk_size
        ):
            raise malformed
        return result


def new_dataset_id() -> str:
    """A fresh random dataset id: 128 bits, lowercase hex."""
    return secrets.token_hex(16)


def _records_of_batch(
    batch: tuple[np.ndarray, np.ndarray], schema: DatasetSchema, first_record: int
) -> tuple[np.ndarray, np.ndarray]:
    """Check one source batch against the schema; return it in the stored dtypes."""
    x, y = np.asarray(batch[0]), np.asarray(batch[1])
    element = _element_dtype(schema)
    if x.shape[1:] != schema.input_shape:
        raise InputError(
            f"record {first_record} has shape {x.shape[1:]}, the schema says {schema.input_shape}"
        )
    if x.dtype.kind != element.kind or x.dtype.itemsize != element.itemsize:
        raise InputError(f"records are {x.dtype}, the schema says {schema.dtype}")
    if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu":
        raise InputError("labels must be one integer per record")
    check_labels(y, schema.num_classes, first_record)
    return np.ascontiguousarray(x, dtype=element), np.ascontiguousarray(y, dtype=LABEL_DTYPE)


def check_labels(y: np.ndarray, num_classes: int, first_record: int) -> None:
    if not len(y):
        return
    # Stored labels take one reduction: read as unsigned, a negative label is huge.
    if y.dtype == LABEL_DTYPE and int(y.view(np.uint64).max()) < num_classes:
        return
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        position = first_record + int(np.argmax(y == bad))
        raise InputError(
            f"label out of range: record {position} has label {bad}, outside 0..{num_classes - 1} "
            f"for {num_classes} classes"
        )


def _bytes_of(array: np.ndarray) -> memoryview:
    """The raw bytes of a C-contiguous array, without a copy."""
    return array.reshape(-1).view(np.uint8).data


def _dataset_plaintext(
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    header: DatasetHeader,
    on_records: Callable[[int], None] | None,
) -> Iterator[memoryview]:
    """The dataset's plaintext stream: per chunk, the x bytes then the label bytes."""
    per_chunk = header.records_per_chunk
    labels = np.empty(per_chunk, dtype=LABEL_DTYPE)
    in_chunk = 0
    done = 0
    for batch in batches:
        x, y = _records_of_batch(batch, header.schema, done)
        if done + len(x) > header.record_count:
            raise InputError(
                f"the source has more than the {header.record_count} records it announced"
            )
        start = 0
        while start < len(x):
            take = min(per_chunk - in_chunk, len(x) - start)
            yield _bytes_of(x[start : start + take])
            labels[in_chunk : in_chunk + take] = y[start : start + take]
            in_chunk += take
            start += take
            if in_chunk == per_chunk:
                yield _bytes_of(labels)
                in_chunk = 0
        done += len(x)
        if on_records is not None:
            on_records(len(x))
    if done != header.record_count:
        raise InputError(f"the source has {done} records, not the {header.record_count} announced")
    if in_chunk:
        yield _bytes_of(labels[:in_chunk])


def encrypt_dataset(
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    out_path: str | os.PathLike[str],
    key: bytes,
    *,
    schema: DatasetSchema,
    record_count: int,
    overwrite: bool = False,
    on_records: Callable[[int], None] | None = None,
) -> DatasetHeader:
    """Encrypt records to `out_path` atomically, under a fresh dataset id.

    `batches` yields `(x, y)` pairs of any length: x of shape (k, *schema.input_shape) in
    the schema's dtype and y of k integer labels in [0, num_classes). `record_count`
    must be known in advance because it is part of the public header, which every chunk
    authenticates. Memory use does not depend on the number of records.
    """
    if record_count < 1:
        raise InputError("the data set is empty")
    header = DatasetHeader.plan(new_dataset_id(), schema, record_count)
    with (
        atomic_output(out_path, overwrite=overwrite) as handle,
        EncryptedStreamWriter(
            handle,
            key,
            kind=DATASET_KIND,
            file_id=header.dataset_id,
            metadata=header.to_metadata(),
            chunk_size=header.chunk_size,
        ) as writer,
    ):
        # The header fixes the file's size, so its blocks are reserved at once rather
        # than found chunk by chunk when the file is synced.
        preallocate(handle, header.encrypted_size(writer.header.size))
        for piece in _dataset_plaintext(batches, header, on_records):
            writer.write(piece)
        writer.close()
        # The layout fixes the size, so this cuts nothing; were it ever to differ, the
        # file ends where the last chunk does, and readers check that against the header.
        handle.truncate()
    return header


def _open_dataset(source: BinaryIO, what: str) -> tuple[StreamHeader, DatasetHeader]:
    stream_header = read_header(source, expected_kind=DATASET_KIND, what=what)
    return stream_header, DatasetHeader.from_stream_header(stream_header, what)


def read_dataset_header(path: str | os.PathLike[str]) -> DatasetHeader:
    """The public header of an encrypted dataset; no key needed, nothing authenticated."""
    return read_dataset_header_and_digest(path)[0]


def read_dataset_header_and_digest(path: str | os.PathLike[str]) -> tuple[DatasetHeader, str]:
    """The public header and the SHA-256 (hex) of its exact bytes.

    Every chunk's associated data carries that digest, so it pins this very ciphertext
    (its salt and key commitment included): a job manifest names it, and an enclave
    handed another file of the same dataset id notices before it opens the data key.
    """
    with open_input(path, what="dataset") as source:
        stream_header, header = _open_dataset(source, f"dataset {path}")
    return header, stream_header.digest.hex()


def open_checked(
    path: str | os.PathLike[str], what: str
) -> tuple[BinaryIO, StreamHeader, DatasetHeader]:
    """Open a dataset and check its size against its header, before anything is read."""
    source = open_input(path, what="dataset")
    try:
        stream_header, header = _open_dataset(source, what)
        # A forged record count must not make the reader allocate or read for long.
        actual_size = os.fstat(source.fileno()).st_size
        expected_size = header.encrypted_size(stream_header.size)
        if actual_size != expected_size:
            raise IntegrityError(
                f"{what} is {actual_size} bytes but its header describes "
                f"{expected_size}: it was truncated, extended or tampered with"
            )
    except BaseException:
        source.close()
        raise
    return source, stream_header, header


class _DatasetReader:
    """One authenticated pass over a dataset file, chunk by chunk.

    Opening checks the file's size against its header and the key against the key
    commitment, before anything is allocated or decrypted.
    """

    def __init__(self, path: str | os.PathLike[str], key: bytes) -> None:
        self._what = f"dataset {path}"
        self._source, stream_header, self.header = open_checked(path, self._what)
        try:
            self._chunks = authenticated_views(self._source, key, stream_header, self._what)
        except BaseException:
            self._source.close()
            raise

    def __enter__(self) -> _DatasetReader:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        self._source.close()

    def records(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield (first record index, x, y) per chunk, authenticated and validated.

        The arrays are views of a reused buffer, valid until the next item.
        """
        schema = self.header.schema
        element = _element_dtype(schema)
        for first, plaintext, y in self.labelled_chunks():
            count = len(y)
            x = np.frombuffer(plaintext, dtype=element, count=count * schema.input_elements)
            yield first, x.reshape(count, *schema.input_shape), y

    def labelled_chunks(self) -> Iterator[tuple[int, memoryview, np.ndarray]]:
        """Yield (first record index, plaintext, y) per chunk, authenticated and validated.

        What verification needs, without making arrays of the records it does not keep.
        """
        header, what = self.header, self._what
        schema = header.schema
        first = 0
        for index, plaintext in enumerate(self._chunks):
            count = header.records_in_chunk(index)
            if count < 1 or len(plaintext) != count * header.stored_record_bytes:
                raise InputError(f"{what}: chunk {index} does not match the header's layout")
            y = np.frombuffer(
                plaintext, dtype=LABEL_DTYPE, count=count, offset=count * schema.record_bytes
            )
            try:
                check_labels(y, schema.num_classes, first)
            except InputError as exc:
                raise InputError(f"{what}: {exc}") from None
            yield first, plaintext, y
            first += count
        if first != header.record_count:
            raise InputError(f"{what} holds {first} records, its header says {header.record_count}")


def load_dataset(
    path: str | os.PathLike[str], key: bytes
) -> tuple[DatasetHeader, np.ndarray, np.ndarray]:
    """Authenticate and decrypt a whole dataset into memory.

    Returns the header, x of shape (N, *input_shape) in the schema's dtype and y of N
    int64 labels. IntegrityError for a wrong key or any tampering; InputError for a file
    that is unreadable or not a well-formed dataset.
    """
    with _DatasetReader(path, key) as reader:
        header = reader.header
        x = np.empty(
            (header.record_count, *header.schema.input_shape), _element_dtype(header.schema)
        )
        y = np.empty(header.record_count, LABEL_DTYPE)
        for first, x_part, y_part in reader.records():
            x[first : first + len(y_part)] = x_part
            y[first : first + len(y_part)] = y_part
    return header, x, y


def verify_dataset(
    path: str | os.PathLike[str], key: bytes, *, on_records: Callable[[int], None] | None = None
) -> DatasetHeader:
    """Authenticate and validate every record without keeping them: constant memory."""
    with _DatasetReader(path, key) as reader:
        for _, _, y_part in reader.labelled_chunks():
            if on_records is not None:
                on_records(len(y_part))
        return reader.header
