"""The encrypted dataset format (core.dataset): layout, validation, tampering, interrupted writes."""

from __future__ import annotations

import io

import numpy as np
import pytest

from chiron.core import container
from chiron.core import dataset as dataset_format
from chiron.core.crypto import TAG_BYTES, random_key
from chiron.core.dataset import (
    DatasetHeader,
    encrypt_dataset,
    load_dataset,
    read_dataset_header,
    verify_dataset,
)
from chiron.core.errors import InputError, IntegrityError
from chiron.core.schema import DatasetSchema

# Big records make several chunks out of a few hundred records.
SCHEMA = DatasetSchema((3, 64, 64), "uint8", 4, ("a", "b", "c", "d"))
PER_CHUNK = container.DEFAULT_CHUNK_SIZE // (SCHEMA.record_bytes + 8)


def records(count: int, seed: int = 0, schema: DatasetSchema = SCHEMA):
    rng = np.random.default_rng(seed)
    if schema.dtype == "uint8":
        x = rng.integers(0, 256, size=(count, *schema.input_shape), dtype=np.uint8)
    else:
        x = rng.standard_normal(size=(count, *schema.input_shape)).astype(np.float32)
    y = rng.integers(0, schema.num_classes, size=count)
    return x, y


def in_batches(x, y, size):
    for start in range(0, len(x), size):
        yield x[start : start + size], y[start : start + size]


@pytest.fixture
def dataset(tmp_path):
    """A dataset of 2.5 chunks; returns (path, key, x, y)."""
    key = random_key()
    x, y = records(PER_CHUNK * 2 + PER_CHUNK // 2)
    path = tmp_path / "d.chd"
    encrypt_dataset(in_batches(x, y, 37), path, key, schema=SCHEMA, record_count=len(x))
    return path, key, x, y


def test_round_trip_and_public_header(dataset):
    path, key, x, y = dataset
    header, x_read, y_read = load_dataset(path, key)
    assert np.array_equal(x_read, x) and np.array_equal(y_read, y)
    assert x_read.dtype == np.uint8 and y_read.dtype == np.int64
    assert header == read_dataset_header(path)
    assert (header.record_count, header.chunk_count) == (len(x), 3)
    assert header.schema == SCHEMA and len(header.dataset_id) == 32
    assert header.format_version == dataset_format.DATASET_FORMAT_VERSION


def test_verify_streams_every_record(dataset):
    path, key, x, _ = dataset
    seen = []
    header = verify_dataset(path, key, on_records=seen.append)
    assert sum(seen) == len(x) == header.record_count


@pytest.mark.parametrize("count", [1, PER_CHUNK, PER_CHUNK + 1])
def test_float32_records_and_chunk_edges(tmp_path, count):
    schema = DatasetSchema((3, 64, 64), "float32", 3)
    x, y = records(count, seed=count, schema=schema)
    key = random_key()
    header = encrypt_dataset([(x, y)], tmp_path / "f.chd", key, schema=schema, record_count=count)
    _, x_read, y_read = load_dataset(tmp_path / "f.chd", key)
    assert x_read.dtype == np.float32
    assert np.array_equal(x_read, x) and np.array_equal(y_read, y)
    assert header.chunk_count == -(-count // header.records_per_chunk)


def test_new_dataset_id_each_time(tmp_path):
    x, y = records(3)
    key = random_key()
    ids = {
        encrypt_dataset(
            [(x, y)], tmp_path / f"{i}.chd", key, schema=SCHEMA, record_count=3
        ).dataset_id
        for i in range(2)
    }
    assert len(ids) == 2


def chunk_spans(path) -> tuple[int, list[tuple[int, int]]]:
    with open(path, "rb") as handle:
        stream = container.read_header(handle)
    header = read_dataset_header(path)
    spans, offset = [], stream.size
    for index in range(header.chunk_count):
        end = offset + header.records_in_chunk(index) * header.stored_record_bytes + TAG_BYTES
        spans.append((offset, end))
        offset = end
    return stream.size, spans


def test_flipped_bit_in_header_and_each_chunk(dataset):
    path, key, _, _ = dataset
    data = path.read_bytes()
    header_size, spans = chunk_spans(path)
    positions = [0, 9, 20, 50, header_size - 2] + [(a + b) // 2 for a, b in spans]
    positions += [b - 1 for _, b in spans]
    for position in positions:
        tampered = bytearray(data)
        tampered[position] ^= 0x10
        path.write_bytes(tampered)
        expected = IntegrityError if position >= header_size else (IntegrityError, InputError)
        with pytest.raises(expected):
            load_dataset(path, key)
        with pytest.raises(expected):
            verify_dataset(path, key)


def test_truncated_extended_reordered_and_replayed(dataset):
    path, key, _, _ = dataset
    data = path.read_bytes()
    _, spans = chunk_spans(path)
    (a0, b0), (a1, b1), _ = spans
    swapped = data[:a0] + data[a1:b1] + data[a0:b0] + data[b1:]
    replayed = data[:a1] + data[a0:b0] + data[b1:]  # chunk 0 again in chunk 1's place
    for variant in (data[:-1], data[: spans[-1][0]], data + b"\x00", swapped, replayed):
        path.write_bytes(variant)
        with pytest.raises(IntegrityError):
            load_dataset(path, key)
        with pytest.raises(IntegrityError):
            verify_dataset(path, key)
    path.write_bytes(data)
    assert verify_dataset(path, key).chunk_count == 3


def test_chunk_spliced_from_another_dataset_under_the_same_key(tmp_path, dataset):
    path, key, x, _ = dataset
    other = tmp_path / "other.chd"
    # Same key, same shape and size: only the other file's chunk key and header differ.
    x2, y2 = records(len(x), seed=9)
    encrypt_dataset([(x2, y2)], other, key, schema=SCHEMA, record_count=len(x2))
    mine, theirs = path.read_bytes(), other.read_bytes()
    a, b = chunk_spans(path)[1][1]
    assert chunk_spans(other)[1][1] == (a, b)
    path.write_bytes(mine[:a] + theirs[a:b] + mine[b:])
    with pytest.raises(IntegrityError, match="chunk 1"):
        load_dataset(path, key)


def test_wrong_key(dataset):
    path, _, _, _ = dataset
    with pytest.raises(IntegrityError, match="wrong key"):
        load_dataset(path, random_key())


def test_forged_record_count_is_refused_before_reading(tmp_path, dataset):
    path, key, _, _ = dataset
    header = read_dataset_header(path)
    # A consistent but forged header claiming far more records than the file holds.
    huge = DatasetHeader.plan(header.dataset_id, SCHEMA, 10**9)
    out = io.BytesIO()
    container.write_encrypted(
        out,
        key,
        kind="dataset",
        file_id=huge.dataset_id,
        metadata=huge.to_metadata(),
        chunks=[b""],
        chunk_size=huge.chunk_size,
    )
    path.write_bytes(out.getvalue())
    with pytest.raises(IntegrityError, match="header describes"):
        load_dataset(path, key)


@pytest.mark.parametrize(
    ("labels", "message"),
    [([1, 7], "record 1 has label 7"), ([-1, 2], "record 0 has label -1"), ([2, 3], "label 3")],
)
def test_authentic_but_out_of_range_labels_are_refused_on_read(tmp_path, labels, message):
    # Only a key holder can make such a file; the reader still validates every label.
    schema = DatasetSchema((2,), "float32", 3)
    header = DatasetHeader.plan(dataset_format.new_dataset_id(), schema, 2)
    x = np.zeros((2, 2), dtype="<f4")
    y = np.array(labels, dtype="<i8")
    key = random_key()
    path = tmp_path / "bad.chd"
    with open(path, "wb") as out:
        container.write_encrypted(
            out,
            key,
            kind="dataset",
            file_id=header.dataset_id,
            metadata=header.to_metadata(),
            chunks=[x.tobytes(), y.tobytes()],
            chunk_size=header.chunk_size,
        )
    with pytest.raises(InputError, match=message):
        load_dataset(path, key)
    with pytest.raises(InputError, match=message):
        verify_dataset(path, key)


@pytest.mark.parametrize(
    ("labels", "message"),
    [([0, 4, 1], "record 1 has label 4, outside 0..3"), ([0, 1, -1], "record 2 has label -1")],
)
def test_labels_out_of_range_on_write(tmp_path, labels, message):
    x, _ = records(3)
    with pytest.raises(InputError, match=message):
        encrypt_dataset(
            [(x, np.array(labels))], tmp_path / "o.chd", random_key(), schema=SCHEMA, record_count=3
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("announced", [0, 2, 4])
def test_record_count_must_match(tmp_path, announced):
    x, y = records(3)
    with pytest.raises(InputError):
        encrypt_dataset(
            [(x, y)], tmp_path / "o.chd", random_key(), schema=SCHEMA, record_count=announced
        )
    assert list(tmp_path.iterdir()) == []


def test_wrong_shape_or_dtype(tmp_path):
    x, y = records(3)
    for bad in (x[:, :2], x.astype(np.float32)):
        with pytest.raises(InputError):
            encrypt_dataset(
                [(bad, y)], tmp_path / "o.chd", random_key(), schema=SCHEMA, record_count=3
            )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, OSError])
def test_interrupted_write_leaves_nothing(tmp_path, interruption):
    x, y = records(PER_CHUNK * 3)

    def batches():
        yield from in_batches(x[: PER_CHUNK * 2], y[: PER_CHUNK * 2], 50)
        raise interruption()

    with pytest.raises(interruption):
        encrypt_dataset(
            batches(), tmp_path / "o.chd", random_key(), schema=SCHEMA, record_count=len(x)
        )
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_not_overwritten(dataset):
    path, _, x, y = dataset
    before = path.read_bytes()
    with pytest.raises(InputError, match="refusing to overwrite"):
        encrypt_dataset([(x, y)], path, random_key(), schema=SCHEMA, record_count=len(x))
    assert path.read_bytes() == before


def test_unreadable_and_foreign_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_dataset_header(tmp_path / "missing.chd")
    with pytest.raises(InputError, match="directory"):
        load_dataset(tmp_path, random_key())
    (tmp_path / "text.chd").write_text("hello")
    with pytest.raises(InputError, match="not a Chiron encrypted file"):
        read_dataset_header(tmp_path / "text.chd")
    model = tmp_path / "model.chm"
    with open(model, "wb") as out:
        container.write_encrypted(
            out, random_key(), kind="model", file_id="m", metadata={}, chunks=[b"w"]
        )
    with pytest.raises(InputError, match="not a 'dataset'"):
        read_dataset_header(model)
