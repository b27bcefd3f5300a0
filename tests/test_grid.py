"""Comparison and batch grids: exact sizes, label wrapping and where the cells land."""

from __future__ import annotations

import math

import pytest
from PIL import Image, ImageFont

from avert.output.grid import (
    GAP,
    MARGIN,
    compare_grid,
    font_size_for_cell,
    image_grid,
    line_height,
    title_font_size,
    wrap_text,
)

RED, GREEN, BLUE = (200, 30, 30), (30, 160, 60), (30, 60, 200)
YELLOW, PURPLE, CYAN = (230, 200, 30), (120, 40, 160), (0, 200, 200)
WHITE = (255, 255, 255)


def solid(colour, size=(32, 32), mode="RGB"):
    return Image.new(mode, size, colour)


def columns(labels, colours, size=(32, 32)):
    """One column per label, one solid image per colour in that column's list."""
    return [(label, [solid(c, size) for c in cs]) for label, cs in zip(labels, colours)]


def expected_size(n_cols, n_rows, cell, label_lines=1, title_lines=0, row_w=0):
    """The module docstring's size formula."""
    label_h = label_lines * line_height(font_size_for_cell(cell[0])) + GAP if label_lines else 0
    title_h = title_lines * line_height(title_font_size(cell[0])) + GAP if title_lines else 0
    width = 2 * MARGIN + row_w + n_cols * cell[0] + (n_cols - 1) * GAP
    height = 2 * MARGIN + title_h + label_h + n_rows * cell[1] + (n_rows - 1) * GAP
    return width, height


@pytest.mark.parametrize(
    ("image_size", "min_cell", "cell"),
    [
        ((32, 32), 256, (256, 256)),   # factor 8
        ((100, 50), 256, (300, 150)),  # factor ceil(256/100) = 3
        ((300, 200), 256, (300, 200)),  # large enough: untouched
        ((64, 64), 64, (64, 64)),
    ],
)
def test_size_arithmetic(image_size, min_cell, cell):
    grid = compare_grid(columns(["A", "B"], [[RED, GREEN, BLUE]] * 2, image_size), min_cell=min_cell)
    assert grid.size == expected_size(2, 3, cell)


def test_title_and_row_labels_add_exactly_their_size():
    cols = columns(["left", "right"], [[RED, GREEN], [BLUE, YELLOW]])
    font = ImageFont.load_default(size=font_size_for_cell(256))
    row_w = math.ceil(max(font.getlength("seed 42"), font.getlength("seed 1234"))) + GAP
    grid = compare_grid(cols, title="Negative prompts compared", row_labels=["seed 42", "seed 1234"])
    assert grid.size == expected_size(2, 2, (256, 256), title_lines=1, row_w=row_w)


def test_empty_labels_take_no_height():
    assert compare_grid(columns(["", ""], [[RED], [BLUE]])).size == expected_size(2, 1, (256, 256), label_lines=0)


def test_long_label_wraps_into_height_not_width():
    short = compare_grid(columns(["No negative prompt", "Negative prompt: green"], [[RED], [BLUE]]))
    long_label = "Negative prompt: " + ", ".join(["green tones", "blurry", "low quality", "watermark"] * 4)
    long = compare_grid(columns(["No negative prompt", long_label], [[RED], [BLUE]]))
    font = ImageFont.load_default(size=font_size_for_cell(256))
    lines = wrap_text(long_label, font, 256)
    assert len(lines) > 3 and all(font.getlength(line) <= 256 for line in lines)
    assert long.width == short.width
    assert long.size == expected_size(2, 1, (256, 256), label_lines=len(lines))


@pytest.mark.parametrize(
    ("text", "width", "expected"),
    [
        ("", 100, []),
        ("one", 1000, ["one"]),
        ("a\nb", 1000, ["a", "b"]),
        ("aaaaaaaaaaaaaaaaaaaa", 40, None),  # one word wider than the line: broken into pieces
    ],
)
def test_wrap_text(text, width, expected):
    font = ImageFont.load_default(size=20)
    lines = wrap_text(text, font, width)
    if expected is not None:
        assert lines == expected
    else:
        assert "".join(lines) == text and len(lines) > 1
        assert all(font.getlength(line) <= width for line in lines)


def cell_centre(col, row, cell=(256, 256), top=0, left=0):
    """Centre of cell (col, row) given the height above the cells and the row label width."""
    return (
        MARGIN + left + col * (cell[0] + GAP) + cell[0] // 2,
        MARGIN + top + row * (cell[1] + GAP) + cell[1] // 2,
    )


def test_cells_land_where_expected():
    colours = [[RED, GREEN, BLUE], [YELLOW, PURPLE, CYAN]]
    labels = ["No negative prompt", "Negative prompt: green tones"]
    grid = compare_grid(columns(labels, colours))
    font = ImageFont.load_default(size=font_size_for_cell(256))
    label_lines = max(len(wrap_text(label, font, 256)) for label in labels)  # 2: the second label wraps
    top = label_lines * line_height(font_size_for_cell(256)) + GAP
    for c, column in enumerate(colours):
        for r, colour in enumerate(column):
            assert grid.getpixel(cell_centre(c, r, top=top)) == colour
    # the gap between cells, and the margin, stay white
    x, y = cell_centre(0, 0, top=top)
    assert grid.getpixel((MARGIN + 256 + GAP // 2, y)) == WHITE
    assert grid.getpixel((x, MARGIN + top + 256 + GAP // 2)) == WHITE
    assert grid.getpixel((MARGIN // 2, MARGIN // 2)) == WHITE


def test_cells_shift_by_title_and_row_labels_and_labels_are_drawn():
    colours = [[RED, GREEN], [BLUE, YELLOW]]
    grid = compare_grid(columns(["A long label", "B"], colours), title="Title", row_labels=["seed 1", "seed 2"])
    font = ImageFont.load_default(size=font_size_for_cell(256))
    left = math.ceil(font.getlength("seed 1")) + GAP
    top = line_height(title_font_size(256)) + GAP + line_height(font_size_for_cell(256)) + GAP
    for c, column in enumerate(colours):
        for r, colour in enumerate(column):
            assert grid.getpixel(cell_centre(c, r, top=top, left=left)) == colour
    label_band = grid.crop((MARGIN + left, MARGIN, grid.width - MARGIN, MARGIN + top - GAP))
    row_band = grid.crop((MARGIN, MARGIN + top, MARGIN + left - GAP, grid.height - MARGIN))
    for band in (label_band, row_band):  # dark text on white
        assert band.convert("L").getextrema()[0] < 80


def test_mixed_sizes_centre_smaller_images_and_composite_alpha():
    cols = [("big", [solid(RED, (256, 256))]), ("small", [solid(BLUE + (255,), (128, 64), "RGBA")])]
    grid = compare_grid(cols, min_cell=100)  # 128x64 is not upscaled: longest side >= 100
    top = line_height(font_size_for_cell(256)) + GAP
    x, y = cell_centre(1, 0, top=top)
    assert grid.getpixel((x, y)) == BLUE
    assert grid.getpixel((x, y - 40)) == WHITE  # above the 64-pixel-high image, still in the cell
    transparent = compare_grid([("t", [solid((0, 0, 0, 0), (32, 32), "RGBA")])])
    assert transparent.getpixel(cell_centre(0, 0, top=top)) == WHITE


def test_tiny_images_are_upscaled_with_nearest():
    checker = Image.new("RGB", (2, 1))
    checker.putpixel((0, 0), RED)
    checker.putpixel((1, 0), BLUE)
    grid = compare_grid([("", [checker])], min_cell=8)  # factor 4: 8x4 cell, crisp halves
    row = [grid.getpixel((MARGIN + x, MARGIN + 1)) for x in range(8)]
    assert row == [RED] * 4 + [BLUE] * 4


@pytest.mark.parametrize(
    ("cols", "row_labels", "message"),
    [
        ([], None, "at least one column"),
        ([("a", [solid(RED)]), ("b", [solid(RED), solid(RED)])], None, "same"),
        ([("a", [])], None, "same"),
        ([("a", [solid(RED)])], ["x", "y"], "row_labels"),
    ],
)
def test_bad_shapes_raise(cols, row_labels, message):
    with pytest.raises(ValueError, match=message):
        compare_grid(cols, row_labels=row_labels)


@pytest.mark.parametrize(
    ("count", "cols", "size"), [(4, 2, (64, 64)), (5, 2, (64, 96)), (3, 5, (96, 32)), (1, 1, (32, 32))]
)
def test_image_grid_size(count, cols, size):
    assert image_grid([solid(RED)] * count, cols).size == size


def test_image_grid_places_row_by_row():
    colours = [RED, GREEN, BLUE, YELLOW, PURPLE]
    grid = image_grid([solid(c) for c in colours], 2)
    for index, colour in enumerate(colours):
        assert grid.getpixel(((index % 2) * 32 + 16, (index // 2) * 32 + 16)) == colour
    assert grid.getpixel((32 + 16, 64 + 16)) == WHITE  # the empty last cell


@pytest.mark.parametrize(("images", "cols"), [([], 2), ([Image.new("RGB", (4, 4))], 0)])
def test_image_grid_rejects_bad_input(images, cols):
    with pytest.raises(ValueError):
        image_grid(images, cols)
