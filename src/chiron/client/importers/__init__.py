"""Readers that turn a data owner's files into records for `encrypt_dataset`.

Each importer checks what it can before any encryption starts (file names, headers,
sizes, counts, labels, image sizes) and then streams records in batches: IDX, CIFAR-10,
CSV and image folders hold only the labels in memory, a .npz archive its arrays.
Problems found while streaming still raise InputError, and the atomic output of
`encrypt_dataset` leaves nothing behind.

Formats:
- idx: MNIST / Fashion-MNIST IDX files, gzipped or not. SRC is a folder holding
  `train-*` / `t10k-*` files (`--split` picks) or the images file itself, with the
  labels file beside it.
- npz: NumPy archive with arrays `x` (N, ...) and `y` (N,), optionally `class_names`.
- csv: a header row, a label column and numeric feature columns (-> float32 vector).
- imagefolder: one subfolder per class holding images of one size.
- cifar10: CIFAR-10 binary batches (`data_batch_*.bin` / `test_batch.bin`).
"""

from __future__ import annotations

import re
from pathlib import Path

from chiron.client.importers.cifar import import_cifar10
from chiron.client.importers.common import (
    DIGIT_CLASSES,
    FASHION_MNIST_CLASSES,
    FORMATS,
    SPLITS,
    ImportedDataset,
)
from chiron.client.importers.csv_files import import_csv
from chiron.client.importers.idx import import_idx
from chiron.client.importers.images import import_image_folder
from chiron.client.importers.npz import import_npz
from chiron.core.errors import InputError, UsageError
from chiron.core.fileio import open_input


def detect_format(src: Path) -> str:
    """Guess the format of SRC from its names and first bytes."""
    if src.is_dir():
        names = [p.name for p in src.iterdir()]
        if any("idx3-ubyte" in name for name in names):
            return "idx"
        if any(re.fullmatch(r"(data_batch_\d+|test_batch)\.bin", name) for name in names):
            return "cifar10"
        if any((src / name).is_dir() and not name.startswith(".") for name in names):
            return "imagefolder"
        raise InputError(
            f"cannot tell the format of folder {src}: no IDX files, CIFAR-10 batches or "
            "class subfolders; use --format"
        )
    with open_input(src, what="source") as handle:
        start = handle.read(4)
    suffix = src.suffix.lower()
    if suffix == ".npz" or start == b"PK\x03\x04":
        return "npz"
    if suffix == ".csv":
        return "csv"
    if "idx3-ubyte" in src.name or start == b"\x00\x00\x08\x03":
        return "idx"
    if suffix == ".bin":
        return "cifar10"
    raise InputError(f"cannot tell the format of {src}; use --format")


def open_source(
    src: Path, *, format: str = "auto", split: str | None = None, label_column: str = "label"
) -> ImportedDataset:
    """Check SRC and return its schema, record count and record stream."""
    if format not in FORMATS:
        raise UsageError(f"unknown format {format!r} (use one of {', '.join(FORMATS)})")
    if split is not None and split not in SPLITS:
        raise UsageError(f"unknown split {split!r} (use train or test)")
    if not src.exists():
        raise InputError(f"source not found: {src}")
    chosen = detect_format(src) if format == "auto" else format
    if split is not None and chosen not in ("idx", "cifar10"):
        raise UsageError(f"--split applies to idx and cifar10 data, not {chosen}")
    if chosen == "idx":
        return import_idx(src, split)
    if chosen == "npz":
        return import_npz(src)
    if chosen == "csv":
        return import_csv(src, label_column)
    if chosen == "imagefolder":
        return import_image_folder(src)
    return import_cifar10(src, split)


__all__ = [
    "DIGIT_CLASSES",
    "FASHION_MNIST_CLASSES",
    "FORMATS",
    "SPLITS",
    "ImportedDataset",
    "detect_format",
    "open_source",
]
