"""Row pictures: what signal heat maps and volume montages share (one row per channel).

Pure rendering. Both draw a layer's channels as rows under the grids' legend; this module
decides the rows' scale by the grids' rules (:mod:`featuremaps.render.scaling`'s centring rule)
and paints that legend, so the two pictures cannot drift apart.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from featuremaps.render.grid import GridLabel, GridOptions, shared_scale
from featuremaps.render.legend import LEGEND_HEIGHT, LegendContent, legend_width, paint_legend
from featuremaps.render.palette import BACKGROUND_INDEX
from featuremaps.render.scaling import (
    NO_FINITE_TEXT,
    DTypeLike,
    ValueRange,
    channel_ranges,
    compute_range,
    constant_text,
    format_ends,
    is_constant_range,
)

__all__ = ["row_label", "row_scale", "rows_legend", "rows_note"]


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def row_scale(
    arr: np.ndarray, block: np.ndarray, options: GridOptions, *, per_row: str, one_range: str
) -> tuple[ValueRange | None, tuple[ValueRange, ...], bool, str]:
    """The shared range (``None`` for per-channel scales), each row's range of ``block``,
    signedness and the legend's scale text (``per_row`` / ``one_range`` name the two modes for
    this kind of picture); the same decisions as the channel grids over the whole layer ``arr``.
    """
    if options.scale in ("fixed", "global") and options.value_range is None:
        options = replace(options, scale="layer")  # no range given: the layer's own
    shared, signed = shared_scale(options, compute_range(arr, symmetric=False))
    if shared is None:
        return None, channel_ranges(block, symmetric=signed), signed, per_row
    text = one_range
    if options.scale in ("fixed", "global"):
        shared_by = "all layers" if options.scale == "global" else "given"
        text = f"scale: {options.scale} range ({shared_by})"
    return shared, (shared,) * len(block), signed, text


def rows_note(arr: np.ndarray, options: GridOptions, dtype: DTypeLike) -> str | None:
    """The legend note of a row picture with one colour range, by the grids' rules and words:
    :data:`NO_FINITE_TEXT` for a layer without finite values (no range: "n/a"), the constant
    text when its range (the layer's values, or a given range) spreads no wider than rounding
    noise of ``dtype``; ``None`` otherwise and for per-row scales."""
    if options.scale == "channel":
        return None
    if options.scale != "fixed" and arr.size and not np.isfinite(arr).any():
        return NO_FINITE_TEXT  # as the grids: a given range is still printed
    if options.scale in ("fixed", "global") and options.value_range is not None:
        lo, hi = options.value_range
    else:
        measured = compute_range(arr, symmetric=False)
        lo, hi = measured.vmin, measured.vmax
    return constant_text(dtype) if is_constant_range(lo, hi, dtype) else None


def row_label(r: ValueRange, signed: bool, dtype: DTypeLike) -> str:
    """The range printed beside a row with its own scale: "±max", "low…high", or "const v"
    when the row is constant for ``dtype`` (drawn in one colour)."""
    if signed:
        return f"±{_fmt(r.vmax)}"
    if is_constant_range(r.vmin, r.vmax, dtype):
        return f"const {_fmt(r.vmin)}"
    low, high = format_ends(r.vmin, r.vmax)
    return f"{low}…{high}"


def rows_legend(
    label: GridLabel,
    options: GridOptions,
    chs: tuple[int, ...],
    total: int,
    scale: tuple[ValueRange | None, bool, str],
    cmap: str,
    nonfinite: int,
    suffix: str = "",
    note: str | None = None,
) -> np.ndarray:
    """The grids' legend strip for a row picture (palette indices); ``scale`` is the shared
    range, signedness and scale text of :func:`row_scale`; ``suffix`` ends the selection line;
    ``note`` (:func:`rows_note`) is printed beside the bar of a shared range."""
    shared, signed, scale_text = scale
    if shared is None:
        ends = ("-max|x|", "+max|x|") if signed else ("min", "max")
    elif note == NO_FINITE_TEXT:
        ends = ("n/a", "n/a")
    elif note is None:
        ends = format_ends(shared.vmin, shared.vmax)
    else:
        ends = (_fmt(shared.vmin), _fmt(shared.vmax))
    how = (
        options.channels_note or "explicit list"
        if options.channels is not None
        else f"first {len(chs)} by index"
        if options.order == "index"
        else f"top {len(chs)} by {options.order}"
    )
    content = LegendContent(
        title=f"{label.name} · {label.module_type} · {tuple(label.shape)}",
        stamp=label.stamp,
        selection=f"{len(chs)} of {total} channels shown as rows ({how}){suffix}",
        scale=f"{scale_text} · colormap {cmap}" + (", centred on 0" if signed else ""),
        bar_low=ends[0],
        bar_mid="0" if signed and ends[0] != "n/a" else None,
        bar_high=ends[1],
        bar_note=note if shared is not None else "each row: its own range",
        nonfinite=nonfinite,
    )
    legend = np.full((LEGEND_HEIGHT, legend_width(content)), BACKGROUND_INDEX, dtype=np.uint8)
    paint_legend(legend, content)
    return legend
