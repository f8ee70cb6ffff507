"""Writers of small data sets in every format `chiron dataset encrypt` imports."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    """An IDX file of unsigned bytes (the MNIST format)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_images(count: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(count, *shape), dtype=np.uint8)
    y = rng.integers(0, 10, size=count).astype(np.int64)
    return x, y


def write_mnist_folder(folder: Path, *, gz: bool, train: int = 30, test: int = 12) -> dict:
    """train-*/t10k-* IDX files of 6x5 images; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, count, seed in (("train", train, 1), ("t10k", test, 2)):
        x, y = make_images(count, (6, 5), seed)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", x, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", y, gz=gz)
        arrays[prefix] = (x, y)
    return arrays


def write_cifar_batch(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    records = np.concatenate([y.astype(np.uint8)[:, None], x.reshape(len(x), -1)], axis=1)
    path.write_bytes(records.astype(np.uint8).tobytes())


def write_image_folder(root: Path, images: dict[str, list[np.ndarray]]) -> None:
    """root/<class>/<n>.png from (H, W) or (H, W, 3) uint8 arrays."""
    from PIL import Image

    for name, arrays in images.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index, array in enumerate(arrays):
            Image.fromarray(array).save(root / name / f"{index}.png")


def leftovers(folder: Path, *names: str) -> list[str]:
    """Files a failed command must not have left: the named outputs and any partial file."""
    return sorted(
        p.name for p in folder.iterdir() if p.name in names or p.name.endswith(".partial")
    )
