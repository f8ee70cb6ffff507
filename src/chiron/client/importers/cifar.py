"""CIFAR-10 binary batches (`data_batch_*.bin` / `test_batch.bin`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from chiron.client.importers.common import Batch, ImportedDataset, batch_records
from chiron.core.errors import InputError, UsageError
from chiron.core.fileio import open_input, read_exactly
from chiron.core.schema import DatasetSchema

_CIFAR_SHAPE = (3, 32, 32)
_CIFAR_RECORD = 1 + 3 * 32 * 32


def _cifar_files(src: Path, split: str | None) -> list[Path]:
    if not src.is_dir():
        if split is not None and src.name.startswith("test") != (split == "test"):
            raise UsageError(f"--split {split} does not match the file {src.name}")
        return [src]
    if split == "test":
        files = [src / "test_batch.bin"] if (src / "test_batch.bin").is_file() else []
    else:
        files = sorted(
            src.glob("data_batch_*.bin"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0)
        )
    if not files:
        wanted = "test_batch.bin" if split == "test" else "data_batch_*.bin"
        raise InputError(f"no CIFAR-10 batches ({wanted}) in {src}")
    return files


def _cifar_class_names(folder: Path) -> tuple[str, ...]:
    meta = folder / "batches.meta.txt"
    if not meta.is_file():
        return ()
    try:
        names = tuple(line.strip() for line in meta.read_text("utf-8").splitlines() if line.strip())
    except (OSError, UnicodeDecodeError):
        raise InputError(f"cannot read {meta}") from None
    if len(names) != 10:
        raise InputError(f"{meta} names {len(names)} classes; CIFAR-10 has 10")
    return names


def import_cifar10(src: Path, split: str | None) -> ImportedDataset:
    files = _cifar_files(src, split)
    sizes = []
    for path in files:
        with open_input(path, what="CIFAR-10 batch") as handle:
            size = handle.seek(0, 2)
        if size % _CIFAR_RECORD:
            raise InputError(
                f"truncated CIFAR-10 batch {path}: {size} bytes is not a whole number of "
                f"{_CIFAR_RECORD}-byte records"
            )
        sizes.append(size // _CIFAR_RECORD)
    count = sum(sizes)
    if count == 0:
        raise InputError(f"the data set is empty: no records in {src}")
    names = _cifar_class_names(files[0].parent)
    schema = DatasetSchema(_CIFAR_SHAPE, "uint8", 10, names)

    def batches() -> Iterator[Batch]:
        step = batch_records(_CIFAR_RECORD)
        for path, records in zip(files, sizes, strict=True):
            with open_input(path, what="CIFAR-10 batch") as handle:
                for start in range(0, records, step):
                    take = min(step, records - start)
                    raw = read_exactly(handle, take * _CIFAR_RECORD)
                    if len(raw) < take * _CIFAR_RECORD:
                        raise InputError(f"CIFAR-10 batch {path} shrank while it was read")
                    table = np.frombuffer(raw, dtype=np.uint8).reshape(take, _CIFAR_RECORD)
                    yield table[:, 1:].reshape(take, *_CIFAR_SHAPE), table[:, 0]

    return ImportedDataset(schema, count, batches(), f"CIFAR-10 batches from {src}")
