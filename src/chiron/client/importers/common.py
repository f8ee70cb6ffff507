"""What every importer shares: the imported data set, batch sizes, label checks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from chiron.core.errors import InputError
from chiron.core.schema import DatasetSchema

FORMATS = ("auto", "idx", "npz", "csv", "imagefolder", "cifar10")
SPLITS = ("train", "test")

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGIT_CLASSES = tuple(str(d) for d in range(10))

# Records per batch are chosen so one batch is about this many bytes.
BATCH_BYTES = 4 << 20
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
GRAYSCALE_MODES = {"1", "L", "LA"}
COLOR_MODES = {"P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"}

Batch = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ImportedDataset:
    """A data set ready to encrypt: its schema, record count and a one-pass record stream."""

    schema: DatasetSchema
    record_count: int
    batches: Iterator[Batch]
    description: str


def batch_records(record_bytes: int) -> int:
    return max(1, BATCH_BYTES // record_bytes)


def labels_as_int64(y: np.ndarray, what: str) -> np.ndarray:
    if y.ndim != 1:
        raise InputError(f"{what}: y must be one label per record, shape (N,), not {y.shape}")
    if y.dtype.kind in "iub":
        return y.astype(np.int64)
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        return y.astype(np.int64)
    raise InputError(f"{what}: y must hold integer class labels, not {y.dtype}")


def count_classes(y: np.ndarray, what: str) -> int:
    """Classes implied by labels 0..max; a classifier needs at least two."""
    lowest, highest = int(y.min()), int(y.max())
    if lowest < 0:
        raise InputError(f"{what}: label {lowest} is negative; labels must be 0, 1, 2, ...")
    if highest < 1:
        raise InputError(f"{what}: the labels name only one class; at least 2 are needed")
    return highest + 1
