"""Text for pictures: the legend strip above a mosaic and the caption under each tile.

Part of the pure ``render`` stage. The mosaic and the colour bar are numpy; only the text is drawn
with Pillow, on an in-memory image, with the FreeType font bundled in Pillow (no system fonts, so
the same pixels on every machine with the same Pillow). The legend says what the colours mean:
the layer, which channels are shown and why, the scale, the colormap and the real numeric range.

Legend layout (pixels, top to bottom, all constants below)::

    LEGEND_PAD
    title row       name · module type · shape   [STAMP in a red box]
    selection row   "k of C channels shown (...)"
    scale row       "scale: ... · colormap ..."
    BAR_TOP_GAP
    colour bar      BAR_HEIGHT tall, BAR_WIDTH wide; note or NaN swatch to its right
    ticks/labels    vmin at the left end, 0 at the centre (symmetric), vmax at the right end
    LEGEND_PAD
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import ImageDraw, ImageFont

from featuremaps.render.colormap import NAN_COLOR

__all__ = [
    "BAR_HEIGHT",
    "BAR_WIDTH",
    "CAPTION_FONT_SIZE",
    "CAPTION_LINE_HEIGHT",
    "CAPTION_PAD",
    "LEGEND_FONT_SIZE",
    "LEGEND_HEIGHT",
    "LEGEND_MIN_WIDTH",
    "LegendContent",
    "draw_caption",
    "draw_legend_text",
    "legend_width",
    "paint_legend_graphics",
    "text_width",
]

LEGEND_FONT_SIZE = 11
CAPTION_FONT_SIZE = 10
# Tile captions: CAPTION_PAD above the first line, CAPTION_LINE_HEIGHT per line.
CAPTION_LINE_HEIGHT = 12
CAPTION_PAD = 2
LEGEND_PAD = 6
LINE_HEIGHT = 15
BAR_TOP_GAP = 3
BAR_WIDTH = 200
BAR_HEIGHT = 12
TICK_LENGTH = 3
# Space between the colour bar and the note or NaN swatch to its right.
SIDE_GAP = 12
SWATCH = 10
STAMP_GAP = 8
STAMP_PAD = 4
LEGEND_MIN_WIDTH = 320

_BAR_Y = LEGEND_PAD + 3 * LINE_HEIGHT + BAR_TOP_GAP
_LABEL_Y = _BAR_Y + BAR_HEIGHT + TICK_LENGTH + 1
LEGEND_HEIGHT = _LABEL_Y + LINE_HEIGHT + LEGEND_PAD

TEXT_COLOR = (20, 20, 20)
STAMP_FILL = (200, 0, 0)
STAMP_TEXT = (255, 255, 255)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@functools.lru_cache(maxsize=8)
def font(size: int) -> Font:
    """The bundled Pillow font at ``size`` pixels (cached: loading it costs ~1 ms)."""
    return ImageFont.load_default(size=size)


def text_width(text: str, size: int = LEGEND_FONT_SIZE) -> int:
    """Advance width in pixels of ``text`` in the bundled font."""
    return int(np.ceil(font(size).getlength(text)))


@dataclass(frozen=True)
class LegendContent:
    """Every string and number the legend shows; built by the grid, drawn here."""

    title: str
    stamp: str | None
    selection: str
    scale: str
    bar_low: str
    bar_mid: str | None
    bar_high: str
    bar_note: str | None
    nonfinite: int

    @property
    def nan_text(self) -> str | None:
        if self.nonfinite == 0:
            return None
        noun = "value" if self.nonfinite == 1 else "values"
        return f"NaN/Inf ({self.nonfinite} {noun})"


def legend_width(c: LegendContent) -> int:
    """Pixel width the legend needs: its widest row plus padding, at least LEGEND_MIN_WIDTH."""
    title = text_width(c.title)
    if c.stamp:
        title += STAMP_GAP + text_width(c.stamp) + 2 * STAMP_PAD
    side = 0
    if c.bar_note:
        side = max(side, text_width(c.bar_note))
    if c.nan_text:
        side = max(side, SWATCH + 4 + text_width(c.nan_text))
    bar_row = BAR_WIDTH + (SIDE_GAP + side if side else 0)
    rows = (title, text_width(c.selection), text_width(c.scale), bar_row)
    return max(LEGEND_MIN_WIDTH, max(rows) + 2 * LEGEND_PAD)


def paint_legend_graphics(
    canvas: np.ndarray, c: LegendContent, lut: np.ndarray, *, top: int = 0
) -> None:
    """Paint the colour bar, its ticks and the NaN swatch into ``canvas`` (numpy, in place)."""
    x0, y0 = LEGEND_PAD, top + _BAR_Y
    # The bar is the lookup table itself, left end = vmin colour, right end = vmax colour.
    pos = np.rint(np.linspace(0, len(lut) - 1, BAR_WIDTH)).astype(np.intp)
    canvas[y0 : y0 + BAR_HEIGHT, x0 : x0 + BAR_WIDTH] = np.asarray(lut)[pos][None, :, :]
    ty = y0 + BAR_HEIGHT
    ticks = [x0, x0 + BAR_WIDTH - 1]
    if c.bar_mid is not None:
        ticks.append(x0 + BAR_WIDTH // 2)
    for tx in ticks:
        canvas[ty : ty + TICK_LENGTH, tx] = TEXT_COLOR
    if c.nan_text:
        sx, sy = x0 + BAR_WIDTH + SIDE_GAP, top + _LABEL_Y + 2
        canvas[sy : sy + SWATCH, sx : sx + SWATCH] = NAN_COLOR


def draw_legend_text(draw: ImageDraw.ImageDraw, c: LegendContent, *, top: int = 0) -> None:
    """Draw the legend's text rows and tick labels onto a Pillow drawing surface."""
    f = font(LEGEND_FONT_SIZE)
    x0 = LEGEND_PAD
    y = top + LEGEND_PAD
    draw.text((x0, y), c.title, font=f, fill=TEXT_COLOR)
    if c.stamp:
        # A filled red box: a stamp such as "RANDOM WEIGHTS" must not be overlooked.
        sx = x0 + text_width(c.title) + STAMP_GAP
        sw = text_width(c.stamp) + 2 * STAMP_PAD
        draw.rectangle((sx, y - 1, sx + sw - 1, y + LINE_HEIGHT - 2), fill=STAMP_FILL)
        draw.text((sx + STAMP_PAD, y), c.stamp, font=f, fill=STAMP_TEXT)
    draw.text((x0, y + LINE_HEIGHT), c.selection, font=f, fill=TEXT_COLOR)
    draw.text((x0, y + 2 * LINE_HEIGHT), c.scale, font=f, fill=TEXT_COLOR)

    ly = top + _LABEL_Y
    draw.text((x0, ly), c.bar_low, font=f, fill=TEXT_COLOR)
    draw.text((x0 + BAR_WIDTH, ly), c.bar_high, font=f, fill=TEXT_COLOR, anchor="ra")
    if c.bar_mid is not None:
        draw.text((x0 + BAR_WIDTH // 2, ly), c.bar_mid, font=f, fill=TEXT_COLOR, anchor="ma")
    side_x = x0 + BAR_WIDTH + SIDE_GAP
    if c.bar_note:
        draw.text((side_x, top + _BAR_Y - 1), c.bar_note, font=f, fill=TEXT_COLOR)
    if c.nan_text:
        draw.text((side_x + SWATCH + 4, ly), c.nan_text, font=f, fill=TEXT_COLOR)


def draw_caption(draw: ImageDraw.ImageDraw, xy: tuple[int, int], lines: tuple[str, ...]) -> None:
    """Draw a tile caption (one or two short lines) with its top-left corner at ``xy``."""
    f = font(CAPTION_FONT_SIZE)
    x, y = xy
    for i, line in enumerate(lines):
        draw.text((x, y + i * CAPTION_LINE_HEIGHT), line, font=f, fill=TEXT_COLOR)
