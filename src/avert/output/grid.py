"""Image grids: the labelled comparison figure of the "negative prompts" guide and a plain batch grid.

Layout of :func:`compare_grid` (all in pixels, so the size is exactly computable)::

    width  = 2*MARGIN + row_label_width + n_cols*cell_w + (n_cols - 1)*GAP
    height = 2*MARGIN + title_height + label_height + n_rows*cell_h + (n_rows - 1)*GAP

where ``cell_w``/``cell_h`` are the largest (upscaled) image sizes, ``label_height``
is ``max lines of a column label * line_height(font_size_for_cell(cell_w)) + GAP``
(0 when every label is empty), ``title_height`` is ``title lines *
line_height(title_font_size(cell_w)) + GAP`` (0 without a title) and
``row_label_width`` is the widest row label line, rounded up, ``+ GAP`` (0 without
row labels). Column labels are wrapped to ``cell_w``, so a long label adds lines,
never width.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

MARGIN = 16
GAP = 8
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (33, 33, 33)
LINE_SPACING = 1.4

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
Placer = Callable[[float], float]  # a text line's width -> its left x
Columns = Sequence[tuple[str, Sequence[Image.Image]]]  # (label, one image per row)


def font_size_for_cell(cell_width: int) -> int:
    """Label font size for a column ``cell_width`` pixels wide (about 1/12 of it, 14 to 40)."""
    return max(14, min(40, cell_width // 12))


def title_font_size(cell_width: int) -> int:
    """Title font size: 1.3 times the label size."""
    return round(font_size_for_cell(cell_width) * 1.3)


def line_height(font_size: int) -> int:
    """Height of one text line set in a font of ``font_size``."""
    return round(font_size * LINE_SPACING)


def _font(size: int) -> Font:
    """Pillow's bundled scalable font (Aileron, Pillow >= 10.1) at ``size``."""
    return ImageFont.load_default(size=size)


def _break_word(word: str, font: Font, width: float) -> list[str]:
    """Split a word wider than ``width`` into pieces that fit (at least one character each)."""
    pieces, piece = [], ""
    for char in word:
        if piece and font.getlength(piece + char) > width:
            pieces.append(piece)
            piece = ""
        piece += char
    return pieces + [piece]


def wrap_text(text: str, font: Font, width: float) -> list[str]:
    """Wrap ``text`` greedily into lines no wider than ``width`` (explicit newlines kept; empty text: no lines)."""
    if not text:
        return []
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            for piece in _break_word(word, font, width):
                candidate = f"{line} {piece}" if line else piece
                if line and font.getlength(candidate) > width:
                    lines.append(line)
                    candidate = piece
                line = candidate
        lines.append(line)
    return lines


DISPLAY_MIN_SIDE = 256  # images smaller than this are enlarged for viewing


def display_factor(image: Image.Image, min_side: int) -> int:
    """The least integer factor that brings the image's larger side to ``min_side`` (1 if it is there already)."""
    return max(1, math.ceil(min_side / max(image.size)))


def upscale(image: Image.Image, factor: int) -> Image.Image:
    """Enlarge by an integer factor with NEAREST, so each generated pixel stays a crisp block."""
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def _upscale(image: Image.Image, min_cell: int) -> Image.Image:
    """Enlarge an image whose larger side is under ``min_cell`` by the least integer factor reaching it (NEAREST)."""
    return upscale(image, display_factor(image, min_cell))


def _paste(canvas: Image.Image, image: Image.Image, box: tuple[int, int, int, int]) -> None:
    """Paste ``image`` centred in ``box`` (left, top, width, height), compositing any alpha onto the canvas."""
    left, top, width, height = box
    rgba = image.convert("RGBA")
    canvas.paste(rgba, (left + (width - image.width) // 2, top + (height - image.height) // 2), rgba)


def _check(columns: Columns, row_labels: Sequence[str] | None, min_cell: int) -> int:
    """Validate the grid's shape and return its number of rows."""
    if not columns:
        raise ValueError("compare_grid needs at least one column")
    counts = {len(images) for _, images in columns}
    if len(counts) != 1 or 0 in counts:
        sizes = [len(images) for _, images in columns]
        raise ValueError(f"every column needs the same, non-zero number of images; got {sizes}")
    rows = counts.pop()
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"row_labels has {len(row_labels)} entries for {rows} rows")
    if min_cell < 1:
        raise ValueError(f"min_cell must be at least 1; got {min_cell}")
    return rows


@dataclass(frozen=True)
class _Text:
    """A font at one size with its line height, able to draw wrapped lines."""

    font: Font
    step: int

    @classmethod
    def of_size(cls, size: int) -> _Text:
        """The bundled font at ``size`` with :func:`line_height` spacing."""
        return cls(_font(size), line_height(size))

    def block_height(self, lines: Sequence[str]) -> int:
        """Height taken by ``lines`` plus the gap below them (0 for no lines)."""
        return len(lines) * self.step + GAP if lines else 0

    def draw(self, draw: ImageDraw.ImageDraw, lines: Sequence[str], top: float, place: Placer) -> None:
        """Draw ``lines`` downwards from ``top``; ``place(line_width)`` gives each line's left x."""
        for index, line in enumerate(lines):
            x = place(self.font.getlength(line))
            draw.text((x, top + index * self.step), line, fill=TEXT_COLOUR, font=self.font, anchor="la")


def _draw_columns(
    canvas: Image.Image,
    text: _Text,
    columns: Sequence[tuple[list[str], list[Image.Image]]],
    origin: tuple[int, int],
    cell: tuple[int, int],
) -> None:
    """Draw each column's label (bottom-aligned, centred) above its cells; ``origin`` is the first cell's corner."""
    draw = ImageDraw.Draw(canvas)
    (left0, top0), (cell_w, cell_h) = origin, cell
    for c, (lines, images) in enumerate(columns):
        left = left0 + c * (cell_w + GAP)
        text.draw(draw, lines, top0 - GAP - len(lines) * text.step, lambda w, left=left: left + (cell_w - w) / 2)
        for r, image in enumerate(images):
            _paste(canvas, image, (left, top0 + r * (cell_h + GAP), cell_w, cell_h))


def _draw_row_labels(
    canvas: Image.Image, text: _Text, rows: Sequence[list[str]], right: int, top0: int, cell_h: int
) -> None:
    """Draw each row's label right-aligned at ``right``, centred on its row."""
    draw = ImageDraw.Draw(canvas)
    for r, lines in enumerate(rows):
        top = top0 + r * (cell_h + GAP) + (cell_h - len(lines) * text.step) / 2
        text.draw(draw, lines, top, lambda w: right - w)


def compare_grid(
    columns: Columns,
    *,
    title: str | None = None,
    row_labels: Sequence[str] | None = None,
    min_cell: int = 256,
) -> Image.Image:
    """Lay out labelled columns of images (one per row, e.g. per seed) on white, for side-by-side comparison.

    Each column is ``(label, images)``; labels are wrapped to the column width above
    it, an optional ``title`` spans the top and optional ``row_labels`` sit on the
    left. Images under ``min_cell`` pixels are upscaled by an integer factor with
    NEAREST so tiny images stay crisp. The size follows the module docstring's formula.
    Raises ValueError for an empty or ragged grid, or row labels of the wrong length.
    """
    n_rows = _check(columns, row_labels, min_cell)
    cells = [[_upscale(image, min_cell) for image in images] for _, images in columns]
    cell_w = max(image.width for column in cells for image in column)
    cell_h = max(image.height for column in cells for image in column)
    text, title_text = _Text.of_size(font_size_for_cell(cell_w)), _Text.of_size(title_font_size(cell_w))

    labels = [wrap_text(label, text.font, cell_w) for label, _ in columns]
    label_h = text.block_height(max(labels, key=len))
    row_lines = [wrap_text(label, text.font, cell_w) for label in row_labels or ()]
    widest = max((text.font.getlength(line) for lines in row_lines for line in lines), default=0)
    row_w = math.ceil(widest) + GAP if widest else 0
    grid_w = len(columns) * cell_w + (len(columns) - 1) * GAP
    title_lines = wrap_text(title or "", title_text.font, row_w + grid_w)
    title_h = title_text.block_height(title_lines)

    width = 2 * MARGIN + row_w + grid_w
    height = 2 * MARGIN + title_h + label_h + n_rows * cell_h + (n_rows - 1) * GAP
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    title_text.draw(ImageDraw.Draw(canvas), title_lines, MARGIN, lambda w: (width - w) / 2)
    grid_top = MARGIN + title_h + label_h
    _draw_columns(canvas, text, list(zip(labels, cells)), (MARGIN + row_w, grid_top), (cell_w, cell_h))
    _draw_row_labels(canvas, text, row_lines, MARGIN + row_w - GAP, grid_top, cell_h)
    return canvas


def image_grid(images: Sequence[Image.Image], cols: int) -> Image.Image:
    """Tile images row by row into ``cols`` columns with no gaps (the batch grid), white behind smaller ones.

    Cells take the largest image's size; ``cols`` larger than the number of images
    is reduced to it. Raises ValueError for no images or ``cols < 1``.
    """
    if not images:
        raise ValueError("image_grid needs at least one image")
    if cols < 1:
        raise ValueError(f"cols must be at least 1; got {cols}")
    cols = min(cols, len(images))
    rows = math.ceil(len(images) / cols)
    cell_w = max(image.width for image in images)
    cell_h = max(image.height for image in images)
    canvas = Image.new("RGB", (cols * cell_w, rows * cell_h), BACKGROUND)
    for index, image in enumerate(images):
        _paste(canvas, image, ((index % cols) * cell_w, (index // cols) * cell_h, cell_w, cell_h))
    return canvas
