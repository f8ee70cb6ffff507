"""The owner's PNG plots: they open, show what they are given, and stay bounded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from chiron.client import plots
from chiron.core.errors import InputError


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


def test_an_epoch_without_a_finite_figure_gets_no_point(tmp_path):
    plots.training_curve([0.5, float("nan"), float("inf"), 0.7], tmp_path / "n.png", title="t")
    assert _pixels(tmp_path / "n.png").size == (720, 480)


@pytest.mark.parametrize("epochs", [0, 1, 250])
def test_any_number_of_epochs_draws(tmp_path, epochs):
    plots.training_curve([0.5] * epochs, tmp_path / "c.png", title="t")
    assert _pixels(tmp_path / "c.png").size == (720, 480)


def _peak_pixels(image: Image.Image) -> list[tuple[int, int]]:
    """The pixels in the largest count's shade, the colour bar's left out (it is on the
    far right, and its top has that shade too)."""
    width, _ = image.size
    peak = plots._BLUES[-1]
    points = [
        (i % width, i // width)
        for i, pixel in enumerate(image.get_flattened_data())
        if pixel == peak
    ]
    right = max(x for x, _ in points)
    return [(x, y) for x, y in points if x < right - 25]


def _centre(points: list[tuple[int, int]]) -> tuple[float, float]:
    return sum(x for x, _ in points) / len(points), sum(y for _, y in points) / len(points)


def test_the_confusion_matrix_is_darkest_where_the_counts_are(tmp_path):
    # Rows are true classes, columns predicted ones: 90 cats predicted as dogs sit top
    # right, 90 dogs predicted as cats bottom left.
    plots.confusion_matrix([[0, 90], [0, 0]], ["cat", "dog"], tmp_path / "d.png", title="m")
    plots.confusion_matrix([[0, 0], [90, 0]], ["cat", "dog"], tmp_path / "e.png", title="m")
    cats_as_dogs = _centre(_peak_pixels(_pixels(tmp_path / "d.png")))
    dogs_as_cats = _centre(_peak_pixels(_pixels(tmp_path / "e.png")))
    assert cats_as_dogs[0] > dogs_as_cats[0] + 30  # further right
    assert cats_as_dogs[1] < dogs_as_cats[1] - 30  # higher up


def test_long_or_unprintable_class_names_keep_the_image_bounded(tmp_path):
    names = ["\x1b[31m" + "x" * 5000 + "\n", *(f"class {i}" for i in range(1, 10))]
    matrix = [[(i == j) * 3 for j in range(10)] for i in range(10)]
    plots.confusion_matrix(matrix, names, tmp_path / "n.png", title="m")
    width, height = _pixels(tmp_path / "n.png").size
    assert width <= 1000 and height <= 1000


@pytest.mark.parametrize(
    "matrix", [[[1, 2], [3]], [[1, 2]], [[1.5, 0], [0, 1]], [[float("nan"), 0], [0, 1]], [[]]]
)
def test_what_is_not_a_square_table_of_counts_is_refused(tmp_path, matrix):
    with pytest.raises(InputError, match="not a square table of integer counts"):
        plots.confusion_matrix(matrix, [], tmp_path / "x.png", title="m")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("size", [1000, 2500])  # 2500: more classes than grid pixels
def test_many_classes_keep_the_image_bounded(tmp_path, size):
    matrix = [[(i == j) * 7 for j in range(size)] for i in range(size)]
    plots.confusion_matrix(matrix, [f"c{i}" for i in range(size)], tmp_path / "f.png", title="m")
    width, height = _pixels(tmp_path / "f.png").size
    assert width <= 1400 and height <= 1400


def test_an_empty_or_all_zero_matrix_draws(tmp_path):
    plots.confusion_matrix([], [], tmp_path / "g.png", title="none")
    plots.confusion_matrix([[0, 0], [0, 0]], [], tmp_path / "h.png", title="zeros")
    assert _pixels(tmp_path / "h.png").size[0] > 0


def test_plots_need_no_charting_library(tmp_path):
    # The plots are drawn at the end of every training run: drawing them must not need a
    # library that takes half a second to import (here, importing matplotlib fails).
    code = (
        "import sys; from pathlib import Path; sys.modules['matplotlib'] = None\n"
        "from chiron.client import plots\n"
        f"plots.training_curve([0.5, 0.7], Path({str(tmp_path / 'c.png')!r}), title='t')\n"
        f"plots.confusion_matrix([[1, 0], [0, 1]], [], Path({str(tmp_path / 'm.png')!r}), title='t')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "c.png").exists() and (tmp_path / "m.png").exists()
