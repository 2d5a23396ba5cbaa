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
from featuremaps.render.scaling import ValueRange, channel_ranges, compute_range

__all__ = ["row_scale", "rows_legend"]


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


def rows_legend(
    label: GridLabel,
    options: GridOptions,
    chs: tuple[int, ...],
    total: int,
    scale: tuple[ValueRange | None, bool, str],
    cmap: str,
    nonfinite: int,
    suffix: str = "",
) -> np.ndarray:
    """The grids' legend strip for a row picture (palette indices); ``scale`` is the shared
    range, signedness and scale text of :func:`row_scale`; ``suffix`` ends the selection line."""
    shared, signed, scale_text = scale
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
        bar_low=_fmt(shared.vmin) if shared is not None else ("-max|x|" if signed else "min"),
        bar_mid="0" if signed else None,
        bar_high=_fmt(shared.vmax) if shared is not None else ("+max|x|" if signed else "max"),
        bar_note=None if shared is not None else "each row: its own range",
        nonfinite=nonfinite,
    )
    legend = np.full((LEGEND_HEIGHT, legend_width(content)), BACKGROUND_INDEX, dtype=np.uint8)
    paint_legend(legend, content)
    return legend
