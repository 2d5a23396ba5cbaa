"""Bar strips: vectors (a classifier's logits, a pooled feature, a CLS token) as bars with values.

Part of the pure ``render`` stage. A vector is not a map, so it is never drawn as 1x1 tiles: each
vector is one strip of bars, one bar per feature, from a zero line, all strips of a picture on one
scale (the largest |value|), coloured like the channel grids (diverging and centred on 0 for
signed values, viridis otherwise). The legend on top is the grids' legend; under each strip its
range and its largest values are printed with their indices (every value when there are at most
16), or, when a strip's values spread no wider than rounding noise, that they are constant.
Bars start at 0, so such noise is never stretched; only the printed range could mislead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from featuremaps.render.colormap import DEFAULT_CMAP, DEFAULT_DIVERGING_CMAP, level_indices
from featuremaps.render.legend import LEGEND_HEIGHT, LegendContent, legend_width, paint_legend
from featuremaps.render.palette import (
    BACKGROUND_INDEX,
    LEVELS,
    NAN_INDEX,
    TEXT_INDEX,
    grid_palette,
    palette_pixels,
)
from featuremaps.render.panels import Composite, stacked, text_block
from featuremaps.render.scaling import DTypeLike, constant_text, format_ends, is_constant_range

__all__ = ["STRIP_HEIGHT", "make_bars"]

STRIP_HEIGHT = 64
MAX_WIDTH = 1000  # bars are 1 px wide at most this many features, wider when fewer
ALL_VALUES = 16  # print every value up to this many features
TOP_VALUES = 8


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _values_text(values: np.ndarray) -> list[str]:
    finite = np.isfinite(values)
    if values.size <= ALL_VALUES:
        items = [f"#{i} = {_fmt(float(v))}" for i, v in enumerate(values)]
        return [",   ".join(items[i : i + 8]) for i in range(0, len(items), 8)] or ["(empty)"]
    key = np.where(finite, np.abs(values), -np.inf)
    top = np.argsort(-key, kind="stable")[:TOP_VALUES]
    items = [f"#{int(i)} = {_fmt(float(values[i]))}" for i in top]
    return [f"largest |x|:   {',   '.join(items)}"]


def make_bars(
    vectors: np.ndarray,
    names: Sequence[str],
    *,
    title: str,
    stamp: str | None = None,
    cmap: str | None = None,
    dtype: DTypeLike | None = None,
) -> Composite:
    """Draw ``vectors`` (K, F) as K bar strips on one shared scale, ``names`` one per strip;
    ``dtype`` is the dtype the values were computed in (default: the vectors' own)."""
    given = np.asarray(vectors)
    dtype = given.dtype.name if dtype is None else dtype
    arr = np.asarray(given, dtype=np.float64)
    k, f = arr.shape
    finite = np.isfinite(arr)
    peak = float(np.abs(arr[finite]).max()) if finite.any() else 0.0
    signed = bool(finite.any() and arr[finite].min() < 0)
    cmap = cmap or (DEFAULT_DIVERGING_CMAP if signed else DEFAULT_CMAP)
    palette = grid_palette(cmap)
    bar = max(1, min(16, MAX_WIDTH // max(f, 1)))
    width = max(f * bar, 1)
    nonfinite = int(arr.size - finite.sum())
    lo = -peak if signed else 0.0
    content = LegendContent(
        title=title,
        stamp=stamp,
        selection=f"{k} vector{'s' if k != 1 else ''} of {f} values (one bar per value)",
        scale=f"bars from 0; height and colour on one scale · colormap {cmap}"
        + (", centred on 0" if signed else ""),
        bar_low=_fmt(lo),
        bar_mid="0" if signed else None,
        bar_high=_fmt(peak),
        bar_note=None,
        nonfinite=nonfinite,
    )
    legend = np.full((LEGEND_HEIGHT, legend_width(content)), BACKGROUND_INDEX, dtype=np.uint8)
    paint_legend(legend, content)
    panels = [palette_pixels(legend, palette)]
    for row in range(k):
        values = arr[row]
        canvas = np.full((STRIP_HEIGHT, width), BACKGROUND_INDEX, dtype=np.uint8)
        zero = STRIP_HEIGHT // 2 if signed else STRIP_HEIGHT - 1
        span = zero if signed else STRIP_HEIGHT - 1
        with np.errstate(invalid="ignore", divide="ignore"):
            t = (values - lo) / (peak - lo) if peak > lo else np.full(f, 0.5)
        colours = level_indices(t, LEVELS, NAN_INDEX)
        # Each bar at once: rows zero-h .. zero-1 above the line for v >= 0, zero+1 .. zero+h
        # below it otherwise, h = round(|v| / peak * span) (half to even, as round() does).
        good = np.isfinite(values)
        with np.errstate(invalid="ignore"):
            h = np.rint(np.abs(values) / peak * span) if peak > 0 else np.zeros(f)
            h = np.where(good, h, 0).astype(np.intp)
            up = values >= 0
        y = np.arange(STRIP_HEIGHT)[:, None]
        inside = np.where(up, (y >= zero - h) & (y < zero), (y > zero) & (y <= zero + h))
        columns = np.where(inside, colours[None, :], np.uint8(BACKGROUND_INDEX))
        columns[:, ~good] = NAN_INDEX
        canvas[:, : f * bar] = np.repeat(columns, bar, axis=1) if bar > 1 else columns
        canvas[zero, :] = TEXT_INDEX
        strip = palette_pixels(canvas, palette)
        finite_row = values[np.isfinite(values)]
        if not finite_row.size:
            rng = "no finite values"
        elif finite_row.size > 1 and is_constant_range(
            float(finite_row.min()), float(finite_row.max()), dtype
        ):
            rng = f"{_fmt(float(finite_row.min()))}, {constant_text(dtype)}"
        else:
            rng = " … ".join(format_ends(float(finite_row.min()), float(finite_row.max())))
        lines = [f"{names[row]}: {f} values, {rng}", *_values_text(values)]
        panels.append(stacked([strip, text_block(lines)], gap=0))
    warnings = (f"{nonfinite} NaN/Inf values drawn in magenta",) if nonfinite else ()
    return Composite(stacked(panels), warnings)
