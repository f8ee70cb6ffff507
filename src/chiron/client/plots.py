"""PNG plots for the owner: results a person would rather see than read.

Drawn with Pillow, which the client imports in about 30 ms. A charting library would
take half a second to import and draw the two plots of every training run, at the end of
the command, after the model is trained. Each plot is drawn at twice its size and
scaled down, so lines and text come out smooth.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from chiron.core.errors import InputError
from chiron.core.fileio import atomic_write

_SCALE = 2  # drawn at this multiple of the final size, then scaled down
_INK = (0, 0, 0)
_GRID = (225, 225, 225)
_LINE = (31, 119, 180)
# ColorBrewer's "Blues", light to dark: the confusion matrix's cells and colour bar.
_BLUES = (
    (247, 251, 255), (222, 235, 247), (198, 219, 239), (158, 202, 225), (107, 174, 214),
    (66, 146, 198), (33, 113, 181), (8, 81, 156), (8, 48, 107),
)  # fmt: skip
Colour = tuple[int, int, int]
_GRID_PIXELS = 1200  # the confusion matrix's grid at most, whatever the number of classes
_LABEL_CHARACTERS = 32  # a class name is cut to this, so the image stays bounded


class _Canvas:
    """A white image drawn in final-size pixel units (scaled by `_SCALE` underneath)."""

    def __init__(self, width: int, height: int) -> None:
        self.size = (width, height)
        self.image = Image.new("RGB", (width * _SCALE, height * _SCALE), "white")
        self.draw = ImageDraw.Draw(self.image)
        self._fonts: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] = {}

    def font(self, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
        if size not in self._fonts:
            self._fonts[size] = ImageFont.load_default(size * _SCALE)
        return self._fonts[size]

    def text_size(self, text: str, size: int) -> tuple[float, float]:
        left, top, right, bottom = self.draw.textbbox((0, 0), text, font=self.font(size))
        return (right - left) / _SCALE, (bottom - top) / _SCALE

    def text(
        self, xy: tuple[float, float], text: str, size: int, *, anchor: str = "mm",
        fill: Colour = _INK,
    ) -> None:  # fmt: skip
        """`anchor` as Pillow's: l/m/r horizontally, then t/m/b (or s: baseline)."""
        point = (xy[0] * _SCALE, xy[1] * _SCALE)
        self.draw.text(point, text, font=self.font(size), fill=fill, anchor=anchor)

    def rotated_text(
        self, xy: tuple[float, float], text: str, size: int, angle: int, corner: str
    ) -> None:
        """`text` turned `angle` degrees counter-clockwise, the `corner` ("top-right",
        "center") of its turned box placed at `xy`."""
        font = self.font(size)
        left, top, right, bottom = self.draw.textbbox((0, 0), text, font=font)
        label = Image.new("L", (round(right - left) + 2, round(bottom - top) + 2), 0)
        ImageDraw.Draw(label).text((1 - left, 1 - top), text, font=font, fill=255)
        turned = label.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)
        x, y = xy[0] * _SCALE, xy[1] * _SCALE
        if corner == "top-right":
            x -= turned.width
        else:
            x, y = x - turned.width / 2, y - turned.height / 2
        self.image.paste(Image.new("RGB", turned.size, _INK), (round(x), round(y)), turned)

    def line(self, points: Sequence[tuple[float, float]], fill: Colour, width: float) -> None:
        scaled = [(x * _SCALE, y * _SCALE) for x, y in points]
        self.draw.line(scaled, fill=fill, width=max(1, round(width * _SCALE)), joint="curve")

    def frame(self, box: tuple[float, float, float, float]) -> None:
        """A one-pixel black outline around `box`."""
        self.draw.rectangle(tuple(value * _SCALE for value in box), outline=_INK, width=_SCALE)

    def picture(self, box: tuple[float, float, float, float], colours: np.ndarray) -> None:
        """An (rows, columns, 3) array of colours stretched over `box`, one block each."""
        left, top, right, bottom = (round(value * _SCALE) for value in box)
        size = (max(1, right - left), max(1, bottom - top))
        picture = Image.fromarray(colours, "RGB")
        shrinking = size[0] < picture.width or size[1] < picture.height
        resample = Image.Resampling.BOX if shrinking else Image.Resampling.NEAREST
        self.image.paste(picture.resize(size, resample), (left, top))

    def dot(self, xy: tuple[float, float], radius: float, fill: Colour) -> None:
        x, y, r = xy[0] * _SCALE, xy[1] * _SCALE, radius * _SCALE
        self.draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)

    def save(self, path: Path) -> None:
        final = self.image.resize(self.size, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        final.save(buffer, format="PNG", dpi=(120, 120))
        atomic_write(path, buffer.getvalue())


def training_curve(epoch_accuracy: Sequence[float], path: Path, *, title: str) -> None:
    """Held-out accuracy after each epoch, on a 0 to 1 scale."""
    canvas = _Canvas(720, 480)
    left, top, right, bottom = 80.0, 48.0, 696.0, 416.0
    count = len(epoch_accuracy)
    low, high = 0.5, max(count, 1) + 0.5

    def x_of(epoch: float) -> float:
        return left + (epoch - low) / (high - low) * (right - left)

    def y_of(value: float) -> float:
        return bottom - min(max(value, 0.0), 1.0) * (bottom - top)

    for tenth in range(0, 11, 2):
        y = y_of(tenth / 10)
        canvas.line([(left, y), (right, y)], _GRID, 1)
        canvas.line([(left - 5, y), (left, y)], _INK, 1)
        canvas.text((left - 9, y), f"{tenth / 10:.1f}", 13, anchor="rm")
    for epoch in range(1, count + 1, _tick_step(count, 12)):
        x = x_of(epoch)
        canvas.line([(x, top), (x, bottom)], _GRID, 1)
        canvas.line([(x, bottom), (x, bottom + 5)], _INK, 1)
        canvas.text((x, bottom + 9), str(epoch), 13, anchor="mt")
    # An epoch without a finite figure gets no point (an honest report has one for each).
    points = [
        (x_of(i + 1), y_of(value)) for i, value in enumerate(epoch_accuracy) if math.isfinite(value)
    ]
    if len(points) > 1:
        canvas.line(points, _LINE, 2)
    for point in points:
        canvas.dot(point, 4, _LINE)
    canvas.frame((left, top, right, bottom))
    canvas.text(((left + right) / 2, top / 2), title, 16)
    canvas.text(((left + right) / 2, bottom + 44), "epoch", 14)
    canvas.rotated_text((left - 58, (top + bottom) / 2), "held-out accuracy", 14, 90, "center")
    canvas.save(path)


def confusion_matrix(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, *, title: str
) -> None:
    """Counts by true class (rows) and predicted class (columns), darker for more.

    InputError if `matrix` is not a square table of integer counts.
    """
    counts = _square_counts(matrix)
    size = len(counts)
    names = [_label(name) for name in list(class_names)[:size]] or [str(i) for i in range(size)]
    peak = int(counts.max()) if size else 0
    # Cells shrink so that the grid stays within 1200 pixels whatever the number of
    # classes; counts are written in cells wide enough to hold them, names beside rows
    # and columns high enough.
    cell = min(48.0, _GRID_PIXELS / max(size, 1))
    counts_shown, names_shown = cell >= 30, cell >= 14
    if not names_shown:
        names = []
    probe = _Canvas(1, 1)
    name_width = max((probe.text_size(name, 13)[0] for name in names), default=0.0)
    name_height = probe.text_size("Tg", 13)[1]
    left = 40 + name_width + 12
    top = 44.0
    grid_right, grid_bottom = left + size * cell, top + size * cell
    # The column names are turned 45 degrees: their box is (width + height) / sqrt(2) tall.
    names_depth = (name_width + name_height) / math.sqrt(2)
    bar_left = grid_right + 24
    # With more classes than the grid has pixels, a pixel shows a block's total, and
    # the colour bar goes up to the largest block's.
    shown = _at_most(counts, _GRID_PIXELS)
    bar_peak = int(shown.max()) if size else 0
    bar_ticks = _ticks(bar_peak)
    tick_width = max((probe.text_size(str(t), 13)[0] for t in bar_ticks), default=0.0)
    canvas = _Canvas(
        round(bar_left + 20 + 10 + tick_width + 16), round(grid_bottom + 16 + names_depth + 40)
    )
    canvas.picture((left, top, grid_right, grid_bottom), _shades(shown / max(bar_peak, 1)))
    if counts_shown:
        for (i, j), count in np.ndenumerate(counts):
            colour = (255, 255, 255) if peak and count > peak / 2 else _INK
            canvas.text(
                (left + (j + 0.5) * cell, top + (i + 0.5) * cell), str(count), 11, fill=colour
            )
    canvas.frame((left, top, grid_right, grid_bottom))
    for index, name in enumerate(names):
        middle = left + (index + 0.5) * cell
        canvas.line([(middle, grid_bottom), (middle, grid_bottom + 5)], _INK, 1)
        canvas.rotated_text((middle + 4, grid_bottom + 8), name, 13, 45, "top-right")
        middle = top + (index + 0.5) * cell
        canvas.line([(left - 5, middle), (left, middle)], _INK, 1)
        canvas.text((left - 9, middle), name, 13, anchor="rm")
    # The colour bar: the same shades from 0 (bottom) to the largest count (top).
    gradient = np.linspace(1.0, 0.0, 256).reshape(256, 1)
    canvas.picture((bar_left, top, bar_left + 20, grid_bottom), _shades(gradient))
    canvas.frame((bar_left, top, bar_left + 20, grid_bottom))
    for tick in bar_ticks:
        y = grid_bottom - (tick / bar_peak if bar_peak else 0) * (size * cell)
        canvas.line([(bar_left + 20, y), (bar_left + 25, y)], _INK, 1)
        canvas.text((bar_left + 29, y), str(tick), 13, anchor="lm")
    canvas.text(((left + grid_right) / 2, top / 2), title, 16)
    canvas.text(((left + grid_right) / 2, grid_bottom + 16 + names_depth + 20), "predicted", 14)
    canvas.rotated_text((20, (top + grid_bottom) / 2), "true", 14, 90, "center")
    canvas.save(path)


def _square_counts(matrix: Sequence[Sequence[int]]) -> np.ndarray:
    try:
        counts = np.array(matrix)
    except (ValueError, TypeError, OverflowError):
        counts = np.array([[None]])
    if counts.size == 0 and len(matrix) == 0:
        return np.zeros((0, 0), dtype=np.int64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.dtype.kind not in "iu":
        raise InputError("the confusion matrix is not a square table of integer counts")
    return counts.astype(np.int64, copy=False)


def _at_most(counts: np.ndarray, cells: int) -> np.ndarray:
    """`counts` summed in square blocks until it has at most `cells` rows (and columns):
    a pixel of the grid then shows its block, and the colours need memory for no more."""
    factor = max(1, math.ceil(len(counts) / cells))
    if factor == 1:
        return counts
    blocks = math.ceil(len(counts) / factor)
    padded = np.zeros((blocks * factor, blocks * factor), dtype=np.int64)
    padded[: len(counts), : len(counts)] = counts
    summed: np.ndarray = padded.reshape(blocks, factor, blocks, factor).sum(axis=(1, 3))
    return summed


def _label(name: str) -> str:
    """A class name as drawn: printable, and cut to `_LABEL_CHARACTERS`."""
    text = "".join(c if c.isprintable() else "?" for c in str(name))
    return text if len(text) <= _LABEL_CHARACTERS else text[: _LABEL_CHARACTERS - 1] + "…"


@functools.cache
def _palette() -> np.ndarray:
    """256 colours along `_BLUES`, light to dark, as a (256, 3) uint8 table."""
    anchors = np.array(_BLUES, dtype=np.float64)
    position = np.linspace(0.0, len(_BLUES) - 1, 256)
    index = np.minimum(position.astype(np.int64), len(_BLUES) - 2)
    share = (position - index)[:, None]
    mixed = anchors[index] + (anchors[index + 1] - anchors[index]) * share
    table: np.ndarray = np.rint(mixed).astype(np.uint8)
    return table


def _shades(fractions: np.ndarray) -> np.ndarray:
    """The colour each fraction (0 to 1) is along `_BLUES`, as an (..., 3) uint8 array."""
    steps = np.rint(np.clip(fractions, 0.0, 1.0) * 255).astype(np.uint8)
    colours: np.ndarray = _palette()[steps]
    return colours


def _tick_step(span: int, most: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50... that puts at most `most` ticks on `span`."""
    magnitude = 1
    while True:
        for multiple in (1, 2, 5):
            if math.ceil(span / (multiple * magnitude)) <= most:
                return multiple * magnitude
        magnitude *= 10


def _ticks(peak: int) -> list[int]:
    """Round counts from 0 to `peak` for the colour bar: at most 6 of them."""
    if peak <= 0:
        return [0]
    step = _tick_step(peak, 5)
    return list(range(0, peak + 1, step))
