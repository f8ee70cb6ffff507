"""CSV: a header row, a label column and numeric feature columns (-> float32 vector)."""

from __future__ import annotations

import contextlib
import csv
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from chiron.client.importers.common import (
    Batch,
    ImportedDataset,
    batch_records,
    count_classes,
)
from chiron.core.errors import InputError
from chiron.core.schema import DatasetSchema


@contextlib.contextmanager
def _csv_rows(src: Path) -> Iterator[Iterator[tuple[int, list[str]]]]:
    """(line number, fields) of every non-blank row, header included."""
    try:
        with open(src, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            try:
                yield ((reader.line_num, row) for row in reader if row)
            except csv.Error as exc:
                raise InputError(f"CSV file {src}, line {reader.line_num}: {exc}") from None
            except UnicodeDecodeError:
                raise InputError(f"CSV file {src} is not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"cannot read CSV file {src}: {exc.strerror}") from None


def import_csv(src: Path, label_column: str) -> ImportedDataset:
    what = f"CSV file {src}"
    with _csv_rows(src) as rows:
        header_row = next(rows, None)
        if header_row is None:
            raise InputError(f"the data set is empty: {what} has no header row")
        header = [name.strip() for name in header_row[1]]
        if label_column not in header:
            raise InputError(
                f"{what} has no column {label_column!r} (columns: {', '.join(header)}); "
                "use --label-column"
            )
        label_index = header.index(label_column)
        if len(header) < 2:
            raise InputError(f"{what} has no feature columns besides {label_column!r}")
        labels: list[str] = []
        for line, row in rows:
            if len(row) != len(header):
                raise InputError(
                    f"ragged CSV: {what}, line {line} has {len(row)} fields, "
                    f"the header has {len(header)}"
                )
            labels.append(row[label_index].strip())
    if not labels:
        raise InputError(f"the data set is empty: {what} has no data rows")
    y, class_names = _csv_labels(labels, what)
    num_classes = len(class_names) if class_names else count_classes(y, what)
    features = [i for i in range(len(header)) if i != label_index]
    schema = DatasetSchema((len(features),), "float32", num_classes, class_names)

    def batches() -> Iterator[Batch]:
        step = batch_records(schema.record_bytes)
        start = 0
        with _csv_rows(src) as rows:
            next(rows)
            chunk: list[tuple[int, list[str]]] = []
            for item in rows:
                chunk.append(item)
                if len(chunk) == step:
                    yield _csv_features(chunk, features, header, what), y[start : start + step]
                    start += step
                    chunk = []
            if chunk:
                yield _csv_features(chunk, features, header, what), y[start:]

    return ImportedDataset(schema, len(labels), batches(), f"CSV rows from {src}")


def _csv_labels(labels: list[str], what: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer labels as they are; any other label text names a class (sorted by name)."""
    if all(re.fullmatch(r"[+-]?\d+", label) for label in labels):
        return np.array([int(label) for label in labels], dtype=np.int64), ()
    if any(not label for label in labels):
        raise InputError(f"{what} has rows with an empty label")
    names = tuple(sorted(set(labels)))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[label] for label in labels], dtype=np.int64), names


def _csv_features(
    chunk: list[tuple[int, list[str]]], features: list[int], header: list[str], what: str
) -> np.ndarray:
    x = np.empty((len(chunk), len(features)), dtype=np.float32)
    for row_index, (line, row) in enumerate(chunk):
        for column, field in enumerate(features):
            try:
                x[row_index, column] = float(row[field])
            except ValueError:
                raise InputError(
                    f"{what}, line {line}, column {header[field]!r}: {row[field]!r} is not a number"
                ) from None
    if not np.all(np.isfinite(x)):
        raise InputError(f"{what} holds NaN or infinite values")
    return x
