"""Writers: map pyramids as files that open in every viewer, streamed tile by tile.

The last stage of a slide run (pyramids → **writers** → io). Paths come from
:class:`featuremaps.io.OutputFolder` (inside its staging folder); tifffile writes the TIFFs from
iterators of tiles, so no level is ever held whole. What opens where was measured:

* **float32 OME-TIFF** (for analysis): ``CYX`` with at least two channels (single-channel float
  ``YX`` OME files are rejected by some readers), reduced levels as SubIFDs (the OME pyramid
  convention Bio-Formats/QuPath read; OpenSlide reads only level 0 of it). Pixel size in both the
  TIFF resolution tags (OpenSlide, tiffslide) and OME-XML ``PhysicalSizeX/Y`` (Bio-Formats,
  QuPath); the map's top-left corner, relative to the slide level's, in OME-XML
  ``Plane PositionX/Y`` (so a viewer that honours it places every cell exactly).
* **RGB page-pyramid TIFF** (to look at): one colourised map, levels as further pages marked
  reduced (NewSubfileType 1), which OpenSlide, tifffile and tiffslide all read as levels.
* **Deep Zoom** (DZI) tiles for the OpenSeadragon page: PNG with transparency where nothing was
  computed, JPEG for the slide itself (encoded by :func:`featuremaps.render.encode.encode_tile`).

Cell ``j`` of a map sits at read-level pixel ``j·S + O`` (centre; see
:mod:`featuremaps.slide.plan`); a viewer that only knows the pixel size puts map pixel ``j`` at
``j·S + (S − 1)/2``, off by ``(S − 1)/2 − O`` pixels, which every file records.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featuremaps.manifest import MARK_KEY
from featuremaps.render.scaling import NO_FINITE_TEXT, ValueRange, format_ends
from featuremaps.slide.pyramid import PyramidLevel, halve

__all__ = [
    "TIFF_TILE",
    "deep_zoom_levels",
    "legend_pixels",
    "ome_xml_extra",
    "write_ome_tiff",
    "write_rgb_tiff",
]

TIFF_TILE = 256
DZI_TILE = 256

Colour = Callable[[np.ndarray], np.ndarray]  # (h, w, k) float -> (h, w, 3|4) uint8


def _resolution(mpp: tuple[float, float]) -> tuple[float, float]:
    """Pixels per centimetre for the TIFF resolution tags (x, y)."""
    return 1e4 / mpp[1], 1e4 / mpp[0]


def _blocks(
    level: PyramidLevel, size: int, convert: Callable[[np.ndarray], np.ndarray]
) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(y0, x0, block)`` for the ``size``-square blocks of ``convert(level)`` in row order
    (edge blocks are smaller); each band of ``size`` rows is read and converted once."""
    h, w, _ = level.shape
    for y0 in range(0, h, size):
        y1 = min(y0 + size, h)
        band = convert(level.read((y0, y1), (0, w)))
        for x0 in range(0, w, size):
            x1 = min(x0 + size, w)
            yield y0, x0, band[:, x0:x1]


def _tiles(
    level: PyramidLevel, plane: Callable[[np.ndarray], np.ndarray], fill: float | int
) -> Iterator[np.ndarray]:
    """Tiles of one plane of ``level`` in TIFF order, edge tiles padded with ``fill``."""
    for _, _, block in _blocks(level, TIFF_TILE, plane):
        tile = np.full((TIFF_TILE, TIFF_TILE, *block.shape[2:]), fill, dtype=block.dtype)
        tile[: block.shape[0], : block.shape[1]] = block
        yield tile


def _plane(c: int) -> Callable[[np.ndarray], np.ndarray]:
    def plane(block: np.ndarray) -> np.ndarray:
        out: np.ndarray = block[:, :, c]
        return out

    return plane


def write_ome_tiff(
    path: Path,
    levels: Sequence[PyramidLevel],
    channel_names: Sequence[str],
    mpp: tuple[float, float],
    origin_um: tuple[float, float],
    description: str,
    mark: str | None = None,
) -> None:
    """A float32 ``CYX`` OME-TIFF with SubIFD levels; ``mpp`` is µm per map cell (y, x) at
    level 0; ``origin_um`` the position (y, x) in µm of the map's top-left corner relative to the
    slide level's top-left corner. A ``mark`` (random weights) leads the image name, is the
    OME-XML image description and a map annotation under :data:`MARK_KEY`, so Bio-Formats and
    QuPath show it."""
    import tifffile

    base = levels[0]
    h, w, k = base.shape
    metadata: dict[str, Any] = {
        "axes": "CYX",
        "Name": _with_mark(description, mark),
        "PhysicalSizeX": mpp[1],
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": mpp[0],
        "PhysicalSizeYUnit": "µm",
        "Channel": {"Name": list(channel_names)},
        "Plane": {
            "PositionX": [origin_um[1]] * k,
            "PositionXUnit": ["µm"] * k,
            "PositionY": [origin_um[0]] * k,
            "PositionYUnit": ["µm"] * k,
        },
    }
    if mark:
        metadata["Description"] = mark
        metadata["MapAnnotation"] = {MARK_KEY: mark}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        for i, level in enumerate(levels):
            lh, lw, _ = level.shape
            planes = (tile for c in range(k) for tile in _tiles(level, _plane(c), np.nan))
            scale = level.scale
            tif.write(
                planes,
                shape=(k, lh, lw),
                dtype=np.float32,
                tile=(TIFF_TILE, TIFF_TILE),
                compression="zlib",
                predictor=True,
                photometric="minisblack",
                resolution=_resolution((mpp[0] * scale, mpp[1] * scale)),
                resolutionunit="CENTIMETER",
                subifds=len(levels) - 1 if i == 0 else None,
                subfiletype=1 if i else 0,
                metadata=metadata if i == 0 else None,
            )
    del h, w


def _rgb(colour: Colour) -> Callable[[np.ndarray], np.ndarray]:
    def rgb(block: np.ndarray) -> np.ndarray:
        out: np.ndarray = colour(block)[:, :, :3]
        return out

    return rgb


def write_rgb_tiff(
    path: Path,
    levels: Sequence[PyramidLevel],
    colour: Colour,
    mpp: tuple[float, float],
    description: str,
    mark: str | None = None,
) -> None:
    """An RGB page-pyramid TIFF of ``colour(level block)``; ``mpp`` per cell at level 0; a
    ``mark`` (random weights) leads the first page's description."""
    import tifffile

    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for i, level in enumerate(levels):
            lh, lw, _ = level.shape
            tif.write(
                _tiles(level, _rgb(colour), 255),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(TIFF_TILE, TIFF_TILE),
                compression="zlib",
                photometric="rgb",
                resolution=_resolution((mpp[0] * level.scale, mpp[1] * level.scale)),
                resolutionunit="CENTIMETER",
                subfiletype=1 if i else 0,
                description=_with_mark(description, mark) if i == 0 else None,
                metadata=None,
            )


def _with_mark(description: str, mark: str | None) -> str:
    return f"{mark}: {description}" if mark else description


def ome_xml_extra(offset_px: tuple[float, float]) -> str:
    """A sentence on placement for descriptions (the offset of the first cell's centre)."""
    return (
        f"cell (0, 0) is centred on read-level pixel (y={offset_px[0]:g}, x={offset_px[1]:g}); "
        "cell (r, c) on (r*S + y, c*S + x)"
    )


def deep_zoom_levels(width: int, height: int) -> int:
    """Number of Deep Zoom levels for an image (level 0 is 1 x 1, the last is full size)."""
    return math.ceil(math.log2(max(width, height, 1))) + 1


def deep_zoom_tiles(
    levels: Sequence[PyramidLevel], colour: Colour
) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """``(dzi level, col, row, pixels)`` for every Deep Zoom tile of the pyramid ``levels``
    (factor-2 levels, full size first), continuing below the smallest level in memory."""
    h, w, _ = levels[0].shape
    top = deep_zoom_levels(w, h) - 1
    for i, level in enumerate(levels):
        yield from _level_tiles(top - i, level, colour)
    small = levels[-1].read((0, levels[-1].shape[0]), (0, levels[-1].shape[1]))
    for k in range(top - len(levels), -1, -1):
        small = halve(small)
        yield from _level_tiles(k, _in_memory(small), colour)


def _in_memory(data: np.ndarray) -> PyramidLevel:
    def read(rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        block: np.ndarray = data[rows[0] : rows[1], cols[0] : cols[1]]
        return block

    h, w, k = data.shape
    return PyramidLevel((h, w, k), 0, read)


def _level_tiles(
    dzi_level: int, level: PyramidLevel, colour: Colour
) -> Iterator[tuple[int, int, int, np.ndarray]]:
    for y0, x0, block in _blocks(level, DZI_TILE, colour):
        yield dzi_level, x0 // DZI_TILE, y0 // DZI_TILE, block


def dzi_xml(width: int, height: int, fmt: str, mark: str | None = None) -> str:
    """The ``.dzi`` descriptor of an image (tiles of :data:`DZI_TILE`, no overlap); a ``mark``
    (random weights) is an XML comment in it."""
    # "--" may not occur inside an XML comment.
    comment = f"<!-- {mark.replace('--', '- -')} -->\n" if mark else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        + comment
        + '<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" '
        f'Format="{fmt}" Overlap="0" TileSize="{DZI_TILE}">\n'
        f'  <Size Width="{width}" Height="{height}"/>\n'
        "</Image>\n"
    )


def legend_pixels(
    title: str,
    note: str,
    value_range: ValueRange,
    cmap: str,
    stamp: str | None = None,
    *,
    range_note: str | None = None,
) -> np.ndarray:
    """The legend drawn beside a channel's RGB pyramid: title (and ``stamp`` in a red box, for
    random weights), a note, the scale and colour bar with the real range (the grid legend's
    layout and font). ``µ`` is written ``u``: the bundled font has no glyph for it.
    ``range_note`` says what the grids say of a range: no finite values
    (:data:`~featuremaps.render.scaling.NO_FINITE_TEXT`, ends "n/a") or constant."""
    from featuremaps.render.legend import LEGEND_HEIGHT, LegendContent, legend_width, paint_legend
    from featuremaps.render.palette import BACKGROUND_INDEX, grid_palette, palette_pixels

    if range_note == NO_FINITE_TEXT:
        low, high = "n/a", "n/a"
    elif range_note is None:
        low, high = format_ends(value_range.vmin, value_range.vmax)
    else:
        low, high = f"{value_range.vmin:.4g}", f"{value_range.vmax:.4g}"
    background = "white: not computed (background)"

    content = LegendContent(
        title=title.replace("µ", "u"),
        stamp=stamp,
        selection=note.replace("µ", "u"),
        scale=f"scale: this channel over the whole slide · colormap {cmap}"
        + (", centred on 0" if value_range.symmetric else ""),
        bar_low=low,
        bar_mid="0" if value_range.symmetric and range_note != NO_FINITE_TEXT else None,
        bar_high=high,
        bar_note=background if range_note is None else f"{range_note}; {background}",
        nonfinite=0,
    )
    canvas = np.full((LEGEND_HEIGHT, legend_width(content)), BACKGROUND_INDEX, dtype=np.uint8)
    paint_legend(canvas, content)
    pixels: np.ndarray = palette_pixels(canvas, grid_palette(cmap))
    return pixels
