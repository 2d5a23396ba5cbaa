"""The palette of a grid picture: which index means which colour.

Part of the pure ``render`` stage. A grid is drawn as one uint8 index per pixel into a table of at
most 256 colours, not as RGB triples: that is a third of the bytes to fill and copy, and the PNG is
written as a palette image with this exact table, which encodes 5-7x faster than RGB (no per-row
filter search, no quantisation step when saving).

The price is that colours are quantised. A colormap contributes :data:`LEVELS` (240) evenly spaced
entries of its 256-entry table, first and last kept exact, so a tile value ``t`` in [0, 1] is drawn
with level ``round(t * 239)``: neighbouring values closer than 1/239 of the range can share a
colour. The legend prints the exact numeric range, and captured values are never changed. Text
anti-aliasing is quantised to :data:`TEXT_LEVELS` steps between background and ink.

Layout (indices, the same for every grid; only the colormap levels depend on the colormap)::

    0   .. 239   colormap levels, low to high            LEVELS entries
    240          NaN/Inf, magenta (NAN_COLOR)            NAN_INDEX
    241 .. 248   text ramp: 241 = BACKGROUND,            BACKGROUND_INDEX .. TEXT_INDEX
                 248 = TEXT_COLOR, anti-aliased edges in between
    249 .. 255   stamp ramp: 249 = STAMP_FILL (red box), STAMP_FILL_INDEX .. STAMP_TEXT_INDEX
                 255 = STAMP_TEXT (white), edges in between
"""

from __future__ import annotations

import functools

import numpy as np

from featuremaps.render.colormap import NAN_COLOR, colormap_levels

__all__ = [
    "BACKGROUND",
    "BACKGROUND_INDEX",
    "LEVELS",
    "NAN_INDEX",
    "PALETTE_SIZE",
    "STAMP_FILL",
    "STAMP_FILL_INDEX",
    "STAMP_LEVELS",
    "STAMP_TEXT",
    "STAMP_TEXT_INDEX",
    "TEXT_COLOR",
    "TEXT_INDEX",
    "TEXT_LEVELS",
    "coverage_table",
    "grid_palette",
    "palette_pixels",
]

# Light grey: distinct from the near-white centre of RdBu_r, so an all-zero tile keeps its edge.
BACKGROUND: tuple[int, int, int] = (224, 224, 224)
TEXT_COLOR: tuple[int, int, int] = (20, 20, 20)
STAMP_FILL: tuple[int, int, int] = (200, 0, 0)
STAMP_TEXT: tuple[int, int, int] = (255, 255, 255)

# 240 + 1 + 8 + 7 = 256: every entry of an 8-bit palette is used. Eight text levels (six between
# background and ink) keep small anti-aliased glyphs readable; the stamp, white on red in capitals,
# reads as well with seven.
LEVELS = 240
TEXT_LEVELS = 8
STAMP_LEVELS = 7

NAN_INDEX = LEVELS
BACKGROUND_INDEX = NAN_INDEX + 1
TEXT_INDEX = BACKGROUND_INDEX + TEXT_LEVELS - 1
STAMP_FILL_INDEX = TEXT_INDEX + 1
STAMP_TEXT_INDEX = STAMP_FILL_INDEX + STAMP_LEVELS - 1
PALETTE_SIZE = STAMP_TEXT_INDEX + 1
if PALETTE_SIZE > 256:  # pragma: no cover - a layout error, caught on import
    raise RuntimeError(f"palette layout needs {PALETTE_SIZE} entries; a PNG palette holds 256")


def _ramp(start: tuple[int, int, int], end: tuple[int, int, int], n: int) -> np.ndarray:
    """``n`` colours from ``start`` to ``end`` (both exact), linear in the stored values as
    Pillow's own anti-aliasing blends them."""
    w = np.linspace(0.0, 1.0, n)[:, None]
    a, b = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    return np.rint(a + (b - a) * w).astype(np.uint8)


@functools.lru_cache(maxsize=64)
def grid_palette(cmap: str) -> np.ndarray:
    """The (PALETTE_SIZE, 3) uint8 palette of a grid drawn with colormap ``cmap`` (read-only)."""
    table = np.concatenate(
        [
            colormap_levels(cmap, LEVELS),
            np.asarray([NAN_COLOR], dtype=np.uint8),
            _ramp(BACKGROUND, TEXT_COLOR, TEXT_LEVELS),
            _ramp(STAMP_FILL, STAMP_TEXT, STAMP_LEVELS),
        ]
    )
    # Shared through the cache, like the colormap tables.
    table.setflags(write=False)
    return table


@functools.lru_cache(maxsize=4)
def coverage_table(first: int, levels: int) -> np.ndarray:
    """Map Pillow text coverage 0..255 to the ramp ``first .. first + levels - 1``: coverage
    ``c`` becomes step ``round(c * (levels - 1) / 255)`` (0 = the surface under the text)."""
    c = np.arange(256, dtype=np.int64)
    # Integer rounding, half up: the same steps on every machine.
    steps = (2 * c * (levels - 1) + 255) // 510
    table = (first + steps).astype(np.uint8)
    table.setflags(write=False)
    return table


def palette_pixels(indices: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """The (H, W, 3) uint8 RGB picture ``palette[indices]`` of ``indices`` (H, W) uint8."""
    # np.take along the first axis: about 4x faster than fancy indexing, same result.
    return np.take(np.asarray(palette, dtype=np.uint8), indices, axis=0)
