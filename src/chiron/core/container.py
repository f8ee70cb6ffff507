"""Chunked authenticated encryption for files at rest, and the encrypted dataset on top.

Every secret Chiron stores in a file (a data owner's dataset, a trained model) is an
*encrypted stream*: a public header followed by AES-256-GCM chunks. The byte layout is
in docs/formats.md; in short:

- The header carries a magic, the container version, a random 32-byte salt, a key
  commitment and a JSON document (`kind`, `id`, `chunk_size`, free `metadata`).
- Each file gets its own chunk key, HKDF-SHA256(key, salt). The nonce of chunk `i` is
  `i` itself (96-bit big-endian), so nonces never repeat under a chunk key, and chunk
  keys never repeat because salts are fresh 256-bit random values.
- Every chunk's associated data is SHA-256(exact header bytes) ‖ chunk index ‖ final
  flag. A flipped header bit fails every chunk; a reordered, dropped or duplicated chunk
  fails on its index; truncation after a whole chunk fails on the final flag (the new
  last chunk was not written as final); appended bytes make the real final chunk
  non-final; a chunk spliced from another file under the same key fails because that
  file's chunk key and header digest differ.
- The key commitment (HKDF of the same key and salt under another label) lets a reader
  say "wrong key" before decrypting anything, and makes the file key-committing, which
  GCM alone is not.

Generic API (any `kind` of file; the model escrow file uses `kind="model"`):

    write_encrypted(out, key, *, kind, file_id, metadata, chunks, chunk_size=...) -> StreamHeader
    EncryptedStreamWriter(out, key, *, kind, file_id, metadata, chunk_size=...)
        .write(data); .close()    # or use it as a context manager
    read_header(source, *, expected_kind=None, what=None) -> StreamHeader   # unauthenticated
    read_encrypted(source, key, *, expected_kind=None, what=None)
        -> (StreamHeader, Iterator[bytes])

`chunks` passed to the writer may be pieces of any size: the writer re-chunks them. The
iterator from `read_encrypted` yields each chunk's plaintext only after it authenticated;
the header (and the whole file) is authentic only once the iterator is exhausted
without an IntegrityError. Reading uses memory for two chunks, whatever the file size.

Dataset API (kind "dataset"; records are x in the schema's dtype, little-endian, C order,
and int64 labels; chunk `i` holds records `[i*R, (i+1)*R)` as all their x bytes followed
by all their label bytes):

    read_dataset_header(path) -> DatasetHeader        # public header only, unauthenticated
    encrypt_dataset(batches, out_path, key, *, schema, record_count, ...) -> DatasetHeader
    load_dataset(path, key) -> (DatasetHeader, x, y)  # full authenticated read into memory
    verify_dataset(path, key) -> DatasetHeader        # full authenticated read, constant memory
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import secrets
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from chiron.core.crypto import (
    KEY_BYTES,
    NONCE_BYTES,
    TAG_BYTES,
    aead_decrypt_into,
    aead_encrypt_into,
    derive_key,
)
from chiron.core.encoding import canonical_json
from chiron.core.errors import InputError, IntegrityError
from chiron.core.fileio import atomic_output, open_input, read_exactly
from chiron.core.schema import DatasetSchema

MAGIC = b"\x89CHIRON\n"
FORMAT_VERSION = 1
SALT_BYTES = 32
DEFAULT_CHUNK_SIZE = 1 << 20
MAX_CHUNK_SIZE = 1 << 29
MAX_HEADER_JSON = 1 << 20
# Far below GCM's limits for one key; also bounds the index in the associated data.
MAX_CHUNKS = 1 << 32
MAX_FILE_ID = 128

# magic, container version, salt, key commitment, length of the header JSON
_PREFIX = struct.Struct(">8sH32s32sI")
# chunk index, final flag: the part of a chunk's associated data after the header digest
_POSITION = struct.Struct(">QB")
_CHUNK_KEY_INFO = b"chiron/stream/v1/chunk-key"
_COMMITMENT_INFO = b"chiron/stream/v1/key-commitment"
_HEADER_FIELDS = {"kind", "id", "chunk_size", "metadata"}


@dataclass(frozen=True)
class StreamHeader:
    """The public header of an encrypted stream, with the exact bytes it was read from."""

    kind: str
    file_id: str
    chunk_size: int
    metadata: dict[str, Any]
    salt: bytes
    key_commitment: bytes
    encoded: bytes
    format_version: int = FORMAT_VERSION

    @property
    def digest(self) -> bytes:
        """SHA-256 of the header bytes: bound into every chunk's associated data."""
        return hashlib.sha256(self.encoded).digest()

    @property
    def size(self) -> int:
        return len(self.encoded)


def _file_keys(key: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """The chunk key and key commitment of one file."""
    if len(key) != KEY_BYTES:
        raise ValueError("an encrypted stream key must be 32 bytes")
    return (
        derive_key(key, salt=salt, info=_CHUNK_KEY_INFO),
        derive_key(key, salt=salt, info=_COMMITMENT_INFO),
    )


def _nonce(index: int) -> bytes:
    return index.to_bytes(NONCE_BYTES, "big")


def _associated_data(header_digest: bytes, index: int, final: bool) -> bytes:
    return header_digest + _POSITION.pack(index, 1 if final else 0)


def _check_identity(kind: str, file_id: str, chunk_size: int) -> None:
    if not kind or not kind.isascii() or not kind.isprintable():
        raise ValueError("kind must be a non-empty printable ASCII string")
    if not 0 < len(file_id) <= MAX_FILE_ID or not file_id.isprintable():
        raise ValueError(f"file id must be 1 to {MAX_FILE_ID} printable characters")
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size must be between 1 and {MAX_CHUNK_SIZE} bytes")


class EncryptedStreamWriter:
    """Encrypts a byte stream of any length into fixed-size authenticated chunks.

    Writes the header at once, then one chunk whenever more than `chunk_size` bytes are
    pending: the last full chunk is held back until `close()` knows whether it is final.
    """

    def __init__(
        self,
        out: BinaryIO,
        key: bytes,
        *,
        kind: str,
        file_id: str,
        metadata: Mapping[str, Any],
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        _check_identity(kind, file_id, chunk_size)
        salt = os.urandom(SALT_BYTES)
        self._chunk_key, commitment = _file_keys(key, salt)
        body = canonical_json(
            {"kind": kind, "id": file_id, "chunk_size": chunk_size, "metadata": dict(metadata)}
        )
        if len(body) > MAX_HEADER_JSON:
            raise ValueError("header metadata is too large")
        encoded = _PREFIX.pack(MAGIC, FORMAT_VERSION, salt, commitment, len(body)) + body
        self.header = StreamHeader(
            kind, file_id, chunk_size, json.loads(body), salt, commitment, encoded
        )
        self._digest = self.header.digest
        self._out = out
        # Fixed buffers, reused for every chunk: no allocation per chunk.
        self._pending = bytearray(chunk_size)
        self._filled = 0
        self._sealed = bytearray(chunk_size + TAG_BYTES)
        self._index = 0
        self._closed = False
        out.write(encoded)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Add plaintext; any size, any number of calls."""
        if self._closed:
            raise ValueError("write to a closed encrypted stream")
        view = memoryview(data).cast("B")
        size = self.header.chunk_size
        if self._filled:
            room = size - self._filled
            if len(view) <= room:
                self._hold(view)
                return
            self._hold(view[:room])
            view = view[room:]
            # More data follows, so the full pending chunk is not the final one.
            self._seal(self._pending, final=False)
            self._filled = 0
        while len(view) > size:
            self._seal(view[:size], final=False)
            view = view[size:]
        self._hold(view)

    def close(self) -> None:
        """Write the final chunk (empty only when the whole stream is empty)."""
        if not self._closed:
            self._seal(memoryview(self._pending)[: self._filled], final=True)
            self._filled = 0
            self._closed = True

    def _hold(self, view: memoryview) -> None:
        self._pending[self._filled : self._filled + len(view)] = view
        self._filled += len(view)

    def __enter__(self) -> EncryptedStreamWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        # On an error the stream stays unfinished: without a final chunk no reader
        # accepts it, and atomic_output discards the file anyway.
        if exc_type is None:
            self.close()

    def _seal(self, plaintext: bytes | bytearray | memoryview, *, final: bool) -> None:
        if self._index >= MAX_CHUNKS:
            raise ValueError("too many chunks for one encrypted stream")
        sealed = memoryview(self._sealed)[: len(plaintext) + TAG_BYTES]
        aead_encrypt_into(
            self._chunk_key,
            _nonce(self._index),
            plaintext,
            _associated_data(self._digest, self._index, final),
            sealed,
        )
        self._out.write(sealed)
        self._index += 1


def write_encrypted(
    out: BinaryIO,
    key: bytes,
    *,
    kind: str,
    file_id: str,
    metadata: Mapping[str, Any],
    chunks: Iterable[bytes | bytearray | memoryview],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> StreamHeader:
    """Write a whole encrypted stream: header, then `chunks` (pieces of any size)."""
    writer = EncryptedStreamWriter(
        out, key, kind=kind, file_id=file_id, metadata=metadata, chunk_size=chunk_size
    )
    for piece in chunks:
        writer.write(piece)
    writer.close()
    return writer.header


def _readinto_exactly(source: BinaryIO, buffer: bytearray) -> int:
    """Fill `buffer`; return the number of bytes read, fewer only at end of file."""
    view = memoryview(buffer)
    filled = 0
    while filled < len(buffer):
        count = source.readinto(view[filled:])  # type: ignore[attr-defined]
        if not count:
            break
        filled += count
    return filled


def read_header(
    source: BinaryIO, *, expected_kind: str | None = None, what: str | None = None
) -> StreamHeader:
    """Parse the public header at the start of `source` (nothing is authenticated yet)."""
    what = what or f"{expected_kind or 'encrypted'} file"
    prefix = read_exactly(source, _PREFIX.size)
    if prefix[: len(MAGIC)] != MAGIC:
        raise InputError(f"{what} is not a Chiron encrypted file")
    if len(prefix) < _PREFIX.size:
        raise InputError(f"{what} is truncated: its header is incomplete")
    _, version, salt, commitment, body_size = _PREFIX.unpack(prefix)
    if version != FORMAT_VERSION:
        raise InputError(
            f"{what} uses container format version {version}; "
            f"this Chiron reads version {FORMAT_VERSION}"
        )
    if not 0 < body_size <= MAX_HEADER_JSON:
        raise InputError(f"{what} has a malformed header")
    body = read_exactly(source, body_size)
    if len(body) < body_size:
        raise InputError(f"{what} is truncated: its header is incomplete")
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InputError(f"{what} has a malformed header") from None
    if not isinstance(document, dict) or set(document) != _HEADER_FIELDS:
        raise InputError(f"{what} has a malformed header")
    kind, file_id = document["kind"], document["id"]
    chunk_size, metadata = document["chunk_size"], document["metadata"]
    if (
        not isinstance(kind, str)
        or not isinstance(file_id, str)
        or type(chunk_size) is not int
        or not isinstance(metadata, dict)
    ):
        raise InputError(f"{what} has a malformed header")
    try:
        _check_identity(kind, file_id, chunk_size)
    except ValueError:
        raise InputError(f"{what} has a malformed header") from None
    if expected_kind is not None and kind != expected_kind:
        raise InputError(f"{what} holds a {kind!r}, not a {expected_kind!r}")
    return StreamHeader(kind, file_id, chunk_size, metadata, salt, commitment, prefix + body)


def _authenticated_chunks(
    source: BinaryIO, key: bytes, header: StreamHeader, what: str
) -> Iterator[memoryview]:
    """Check the key commitment, then yield each chunk's plaintext once it authenticated.

    Each yielded view points into a buffer that the next chunk overwrites. The key
    check runs when this is called, not when iteration starts.
    """
    chunk_key, commitment = _file_keys(key, header.salt)
    if not hmac.compare_digest(commitment, header.key_commitment):
        raise IntegrityError(
            f"wrong key for {what} (or its header was tampered with): "
            "it was encrypted with another key"
        )
    return _chunk_plaintexts(source, chunk_key, header, what)


def _chunk_plaintexts(
    source: BinaryIO, chunk_key: bytes, header: StreamHeader, what: str
) -> Iterator[memoryview]:
    sealed_size = header.chunk_size + TAG_BYTES
    current, following = bytearray(sealed_size), bytearray(sealed_size)
    plaintext = bytearray(header.chunk_size)
    digest = header.digest
    filled = _readinto_exactly(source, current)
    if filled == 0:
        raise IntegrityError(f"{what} is truncated: it has no data")
    index = 0
    while True:
        # A short read means end of file; a full chunk is final only if nothing follows.
        following_filled = _readinto_exactly(source, following) if filled == sealed_size else 0
        final = following_filled == 0
        if filled < TAG_BYTES:
            raise IntegrityError(f"{what} is truncated")
        if index >= MAX_CHUNKS:
            raise IntegrityError(f"{what} has too many chunks")
        out = memoryview(plaintext)[: filled - TAG_BYTES]
        try:
            aead_decrypt_into(
                chunk_key,
                _nonce(index),
                memoryview(current)[:filled],
                _associated_data(digest, index, final),
                out,
            )
        except IntegrityError:
            # The key commitment already matched, so this is not a wrong key.
            raise IntegrityError(
                f"{what} has been tampered with: chunk {index} does not authenticate "
                "(modified, truncated, extended, reordered or spliced)"
            ) from None
        yield out
        if final:
            return
        current, following = following, current
        filled = following_filled
        index += 1


def read_encrypted(
    source: BinaryIO, key: bytes, *, expected_kind: str | None = None, what: str | None = None
) -> tuple[StreamHeader, Iterator[bytes]]:
    """Read the header and check the key; iterate to get authenticated plaintext chunks.

    Raises IntegrityError at once for a wrong key, and from the iterator for any
    tampering, truncation, extension, reordering or splicing.
    """
    what = what or f"{expected_kind or 'encrypted'} file"
    header = read_header(source, expected_kind=expected_kind, what=what)
    views = _authenticated_chunks(source, key, header, what)
    return header, (bytes(view) for view in views)


# ---------------------------------------------------------------------------------------
# Encrypted datasets

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
    _check_labels(y, schema.num_classes, first_record)
    return np.ascontiguousarray(x, dtype=element), np.ascontiguousarray(y, dtype=LABEL_DTYPE)


def _check_labels(y: np.ndarray, num_classes: int, first_record: int) -> None:
    if not len(y):
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
    return memoryview(array.reshape(-1).view(np.uint8))


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
    with atomic_output(out_path, overwrite=overwrite) as handle:
        write_encrypted(
            handle,
            key,
            kind=DATASET_KIND,
            file_id=header.dataset_id,
            metadata=header.to_metadata(),
            chunks=_dataset_plaintext(batches, header, on_records),
            chunk_size=header.chunk_size,
        )
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


class _DatasetReader:
    """One authenticated pass over a dataset file, chunk by chunk.

    Opening checks the file's size against its header and the key against the key
    commitment, before anything is allocated or decrypted.
    """

    def __init__(self, path: str | os.PathLike[str], key: bytes) -> None:
        self._what = f"dataset {path}"
        self._source = open_input(path, what="dataset")
        try:
            stream_header, self.header = _open_dataset(self._source, self._what)
            # A forged record count must not make the reader allocate or read for long.
            actual_size = os.fstat(self._source.fileno()).st_size
            expected_size = self.header.encrypted_size(stream_header.size)
            if actual_size != expected_size:
                raise IntegrityError(
                    f"{self._what} is {actual_size} bytes but its header describes "
                    f"{expected_size}: it was truncated, extended or tampered with"
                )
            self._chunks = _authenticated_chunks(self._source, key, stream_header, self._what)
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
        header, what = self.header, self._what
        schema = header.schema
        element = _element_dtype(schema)
        first = 0
        for index, plaintext in enumerate(self._chunks):
            count = header.records_in_chunk(index)
            if count < 1 or len(plaintext) != count * header.stored_record_bytes:
                raise InputError(f"{what}: chunk {index} does not match the header's layout")
            x = np.frombuffer(plaintext, dtype=element, count=count * schema.input_elements)
            y = np.frombuffer(
                plaintext, dtype=LABEL_DTYPE, count=count, offset=count * schema.record_bytes
            )
            try:
                _check_labels(y, schema.num_classes, first)
            except InputError as exc:
                raise InputError(f"{what}: {exc}") from None
            yield first, x.reshape(count, *schema.input_shape), y
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
        for _, _, y_part in reader.records():
            if on_records is not None:
                on_records(len(y_part))
        return reader.header
