"""Panels: several rendered pictures and lines of text put together into one picture.

Part of the pure ``render`` stage. New picture kinds (tokens, vectors, signals, volumes) are made
of parts that are each drawn the usual way (a channel mosaic with its legend, bar strips, a heat
map) and then stacked here, on the grids' background, into one RGB picture. Nothing is resampled:
panels are placed pixel for pixel.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from featuremaps.render.legend import LEGEND_FONT_SIZE, paint_text, text_width
from featuremaps.render.palette import BACKGROUND, BACKGROUND_INDEX, grid_palette, palette_pixels

__all__ = ["LINE", "Composite", "side_by_side", "stacked", "text_block"]

LINE = 15  # pixels per text line
PAD = 6


@dataclass(frozen=True, eq=False)
class Composite:
    """A picture made of panels: ``pixels`` (H, W, 3) uint8 RGB (read-only), and notes."""

    rgb: np.ndarray
    warnings: tuple[str, ...] = ()

    @functools.cached_property
    def pixels(self) -> np.ndarray:
        out = np.ascontiguousarray(self.rgb)
        out.setflags(write=False)
        return out

    def to_png(self) -> bytes:
        from featuremaps.render.encode import encode_png

        return encode_png(self.pixels)

    def _repr_png_(self) -> bytes:
        return self.to_png()


def text_block(lines: Sequence[str], width: int | None = None) -> np.ndarray:
    """Lines of text on the background as (H, W, 3) uint8 (``width``: at least the text's)."""
    need = max((text_width(line) for line in lines), default=0) + 2 * PAD
    w = max(width or 0, need)
    canvas = np.full((len(lines) * LINE + 2 * PAD, w), BACKGROUND_INDEX, dtype=np.uint8)
    for i, line in enumerate(lines):
        paint_text(canvas, (PAD, PAD + i * LINE), line, LEGEND_FONT_SIZE)
    return palette_pixels(canvas, grid_palette("viridis"))  # the text ramp is the same in all


def _canvas(height: int, width: int) -> np.ndarray:
    """An (H, W, 3) uint8 picture of the background colour: one row filled, then copied down
    (filling every pixel from a 3-value colour broadcast is many times slower)."""
    out = np.empty((height, width, 3), dtype=np.uint8)
    if height and width:
        out[0] = np.asarray(BACKGROUND, dtype=np.uint8)
        out[1:] = out[0]
    return out


def stacked(panels: Sequence[np.ndarray], gap: int = PAD) -> np.ndarray:
    """Panels top to bottom, left-aligned, ``gap`` pixels apart."""
    width = max(p.shape[1] for p in panels)
    out = _canvas(sum(p.shape[0] for p in panels) + gap * (len(panels) - 1), width)
    y = 0
    for panel in panels:
        out[y : y + panel.shape[0], : panel.shape[1]] = panel
        y += panel.shape[0] + gap
    return out


def side_by_side(panels: Sequence[np.ndarray], gap: int = 2 * PAD) -> np.ndarray:
    """Panels left to right, top-aligned, ``gap`` pixels apart."""
    height = max(p.shape[0] for p in panels)
    out = _canvas(height, sum(p.shape[1] for p in panels) + gap * (len(panels) - 1))
    x = 0
    for panel in panels:
        out[: panel.shape[0], x : x + panel.shape[1]] = panel
        x += panel.shape[1] + gap
    return out
