"""Grids of small images (channels, heads, filters, top crops, cascades) laid out from their content.

A grid is drawn at full resolution (every tile whole, enlarged by whole factors so that small maps stay sharp) and
shown on its page at most `DISPLAY_WIDTH` pixels wide: a wider grid gets a thumbnail of that width. Its labels (a
row's layer, a column's head, a tile's channel) are drawn so that they are `LABEL_PX` pixels tall in that thumbnail,
whatever the grid's full size: a grid of 13 x 12 attention heads and one of 8 channels read alike.

`draw_grid` returns the picture and where everything went (`GridLayout`): the tiles' origin and pitch (for views
that point into the picture) and every tile's and label's box, which `reportgen.imaging` stores in the PNG (text
chunk ``reportgen-layout``) so that a test can check the layout as drawn.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .colors import to_uint8

DISPLAY_WIDTH = 704  # px: the widest a grid is shown (the style sheet's 44rem); wider grids get a thumbnail this wide
LABEL_PX = 12  # px: the labels' font size as shown
MIN_TILE = 48  # px: tiles are enlarged (whole factors) towards this side as shown, where the width allows
MIN_FULL = 24  # px: the least side of a tile in the full picture (a 4x4 map becomes 24x24)
ROW_LABEL_SHARE = 0.3  # the row labels take at most this share of the shown width; longer ones wrap
TEXT = (34, 34, 34)


@dataclass
class GridLayout:
    """A drawn grid: ``image`` (H, W, 3) uint8; ``scale`` the factor of its thumbnail (1.0: shown as is); the tiles'
    ``origin`` (x, y) of the first one, ``pitch`` (dy, dx) from one to the next and ``tile`` (h, w), in pixels of
    ``image``; ``boxes``: {"tiles": [[x0, y0, x1, y1], ...], "text": [...]} in the same pixels; ``font_px`` the
    labels' size in them."""

    image: np.ndarray
    scale: float
    origin: tuple
    pitch: tuple
    tile: tuple
    font_px: float
    boxes: dict = field(default_factory=dict)


@functools.lru_cache(maxsize=16)
def label_font(px: int):
    """DejaVu Sans at ``px`` pixels (the font matplotlib ships, so the charts and the grids share it)."""
    import matplotlib
    from PIL import ImageFont

    return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"), px)


def _width(font, text: str) -> float:
    return float(font.getlength(text))


def fit_lines(text: str, font, max_width: float) -> list[str]:
    """``text`` broken into lines at most ``max_width`` pixels wide: after dots and spaces (dotted layer names, as
    `reportgen.imaging.charts.wrap_label` breaks them), inside a part only where the part alone is too wide."""
    pieces: list[str] = []
    for part in re.findall(r"[^.\s]*[.\s]+|[^.\s]+$", str(text)):
        while _width(font, part.rstrip()) > max_width and len(part.rstrip()) > 1:  # too long for a line: cut
            k = len(part.rstrip()) - 1
            while k > 1 and _width(font, part[:k]) > max_width:
                k -= 1
            pieces.append(part[:k])
            part = part[k:]
        pieces.append(part)
    lines: list[str] = []
    line = ""
    for piece in pieces:
        if line.strip() and _width(font, (line + piece).rstrip()) > max_width:
            lines.append(line.rstrip())
            line = ""
        line += piece
    lines.append(line.rstrip())
    return [ln.strip() for ln in lines if ln.strip()] or [""]


def _layout_factor(h: int, w: int, cols: int, avail: float) -> int:
    """The whole factor that tiles of h x w are enlarged by: at least to `MIN_FULL`, towards `MIN_TILE` as long as
    ``cols`` of them fit ``avail`` pixels."""
    side = max(1, min(h, w))
    least = max(1, int(np.ceil(MIN_FULL / side)))
    want = max(least, int(round(MIN_TILE / side)))  # nearest: 42-px tiles stay, 7-px maps become 49
    while want > least and cols * (w * want + 1) > avail:
        want -= 1
    return want


def draw_grid(colored: np.ndarray, cols: int, row_labels: Optional[Sequence[str]] = None,
              col_labels: Optional[Sequence[str]] = None, tile_labels: Optional[Sequence[str]] = None,
              pad_value: float = 1.0) -> GridLayout:
    """Lay out ``colored`` tiles (n, h, w, 3) floats in [0, 1], in ``cols`` columns, reading order.

    ``row_labels``: one per row, left of it (e.g. the layer); ``col_labels``: one per column, above it (e.g. the
    head); ``tile_labels``: one per tile, above it (e.g. the channel). Labels wrap to the room they have (row labels
    at most `ROW_LABEL_SHARE` of the shown width; a part too long for its room breaks between characters); none
    is clipped or drawn smaller than `LABEL_PX` as shown."""
    from PIL import Image, ImageDraw

    tiles = np.asarray(colored, dtype=np.float64)
    n, h, w = tiles.shape[:3]
    cols = max(1, min(int(cols), n))
    rows = int(np.ceil(n / cols))
    row_labels = list(row_labels)[:rows] if row_labels is not None else None
    col_labels = list(col_labels)[:cols] if col_labels is not None else None
    tile_labels = list(tile_labels)[:n] if tile_labels is not None else None

    shown_font = label_font(LABEL_PX)
    gap_shown = 4.0
    label_w_shown = 0.0
    if row_labels:
        cap = ROW_LABEL_SHARE * DISPLAY_WIDTH
        label_w_shown = min(cap, max(max(_width(shown_font, ln) for ln in fit_lines(t, shown_font, cap))
                                     for t in row_labels)) + gap_shown
    avail = DISPLAY_WIDTH - label_w_shown
    factor = _layout_factor(h, w, cols, avail)
    th, tw = h * factor, w * factor
    scale = 1.0
    pad = 1
    for _ in range(2):  # the separators are ~1 px as shown: they depend on the scale
        tiles_w = cols * tw + (cols - 1) * pad
        scale = min(1.0, avail / tiles_w)
        pad = max(1, int(round(1.0 / scale)))
    font_px = max(LABEL_PX, int(round(LABEL_PX / scale)))
    font = label_font(font_px)
    line_h = int(np.ceil(font_px * 1.2))
    gap = int(np.ceil(gap_shown / scale))

    def lines_of(text: str, width: float) -> list[str]:
        return fit_lines(text, font, width)

    row_lines = [lines_of(t, ROW_LABEL_SHARE * DISPLAY_WIDTH / scale) for t in row_labels] if row_labels else None
    left = int(np.ceil(max(_width(font, ln) for ls in row_lines for ln in ls))) + gap if row_lines else 0
    room = max(tw - gap, tw / 2)  # a label's width over its tile: a gap to its neighbour's
    col_lines = [lines_of(t, room) for t in col_labels] if col_labels else None
    top = max(len(ls) for ls in col_lines) * line_h + gap // 2 if col_lines else 0
    tile_lines = [lines_of(t, room) for t in tile_labels] if tile_labels else None
    band = max(len(ls) for ls in tile_lines) * line_h if tile_lines else 0
    # a row is as tall as its tiles or its label's lines, whichever is taller (short tiles, long layer names)
    below = max(0, max(len(ls) for ls in row_lines) * line_h - (band + th)) if row_lines else 0
    pitch_y, pitch_x = band + th + below + pad + (gap // 2 if band else 0), tw + pad
    width = left + cols * pitch_x - pad
    height = top + rows * pitch_y - pad

    # bytes before enlarging: the same pixels as rounding the enlarged picture, for a fraction of the work
    tiles8 = to_uint8(tiles)
    canvas = np.full((height, width, 3), to_uint8(pad_value), dtype=np.uint8)
    tile_boxes = []
    for i in range(n):
        r, c = divmod(i, cols)
        x0, y0 = left + c * pitch_x, top + r * pitch_y + band
        t = tiles8[i]
        if factor > 1:
            t = np.repeat(np.repeat(t, factor, axis=0), factor, axis=1)
        canvas[y0:y0 + th, x0:x0 + tw] = t
        tile_boxes.append([x0, y0, x0 + tw, y0 + th])
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    text_boxes = []

    def put(x: float, y: float, lines: list[str], anchor: str = "l") -> None:
        """Lines from (x, y) down; ``anchor`` "l": left-aligned at x, "c": centred on x."""
        for k, ln in enumerate(lines):
            if not ln:
                continue
            lx = x - _width(font, ln) / 2 if anchor == "c" else x
            ly = y + k * line_h
            draw.text((lx, ly), ln, font=font, fill=TEXT)
            b = draw.textbbox((lx, ly), ln, font=font)
            text_boxes.append([int(b[0]), int(b[1]), int(b[2]), int(b[3])])

    if col_lines:
        for c, ls in enumerate(col_lines):
            put(left + c * pitch_x + tw / 2, top - gap // 2 - len(ls) * line_h, ls, "c")
    if row_lines:
        for r, ls in enumerate(row_lines):
            y = top + r * pitch_y + (band + th + below) / 2 - len(ls) * line_h / 2
            put(0, y, ls)
    if tile_lines:
        for i, ls in enumerate(tile_lines):
            r, c = divmod(i, cols)
            put(left + c * pitch_x + tw / 2, top + r * pitch_y + band - len(ls) * line_h, ls, "c")
    return GridLayout(image=np.asarray(img), scale=float(min(1.0, DISPLAY_WIDTH / width)),
                      origin=(left, top + band), pitch=(pitch_y, pitch_x), tile=(th, tw), font_px=float(font_px),
                      boxes={"tiles": tile_boxes, "text": text_boxes})
