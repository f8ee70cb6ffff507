"""PNG plots for the owner: results a person would rather see than read."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chiron.core.fileio import atomic_write


def _pyplot() -> Any:
    """matplotlib, imported on first use: it costs half a second every CLI start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> None:
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    atomic_write(path, buffer.getvalue())


def training_curve(epoch_accuracy: Sequence[float], path: Path, *, title: str) -> None:
    figure, axes = _pyplot().subplots(figsize=(6, 4))
    epochs = range(1, len(epoch_accuracy) + 1)
    axes.plot(list(epochs), list(epoch_accuracy), marker="o")
    axes.set_xlabel("epoch")
    axes.set_ylabel("held-out accuracy")
    axes.set_ylim(0, 1)
    axes.set_xticks(list(epochs))
    axes.grid(True, alpha=0.3)
    axes.set_title(title)
    _save(figure, path)


def confusion_matrix(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, *, title: str
) -> None:
    size = len(matrix)
    names = list(class_names) or [str(i) for i in range(size)]
    figure, axes = _pyplot().subplots(figsize=(1.0 + 0.6 * size, 0.8 + 0.6 * size))
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    axes.set_xticks(range(size), names, rotation=45, ha="right")
    axes.set_yticks(range(size), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            colour = "white" if peak and count > peak / 2 else "black"
            axes.text(j, i, str(count), ha="center", va="center", fontsize=7, color=colour)
    axes.set_title(title)
    _save(figure, path)
