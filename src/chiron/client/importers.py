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

import contextlib
import csv
import gzip
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from chiron.core.errors import InputError, UsageError
from chiron.core.fileio import open_input, read_exactly
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
_BATCH_BYTES = 4 << 20
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
_GRAYSCALE_MODES = {"1", "L", "LA"}
_COLOR_MODES = {"P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"}

Batch = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ImportedDataset:
    """A data set ready to encrypt: its schema, record count and a one-pass record stream."""

    schema: DatasetSchema
    record_count: int
    batches: Iterator[Batch]
    description: str


def _batch_records(record_bytes: int) -> int:
    return max(1, _BATCH_BYTES // record_bytes)


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
        return _import_idx(src, split)
    if chosen == "npz":
        return _import_npz(src)
    if chosen == "csv":
        return _import_csv(src, label_column)
    if chosen == "imagefolder":
        return _import_image_folder(src)
    return _import_cifar10(src, split)


# ----------------------------------------------------------------------------- IDX


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
def _idx_stream(path: Path) -> Iterator[BinaryIO]:
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


def _read_idx_header(stream: BinaryIO, path: Path, ndim: int) -> tuple[int, ...]:
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


def _import_idx(src: Path, split: str | None) -> ImportedDataset:
    images_path, labels_path = _idx_pair(src, split)
    with _idx_stream(labels_path) as stream:
        (label_count,) = _read_idx_header(stream, labels_path, 1)
        labels = read_exactly(stream, label_count)
        if len(labels) < label_count:
            raise InputError(
                f"truncated IDX file {labels_path}: header says {label_count} labels, "
                f"found {len(labels)}"
            )
        if stream.read(1):
            raise InputError(f"IDX file {labels_path} has data after its last label")
    with _idx_stream(images_path) as stream:
        count, height, width = _read_idx_header(stream, images_path, 3)
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
        step = _batch_records(record_bytes)
        with _idx_stream(images_path) as stream:
            _read_idx_header(stream, images_path, 3)
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


# ----------------------------------------------------------------------------- NumPy


def _labels_as_int64(y: np.ndarray, what: str) -> np.ndarray:
    if y.ndim != 1:
        raise InputError(f"{what}: y must be one label per record, shape (N,), not {y.shape}")
    if y.dtype.kind in "iub":
        return y.astype(np.int64)
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        return y.astype(np.int64)
    raise InputError(f"{what}: y must hold integer class labels, not {y.dtype}")


def _num_classes(y: np.ndarray, what: str) -> int:
    """Classes implied by labels 0..max; a classifier needs at least two."""
    lowest, highest = int(y.min()), int(y.max())
    if lowest < 0:
        raise InputError(f"{what}: label {lowest} is negative; labels must be 0, 1, 2, ...")
    if highest < 1:
        raise InputError(f"{what}: the labels name only one class; at least 2 are needed")
    return highest + 1


def _import_npz(src: Path) -> ImportedDataset:
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
    labels = _labels_as_int64(y, what)
    if names is not None:
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise InputError(f"{what}: class_names must be a 1-D array of strings")
        class_names = tuple(str(n) for n in names.astype(str))
        num_classes = len(class_names)
    else:
        class_names, num_classes = (), _num_classes(labels, what)
    dtype = "uint8" if x.dtype == np.uint8 else "float32"
    schema = DatasetSchema(tuple(int(d) for d in x.shape[1:]), dtype, num_classes, class_names)

    def batches() -> Iterator[Batch]:
        step = _batch_records(schema.record_bytes)
        for start in range(0, len(x), step):
            part = x[start : start + step]
            if dtype == "float32":
                part = part.astype(np.float32)
                if not np.all(np.isfinite(part)):
                    raise InputError(f"{what}: x holds NaN or infinite values")
            yield part, labels[start : start + step]

    return ImportedDataset(schema, len(x), batches(), f"NumPy arrays from {src}")


# ----------------------------------------------------------------------------- CSV


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


def _import_csv(src: Path, label_column: str) -> ImportedDataset:
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
    num_classes = len(class_names) if class_names else _num_classes(y, what)
    features = [i for i in range(len(header)) if i != label_index]
    schema = DatasetSchema((len(features),), "float32", num_classes, class_names)

    def batches() -> Iterator[Batch]:
        step = _batch_records(schema.record_bytes)
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


# ----------------------------------------------------------------------------- images


def _import_image_folder(src: Path) -> ImportedDataset:
    from PIL import Image, UnidentifiedImageError

    if not src.is_dir():
        raise InputError(f"an image folder must be a directory: {src}")
    classes = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise InputError(f"image folder {src} needs one subfolder per class, at least 2")
    files = [
        (path, label)
        for label, folder in enumerate(classes)
        for path in sorted(folder.iterdir())
        if path.is_file()
        and not path.name.startswith(".")
        and path.suffix.lower() in _IMAGE_SUFFIXES
    ]
    if not files:
        raise InputError(f"the data set is empty: image folder {src} has no images")

    def open_image(path: Path) -> Image.Image:
        try:
            return Image.open(path)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
            raise InputError(f"cannot read image {path}: not an image, or damaged") from None

    # First pass reads only the headers: sizes and pixel modes, before any decoding.
    size = None
    grayscale = True
    first_path = files[0][0]
    for path, _ in files:
        with open_image(path) as image:
            if size is None:
                size = image.size
            elif image.size != size:
                raise InputError(
                    f"mixed image sizes: {first_path} is {size[0]}x{size[1]} but {path} is "
                    f"{image.size[0]}x{image.size[1]}; resize them to one size first"
                )
            if image.mode not in _GRAYSCALE_MODES | _COLOR_MODES:
                raise InputError(
                    f"image {path} has pixel mode {image.mode}; only 8-bit grayscale or "
                    "color images are supported"
                )
            grayscale = grayscale and image.mode in _GRAYSCALE_MODES
    assert size is not None
    width, height = size
    channels = 1 if grayscale else 3
    schema = DatasetSchema(
        (channels, height, width), "uint8", len(classes), tuple(p.name for p in classes)
    )
    labels = np.array([label for _, label in files], dtype=np.int64)

    def pixels(path: Path) -> np.ndarray:
        with open_image(path) as image:
            try:
                array = np.asarray(image.convert("L" if grayscale else "RGB"))
            except (OSError, ValueError):
                raise InputError(f"cannot decode image {path}: damaged") from None
        return array[None] if grayscale else array.transpose(2, 0, 1)

    def batches() -> Iterator[Batch]:
        step = _batch_records(schema.record_bytes)
        for start in range(0, len(files), step):
            chunk = files[start : start + step]
            x = np.stack([pixels(path) for path, _ in chunk])
            yield x, labels[start : start + len(chunk)]

    return ImportedDataset(schema, len(files), batches(), f"images from {src}")


# ----------------------------------------------------------------------------- CIFAR-10

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


def _import_cifar10(src: Path, split: str | None) -> ImportedDataset:
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
        step = _batch_records(_CIFAR_RECORD)
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
