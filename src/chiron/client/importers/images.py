"""Image folders: one subfolder per class holding images of one size."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from chiron.client.importers.common import (
    COLOR_MODES,
    GRAYSCALE_MODES,
    IMAGE_SUFFIXES,
    Batch,
    ImportedDataset,
    batch_records,
)
from chiron.core.errors import InputError
from chiron.core.schema import DatasetSchema


def import_image_folder(src: Path) -> ImportedDataset:
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
        and path.suffix.lower() in IMAGE_SUFFIXES
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
            if image.mode not in GRAYSCALE_MODES | COLOR_MODES:
                raise InputError(
                    f"image {path} has pixel mode {image.mode}; only 8-bit grayscale or "
                    "color images are supported"
                )
            grayscale = grayscale and image.mode in GRAYSCALE_MODES
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
        step = batch_records(schema.record_bytes)
        for start in range(0, len(files), step):
            chunk = files[start : start + step]
            x = np.stack([pixels(path) for path, _ in chunk])
            yield x, labels[start : start + len(chunk)]

    return ImportedDataset(schema, len(files), batches(), f"images from {src}")
