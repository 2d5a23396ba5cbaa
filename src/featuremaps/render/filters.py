"""The filter sheet: one layer's :class:`~featuremaps.filters.Filters` in, one picture out.

Part of the pure ``render`` stage (no files, no matplotlib figures). Top to bottom: the grids'
legend (layer, "k of C filters shown", scale, colour bar with the real range), a line or two
saying what the picture shows, then either filter tiles (kinds "rgb", "kernels", "rows"), each
captioned with its output channel, or one heat map with a row per filter (kinds "matrix",
"norms").

Scales (one per sheet, so filters are comparable):

* "rgb": each of a filter's three input channels becomes one colour channel of its patch, on one
  symmetric scale over the whole layer: ``m = max|w|`` over every filter, and a weight ``w`` is
  drawn at grey level ``round((w / m + 1) / 2 · 254)`` of 0..254, so 0 is mid-grey 127 exactly
  and ``±m`` are 254 and 0. A pixel with a NaN/Inf weight in any colour channel is magenta.
* "kernels", "rows", "matrix": the weights on the grids' colour rules
  (:func:`featuremaps.render.grid.shared_scale` on the layer's range: signed weights centred on
  zero, ``±max|w|`` over the whole layer, on RdBu_r) and palette (240 levels).
* "norms": the kernel norms on the same rules (unsigned: min to max, viridis).

Geometry: tiles are enlarged by whole factors only (nearest neighbour), the grids' way. A heat
map with more than :data:`MAX_SIDE` rows or columns is reduced by whole factors ``fy × fx`` so
that it fits, each pixel the value of largest magnitude in its block with its sign kept (for
norms: the block's largest norm); the legend states the factors. Tile sheets show the first
``max_filters`` filters (the legend says "k of C filters shown"). :attr:`FilterSheet.layout`
says where each filter is drawn, so the report can show one filter beside its channel's map.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from featuremaps._errors import OptionError
from featuremaps.render.colormap import (
    DEFAULT_CMAP,
    DEFAULT_DIVERGING_CMAP,
    NAN_COLOR,
    level_indices,
)
from featuremaps.render.grid import GridOptions, shared_scale
from featuremaps.render.legend import (
    CAPTION_LINE_HEIGHT,
    CAPTION_PAD,
    LEGEND_FONT_SIZE,
    LEGEND_HEIGHT,
    LegendContent,
    legend_width,
    paint_caption,
    paint_legend,
    paint_text,
    text_width,
)
from featuremaps.render.palette import (
    BACKGROUND_INDEX,
    LEVELS,
    NAN_INDEX,
    grid_palette,
    palette_pixels,
)
from featuremaps.render.scaling import ValueRange, format_ends, normalize

if TYPE_CHECKING:  # annotations only: drawing reads the arrays and needs no torch
    from featuremaps.filters import Filters

__all__ = [
    "GREY_LEVELS",
    "MAX_SIDE",
    "FilterSheet",
    "grey_levels",
    "make_filter_sheet",
]

GAP = 4  # pixels between tiles
KERNEL_GAP = 2  # pixels between the kernels of one filter
MIN_CELL_WIDTH = 40  # room for the caption "#511"
MIN_TILE = 48  # a filter tile is enlarged to at least this many pixels on its longer side
MIN_KERNEL = 12  # ... and each kernel of a mosaic to at least this many
MIN_MAP_SIDE = 96  # a heat map's rows and columns are enlarged to at least this many pixels
MAX_MAP_FACTOR = 16  # ... by at most this factor
MAX_SIDE = 1024  # a heat map keeps at most this many rows and columns of values
BAND_VALUES = 1 << 22  # values reduced at a time (16 MB of float32)
NOTE_LINE = 15
NOTE_PAD = 4
#: Grey levels of an "rgb" sheet: 0..254, an odd count so that 0 has the middle level 127.
GREY_LEVELS = 255


@dataclass(frozen=True, eq=False)
class FilterSheet:
    """A rendered filter sheet and the facts needed to read it.

    ``rgb`` (H, W, 3) uint8 is the picture (``pixels`` the same, read-only). ``shown`` are the
    filters (output channels) drawn, ``total`` the layer's count. ``value_range`` is the colour
    scale: for signed kinds ``(-m, m)`` with ``m = max|w|`` over the whole layer. ``layout`` says
    where each shown filter is in the picture (see :meth:`box`), as plain JSON values.
    """

    rgb: np.ndarray
    kind: str
    shown: tuple[int, ...]
    total: int
    value_range: ValueRange
    cmap: str
    legend: str
    layout: dict[str, Any]
    warnings: tuple[str, ...] = field(default=())
    # The same picture as palette indices (every kind but "rgb"): encoded as such, it is exact,
    # smaller and several times faster to write than RGB.
    indices: np.ndarray | None = None
    palette: np.ndarray | None = None

    @functools.cached_property
    def pixels(self) -> np.ndarray:
        out = np.ascontiguousarray(self.rgb)
        out.setflags(write=False)
        return out

    def box(self, channel: int) -> tuple[int, int, int, int] | None:
        """``(y, x, height, width)`` of filter ``channel`` in the picture (None: not drawn)."""
        lay = self.layout
        if lay["type"] == "rows":
            if not 0 <= channel < self.total:
                return None
            row = channel // lay["per_row"]
            return (lay["top"] + row * lay["row_height"], lay["left"], lay["row_height"],
                    lay["width"])  # fmt: skip
        if channel not in self.shown:
            return None
        i = self.shown.index(channel)
        row, col = divmod(i, lay["columns"])
        y = lay["top"] + row * lay["step_y"]
        x = lay["left"] + col * lay["step_x"]
        return (y, x, lay["height"], lay["width"])

    def to_png(self) -> bytes:
        from featuremaps.render.encode import encode_indexed_png, encode_png

        if self.indices is not None and self.palette is not None:
            return encode_indexed_png(self.indices, self.palette)
        return encode_png(self.pixels)

    def _repr_png_(self) -> bytes:
        return self.to_png()

    def __repr__(self) -> str:
        h, w = self.rgb.shape[:2]
        return (
            f"FilterSheet({w}x{h} px, {self.kind}, {len(self.shown)} of {self.total} filters, "
            f"{self.cmap})"
        )


def grey_levels(values: np.ndarray, r: ValueRange) -> np.ndarray:
    """Grey levels 0..254 (uint8) of weights on the symmetric range ``r``: 0 → 127 exactly,
    ``r.vmin`` → 0, ``r.vmax`` → 254; NaN/Inf → 255 (painted magenta by the sheet)."""
    t = normalize(np.asarray(values, dtype=np.float32), r)
    return level_indices(t, GREY_LEVELS, GREY_LEVELS)


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _reduce(values: np.ndarray, fy: int, fx: int, signed: bool) -> np.ndarray:
    """Blocks of ``fy × fx`` values → one value each: the largest |x| with its sign (signed) or
    the largest value; a block with a NaN/Inf value is NaN. Worked through in bands of about
    :data:`BAND_VALUES` values, so a 100-million-weight matrix needs no copies of its size."""
    h, w = values.shape
    out_h, out_w = -(-h // fy), -(-w // fx)
    out = np.empty((out_h, out_w), dtype=np.float32)
    band = max(1, BAND_VALUES // (fy * out_w * fx))  # output rows per band
    for r0 in range(0, out_h, band):
        r1 = min(out_h, r0 + band)
        part = np.asarray(values[r0 * fy : r1 * fy], dtype=np.float32)
        finite = np.isfinite(part)
        padded = np.zeros(((r1 - r0) * fy, out_w * fx), dtype=np.float32)
        padded[: part.shape[0], :w] = np.where(finite, part, np.float32(0))
        ok = np.ones(padded.shape, dtype=bool)
        ok[: part.shape[0], :w] = finite
        blocks = padded.reshape(r1 - r0, fy, out_w, fx).transpose(0, 2, 1, 3)
        blocks = blocks.reshape(r1 - r0, out_w, fy * fx)
        if signed:
            pick = np.abs(blocks).argmax(axis=2)
            got = np.take_along_axis(blocks, pick[..., None], axis=2)[..., 0]
        else:
            got = blocks.max(axis=2)
        bad = ~ok.reshape(r1 - r0, fy, out_w, fx).all(axis=(1, 3))
        out[r0:r1] = np.where(bad, np.float32(np.nan), got)
    return out


def _scale(f: Filters, cmap: str | None) -> tuple[ValueRange, str, bool]:
    """The sheet's one colour range, its colormap and whether it is centred on zero."""
    if f.kind == "norms":
        finite = f.values[np.isfinite(f.values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    elif f.weight_range is not None:
        lo, hi = f.weight_range
    else:
        lo = hi = 0.0
    r, signed = shared_scale(GridOptions(scale="layer"), ValueRange(lo, hi, False))
    assert r is not None  # the "layer" scale always has one range
    if f.kind == "rgb":
        m = f.max_abs
        return ValueRange(-m if m > 0 else 0.0, m, True), "gray", True
    default = DEFAULT_DIVERGING_CMAP if signed else DEFAULT_CMAP
    return r, cmap or default, signed


def _tile_values(f: Filters, shown: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """Each shown filter's tile as a float32 (k, th, tw) block, or (k, th, tw, 3) for "rgb",
    enlarged; and the enlargement. In a mosaic, +inf marks the background between kernels and
    NaN every non-finite weight."""
    index = np.asarray(shown, dtype=np.intp)
    if f.kind == "rgb":
        v = f.values[index]
        s = max(1, math.ceil(MIN_TILE / max(v.shape[1], v.shape[2], 1)))
        return v.repeat(s, axis=1).repeat(s, axis=2), s
    if f.kind == "rows":
        v = f.values[index]  # (k, in_g, taps); NaN/Inf as NaN: +inf marks gaps below
        v = np.where(np.isfinite(v), v, np.float32(np.nan))
        s = max(1, math.ceil(MIN_TILE / max(v.shape[1], v.shape[2], 1)))
        return v.repeat(s, axis=1).repeat(s, axis=2), s
    v = f.values[index]  # (k, in_g, kh, kw)
    k, n, kh, kw = v.shape
    s = max(1, math.ceil(MIN_KERNEL / max(kh, kw, 1)))
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    eh, ew = kh * s, kw * s
    th = rows * eh + (rows - 1) * KERNEL_GAP
    tw = cols * ew + (cols - 1) * KERNEL_GAP
    # +inf marks the gaps between kernels (painted background); weights are never +inf there
    # because a real +inf weight is counted and drawn as NaN below.
    block = np.full((k, th, tw), np.inf, dtype=np.float32)
    big = v.repeat(s, axis=2).repeat(s, axis=3)
    big = np.where(np.isfinite(big), big, np.nan)
    for j in range(n):
        r, c = divmod(j, cols)
        y, x = r * (eh + KERNEL_GAP), c * (ew + KERNEL_GAP)
        block[:, y : y + eh, x : x + ew] = big[:, j]
    return block, s


def _legend(
    f: Filters,
    title: str,
    stamp: str | None,
    selection: str,
    r: ValueRange,
    cmap: str,
    signed: bool,
) -> LegendContent:
    if f.kind == "rgb":
        scale = (
            f"scale: one symmetric range over all {f.out_channels} filters · each colour "
            "channel: 0 = mid-grey"
        )
    else:
        what = "kernel norms" if f.kind == "norms" else "weights"
        scale = f"scale: one range over the layer's {what} · colormap {cmap}"
        scale += ", centred on 0" if signed else ""
    if f.weight_range is None:
        low = high = "n/a"
        note = "no finite weights"
    else:
        low, high = format_ends(r.vmin, r.vmax)
        wl, wh = format_ends(*f.weight_range)
        note = f"weights {wl} … {wh}"
        if f.kind == "norms":
            note = f"norms {low} … {high}; {note}"
    return LegendContent(
        title=title,
        stamp=stamp,
        selection=selection,
        scale=scale,
        bar_low=low,
        bar_mid="0" if signed and f.weight_range is not None else None,
        bar_high=high,
        bar_note=note,
        nonfinite=f.nonfinite,
    )


def _paint_notes(canvas: np.ndarray, top: int, lines: list[str]) -> None:
    for i, line in enumerate(lines):
        paint_text(canvas, (6, top + NOTE_PAD + i * NOTE_LINE), line, LEGEND_FONT_SIZE)


def make_filter_sheet(
    f: Filters,
    *,
    max_filters: int = 64,
    columns: int = 8,
    stamp: str | None = None,
    cmap: str | None = None,
) -> FilterSheet:
    """Draw ``f`` as one picture (see the module docstring).

    ``max_filters`` caps the tiles of the tile kinds (the first filters by index); heat maps
    always hold every filter. ``stamp`` (e.g. "RANDOM WEIGHTS") is drawn in the legend's red box;
    ``cmap`` replaces the default colormap of the heat-map and mosaic kinds ("rgb" is grey per
    colour channel).
    """
    for name, value in (("max_filters", max_filters), ("columns", columns)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise OptionError(
                f"{name} {value!r} is not valid; expected a whole number >= 1, e.g. 8"
            )
    r, cmap_name, signed = _scale(f, cmap)
    palette = grid_palette(cmap_name)
    title = f"{f.layer or 'model'} · {f.module_type} · weight {f.weight_shape}"
    notes = [f.note]
    total = f.out_channels
    warnings: list[str] = []
    if f.nonfinite:
        warnings.append(f"{f.nonfinite} NaN/Inf weights drawn in magenta")

    if f.kind in ("matrix", "norms"):
        values = np.asarray(f.values)
        h, w = values.shape
        fy, fx = max(1, math.ceil(h / MAX_SIDE)), max(1, math.ceil(w / MAX_SIDE))
        if fy > 1 or fx > 1:
            values = _reduce(values, fy, fx, signed)
            what = "the largest |w| of" if signed else "the largest norm of"
            notes.append(
                f"reduced to at most {MAX_SIDE} rows and columns: each pixel {what} a "
                f"{fy}x{fx} block (out x in){', sign kept' if signed else ''}"
            )
            warnings.append(notes[-1])
        dh, dw = values.shape
        # Rows and columns are enlarged separately (cells need not be square), each to at
        # least MIN_MAP_SIDE pixels and by at most MAX_MAP_FACTOR.
        s = min(MAX_MAP_FACTOR, max(1, math.ceil(MIN_MAP_SIDE / max(dh, 1))))
        sx = min(MAX_MAP_FACTOR, max(1, math.ceil(MIN_MAP_SIDE / max(dw, 1))))
        shown = tuple(range(total))
        selection = f"all {total} filters shown as rows (out, top to bottom) x {w} inputs (in)"
        content = _legend(f, title, stamp, selection, r, cmap_name, signed)
        idx = level_indices(normalize(values.astype(np.float32), r), LEVELS, NAN_INDEX)
        idx = idx.repeat(s, axis=0).repeat(sx, axis=1)
        top = LEGEND_HEIGHT + 2 * NOTE_PAD + len(notes) * NOTE_LINE
        width = max(legend_width(content), idx.shape[1] + 2 * GAP, *(
            text_width(n) + 12 for n in notes))  # fmt: skip
        canvas = np.full((top + idx.shape[0] + 2 * GAP, width), BACKGROUND_INDEX, np.uint8)
        canvas[top + GAP : top + GAP + idx.shape[0], GAP : GAP + idx.shape[1]] = idx
        paint_legend(canvas, content)
        _paint_notes(canvas, LEGEND_HEIGHT, notes)
        layout: dict[str, Any] = {
            "type": "rows",
            "top": top + GAP,
            "left": GAP,
            "width": int(idx.shape[1]),
            "row_height": s,
            "per_row": fy,
        }
        rgb = palette_pixels(canvas, palette)
        indexed: np.ndarray | None = canvas
    else:
        k = min(max_filters, total)
        shown = tuple(range(k))
        how = "all" if k == total else f"first {k} by index"
        selection = f"{k} of {total} filters shown ({how})"
        content = _legend(f, title, stamp, selection, r, cmap_name, signed)
        tiles, _ = _tile_values(f, shown)
        th, tw = tiles.shape[1], tiles.shape[2]
        cw = max(tw, MIN_CELL_WIDTH)
        cap = CAPTION_PAD + CAPTION_LINE_HEIGHT
        ncols = min(columns, k)
        nrows = math.ceil(k / ncols) if k else 0
        top = LEGEND_HEIGHT + 2 * NOTE_PAD + len(notes) * NOTE_LINE
        mosaic_w = ncols * cw + (ncols + 1) * GAP
        mosaic_h = nrows * (th + cap) + (nrows + 1) * GAP
        width = max(mosaic_w, legend_width(content), *(text_width(n) + 12 for n in notes))
        canvas = np.full((top + mosaic_h, width), BACKGROUND_INDEX, dtype=np.uint8)
        if f.kind != "rgb":
            gaps = np.isposinf(tiles)
            idx = level_indices(normalize(np.where(gaps, 0, tiles), r), LEVELS, NAN_INDEX)
            idx[gaps] = BACKGROUND_INDEX
        paint_legend(canvas, content)
        _paint_notes(canvas, LEGEND_HEIGHT, notes)
        boxes = []
        for i, ch in enumerate(shown):
            row, col = divmod(i, ncols)
            x = GAP + col * (cw + GAP) + (cw - tw) // 2
            y = top + GAP + row * (th + cap + GAP)
            boxes.append((y, x))
            if f.kind != "rgb":
                canvas[y : y + th, x : x + tw] = idx[i]
            paint_caption(canvas, (GAP + col * (cw + GAP), y + th + CAPTION_PAD), (f"#{ch}",))
        rgb = palette_pixels(canvas, palette)
        indexed = None if f.kind == "rgb" else canvas
        if f.kind == "rgb":
            grey = grey_levels(tiles, r)
            bad = (grey == GREY_LEVELS).any(axis=-1)
            patch = np.where(bad[..., None], np.asarray(NAN_COLOR, np.uint8), grey)
            for i, (y, x) in enumerate(boxes):
                rgb[y : y + th, x : x + tw] = patch[i]
        layout = {
            "type": "tiles",
            "top": top + GAP,
            "left": GAP + (cw - tw) // 2,
            "width": int(tw),
            "height": int(th),
            "step_x": cw + GAP,
            "step_y": th + cap + GAP,
            "columns": ncols,
        }
        if k < total:
            warnings.append(f"{k} of {total} filters shown")
    legend = f"{content.scale}; {content.bar_low} … {content.bar_high}"
    if content.bar_note:
        legend += f" ({content.bar_note})"
    rgb.setflags(write=False)
    if indexed is not None:
        indexed.setflags(write=False)
    return FilterSheet(
        rgb=rgb,
        kind=f.kind,
        shown=shown,
        total=total,
        value_range=r,
        cmap=cmap_name,
        legend=legend,
        layout=layout,
        warnings=tuple(warnings),
        indices=indexed,
        palette=palette if indexed is not None else None,
    )
