"""The channel mosaic: one layer's (C, H, W) maps in, one palette picture out.

Part of the pure ``render`` stage: no files, no matplotlib figures. Channels are chosen
(:func:`select_channels`), normalised and quantised to colour levels as one vectorised block,
enlarged by an integer factor, placed on a uint8 index canvas, and captioned; a legend strip on top
says what the colours mean. The picture is an (H, W) array of palette indices
(``featuremaps.render.palette``), with its RGB form and its PNG bytes derived from it. Colours are
quantised to 240 levels of the colormap; the legend prints the exact range. Writing the picture
to disk is the job of ``featuremaps.io``.

Geometry (every size in pixels; constants are module attributes)::

    s       = max(1, ceil(min_tile / max(H, W, 1)))        integer enlargement, never resampled
    th, tw  = H * s, W * s                                  tile size
    cw      = max(tw, MIN_CELL_WIDTH_CHANNEL if scale == "channel" else MIN_CELL_WIDTH)
    cap     = CAPTION_PAD + lines * CAPTION_LINE_HEIGHT     lines = 2 in "channel" mode, else 1
    ncols   = min(columns, k);  nrows = ceil(k / ncols)     (both 0 when k == 0)
    mosaic  = (nrows * (th + cap) + (nrows + 1) * GAP)  x  (ncols * cw + (ncols + 1) * GAP)
    height  = LEGEND_HEIGHT + mosaic height                 (no LEGEND_HEIGHT without legend)
    width   = max(mosaic width, legend_width(...))          (mosaic width without legend)

Tile i sits in row i // ncols, column i % ncols: its cell starts at
``x = GAP + col * (cw + GAP)``, ``y = top + GAP + row * (th + cap + GAP)`` where ``top`` is the
legend height; the tile is centred horizontally in its cell and its caption is drawn below it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import numpy as np

from featuremaps._errors import InputError, OptionError
from featuremaps.naming import suggest
from featuremaps.render.colormap import (
    DEFAULT_CMAP,
    DEFAULT_DIVERGING_CMAP,
    colormap_warning,
    level_indices,
)
from featuremaps.render.encode import encode_indexed_png
from featuremaps.render.legend import (
    CAPTION_LINE_HEIGHT,
    CAPTION_PAD,
    LEGEND_HEIGHT,
    LegendContent,
    legend_width,
    paint_caption,
    paint_legend,
)
from featuremaps.render.palette import (
    BACKGROUND,
    BACKGROUND_INDEX,
    LEVELS,
    NAN_INDEX,
    grid_palette,
    palette_pixels,
)
from featuremaps.render.scaling import (
    NO_FINITE_TEXT,
    ScaleMode,
    ValueRange,
    centred,
    channel_extremes,
    compute_range,
    constant_text,
    fixed_range,
    format_ends,
    is_constant_range,
    is_signed_range,
    normalize,
    normalize_channels,
    range_from_extremes,
    ranges_from_extremes,
)
from featuremaps.stats import TOP_K_ORDERS, ChannelStats

__all__ = [
    "BACKGROUND",
    "GAP",
    "MIN_CELL_WIDTH",
    "MIN_CELL_WIDTH_CHANNEL",
    "ChannelOrder",
    "Grid",
    "GridLabel",
    "GridOptions",
    "make_grid",
    "select_channels",
    "shared_scale",
]

ChannelOrder = Literal["index", "mean", "max", "std", "absmean"]

GAP = 2
# Wide enough for "#99999" under a tiny tile.
MIN_CELL_WIDTH = 40
# Wide enough for a range caption such as "-1.23e+03 … -4.56e-05".
MIN_CELL_WIDTH_CHANNEL = 112

_ORDERS: tuple[str, ...] = ("index", *TOP_K_ORDERS)
_SCALES: tuple[str, ...] = get_args(ScaleMode)


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f"{name} {value!r} is not valid; expected a whole number >= 1, e.g. 8")


@dataclass(frozen=True)
class GridOptions:
    """How to pick, scale and colour the channels of one layer.

    ``order`` "index" shows the first ``max_channels`` channels; the other orders show the top
    ``max_channels`` by that statistic over finite values (largest first, ties by lower index).
    ``channels`` overrides both; ``channels_note`` then says how they were chosen in the legend
    (default "explicit list"). ``value_range`` is required for scale "fixed" (checked here),
    and for "global" where the caller passes the range across all layers (see ``merge_ranges``;
    checked by :func:`make_grid`, so options can be built before that range is known). ``cmap`` None
    picks viridis for unsigned data and RdBu_r centred on zero for signed data. ``unit`` is what
    the legend calls a map ("channel"; "head" for attention). ``dtype`` is the dtype the values
    were computed in ("float32"; "bfloat16" or "float16" under autocast): it decides when a
    range is constant, no wider than rounding noise
    (:func:`~featuremaps.render.scaling.is_constant_range`); None takes the maps' own dtype.
    """

    max_channels: int = 32
    columns: int = 8
    order: ChannelOrder = "index"
    channels: tuple[int, ...] | None = None
    channels_note: str | None = None
    scale: ScaleMode = "layer"
    value_range: tuple[float, float] | None = None
    cmap: str | None = None
    min_tile: int = 48
    legend: bool = True
    unit: str = "channel"
    dtype: str | None = None

    def __post_init__(self) -> None:
        _positive_int("max_channels", self.max_channels)
        _positive_int("columns", self.columns)
        _positive_int("min_tile", self.min_tile)
        if self.order not in _ORDERS:
            raise OptionError(
                f"unknown channel order {self.order!r}"
                f"{suggest(str(self.order), _ORDERS, 1, 0.6) or '.'} "
                f"Expected one of {', '.join(_ORDERS)}."
            )
        if self.scale not in _SCALES:
            raise OptionError(
                f"unknown scale mode {self.scale!r}"
                f"{suggest(str(self.scale), _SCALES, 1, 0.6) or '.'} "
                f"Expected one of {', '.join(_SCALES)}."
            )
        if self.channels is not None:
            # Accept any sequence of ints (a list from a CLI parser) but store a tuple, so the
            # options stay hashable and immutable.
            object.__setattr__(self, "channels", tuple(self.channels))
        if self.value_range is None:
            if self.scale == "fixed":
                raise OptionError(
                    "scale 'fixed' needs a value range (its low and high values); got none"
                )
        else:
            if self.scale not in ("fixed", "global"):
                raise OptionError(
                    f"a value range is only used with scale 'fixed' or 'global'; got scale "
                    f"'{self.scale}'. Drop the range or use scale 'fixed'."
                )
            lo, hi = (float(v) for v in self.value_range)
            ValueRange(lo, hi, False)  # raises OptionError for non-finite or reversed bounds
            object.__setattr__(self, "value_range", (lo, hi))


@dataclass(frozen=True)
class GridLabel:
    """Where the maps come from; printed in the legend's title row."""

    name: str
    module_type: str
    shape: tuple[int, ...]
    stamp: str | None = None
    precision: str | None = None  # e.g. "bfloat16 autocast"; None for a float32 run


@dataclass(frozen=True, eq=False)
class Grid:
    """A rendered mosaic and the facts needed to read it truthfully.

    The picture is ``indices``, (H, W) uint8, each pixel an entry of ``palette``, (n, 3) uint8,
    n <= 256 (layout in ``featuremaps.render.palette``). ``pixels`` is the same picture as
    (H, W, 3) uint8 RGB, ``palette[indices]``, computed on first use and kept. All three are
    read-only so that ``pixels`` and :meth:`to_png` always show the same picture. Tile colours are
    quantised to 240 levels of the colormap; ``value_range`` and ``tile_ranges`` are exact.
    """

    indices: np.ndarray
    palette: np.ndarray
    channels: tuple[int, ...]
    total_channels: int
    scale: str
    cmap: str
    value_range: ValueRange | None
    tile_ranges: tuple[ValueRange, ...]
    nonfinite: int
    constant_channels: tuple[int, ...]
    warnings: tuple[str, ...] = field(default=())
    # Finite cells of the shown tiles below and above a fixed (or global) range: drawn in the
    # end colours, counted in the legend, whose colour bar is pointed at such an end.
    clipped: tuple[int, int] = (0, 0)

    def __repr__(self) -> str:
        h, w = self.indices.shape
        vr = self.value_range
        rng = f", range {vr.vmin:.4g} … {vr.vmax:.4g}" if vr is not None else ""
        return (
            f"Grid({w}x{h} px, {len(self.channels)} of {self.total_channels} channels, "
            f"scale {self.scale}, {self.cmap}{rng})"
        )

    @functools.cached_property
    def pixels(self) -> np.ndarray:
        """The picture as (H, W, 3) uint8 RGB (read-only; computed once from the palette)."""
        rgb = palette_pixels(self.indices, self.palette)
        rgb.setflags(write=False)
        return rgb

    def to_png(self) -> bytes:
        """PNG bytes of the picture, decoding exactly to ``pixels``.

        Saved as a palette ("P") image with the grid's own palette: nothing is quantised here,
        and Pillow skips the per-row filter search it does for RGB, which dominated encoding time.
        Fast compression, because rendering many layers is the hot path.
        """
        return encode_indexed_png(self.indices, self.palette)

    def _repr_png_(self) -> bytes:
        """Inline display in Jupyter."""
        return self.to_png()


def _check_maps(maps: np.ndarray) -> np.ndarray:
    arr = np.asarray(maps)
    if arr.ndim != 3:
        raise InputError(
            f"maps of shape {arr.shape}; expected (C, H, W). Select one sample and reshape "
            "vectors to (C, 1, 1)."
        )
    if arr.dtype.kind not in "fiub":
        raise InputError(
            f"maps of dtype {arr.dtype}; expected real numbers. Convert with .real or "
            ".astype(float)."
        )
    return arr


def _channel_statistic(maps: np.ndarray, order: str) -> np.ndarray:
    """Per-channel statistic over finite values, float64; -inf for channels without any."""
    c = maps.shape[0]
    flat = maps.reshape(c, -1)
    finite = np.isfinite(flat)
    n = finite.sum(axis=1)
    with np.errstate(all="ignore"):
        if order == "max":
            stat = np.max(np.where(finite, flat, -np.inf), axis=1, initial=-np.inf)
            stat = stat.astype(np.float64)
        else:
            x = np.where(finite, flat, 0.0).astype(np.float64)
            if order == "absmean":
                stat = np.abs(x).sum(axis=1) / n
            else:
                mean = x.sum(axis=1) / n
                if order == "mean":
                    stat = mean
                else:  # std, two-pass for accuracy at large means
                    dev = np.where(finite, x - mean[:, None], 0.0)
                    stat = np.sqrt((dev * dev).sum(axis=1) / n)
    return np.where(n > 0, stat, -np.inf)


def select_channels(maps: np.ndarray, options: GridOptions) -> tuple[int, ...]:
    """The channel indices to show, in tile order (see :class:`GridOptions`)."""
    arr = _check_maps(maps)
    total = arr.shape[0]
    if options.channels is not None:
        for ch in options.channels:
            if isinstance(ch, bool) or not isinstance(ch, (int, np.integer)):
                raise OptionError(
                    f"channel index {ch!r} is not a whole number; expected indices in "
                    f"0..{total - 1}, such as 0 and 5"
                )
            if not 0 <= ch < total:
                raise OptionError(
                    f"channel index {ch} is out of range for a layer with {total} channels; "
                    f"expected 0..{total - 1}. 'featuremaps layers' lists each layer's shape."
                )
        return tuple(int(ch) for ch in options.channels)
    k = min(options.max_channels, total)
    if options.order == "index" or k == 0:
        return tuple(range(k))
    stat = _channel_statistic(arr, options.order)
    # lexsort sorts by the last key first: statistic descending, then lower index first.
    ranked = np.lexsort((np.arange(total), -stat))
    return tuple(int(i) for i in ranked[:k])


def shared_scale(opts: GridOptions, layer_range: ValueRange) -> tuple[ValueRange | None, bool]:
    """The range every tile of a layer shares (``None`` for the "channel" scale) and whether its
    colours are signed: the centring rule applied to the layer's own range (``layer_range``), to
    the range over all layers ("global"), or the given range used exactly ("fixed").

    Signedness is judged on the whole layer (and for "global" on the shared range too), so the
    colormap does not change with the channels chosen.
    """
    signed = is_signed_range(layer_range.vmin)
    if opts.scale in ("fixed", "global"):
        if opts.value_range is None:
            # Options for "global" may be built before the range is known (it needs every
            # layer), so this is checked here rather than in GridOptions.
            raise OptionError(
                f"scale {opts.scale!r} needs value_range; got none. The caller must pass the range "
                "across all layers: merge_ranges() of each layer's compute_range()."
            )
        lo, hi = opts.value_range
        if opts.scale == "fixed":
            given = fixed_range(lo, hi)
            return given, given.symmetric
        signed = signed or is_signed_range(lo)
        merged = ValueRange(lo, hi, False)
        return (centred(merged) if signed else merged), signed
    if opts.scale == "layer":
        return (centred(layer_range) if signed else layer_range), signed
    return None, signed


def _any_finite(arr: np.ndarray, stats: ChannelStats | None) -> bool:
    return bool((stats.finite > 0).any()) if stats is not None else bool(np.isfinite(arr).any())


@functools.lru_cache(maxsize=4096)
def _caption_patch(lines: tuple[str, ...], width: int, height: int) -> np.ndarray:
    """The palette indices of one tile caption on the background, cached: "#0" … "#31" recur in
    every layer, and drawing text is the slowest part of a small grid."""
    patch = np.full((height, width), BACKGROUND_INDEX, dtype=np.uint8)
    paint_caption(patch, (0, CAPTION_PAD), lines)
    patch.flags.writeable = False
    return patch


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _tile_caption(
    index: int, r: ValueRange | None, data: ValueRange, has_finite: bool, constant: bool
) -> tuple[str, ...]:
    """Caption lines: the channel index, and in per-channel mode the tile's own range."""
    if r is None:
        return (f"#{index}",)
    if not has_finite:
        return (f"#{index}", "no finite values")
    if constant:
        # The value itself says more than a range that only exists to centre a colormap.
        return (f"#{index}", f"const {data.vmin:.3g}")
    low, high = format_ends(r.vmin, r.vmax, 3)
    return (f"#{index}", f"{low} … {high}")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def make_grid(
    maps: np.ndarray,
    options: GridOptions | None = None,
    *,
    label: GridLabel | None = None,
    stats: ChannelStats | None = None,
) -> Grid:
    """Render one layer's (C, H, W) maps as a captioned mosaic with a legend.

    ``maps`` may have any real dtype and hold NaN/Inf (drawn magenta, counted); it is never
    modified. See the module docstring for the exact geometry. ``stats``, when the caller has
    :func:`featuremaps.stats.channel_stats` of these same ``maps`` already, gives each channel's
    finite count, minimum and maximum, which are then not measured again: the picture is the
    same, with fewer passes over the layer.
    """
    opts = options if options is not None else GridOptions()
    arr = _check_maps(maps)
    total, h, w = arr.shape
    if stats is not None and len(stats.finite) != total:
        raise InputError(
            f"statistics of {len(stats.finite)} channels for maps of {total}; expected the "
            "channel_stats() of these maps"
        )
    chs = select_channels(arr, opts)
    k = len(chs)
    # A prefix is a view; any other selection is a (small) copy. Neither touches ``maps``.
    block = arr[:k] if chs == tuple(range(k)) else arr[np.asarray(chs, dtype=np.intp)]
    per_channel = opts.scale == "channel"
    dtype = opts.dtype or arr.dtype.name  # what "constant" is judged in

    # Decide the range and the colormap. Signedness is judged on the whole layer (and, for
    # "global", on the shared range) so the colormap does not change with the channel choice.
    if stats is None:
        layer_range = compute_range(arr, symmetric=False)
    else:
        layer_range = range_from_extremes(stats.min, stats.max)
    value_range, signed = shared_scale(opts, layer_range)
    if opts.cmap is not None:
        cmap = opts.cmap
    else:
        cmap = DEFAULT_DIVERGING_CMAP if signed else DEFAULT_CMAP
    palette = grid_palette(cmap)  # raises OptionError for an unknown name, before any work

    if stats is None:
        finite = np.isfinite(block)
        if finite.all():
            # The common case; counting per tile is the slower reduction.
            finite_per_tile = np.full(k, h * w, dtype=np.intp)
        else:
            finite_per_tile = finite.reshape(k, h * w).sum(axis=1)
        low, high = channel_extremes(block)
    else:
        index = np.asarray(chs, dtype=np.intp)
        finite_per_tile = stats.finite[index].astype(np.intp)
        low, high = stats.min[index], stats.max[index]
    nonfinite = int(k * h * w - int(finite_per_tile.sum()))
    data_ranges = ranges_from_extremes(low, high, symmetric=False)
    if per_channel:
        tile_ranges = ranges_from_extremes(low, high, symmetric=True) if signed else data_ranges
        t = normalize_channels(block, tile_ranges, dtype=dtype, finite=not nonfinite)
    else:
        assert value_range is not None
        tile_ranges = data_ranges
        t = normalize(block, value_range, dtype=dtype, finite=not nonfinite)
    flat = [
        n > 0 and is_constant_range(r.vmin, r.vmax, dtype)
        for r, n in zip(data_ranges, finite_per_tile.tolist(), strict=True)
    ]
    constant = tuple(ch for ch, f in zip(chs, flat, strict=True) if f)

    # Quantise the whole block to colour levels at once, then enlarge by an integer factor only.
    s = max(1, math.ceil(opts.min_tile / max(h, w, 1)))
    idx = level_indices(t, LEVELS, NAN_INDEX, in_unit=not nonfinite)
    if s > 1:
        idx = idx.repeat(s, axis=1).repeat(s, axis=2)
    th, tw = h * s, w * s
    cw = max(tw, MIN_CELL_WIDTH_CHANNEL if per_channel else MIN_CELL_WIDTH)
    cap = CAPTION_PAD + (2 if per_channel else 1) * CAPTION_LINE_HEIGHT
    ncols = min(opts.columns, k)
    nrows = math.ceil(k / ncols) if k else 0
    mosaic_w = ncols * cw + (ncols + 1) * GAP
    mosaic_h = nrows * (th + cap) + (nrows + 1) * GAP

    below = above = 0
    if value_range is not None and opts.scale in ("fixed", "global"):
        finite = np.isfinite(block)
        below = int(np.count_nonzero(finite & (block < value_range.vmin)))
        above = int(np.count_nonzero(finite & (block > value_range.vmax)))
    # A layer without one finite value has no range: its bar must not read "0 ... 0".
    empty = arr.size > 0 and layer_range.vmax == 0 and not _any_finite(arr, stats)
    # The layer's values (for "global": every layer's) are one value up to rounding noise: the
    # tiles have the one constant colour and the legend says so (judged on the values, not on
    # the range centred on 0 that a signed layer is drawn with).
    measured: tuple[float, float] | None = None
    if opts.scale == "layer":
        measured = (layer_range.vmin, layer_range.vmax)
    elif opts.scale == "global" and opts.value_range is not None:
        measured = opts.value_range
    constant_note = None
    if measured is not None and arr.size and not empty and is_constant_range(*measured, dtype):
        constant_note = constant_text(dtype)
    content = _legend_content(
        opts, label, arr.shape, chs, value_range, signed, cmap, nonfinite, empty, constant_note
    )
    content = replace(content, clipped_low=below, clipped_high=above)
    top = LEGEND_HEIGHT if opts.legend else 0
    width = max(mosaic_w, legend_width(content)) if opts.legend else mosaic_w
    canvas = np.full((top + mosaic_h, width), BACKGROUND_INDEX, dtype=np.uint8)

    for i in range(k):
        row, col = divmod(i, ncols)
        x = GAP + col * (cw + GAP) + (cw - tw) // 2
        y = top + GAP + row * (th + cap + GAP)
        canvas[y : y + th, x : x + tw] = idx[i]

    # Text is cached per string and per caption, and written as palette indices: the tiles never
    # make a numpy -> Pillow -> numpy round trip.
    if opts.legend:
        paint_legend(canvas, content)
    for i in range(k):
        row, col = divmod(i, ncols)
        r = tile_ranges[i] if per_channel else None
        lines = _tile_caption(chs[i], r, data_ranges[i], bool(finite_per_tile[i] > 0), flat[i])
        patch = _caption_patch(lines, cw, cap)
        y = top + GAP + row * (th + cap + GAP) + th
        x = GAP + col * (cw + GAP)
        canvas[y : y + cap, x : x + cw] = patch

    warnings: list[str] = []
    if total == 0:
        warnings.append("the layer has no channels")
    if nonfinite:
        warnings.append(f"{_plural(nonfinite, 'NaN/Inf value')} drawn in magenta")
    if constant:
        warnings.append(f"{len(constant)} of {k} shown channels are constant")
    if value_range is not None and opts.scale in ("fixed", "global"):
        outside = below + above
        if outside:
            warnings.append(
                f"{_plural(outside, 'value')} outside the {opts.scale} range "
                f"{_fmt(value_range.vmin)} … {_fmt(value_range.vmax)} drawn in the end colours"
            )
    caution = colormap_warning(cmap)
    if caution is not None:
        warnings.append(caution)

    canvas.setflags(write=False)
    return Grid(
        indices=canvas,
        palette=palette,
        channels=chs,
        total_channels=total,
        scale=opts.scale,
        cmap=cmap,
        value_range=value_range,
        tile_ranges=tuple(tile_ranges),
        nonfinite=nonfinite,
        constant_channels=constant,
        warnings=tuple(warnings),
        clipped=(below, above),
    )


_SCALE_TEXT = {
    "channel": "per channel",
    "layer": "per layer",
    "global": "global (all layers)",
    "fixed": "fixed",
}


def _legend_content(
    opts: GridOptions,
    label: GridLabel | None,
    shape: tuple[int, ...],
    chs: tuple[int, ...],
    value_range: ValueRange | None,
    signed: bool,
    cmap: str,
    nonfinite: int,
    empty: bool = False,
    constant_note: str | None = None,
) -> LegendContent:
    total = shape[0]
    k = len(chs)
    if label is not None:
        title = f"{label.name} · {label.module_type} · {tuple(label.shape)}"
        if label.precision:
            title += f" · {label.precision}"
        stamp = label.stamp
    else:
        title = f"maps of shape {tuple(shape)}"
        stamp = None
    if total == 0:
        how = "no channels"
    elif opts.channels is not None:
        how = opts.channels_note or "explicit list"
    elif opts.order == "index":
        how = f"first {k} by index"
    else:
        how = f"top {k} by {opts.order}"
    selection = f"{k} of {total} {opts.unit}s shown ({how})"
    scale = f"scale: {_SCALE_TEXT[opts.scale]}"
    if opts.scale == "layer" and k < total:
        scale += f" (range over all {total} {opts.unit}s)"
    colour = f"colormap {cmap}"
    if value_range.symmetric if value_range is not None else signed:
        colour += ", centred on 0"
    scale = f"{scale} · {colour}"

    note: str | None
    if value_range is None:
        if signed:
            low, mid, high = "-max|x|", "0", "+max|x|"
            note = "each tile: its own -max|x| to +max|x| (see tile captions)"
        else:
            low, mid, high = "min", None, "max"
            note = "each tile: its own min to max (see tile captions)"
    elif empty and opts.scale in ("layer", "global"):
        low, mid, high = "n/a", None, "n/a"
        note = NO_FINITE_TEXT
    else:
        if constant_note is None:
            low, high = format_ends(value_range.vmin, value_range.vmax)
        else:  # the ends say the value, the note that it is one
            low, high = _fmt(value_range.vmin), _fmt(value_range.vmax)
        mid = "0" if value_range.symmetric else None
        note = constant_note
    return LegendContent(
        title=title,
        stamp=stamp,
        selection=selection,
        scale=scale,
        bar_low=low,
        bar_mid=mid,
        bar_high=high,
        bar_note=note,
        nonfinite=nonfinite,
    )
