"""NumPy archives with arrays `x` (N, ...) and `y` (N,), optionally `class_names`."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from chiron.client.importers.common import (
    Batch,
    ImportedDataset,
    batch_records,
    count_classes,
    labels_as_int64,
)
from chiron.core.errors import InputError
from chiron.core.schema import DatasetSchema


def import_npz(src: Path) -> ImportedDataset:
    what = f"NumPy file {src}"
    # allow_pickle=False: an archive must never run code when it is loaded.
    unreadable = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
    not_npz = f"{what} is not an .npz archive of plain arrays (pickled objects are never loaded)"
    try:
        archive = np.load(src, allow_pickle=False)
    except unreadable:
        raise InputError(not_npz) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(f"{what} is a single array, not an .npz archive with arrays x and y")
    try:
        with archive:
            missing = {"x", "y"} - set(archive.files)
            if missing:
                raise InputError(f"{what} has no array {' or '.join(sorted(missing))}")
            x, y = archive["x"], archive["y"]
            names = archive["class_names"] if "class_names" in archive.files else None
    except unreadable:
        raise InputError(not_npz) from None
    if x.ndim < 2:
        raise InputError(f"{what}: x must have shape (N, ...) with at least 2 dimensions")
    if len(x) == 0:
        raise InputError(f"the data set is empty: {what} has no records")
    if len(y) != len(x):
        raise InputError(f"{what}: x has {len(x)} records but y has {len(y)} labels")
    if x.dtype.kind not in "uifb":
        raise InputError(f"{what}: x must be numeric, not {x.dtype}")
    labels = labels_as_int64(y, what)
    if names is not None:
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise InputError(f"{what}: class_names must be a 1-D array of strings")
        class_names = tuple(str(n) for n in names.astype(str))
        num_classes = len(class_names)
    else:
        class_names, num_classes = (), count_classes(labels, what)
    dtype = "uint8" if x.dtype == np.uint8 else "float32"
    schema = DatasetSchema(tuple(int(d) for d in x.shape[1:]), dtype, num_classes, class_names)

    def batches() -> Iterator[Batch]:
        step = batch_records(schema.record_bytes)
        for start in range(0, len(x), step):
            part = x[start : start + step]
            if dtype == "float32":
                part = part.astype(np.float32)
                if not np.all(np.isfinite(part)):
                    raise InputError(f"{what}: x holds NaN or infinite values")
            yield part, labels[start : start + step]

    return ImportedDataset(schema, len(x), batches(), f"NumPy arrays from {src}")
