"""Text for pictures: the legend strip above a mosaic and the caption under each tile.

Part of the pure ``render`` stage. Everything is painted as palette indices into the grid's uint8
index canvas (see ``featuremaps.render.palette``). Text is rasterised by Pillow, with the FreeType
font bundled in Pillow (no system fonts, so the same pixels on every machine with the same
Pillow), glyph by glyph (:mod:`featuremaps.render.glyphs` sets each string from them, as Pillow
would) into an in-memory coverage mask per string; the coverage is quantised to the text ramp
of the palette and written into the canvas. Masks are cached per string: captions such as "#0"
and legend rows such as "scale: per layer · ..." recur in every layer. The legend says what the
colours mean: the layer, which channels are shown and why, the scale, the colormap and the real
numeric range.

Legend layout (pixels, top to bottom, all constants below)::

    LEGEND_PAD
    title row       name · module type · shape   [STAMP in a red box]
    selection row   "k of C channels shown (...)"
    scale row       "scale: ... · colormap ..."
    BAR_TOP_GAP
    colour bar      BAR_HEIGHT tall, BAR_WIDTH wide, an end pointed when values were clipped
                    there; the note (or the clipped counts) and the NaN swatch to its right
    ticks/labels    vmin at the left end, 0 at the centre (symmetric), vmax at the right end
    LEGEND_PAD

A picture without a legend (an overlay on the input) gets its stamp in a band under it
(:func:`stamp_band`), so its own pixels keep their coordinates.

The colour bar samples the tiles' colour levels evenly, vmin (left) to vmax (right), both ends
exact.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from featuremaps.render.glyphs import advance, coverage
from featuremaps.render.palette import (
    BACKGROUND_INDEX,
    LEVELS,
    NAN_INDEX,
    STAMP_FILL_INDEX,
    STAMP_LEVELS,
    TEXT_INDEX,
    TEXT_LEVELS,
    coverage_table,
    grid_palette,
    palette_pixels,
)

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
    "legend_width",
    "paint_caption",
    "paint_legend",
    "paint_text",
    "stamp_band",
    "text_band",
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


@functools.lru_cache(maxsize=1024)
def text_width(text: str, size: int = LEGEND_FONT_SIZE) -> int:
    """Advance width in pixels of ``text`` in the bundled font (cached, like the masks)."""
    return int(np.ceil(advance(text, size)))


@functools.lru_cache(maxsize=2048)
def _coverage(text: str, size: int, anchor: str) -> tuple[np.ndarray, int, int]:
    """The anti-aliased coverage (0..255) of ``text`` and its offset from the anchor point, as
    ``ImageDraw.text(xy, text, anchor=anchor)`` draws it at an integer ``xy``
    (:func:`featuremaps.render.glyphs.coverage`), cached so it can be placed anywhere."""
    cov, left, top = coverage(text, size, anchor)
    cov.setflags(write=False)
    return cov, left, top


def paint_text(
    canvas: np.ndarray,
    xy: tuple[int, int],
    text: str,
    size: int,
    *,
    anchor: str = "la",
    on_stamp: bool = False,
) -> None:
    """Write ``text`` into the index ``canvas`` (H, W) uint8 at the Pillow anchor point ``xy``.

    The text is drawn over the background (text ramp) or, with ``on_stamp``, over the stamp box
    (stamp ramp); pixels its glyphs do not reach keep their index, and it is clipped to ``canvas``.
    """
    cov, dx, dy = _coverage(text, size, anchor)
    x, y = xy[0] + dx, xy[1] + dy
    h, w = cov.shape
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, canvas.shape[1]), min(y + h, canvas.shape[0])
    if x0 >= x1 or y0 >= y1:
        return
    first, levels = BACKGROUND_INDEX, TEXT_LEVELS
    if on_stamp:
        first, levels = STAMP_FILL_INDEX, STAMP_LEVELS
    steps = np.take(coverage_table(first, levels), cov[y0 - y : y1 - y, x0 - x : x1 - x])
    np.copyto(canvas[y0:y1, x0:x1], steps, where=steps != first)


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
    # Cells of the shown tiles outside the colour range (a fixed scale), drawn in the end colours;
    # an end with clipped cells is drawn pointed, and the count is printed beside the bar.
    clipped_low: int = 0
    clipped_high: int = 0

    @property
    def side_note(self) -> str | None:
        """The text to the right of the colour bar: the bar note, else the clipped counts."""
        if self.bar_note or not (self.clipped_low or self.clipped_high):
            return self.bar_note
        parts = []
        if self.clipped_low:
            parts.append(f"{self.clipped_low} below {self.bar_low}")
        if self.clipped_high:
            parts.append(f"{self.clipped_high} above {self.bar_high}")
        cells = "cell" if (self.clipped_low or self.clipped_high) == 1 else "cells"
        first, *rest = parts
        count, where = first.split(" ", 1)
        return f"clipped: {', '.join([f'{count} {cells} {where}', *rest])}"

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
    if c.side_note:
        side = max(side, text_width(c.side_note))
    if c.nan_text:
        side = max(side, SWATCH + 4 + text_width(c.nan_text))
    bar_row = BAR_WIDTH + (SIDE_GAP + side if side else 0)
    rows = (title, text_width(c.selection), text_width(c.scale), bar_row)
    return max(LEGEND_MIN_WIDTH, max(rows) + 2 * LEGEND_PAD)


# Evenly spaced colour levels, left (vmin) to right (vmax), both ends exact.
_BAR = np.rint(np.linspace(0, LEVELS - 1, BAR_WIDTH)).astype(np.uint8)
POINT_WIDTH = 8
# The background pixels that make the bar's left end a point: column j keeps the rows within
# (j + 1) / POINT_WIDTH of the half-height around the middle (mirrored for the right end).
_rows = np.abs(np.arange(BAR_HEIGHT) - (BAR_HEIGHT - 1) / 2)[:, None]
_cols = np.arange(BAR_WIDTH)[None, :]
_POINT = (_cols < POINT_WIDTH) & (_rows > (_cols + 1) / POINT_WIDTH * BAR_HEIGHT / 2)


def paint_legend(canvas: np.ndarray, c: LegendContent, *, top: int = 0) -> None:
    """Paint the whole legend (text, colour bar, ticks, NaN swatch, stamp) into the index canvas
    (H, W) uint8, whose rows ``top .. top + LEGEND_HEIGHT`` hold the background index."""
    x0 = LEGEND_PAD
    by = top + _BAR_Y
    canvas[by : by + BAR_HEIGHT, x0 : x0 + BAR_WIDTH] = _BAR[None, :]
    # A clipped end is pointed (like matplotlib's "extend" colour bars): values lie beyond it.
    bar = canvas[by : by + BAR_HEIGHT, x0 : x0 + BAR_WIDTH]
    if c.clipped_low:
        bar[_POINT] = BACKGROUND_INDEX
    if c.clipped_high:
        bar[_POINT[:, ::-1]] = BACKGROUND_INDEX
    ty = by + BAR_HEIGHT
    ticks = [x0, x0 + BAR_WIDTH - 1]
    if c.bar_mid is not None:
        ticks.append(x0 + BAR_WIDTH // 2)
    for tx in ticks:
        canvas[ty : ty + TICK_LENGTH, tx] = TEXT_INDEX
    ly = top + _LABEL_Y
    side_x = x0 + BAR_WIDTH + SIDE_GAP
    if c.nan_text:
        sy = ly + 2
        canvas[sy : sy + SWATCH, side_x : side_x + SWATCH] = NAN_INDEX

    size = LEGEND_FONT_SIZE
    y = top + LEGEND_PAD
    paint_text(canvas, (x0, y), c.title, size)
    if c.stamp:
        # A filled red box: a stamp such as "RANDOM WEIGHTS" must not be overlooked.
        sx = x0 + text_width(c.title) + STAMP_GAP
        sw = text_width(c.stamp) + 2 * STAMP_PAD
        canvas[y - 1 : y + LINE_HEIGHT - 1, sx : sx + sw] = STAMP_FILL_INDEX
        paint_text(canvas, (sx + STAMP_PAD, y), c.stamp, size, on_stamp=True)
    paint_text(canvas, (x0, y + LINE_HEIGHT), c.selection, size)
    paint_text(canvas, (x0, y + 2 * LINE_HEIGHT), c.scale, size)

    paint_text(canvas, (x0, ly), c.bar_low, size)
    paint_text(canvas, (x0 + BAR_WIDTH, ly), c.bar_high, size, anchor="ra")
    if c.bar_mid is not None:
        paint_text(canvas, (x0 + BAR_WIDTH // 2, ly), c.bar_mid, size, anchor="ma")
    if c.side_note:
        paint_text(canvas, (side_x, top + _BAR_Y - 1), c.side_note, size)
    if c.nan_text:
        paint_text(canvas, (side_x + SWATCH + 4, ly), c.nan_text, size)


def paint_caption(canvas: np.ndarray, xy: tuple[int, int], lines: tuple[str, ...]) -> None:
    """Paint a tile caption (one or two short lines) with its top-left corner at ``xy``."""
    x, y = xy
    for i, line in enumerate(lines):
        paint_text(canvas, (x, y + i * CAPTION_LINE_HEIGHT), line, CAPTION_FONT_SIZE)


def text_band(pixels: np.ndarray, lines: list[str], stamp: str | None = None) -> np.ndarray:
    """``pixels`` (H, W, 3) uint8 with a band under it: ``stamp`` (if any) in the legend's red
    box, then ``lines`` of text, one per row. The picture stays at the top left (a pixel keeps
    its coordinates); the result is widened to the right when a line is wider than the picture.
    """
    rows = len(lines) + (1 if stamp else 0)
    widths = [text_width(line) for line in lines]
    if stamp:
        widths.append(text_width(stamp) + 2 * STAMP_PAD)
    band = np.full(
        (
            rows * LINE_HEIGHT + 2 * LEGEND_PAD,
            max([pixels.shape[1], *(w + 2 * LEGEND_PAD for w in widths)]),
        ),
        BACKGROUND_INDEX,
        dtype=np.uint8,
    )
    y = LEGEND_PAD
    if stamp:
        box = text_width(stamp) + 2 * STAMP_PAD
        band[y - 1 : y + LINE_HEIGHT - 1, LEGEND_PAD : LEGEND_PAD + box] = STAMP_FILL_INDEX
        paint_text(band, (LEGEND_PAD + STAMP_PAD, y), stamp, LEGEND_FONT_SIZE, on_stamp=True)
        y += LINE_HEIGHT
    for line in lines:
        paint_text(band, (LEGEND_PAD, y), line, LEGEND_FONT_SIZE)
        y += LINE_HEIGHT
    rgb = palette_pixels(band, grid_palette("viridis"))
    h, w = pixels.shape[:2]
    out = np.empty((h + band.shape[0], band.shape[1], 3), dtype=np.uint8)
    out[:h] = rgb[0, 0]  # the background, where a narrow picture leaves room
    out[:h, :w] = pixels
    out[h:] = rgb
    return out


def stamp_band(pixels: np.ndarray, stamp: str) -> np.ndarray:
    """``pixels`` (H, W, 3) uint8 with a band under it holding ``stamp`` in the legend's red box.

    The picture stays where it was (top left), so a pixel keeps its coordinates; the result is
    widened to the right when the stamp is wider than the picture.
    """
    return text_band(pixels, [], stamp)
