"""The generic encrypted stream: round trips and every kind of tampering."""

from __future__ import annotations

import io
import os

import pytest

from chiron.core import container
from chiron.core.crypto import TAG_BYTES, aead_decrypt
from chiron.core.errors import InputError, IntegrityError

KEY = bytes(range(32))
CHUNK = 16


def encrypt(data: bytes, *, key: bytes = KEY, pieces: int = 3, chunk_size: int = CHUNK) -> bytes:
    out = io.BytesIO()
    step = max(1, len(data) // pieces)
    container.write_encrypted(
        out,
        key,
        kind="test",
        file_id="file-1",
        metadata={"note": "public"},
        chunks=[data[i : i + step] for i in range(0, len(data), step)],
        chunk_size=chunk_size,
    )
    return out.getvalue()


def decrypt(blob: bytes, key: bytes = KEY) -> bytes:
    _, chunks = container.read_encrypted(io.BytesIO(blob), key, expected_kind="test")
    return b"".join(chunks)


def chunk_offsets(blob: bytes) -> list[int]:
    header = container.read_header(io.BytesIO(blob))
    step = header.chunk_size + TAG_BYTES
    return list(range(header.size, len(blob), step))


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5])
@pytest.mark.parametrize("pieces", [1, 4])
def test_round_trip_any_size(size, pieces):
    data = os.urandom(size)
    blob = encrypt(data, pieces=pieces)
    header, chunks = container.read_encrypted(io.BytesIO(blob), KEY, expected_kind="test")
    chunks = list(chunks)
    assert b"".join(chunks) == data
    # Every chunk but the last is full; only an empty stream has an empty chunk.
    assert len(chunks) == max(1, -(-size // CHUNK))
    assert all(len(c) == CHUNK for c in chunks[:-1])
    assert header.file_id == "file-1" and header.metadata == {"note": "public"}


def test_public_header_reads_without_key():
    header = container.read_header(io.BytesIO(encrypt(b"secret")), expected_kind="test")
    assert (header.kind, header.file_id, header.chunk_size) == ("test", "file-1", CHUNK)
    assert header.format_version == container.FORMAT_VERSION


def test_same_key_same_data_never_same_bytes():
    # A fresh salt per file gives a fresh chunk key, so counter nonces never repeat.
    first, second = encrypt(b"x" * 40), encrypt(b"x" * 40)
    header_1 = container.read_header(io.BytesIO(first))
    header_2 = container.read_header(io.BytesIO(second))
    assert header_1.salt != header_2.salt
    assert header_1.key_commitment != header_2.key_commitment
    assert first[header_1.size :] != second[header_2.size :]


def test_wrong_key_is_refused_before_any_chunk():
    blob = encrypt(b"secret data" * 5)
    with pytest.raises(IntegrityError, match="wrong key"):
        container.read_encrypted(io.BytesIO(blob), bytes(32), expected_kind="test")


def test_every_flipped_bit_is_detected():
    data = os.urandom(2 * CHUNK + 3)
    blob = encrypt(data)
    first_chunk = chunk_offsets(blob)[0]
    for offset in range(len(blob)):
        for bit in (0, 7):
            tampered = bytearray(blob)
            tampered[offset] ^= 1 << bit
            # Header bytes may also make the file unparseable; chunk bytes never decrypt.
            expected = IntegrityError if offset >= first_chunk else (IntegrityError, InputError)
            with pytest.raises(expected):
                decrypt(bytes(tampered))


def test_every_truncation_is_detected():
    blob = encrypt(os.urandom(2 * CHUNK))
    for length in range(len(blob)):
        with pytest.raises((IntegrityError, InputError)):
            decrypt(blob[:length])


@pytest.mark.parametrize("extra", [b"\x00", b"x" * (CHUNK + TAG_BYTES)])
def test_appended_bytes_are_detected(extra):
    blob = encrypt(os.urandom(2 * CHUNK + 1))
    with pytest.raises(IntegrityError):
        decrypt(blob + extra)


def test_appending_a_copy_of_the_last_full_chunk_is_detected():
    blob = encrypt(os.urandom(2 * CHUNK))
    last = chunk_offsets(blob)[-1]
    with pytest.raises(IntegrityError):
        decrypt(blob + blob[last:])


def split_chunks(blob: bytes) -> tuple[bytes, list[bytes]]:
    offsets = chunk_offsets(blob)
    ends = [*offsets[1:], len(blob)]
    return blob[: offsets[0]], [blob[a:b] for a, b in zip(offsets, ends, strict=True)]


def test_reordered_dropped_and_duplicated_chunks_are_detected():
    head, chunks = split_chunks(encrypt(os.urandom(4 * CHUNK + 2)))
    assert len(chunks) == 5
    variants = [
        [chunks[1], chunks[0], *chunks[2:]],  # swapped
        [chunks[0], *chunks[2:]],  # dropped
        [chunks[0], chunks[1], chunks[1], *chunks[2:]],  # duplicated
        chunks[:-1],  # final chunk cut off at a chunk boundary
    ]
    for variant in variants:
        with pytest.raises(IntegrityError):
            decrypt(head + b"".join(variant))


def test_chunks_spliced_from_another_file_under_the_same_key_are_detected():
    data = os.urandom(3 * CHUNK)
    head_a, chunks_a = split_chunks(encrypt(data))
    head_b, chunks_b = split_chunks(encrypt(data))
    assert len(head_a) == len(head_b)
    with pytest.raises(IntegrityError):
        decrypt(head_a + chunks_a[0] + chunks_b[1] + chunks_a[2])
    # The other file's header on these chunks fails too (its salt and digest differ).
    with pytest.raises(IntegrityError):
        decrypt(head_b + b"".join(chunks_a))


def test_unfinished_stream_is_unreadable():
    out = io.BytesIO()
    with (
        pytest.raises(RuntimeError),
        container.EncryptedStreamWriter(
            out, KEY, kind="test", file_id="f", metadata={}, chunk_size=CHUNK
        ) as writer,
    ):
        writer.write(os.urandom(3 * CHUNK))
        raise RuntimeError("interrupted")
    # Chunks were written, but without a final chunk no reader accepts the stream.
    assert len(out.getvalue()) > 2 * CHUNK
    with pytest.raises(IntegrityError):
        decrypt(out.getvalue())


def test_not_a_chiron_file():
    with pytest.raises(InputError, match="not a Chiron encrypted file"):
        container.read_header(io.BytesIO(b"PK\x03\x04 zip file"), what="x.chd")


def test_wrong_kind_is_named():
    with pytest.raises(InputError, match="holds a 'test', not a 'model'"):
        container.read_encrypted(io.BytesIO(encrypt(b"w")), KEY, expected_kind="model")


def test_unknown_container_version():
    blob = bytearray(encrypt(b"w"))
    blob[len(container.MAGIC) + 1] = 9
    with pytest.raises(InputError, match="container format version 9"):
        container.read_header(io.BytesIO(bytes(blob)))


@pytest.mark.parametrize("pieces", [1, 5, 200])
def test_each_chunk_is_plain_aes_gcm_of_its_slice(pieces):
    # Chunks are sealed in place in one reused buffer (and opened in place); checked
    # here against a separate, out-of-place decryption of every chunk.
    data = os.urandom(5 * CHUNK + 7)
    blob = encrypt(data, pieces=pieces)
    header = container.read_header(io.BytesIO(blob))
    chunk_key, _ = container._file_keys(KEY, header.salt)
    offsets = chunk_offsets(blob)
    assert len(offsets) == 6
    for index, offset in enumerate(offsets):
        sealed = blob[offset : offset + CHUNK + TAG_BYTES]
        final = index == len(offsets) - 1
        associated = container.chunk_associated_data(header.digest, index, final)
        plaintext = aead_decrypt(chunk_key, container.chunk_nonce(index), sealed, associated)
        assert plaintext == data[index * CHUNK : (index + 1) * CHUNK]
    assert decrypt(blob) == data
