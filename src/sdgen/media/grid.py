"""Grids of pictures: a plain contact sheet, and a labelled X/Y grid like A1111's X/Y plot.

Both lay pictures out row-major in cells the size of the largest picture (smaller ones centred),
with ``GAP`` pixels of background between cells. Labels use Pillow's scalable default font
(Pillow >= 10.1), sized from the cell size so that even 64x64 cells get readable text.
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

from sdgen.errors import InvalidRequest

GAP = 4  # pixels between cells: enough to tell pictures apart, little enough to stay a sheet
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)
MIN_FONT_SIZE = 12  # readable on 64x64 cells; larger cells scale it up (see label_font_size)


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, cols) for ``count`` pictures: ``cols = ceil(sqrt(count))``, then as few rows as fit.

    The grid is as near square as can be with ``cols >= rows`` (wider rather than taller, like
    a screen), and only the last row can have empty cells (fewer than ``cols``), never a row:
    1 -> 1x1, 2 -> 1x2, 3 -> 2x2, 4 -> 2x2, 5 -> 2x3, 6 -> 2x3, 7..9 -> 3x3, 10 -> 3x4.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidRequest("count", count, "a whole number of pictures, 1 or more")
    cols = math.isqrt(count - 1) + 1  # ceil(sqrt(count)) without floating point
    return math.ceil(count / cols), cols


def contact_sheet(images: list[Image.Image]) -> Image.Image:
    """The pictures in a ``grid_shape`` grid, row-major in the order given, ``GAP`` apart."""
    if not images:
        raise InvalidRequest("images", [], "at least one picture")
    rows, cols = grid_shape(len(images))
    cells = [images[r * cols : (r + 1) * cols] for r in range(rows)]
    cell_size = _cell_size(images)
    sheet = Image.new("RGB", _cells_size(cell_size, rows, cols), BACKGROUND)
    _paste_cells(sheet, cells, cell_size, origin=(0, 0))
    return sheet


def labelled_grid(
    cells: list[list[Image.Image]],
    row_labels: list[str],
    col_labels: list[str],
    *,
    row_title: str = "",
    col_title: str = "",
) -> Image.Image:
    """``cells[r][c]`` in a grid with column labels on top and row labels on the left.

    Args:
        cells: rows of pictures, all rows of the same length.
        row_labels: one per row; all empty ("") leaves out the left margin (a one-axis grid).
        col_labels: one per column.
        row_title, col_title: optional axis names, drawn left of the row labels (turned 90
            degrees) and above the column labels.
    Returns:
        An RGB picture: margins for the titles and labels, then the cells ``GAP`` apart.
    Labels are wrapped to the cell width; a row's label is centred on its row.
    """
    _check_cells(cells, row_labels, col_labels)
    cell_w, cell_h = cell_size = _cell_size([image for row in cells for image in row])
    font_size = label_font_size(cell_w, cell_h)
    font = ImageFont.load_default(size=font_size)
    pad = max(2, font_size // 3)
    line_h = _line_height(font)

    col_lines = [_wrap(label, font, cell_w) for label in col_labels]
    row_lines = [_wrap(label, font, cell_w) for label in row_labels]
    col_title_h = line_h + 2 * pad if col_title else 0
    col_labels_h = max(len(lines) for lines in col_lines) * line_h + 2 * pad
    row_title_w = line_h + 2 * pad if row_title else 0
    widest = max((font.getlength(line) for lines in row_lines for line in lines), default=0)
    row_labels_w = math.ceil(widest) + 2 * pad if widest else 0

    rows, cols = len(cells), len(cells[0])
    cells_w, cells_h = _cells_size(cell_size, rows, cols)
    left, top = row_title_w + row_labels_w, col_title_h + col_labels_h
    grid = Image.new("RGB", (left + cells_w, top + cells_h), BACKGROUND)
    _paste_cells(grid, cells, cell_size, origin=(left, top))

    draw = ImageDraw.Draw(grid)
    for c, lines in enumerate(col_lines):
        centre_x = left + c * (cell_w + GAP) + cell_w / 2
        first_y = top - pad - len(lines) * line_h  # bottom-aligned: each label on its column
        _draw_lines(draw, lines, font, centre_x, first_y, line_h)
    for r, lines in enumerate(row_lines):
        centre_y = top + r * (cell_h + GAP) + cell_h / 2
        first_y = centre_y - len(lines) * line_h / 2
        _draw_lines(draw, lines, font, row_title_w + row_labels_w / 2, first_y, line_h)
    if col_title:
        _draw_lines(draw, [col_title], font, left + cells_w / 2, pad, line_h)
    if row_title:
        _draw_row_title(grid, row_title, font, (row_title_w, cells_h), (0, top), pad)
    return grid


def label_font_size(cell_width: int, cell_height: int) -> int:
    """The labels' font size in pixels: A1111's (width + height) / 25, at least MIN_FONT_SIZE."""
    return max(MIN_FONT_SIZE, (cell_width + cell_height) // 25)


def _check_cells(cells: list[list[Image.Image]], row_labels: list[str], col_labels: list[str]):
    """Refuse a ragged grid or label lists that do not match it, by argument name."""
    if not cells or not cells[0]:
        raise InvalidRequest("cells", cells, "at least one row of at least one picture")
    cols = len(cells[0])
    ragged = [len(row) for row in cells if len(row) != cols]
    if ragged:
        raise InvalidRequest("cells", f"rows of {ragged[0]} and {cols}", "rows of one length")
    if len(row_labels) != len(cells):
        raise InvalidRequest("row_labels", row_labels, f"one label per row ({len(cells)})")
    if len(col_labels) != cols:
        raise InvalidRequest("col_labels", col_labels, f"one label per column ({cols})")


def _cell_size(images: list[Image.Image]) -> tuple[int, int]:
    return max(image.width for image in images), max(image.height for image in images)


def _cells_size(cell_size: tuple[int, int], rows: int, cols: int) -> tuple[int, int]:
    """(width, height) of ``rows`` x ``cols`` cells with ``GAP`` between them (none outside)."""
    cell_w, cell_h = cell_size
    return cols * cell_w + (cols - 1) * GAP, rows * cell_h + (rows - 1) * GAP


def _paste_cells(
    canvas: Image.Image,
    cells: list[list[Image.Image]],
    cell_size: tuple[int, int],
    origin: tuple[int, int],
) -> None:
    """Paste ``cells[r][c]`` into ``canvas``, each centred in its cell, from ``origin``."""
    cell_w, cell_h = cell_size
    for r, row in enumerate(cells):
        for c, image in enumerate(row):
            x = origin[0] + c * (cell_w + GAP) + (cell_w - image.width) // 2
            y = origin[1] + r * (cell_h + GAP) + (cell_h - image.height) // 2
            canvas.paste(image.convert("RGB"), (x, y))


def _line_height(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    """Height of one line of text, descenders included."""
    return font.getbbox("Agy|")[3] + 1


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    """``text`` in lines no wider than ``width``: at spaces, or inside a word that is too wide."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= width:
            lines[-1] = candidate
            continue
        lines.append("")
        for char in word:  # a new line; break the word itself only where it does not fit
            if lines[-1] and font.getlength(lines[-1] + char) > width:
                lines.append("")
            lines[-1] += char
    return lines


def _draw_lines(
    draw: ImageDraw.ImageDraw,
    lines: list[str],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    centre_x: float,
    top: float,
    line_h: int,
) -> None:
    """Draw ``lines`` one under the other, each centred on ``centre_x``, from ``top``."""
    for i, line in enumerate(lines):
        x = centre_x - font.getlength(line) / 2
        draw.text((round(x), round(top + i * line_h)), line, font=font, fill=TEXT_COLOUR)


def _draw_row_title(
    grid: Image.Image,
    title: str,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    size: tuple[int, int],
    origin: tuple[int, int],
    pad: int,
) -> None:
    """The rows' title, turned 90 degrees (reading upwards), centred on the cells' height."""
    width, height = size
    strip = Image.new("RGB", (height, width), BACKGROUND)  # drawn horizontally, then turned
    _draw_lines(ImageDraw.Draw(strip), [title], font, height / 2, pad, _line_height(font))
    grid.paste(strip.rotate(90, expand=True), origin)
