"""Query inputs from the files an owner has: .npy, .npz, IDX images, image files or folders.

The enclave checks shape, dtype and values again; this module decodes files, shapes
them into a batch the way the enclave does (`core.query_protocol.as_batch`: bare
grayscale images (N, H, W) suit a single-channel model) and turns unreadable or
misshapen ones into one-line errors before anything is sent.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from chiron.client.importers.idx import idx_stream, read_idx_header
from chiron.core.errors import InputError
from chiron.core.fileio import read_exactly
from chiron.core.query_protocol import as_batch
from chiron.core.schema import DatasetSchema

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def load_query_inputs(path: Path, schema: DatasetSchema) -> np.ndarray:
    """A batch shaped (N, *schema.input_shape) from whatever `path` is."""
    return as_batch(_load(path, schema), schema.input_shape)


def _load(path: Path, schema: DatasetSchema) -> np.ndarray:
    if not path.exists():
        raise InputError(f"inputs not found: {path}")
    if path.is_dir():
        images = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
        )
        if not images:
            raise InputError(f"no images in folder {path}")
        return np.stack([_image(p, schema) for p in images])
    suffix = path.suffix.lower()
    if suffix in _IMAGE_SUFFIXES:
        return _image(path, schema)[None]
    if suffix == ".npy":
        return _npy(path)
    if suffix == ".npz":
        return _npz(path)
    return _idx_images(path)


def _npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise InputError(f"{path} is not a valid .npy file") from None


def _npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive:
                raise InputError(f"{path} has no array named 'x'")
            return archive["x"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise InputError(f"{path} is not a valid .npz file") from None


def _idx_images(path: Path) -> np.ndarray:
    with idx_stream(path) as stream:
        count, height, width = read_idx_header(stream, path, 3)
        raw = read_exactly(stream, count * height * width)
    if len(raw) < count * height * width:
        raise InputError(f"truncated IDX file {path}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(count, 1, height, width)


def _image(path: Path, schema: DatasetSchema) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    channels = schema.input_shape[0] if len(schema.input_shape) == 3 else 1
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise InputError(f"cannot read image {path}: not an image, or damaged") from None
    return array[None] if channels == 1 else array.transpose(2, 0, 1)
