"""MNIST / Fashion-MNIST IDX files, gzipped or not."""

from __future__ import annotations

import contextlib
import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from chiron.client.importers.common import (
    DIGIT_CLASSES,
    FASHION_MNIST_CLASSES,
    Batch,
    ImportedDataset,
    batch_records,
)
from chiron.core.errors import InputError, UsageError
from chiron.core.fileio import open_input, read_exactly
from chiron.core.schema import DatasetSchema


def _idx_pair(src: Path, split: str | None) -> tuple[Path, Path]:
    """The images and labels files of one split."""
    if src.is_dir():
        prefix = "t10k" if split == "test" else "train"
        images = sorted(src.glob(f"{prefix}-images*idx3-ubyte*"))
        labels = sorted(src.glob(f"{prefix}-labels*idx1-ubyte*"))
        if not images or not labels:
            raise InputError(
                f"no {prefix}-images-idx3-ubyte and {prefix}-labels-idx1-ubyte files "
                f"(optionally .gz) in {src}"
            )
        # The uncompressed file sorts first when both forms are present.
        return images[0], labels[0]
    if "images" not in src.name or "idx3" not in src.name:
        raise InputError(f"{src} is not named like an IDX images file (*-images-idx3-ubyte)")
    if split is not None and not src.name.startswith("t10k" if split == "test" else "train"):
        raise UsageError(f"--split {split} does not match the file {src.name}")
    labels = src.with_name(src.name.replace("images", "labels").replace("idx3", "idx1"))
    if not labels.is_file():
        raise InputError(f"labels file {labels.name} not found beside {src}")
    return src, labels


@contextlib.contextmanager
def idx_stream(path: Path) -> Iterator[BinaryIO]:
    """Open an IDX file, gunzipping it when it is gzipped; map read errors to InputError."""
    handle = open_input(path, what="IDX file")
    try:
        if handle.read(2) == b"\x1f\x8b":
            handle.seek(0)
            stream: BinaryIO = gzip.GzipFile(fileobj=handle, mode="rb")  # type: ignore[assignment]
        else:
            handle.seek(0)
            stream = handle
        try:
            yield stream
        except EOFError:
            raise InputError(f"truncated IDX file {path}: its gzip stream ends early") from None
        except (gzip.BadGzipFile, zlib.error):
            raise InputError(f"IDX file {path} is not a valid gzip file") from None
    finally:
        handle.close()


def read_idx_header(stream: BinaryIO, path: Path, ndim: int) -> tuple[int, ...]:
    """Parse an IDX header of unsigned bytes with `ndim` dimensions; return the dimensions."""
    magic = stream.read(4)
    if len(magic) < 4 or magic[:2] != b"\x00\x00":
        raise InputError(f"{path} is not an IDX file")
    if magic[2] != 0x08:
        raise InputError(f"{path}: only IDX files of unsigned bytes are supported")
    if magic[3] != ndim:
        raise InputError(f"{path} has {magic[3]} dimensions, expected {ndim}")
    raw = stream.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise InputError(f"truncated IDX file {path}: its header is incomplete")
    return tuple(int.from_bytes(raw[i : i + 4], "big") for i in range(0, 4 * ndim, 4))


def _idx_class_names(path: Path) -> tuple[str, ...]:
    return FASHION_MNIST_CLASSES if "fashion" in str(path).lower() else DIGIT_CLASSES


def import_idx(src: Path, split: str | None) -> ImportedDataset:
    images_path, labels_path = _idx_pair(src, split)
    with idx_stream(labels_path) as stream:
        (label_count,) = read_idx_header(stream, labels_path, 1)
        labels = read_exactly(stream, label_count)
        if len(labels) < label_count:
            raise InputError(
                f"truncated IDX file {labels_path}: header says {label_count} labels, "
                f"found {len(labels)}"
            )
        if stream.read(1):
            raise InputError(f"IDX file {labels_path} has data after its last label")
    with idx_stream(images_path) as stream:
        count, height, width = read_idx_header(stream, images_path, 3)
    if count != label_count:
        raise InputError(
            f"{images_path.name} has {count} images but {labels_path.name} has {label_count} labels"
        )
    if count == 0:
        raise InputError(f"the data set is empty: {images_path} has no images")
    names = _idx_class_names(images_path)
    schema = DatasetSchema((1, height, width), "uint8", len(names), names)
    y_all = np.frombuffer(labels, dtype=np.uint8)

    def batches() -> Iterator[Batch]:
        record_bytes = height * width
        step = batch_records(record_bytes)
        with idx_stream(images_path) as stream:
            read_idx_header(stream, images_path, 3)
            for start in range(0, count, step):
                take = min(step, count - start)
                raw = read_exactly(stream, take * record_bytes)
                if len(raw) < take * record_bytes:
                    found = start + len(raw) // record_bytes
                    raise InputError(
                        f"truncated IDX file {images_path}: header says {count} images, "
                        f"data ends after {found}"
                    )
                x = np.frombuffer(raw, dtype=np.uint8).reshape(take, 1, height, width)
                yield x, y_all[start : start + take]
            if stream.read(1):
                raise InputError(f"IDX file {images_path} has data after its last image")

    split_name = "test" if images_path.name.startswith("t10k") else "train"
    return ImportedDataset(schema, count, batches(), f"IDX {split_name} split of {images_path}")
