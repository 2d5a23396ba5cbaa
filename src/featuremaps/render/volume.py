"""Volume pictures: a 3-D layer's (C, D, H, W) output as slice montages on one shared scale.

Part of the pure ``render`` stage. One picture, top to bottom: the grids' legend (title, "k of C
channels shown", range, scale mode, colormap), a line that says which slices are shown and what
the projection is, then one row per shown channel: every ``step``-th slice along the depth axis
(at most :data:`MAX_SLICES` tiles, slice indices printed above them), the channel's
maximum-intensity projection over *all* slices, and the mean of each slice over its plane as a
line plot (on its own scale, printed beside it).

All tiles of all rows (projections included) share one colour scale chosen like the grids'
(:mod:`featuremaps.render.scaling`'s centring rule: signed data on a diverging colormap centred
on 0); with ``scale="channel"`` each row (a channel's slices and projection) has its own range.
For signed data the projection keeps, per pixel, the value of largest magnitude with its sign
(``max |x|, sign kept``); for unsigned data it is the plain maximum. Tiles are enlarged by an
integer factor (nearest neighbour, never resampled) so that small maps stay visible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from featuremaps._errors import OptionError
from featuremaps.render.colormap import DEFAULT_CMAP, DEFAULT_DIVERGING_CMAP, level_indices
from featuremaps.render.grid import GridLabel, GridOptions, select_channels
from featuremaps.render.legend import (
    LEGEND_FONT_SIZE,
    paint_text,
)
from featuremaps.render.palette import (
    BACKGROUND_INDEX,
    LEVELS,
    NAN_INDEX,
    TEXT_INDEX,
    grid_palette,
    palette_pixels,
)
from featuremaps.render.panels import LINE, Composite, stacked, text_block
from featuremaps.render.rows import row_label, row_scale, rows_legend, rows_note
from featuremaps.render.scaling import (
    DTypeLike,
    ValueRange,
    is_constant_range,
    normalize,
)

__all__ = [
    "MAX_ROWS",
    "MAX_SLICES",
    "VolumePicture",
    "make_volume_picture",
    "projection",
    "slice_means",
    "slice_step",
]

MAX_SLICES = 8
MAX_ROWS = 16
MARGIN = 56  # left margin for channel names
GAP = 2  # pixels between slice tiles
PART_GAP = 12  # pixels between the slices, the projection and the curve
CAPTION = LINE  # the slice numbers above each row
CURVE_WIDTH = 96
AXES = "DHW"
GAP_AT = 4  # the mosaic's offset below the panel above it (``stacked``'s gap)


@dataclass(frozen=True)
class VolumePicture:
    """A volume layer's picture and what it shows.

    ``channels``: shown channels, one row each; ``slices``: the slice indices of the tiles along
    ``axis`` (0 = D, 1 = H, 2 = W of the (D, H, W) volume); ``factor``: the integer enlargement
    of each tile; ``tile``: (height, width) of one tile in pixels; ``origins[i][j]``: the (y, x)
    of row ``i``'s tile ``j`` in ``picture`` (the last tile of a row is the projection);
    ``value_range``: the shared range (``None``: each row its own); ``projection``: ``"max"`` or
    ``"max |x|, sign kept"``; ``projections`` (k, h, w) and ``means`` (k, slices) the numbers
    drawn.
    """

    picture: Composite
    channels: tuple[int, ...]
    slices: tuple[int, ...]
    axis: int
    factor: int
    tile: tuple[int, int]
    origins: tuple[tuple[tuple[int, int], ...], ...]
    value_range: ValueRange | None
    row_ranges: tuple[ValueRange, ...]
    projection_kind: str
    projections: np.ndarray
    means: np.ndarray


def slice_step(depth: int, max_slices: int = MAX_SLICES) -> int:
    """Every ``step``-th slice is shown: the smallest step that shows at most ``max_slices``."""
    return max(1, math.ceil(depth / max_slices))


def projection(volume: np.ndarray, signed: bool) -> np.ndarray:
    """Maximum-intensity projection of ``volume`` (..., D, H, W) over D.

    Unsigned: the maximum. Signed: per pixel the value of largest ``|x|``, sign kept (the first
    such slice on a tie). NaN anywhere along a ray gives NaN.
    """
    v = np.asarray(volume, dtype=np.float64)
    if not signed:
        top: np.ndarray = v.max(axis=-3)
        return top
    pick = np.argmax(np.abs(v), axis=-3)
    out = np.take_along_axis(v, pick[..., None, :, :], axis=-3)[..., 0, :, :]
    ray_nan = np.isnan(v).any(axis=-3)
    return np.where(ray_nan, np.nan, out)


def slice_means(volume: np.ndarray) -> np.ndarray:
    """The mean over each slice's finite values: (..., D, H, W) -> (..., D); NaN when none."""
    v = np.asarray(volume, dtype=np.float64)
    finite = np.isfinite(v)
    total = np.where(finite, v, 0.0).sum(axis=(-2, -1))
    count = finite.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _curve(values: np.ndarray, width: int, height: int, dtype: DTypeLike = "float64") -> np.ndarray:
    """A line plot of ``values`` (n,) as an index canvas: point ``i`` at column centre
    ``(i + 0.5) * width / n``, consecutive points joined by vertical runs; values constant for
    ``dtype`` (the dtype they were computed in) are a flat line at mid height."""
    canvas = np.full((height, width), BACKGROUND_INDEX, dtype=np.uint8)
    canvas[:, 0] = TEXT_INDEX
    canvas[-1, :] = TEXT_INDEX
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return canvas
    lo, hi = float(finite.min()), float(finite.max())
    flat = is_constant_range(lo, hi, dtype)
    n = len(values)
    previous: int | None = None
    for i, v in enumerate(values):
        x0 = int(i * width / n)
        x1 = max(x0 + 1, int((i + 1) * width / n))
        if not np.isfinite(v):
            canvas[:, x0:x1] = NAN_INDEX
            previous = None
            continue
        t = (float(v) - lo) / (hi - lo) if hi > lo and not flat else 0.5
        y = round((1.0 - t) * (height - 3)) + 1
        top, bottom = (y, y) if previous is None else (min(y, previous), max(y, previous))
        canvas[top : bottom + 1, x0] = TEXT_INDEX
        canvas[y, x0:x1] = TEXT_INDEX
        previous = y
    return canvas


def make_volume_picture(
    maps: np.ndarray,
    options: GridOptions,
    label: GridLabel,
    *,
    axis: int = 0,
    max_slices: int = MAX_SLICES,
) -> VolumePicture:
    """Draw one sample of a 3-D layer, ``maps`` (C, D, H, W), as per-channel slice montages.

    ``axis`` is the axis of the (D, H, W) volume the slices are taken along (0 = D, the
    default; 1 = H; 2 = W); every :func:`slice_step`-th slice is shown, starting at 0.
    ``options`` picks the channels (at most :data:`MAX_ROWS` rows), scale and colormap as for the
    channel grids. Nothing passed in is modified.
    """
    arr = np.asarray(maps)
    if arr.ndim != 4 or axis not in (0, 1, 2):
        raise OptionError(
            f"volume maps of shape {arr.shape} sliced along axis {axis}; expected (C, D, H, W) "
            "maps and an axis 0 (D), 1 (H) or 2 (W)"
        )
    total = arr.shape[0]
    vol = np.moveaxis(arr, axis + 1, 1)  # (C, S, h, w): slices along the chosen axis
    depth, h, w = vol.shape[1:]
    rows_opts = options if options.max_channels <= MAX_ROWS else _fewer(options)
    chs = select_channels(arr.reshape(total, depth * h, w), rows_opts)
    block = vol[np.asarray(chs, dtype=np.intp)].astype(np.float64)  # (k, S, h, w)
    dtype = options.dtype or arr.dtype.name  # what "constant" is judged in
    shared, row_ranges, signed, scale_text = row_scale(
        arr, block, options,
        per_row="scale: each row (channel, all its slices) its own range",
        one_range=f"scale: one range for every slice of all {arr.shape[0]} channels",
    )  # fmt: skip
    cmap = options.cmap or (DEFAULT_DIVERGING_CMAP if signed else DEFAULT_CMAP)
    palette = grid_palette(cmap)
    step = slice_step(depth, max_slices)
    slices = tuple(range(0, depth, step))
    kind = "max |x|, sign kept" if signed else "max"
    mip = projection(block, signed)  # (k, h, w)
    means = slice_means(block)  # (k, S)

    factor = max(1, math.ceil(options.min_tile / max(h, w)))
    th, tw = h * factor, w * factor
    tiles_w = len(slices) * tw + (len(slices) - 1) * GAP
    mip_x = MARGIN + tiles_w + PART_GAP
    curve_x = mip_x + tw + PART_GAP
    width = curve_x + CURVE_WIDTH + 8 + 80
    row_h = CAPTION + th + GAP
    mosaic = np.full((max(1, len(chs)) * row_h, width), BACKGROUND_INDEX, dtype=np.uint8)
    origins: list[tuple[tuple[int, int], ...]] = []
    for i in range(len(chs)):
        r = shared if shared is not None else row_ranges[i]
        shown = np.concatenate([block[i, list(slices)], mip[i][None]])  # (n + 1, h, w)
        levels = level_indices(normalize(shown, r, dtype=dtype), LEVELS, NAN_INDEX)
        big = levels.repeat(factor, axis=1).repeat(factor, axis=2)
        top = i * row_h + CAPTION
        row: list[tuple[int, int]] = []
        for j, s in enumerate(slices):
            x = MARGIN + j * (tw + GAP)
            mosaic[top : top + th, x : x + tw] = big[j]
            paint_text(mosaic, (x, top - CAPTION + 1), f"{AXES[axis]}={s}", LEGEND_FONT_SIZE)
            row.append((top, x))
        mosaic[top : top + th, mip_x : mip_x + tw] = big[-1]
        paint_text(mosaic, (mip_x, top - CAPTION + 1), "MIP", LEGEND_FONT_SIZE)
        row.append((top, mip_x))
        origins.append(tuple(row))
        curve = _curve(means[i], CURVE_WIDTH, th, dtype)
        mosaic[top : top + th, curve_x : curve_x + CURVE_WIDTH] = curve
        paint_text(mosaic, (curve_x, top - CAPTION + 1), "mean/slice", LEGEND_FONT_SIZE)
        finite = means[i][np.isfinite(means[i])]
        if finite.size:
            paint_text(
                mosaic,
                (curve_x + CURVE_WIDTH + 4, top),
                _fmt(float(finite.max())),
                LEGEND_FONT_SIZE,
            )
            paint_text(
                mosaic,
                (curve_x + CURVE_WIDTH + 4, top + th - CAPTION),
                _fmt(float(finite.min())),
                LEGEND_FONT_SIZE,
            )
        paint_text(mosaic, (4, top + th // 2 - 7), f"ch {chs[i]}", LEGEND_FONT_SIZE)
        if shared is None:
            text = row_label(r, signed, dtype)
            paint_text(mosaic, (4, top + th // 2 + 7), text, LEGEND_FONT_SIZE)

    nonfinite = int(np.count_nonzero(~np.isfinite(block)))
    legend = rows_legend(
        label, rows_opts, chs, total, (shared, signed, scale_text), cmap, nonfinite,
        note=rows_note(arr, rows_opts, dtype),
    )  # fmt: skip
    every = "every slice" if step == 1 else f"every {_ordinal(step)} slice"
    note = text_block(
        [
            f"slices along {AXES[axis]} ({depth} in all): {every}, {len(slices)} shown; "
            f"tiles {h}x{w}, enlarged x{factor}",
            f"MIP: maximum-intensity projection over all {depth} slices ({kind}), same scale; "
            "mean/slice: each slice's mean, own scale (max above, min below)",
        ]
    )
    top_panels = [palette_pixels(legend, palette), note]
    offset = sum(p.shape[0] for p in top_panels) + GAP_AT * len(top_panels)
    moved = tuple(tuple((y + offset, x) for y, x in row) for row in origins)
    rgb = stacked([*top_panels, palette_pixels(mosaic, palette)], gap=GAP_AT)
    warnings = (f"{nonfinite} NaN/Inf values drawn in magenta",) if nonfinite else ()
    return VolumePicture(
        Composite(rgb, warnings),
        tuple(chs),
        slices,
        axis,
        factor,
        (th, tw),
        moved,
        shared,
        row_ranges,
        kind,
        mip,
        means,
    )


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _fewer(options: GridOptions) -> GridOptions:
    return replace(options, max_channels=MAX_ROWS)
