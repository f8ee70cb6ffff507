"""Chunked authenticated encryption for files at rest: the encrypted stream.

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
    authenticated_views(source, key, header, what) -> Iterator[memoryview]   # no copies

`chunks` passed to the writer may be pieces of any size: the writer re-chunks them. The
iterator from `read_encrypted` yields each chunk's plaintext only after it authenticated;
the header (and the whole file) is authentic only once the iterator is exhausted
without an IntegrityError. Reading uses memory for two chunks, whatever the file size.

The encrypted dataset (`core.dataset`) and the escrowed model (`core.modelfile`) are
formats on top of this stream.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

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
from chiron.core.fileio import read_exactly

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


def chunk_nonce(index: int) -> bytes:
    return index.to_bytes(NONCE_BYTES, "big")


def chunk_associated_data(header_digest: bytes, index: int, final: bool) -> bytes:
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
        # One buffer, reused for every chunk: pending plaintext is gathered at its start
        # and encrypted in place, tag after it. One buffer instead of a plaintext and a
        # ciphertext buffer keeps the chunk in the CPU's cache between the copy that
        # gathers it, the encryption and the write (AES-GCM in place is what OpenSSL
        # does for identical input and output).
        self._chunk = bytearray(chunk_size + TAG_BYTES)
        self._pending = memoryview(self._chunk)[:chunk_size]
        self._filled = 0
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
        """Encrypt into the chunk buffer: in place for pending data, else from the caller's."""
        if self._index >= MAX_CHUNKS:
            raise ValueError("too many chunks for one encrypted stream")
        sealed = memoryview(self._chunk)[: len(plaintext) + TAG_BYTES]
        aead_encrypt_into(
            self._chunk_key,
            chunk_nonce(self._index),
            plaintext,
            chunk_associated_data(self._digest, self._index, final),
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
        # typing.BinaryIO declares no readinto; the files and BytesIO passed here have it.
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


def authenticated_views(
    source: BinaryIO, key: bytes, header: StreamHeader, what: str
) -> Iterator[memoryview]:
    """Check the key commitment, then yield each chunk's plaintext once it authenticated.

    Each yielded view points into a buffer that the next chunk overwrites. The key
    check runs when this is called, not when iteration starts.
    """
    return _chunk_plaintexts(source, chunk_key(key, header, what), header, what)


def chunk_key(key: bytes, header: StreamHeader, what: str) -> bytes:
    """The chunk key of the stream `header` begins, once `key` matches its commitment."""
    derived, commitment = _file_keys(key, header.salt)
    if not hmac.compare_digest(commitment, header.key_commitment):
        raise IntegrityError(
            f"wrong key for {what} (or its header was tampered with): "
            "it was encrypted with another key"
        )
    return derived


def _chunk_plaintexts(
    source: BinaryIO, key: bytes, header: StreamHeader, what: str
) -> Iterator[memoryview]:
    sealed_size = header.chunk_size + TAG_BYTES
    # Each chunk is decrypted in place, so only two buffers exist: the chunk being
    # opened and the next one, read first because it says whether this one is final.
    current, following = bytearray(sealed_size), bytearray(sealed_size)
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
        # Unauthenticated plaintext may be left in `current` on failure; it is never
        # yielded, and the next read overwrites it.
        out = memoryview(current)[: filled - TAG_BYTES]
        try:
            aead_decrypt_into(
                key,
                chunk_nonce(index),
                memoryview(current)[:filled],
                chunk_associated_data(digest, index, final),
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
    views = authenticated_views(source, key, header, what)
    return header, (bytes(view) for view in views)
