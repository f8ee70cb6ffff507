"""The owner's PNG plots: they open, show what they are given, and stay bounded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from chiron.client import plots


def _pixels(path: Path) -> Image.Image:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.convert("RGB")


def test_the_curve_is_a_png_that_moves_with_the_accuracy(tmp_path):
    plots.training_curve([0.2, 0.5, 0.9], tmp_path / "a.png", title="held-out accuracy")
    plots.training_curve([0.9, 0.5, 0.2], tmp_path / "b.png", title="held-out accuracy")
    first, second = _pixels(tmp_path / "a.png"), _pixels(tmp_path / "b.png")
    assert first.size == second.size == (720, 480)
    assert ImageChops.difference(first, second).getbbox() is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no temporary


@pytest.mark.parametrize("epochs", [0, 1, 250])
def test_any_number_of_epochs_draws(tmp_path, epochs):
    plots.training_curve([0.5] * epochs, tmp_path / "c.png", title="t")
    assert _pixels(tmp_path / "c.png").size == (720, 480)


def _darkest_cells(image: Image.Image) -> tuple[float, float]:
    """Mean x of the pixels in the largest count's shade, upper half then lower half of
    the cells (the colour bar, whose top has that shade too, is on the far right)."""
    width, _ = image.size
    peak = plots._BLUES[-1]
    points = [
        (i % width, i // width)
        for i, pixel in enumerate(image.get_flattened_data())
        if pixel == peak
    ]
    right = max(x for x, _ in points)
    cells = [(x, y) for x, y in points if x < right - 25]
    middle = (min(y for _, y in cells) + max(y for _, y in cells)) / 2
    upper = [x for x, y in cells if y < middle]
    lower = [x for x, y in cells if y > middle]
    return sum(upper) / len(upper), sum(lower) / len(lower)


def test_the_confusion_matrix_is_darkest_where_the_counts_are(tmp_path):
    plots.confusion_matrix([[90, 0], [0, 90]], ["cat", "dog"], tmp_path / "d.png", title="m")
    plots.confusion_matrix([[0, 90], [90, 0]], ["cat", "dog"], tmp_path / "e.png", title="m")
    upper, lower = _darkest_cells(_pixels(tmp_path / "d.png"))
    assert upper < lower  # the top row's count is on the left, the bottom row's right
    upper, lower = _darkest_cells(_pixels(tmp_path / "e.png"))
    assert upper > lower


def test_many_classes_keep_the_image_bounded(tmp_path):
    size = 1000
    matrix = [[(i == j) * 7 for j in range(size)] for i in range(size)]
    plots.confusion_matrix(matrix, [f"c{i}" for i in range(size)], tmp_path / "f.png", title="m")
    width, height = _pixels(tmp_path / "f.png").size
    assert width <= 1400 and height <= 1400


def test_an_empty_or_all_zero_matrix_draws(tmp_path):
    plots.confusion_matrix([], [], tmp_path / "g.png", title="none")
    plots.confusion_matrix([[0, 0], [0, 0]], [], tmp_path / "h.png", title="zeros")
    assert _pixels(tmp_path / "h.png").size[0] > 0


def test_plots_need_no_charting_library():
    # The plots are drawn at the end of every training run: importing them must not
    # pull in a library that takes half a second to import.
    code = "import sys, chiron.client.plots; print('matplotlib' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
