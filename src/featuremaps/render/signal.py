"""Signal pictures: a 1-D layer's (C, L) output as a channel x time heat map on its input's axis.

Part of the pure ``render`` stage. One picture, top to bottom: the grids' legend (range, colormap,
which channels), the input signal (one trace per channel, up to :data:`INPUT_TRACES`), the heat
map (one row per shown channel, time on x), an axis in input samples, and line plots of the
:data:`LINE_PLOTS` shown channels with the largest mean |x|, on the same axis.

Time is in input-sample units. Where the receptive-field geometry is known
(:class:`featuremaps.geometry.LineGeometry`: cell ``j`` centred on ``offset + j * stride``) each
pixel column shows the cell whose box holds the column's centre (the one rule of
:mod:`featuremaps.cells`), and columns no cell covers stay background; without geometry the map is
stretched over the input's length, and the axis title says so. With more cells than pixel columns
a column shows one cell, not an average. Colours follow the grids: viridis for unsigned values,
RdBu_r centred on 0 for signed ones, NaN/Inf magenta, quantised to the palette's levels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from featuremaps.cells import nearest_cells
from featuremaps.render.colormap import DEFAULT_CMAP, DEFAULT_DIVERGING_CMAP, level_indices
from featuremaps.render.grid import GridLabel, GridOptions, select_channels
from featuremaps.render.legend import (
    LEGEND_FONT_SIZE,
    paint_text,
    text_width,
)
from featuremaps.render.palette import (
    BACKGROUND_INDEX,
    LEVELS,
    NAN_INDEX,
    TEXT_INDEX,
    grid_palette,
    palette_pixels,
)
from featuremaps.render.panels import LINE, Composite, stacked
from featuremaps.render.rows import row_label, row_scale, rows_legend, rows_note
from featuremaps.render.scaling import (
    DTypeLike,
    ValueRange,
    constant_text,
    format_ends,
    is_constant_range,
    normalize,
    normalize_channels,
)

__all__ = ["INPUT_TRACES", "LINE_PLOTS", "Placement", "SignalPicture", "make_signal_picture"]

INPUT_TRACES = 4
LINE_PLOTS = 3
MARGIN = 64  # left margin for row names
TRACE_HEIGHT = 40
MAX_WIDTH = 1000
MIN_WIDTH = 400


@dataclass(frozen=True)
class Placement:
    """Where cell ``j`` of the map sits on the input's time axis: centred on
    ``offset + j * stride`` input samples, seeing ``field`` samples."""

    stride: float
    offset: float
    field: float


@dataclass(frozen=True)
class SignalPicture:
    """A signal layer's picture, the channels it shows (in row order), the shared range
    (``None``: each row its own) and ``columns``: the map cell each pixel column of the heat map
    shows (-1 where no cell covers it), and the input coordinate of each column's centre."""

    picture: Composite
    channels: tuple[int, ...]
    value_range: ValueRange | None
    columns: np.ndarray
    coordinates: np.ndarray


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _columns(width: int, length: int) -> np.ndarray:
    """Input coordinate (samples) of each pixel column's centre; samples span [-0.5, L - 0.5]."""
    return (np.arange(width) + 0.5) * (length / width) - 0.5


def _cells_of_columns(
    width: int, length: int, cells: int, placement: Placement | None
) -> np.ndarray:
    """The map cell each pixel column shows, -1 where no cell covers it."""
    u = _columns(width, length)
    if placement is None:  # stretched: the L cells share the input's length evenly
        return np.minimum(np.floor((u + 0.5) / length * cells).astype(np.int64), cells - 1)
    j = nearest_cells(u, placement.stride, placement.offset)
    return np.where((j >= 0) & (j < cells), j, -1)


def _trace(
    values: np.ndarray,
    width: int,
    length: int,
    height: int,
    skip: np.ndarray | None = None,
    dtype: DTypeLike = "float64",
) -> tuple[np.ndarray, str]:
    """One line plot of ``values`` (L,) over ``width`` columns as an index canvas, and its range.

    Each column draws the span of the samples it covers joined to the previous column, so no
    peak is lost when there are more samples than columns; a column of only NaN/Inf is magenta,
    ``skip`` columns (no cell there) stay empty. A dotted line marks 0 when in range. Values
    constant for ``dtype`` (the dtype they were computed in) are a flat line at mid height.
    """
    canvas = np.full((height, width), BACKGROUND_INDEX, dtype=np.uint8)
    kept = values if skip is None else values[: len(skip)][~skip]
    finite = kept[np.isfinite(kept)]
    if finite.size == 0:
        return canvas, "no finite values"
    lo, hi = float(finite.min()), float(finite.max())
    flat = is_constant_range(lo, hi, dtype)
    span = 0.0 if flat else hi - lo

    def row(v: np.ndarray) -> np.ndarray:
        t = (v - lo) / span if span > 0 else np.full(v.shape, 0.5)
        return np.rint((1.0 - t) * (height - 1)).astype(np.int64)

    if lo < 0.0 < hi:
        canvas[int(row(np.asarray([0.0]))[0]), ::4] = TEXT_INDEX
    edges = np.floor(np.arange(width + 1) * (len(values) / width)).astype(np.int64)
    centre = np.clip(np.rint(_columns(width, length)).astype(np.int64), 0, len(values) - 1)
    previous: int | None = None
    for x in range(width):
        if skip is not None and skip[x]:
            previous = None
            continue
        a, b = int(edges[x]), int(edges[x + 1])
        chunk = values[a:b] if b > a else values[centre[x] : centre[x] + 1]
        chunk = chunk[np.isfinite(chunk)]
        if chunk.size == 0:
            previous = None
            canvas[:, x] = np.where(canvas[:, x] == BACKGROUND_INDEX, NAN_INDEX, canvas[:, x])
            continue
        top, bottom = row(np.asarray([chunk.max(), chunk.min()]))
        if previous is not None:
            top, bottom = min(top, previous), max(bottom, previous)
        canvas[int(top) : int(bottom) + 1, x] = TEXT_INDEX
        previous = int(row(chunk[-1:])[0])
    if flat:
        return canvas, f"{_fmt(lo)}, {constant_text(dtype)}"
    low, high = format_ends(lo, hi)
    return canvas, f"{low} … {high}"


def _with_margin(panel: np.ndarray, name: str | None) -> np.ndarray:
    out = np.full((panel.shape[0], MARGIN + panel.shape[1]), BACKGROUND_INDEX, dtype=np.uint8)
    out[:, MARGIN:] = panel
    if name:
        paint_text(out, (4, max(0, panel.shape[0] // 2 - 7)), name, LEGEND_FONT_SIZE)
    return out


def _text(lines: list[str], width: int) -> np.ndarray:
    need = max(text_width(line) for line in lines) + MARGIN
    out = np.full((len(lines) * LINE + 4, max(width, need)), BACKGROUND_INDEX, dtype=np.uint8)
    for i, line in enumerate(lines):
        paint_text(out, (MARGIN, 2 + i * LINE), line, LEGEND_FONT_SIZE)
    return out


def _nice_step(length: float, ticks: int = 6) -> float:
    raw = length / ticks
    power = 10.0 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next((m * power for m in (1, 2, 5, 10) if m * power >= raw), 10 * power)


def _axis(width: int, length: int, title: str) -> np.ndarray:
    """Tick marks and sample numbers under a panel of ``width`` columns, then ``title``."""
    wide = max(MARGIN + width, MARGIN + text_width(title) + 4)
    canvas = np.full((2 * LINE + 10, wide), BACKGROUND_INDEX, dtype=np.uint8)
    canvas[0, MARGIN : MARGIN + width] = TEXT_INDEX
    step = _nice_step(float(length))
    value = 0.0
    while value <= length - 1 + 1e-9:
        x = MARGIN + int((value + 0.5) / length * width)
        x = min(x, MARGIN + width - 1)
        canvas[1:6, x] = TEXT_INDEX
        label = f"{value:g}"
        left = min(max(x - text_width(label) // 2, 0), MARGIN + width - text_width(label))
        paint_text(canvas, (left, 6), label, LEGEND_FONT_SIZE)
        value += step
    paint_text(canvas, (MARGIN, 6 + LINE), title, LEGEND_FONT_SIZE)
    return canvas


def make_signal_picture(
    maps: np.ndarray,
    options: GridOptions,
    label: GridLabel,
    *,
    signal: np.ndarray | None = None,
    placement: Placement | None = None,
    length: int | None = None,
    x_axis: str | None = None,
) -> SignalPicture:
    """Draw one sample of a 1-D layer, ``maps`` (C, L), on the time axis of its input.

    ``signal`` is the input (C_in, L_in) drawn above the heat map; ``length`` the input's length
    when there is no ``signal`` (default: ``L_in``, else the map's own ``L``, in cells);
    ``placement`` the receptive-field geometry (``None``: stretched). ``options`` picks the
    channels, scale and colormap as for the channel grids. ``x_axis`` names the x axis of a map
    that is not on a time axis (``"position"`` for a sequence's (D, L) features x positions):
    its ticks are then the map's own indices. Nothing passed in is modified.
    """
    arr = np.asarray(maps)
    total, cells = arr.shape
    sig = None if signal is None else np.asarray(signal, dtype=np.float64)
    sig_dtype = "float64" if signal is None else np.asarray(signal).dtype.name
    span = int(length or (sig.shape[-1] if sig is not None else cells))
    unit = "input sample" if (sig is not None or length) else "cell"
    width = min(MAX_WIDTH, max(MIN_WIDTH, span))
    chs = select_channels(arr[:, None, :], options)  # the grids' rule, on (C, 1, L)
    block = arr[np.asarray(chs, dtype=np.intp)].astype(np.float64)
    dtype = options.dtype or arr.dtype.name  # what "constant" is judged in
    shared, rows, signed, scale_text = row_scale(
        arr, block, options,
        per_row="scale: each row its own range (printed at its right)",
        one_range=f"scale: one range for the layer (all {arr.shape[0]} channels)",
    )  # fmt: skip
    x_name = x_axis or "time"
    cmap = options.cmap or (DEFAULT_DIVERGING_CMAP if signed else DEFAULT_CMAP)
    palette = grid_palette(cmap)

    which = _cells_of_columns(width, span, cells, placement)
    covered = which >= 0
    if shared is not None:
        t = normalize(block, shared, dtype=dtype)
    else:
        t = normalize_channels(block, rows, dtype=dtype)
    levels = level_indices(t, LEVELS, NAN_INDEX)  # (k, L)
    row_h = max(4, min(16, 320 // max(len(chs), 1)))
    heat = np.full((len(chs) * (row_h + 1), width), BACKGROUND_INDEX, dtype=np.uint8)
    for i in range(len(chs)):
        line = np.full(width, BACKGROUND_INDEX, dtype=np.uint8)
        line[covered] = levels[i, which[covered]]
        heat[i * (row_h + 1) : i * (row_h + 1) + row_h] = line[None]
    heat_panel = np.full((heat.shape[0], MARGIN + width + 90), BACKGROUND_INDEX, np.uint8)
    heat_panel[:, MARGIN : MARGIN + width] = heat
    for i, c in enumerate(chs):
        y = i * (row_h + 1) + row_h // 2 - 6
        if row_h >= 10 or i % max(1, 12 // row_h) == 0:
            paint_text(heat_panel, (4, max(y, 0)), f"ch {c}", LEGEND_FONT_SIZE)
        if shared is None and (row_h >= 10 or i % max(1, 12 // row_h) == 0):
            text = row_label(rows[i], signed, dtype)
            paint_text(heat_panel, (MARGIN + width + 4, max(y, 0)), text, LEGEND_FONT_SIZE)

    nonfinite = int(np.count_nonzero(~np.isfinite(block)))
    legend = rows_legend(
        label, options, chs, total, (shared, signed, scale_text), cmap, nonfinite,
        f"; {x_name} on x", rows_note(arr, options, dtype),
    )  # fmt: skip

    if x_axis is not None:
        unit = x_axis
        where = f"{cells} {x_axis}s, 0 to {cells - 1}"
    elif placement is None:
        noun = "cell" if cells == 1 else "cells"
        where = f"{cells} {noun} stretched over {span} {unit}s (geometry unknown)"
    else:
        where = (
            f"cells at their receptive-field centres: stride {_fmt(placement.stride)}, first "
            f"centre {_fmt(placement.offset)}, field {_fmt(placement.field)} samples"
        )
    axis = _axis(width, span, f"{unit} · {where}")
    panels: list[np.ndarray] = [legend]
    if sig is not None:
        shown = min(INPUT_TRACES, sig.shape[0])
        more = f" (first {shown} of {sig.shape[0]})" if shown < sig.shape[0] else ""
        panels.append(_text([f"input signal{more}: each channel on its own scale"], width))
        for c in range(shown):
            canvas, rng = _trace(sig[c], width, span, TRACE_HEIGHT, dtype=sig_dtype)
            panels.append(_text([f"input channel {c}: {rng}"], width))
            panels.append(_with_margin(canvas, f"in {c}"))
    panels.extend([heat_panel, axis])
    finite = np.where(np.isfinite(block), np.abs(block), 0.0).mean(axis=1) if cells else None
    if finite is not None and len(chs):
        picks = np.argsort(-finite, kind="stable")[:LINE_PLOTS]
        panels.append(
            _text([f"{len(picks)} shown channel(s) with the largest mean |x|, as lines"], width)
        )
        for i in picks:
            values = np.zeros(width)
            values[covered] = block[i, which[covered]]
            canvas, rng = _trace(values, width, width, TRACE_HEIGHT, skip=~covered, dtype=dtype)
            panels.append(_text([f"channel {chs[i]}: {rng}"], width))
            panels.append(_with_margin(canvas, f"ch {chs[i]}"))
        panels.append(_axis(width, span, f"{unit} (same axis)"))
    rgb = [palette_pixels(p, palette) for p in panels]
    warnings = (f"{nonfinite} NaN/Inf values drawn in magenta",) if nonfinite else ()
    return SignalPicture(
        Composite(stacked(rgb, gap=4), warnings), tuple(chs), shared, which, _columns(width, span)
    )
