"""One channel's map laid over the input, each cell where its receptive field is centred.

Part of the pure ``render`` stage (arrays in, uint8 pixels out; nothing is written). The placement
comes from ``featuremaps.geometry``: cell ``j`` of an axis with stride ``S`` and first-cell centre
``O`` is centred on input coordinate ``c_j = O + j·S`` (pixel centres at integer coordinates) and
is painted over the stride-sized box around it, the half-open interval ``[c_j − S/2, c_j + S/2)``.
So input pixel ``p`` takes the value of cell ``j = floor((p − O)/S + 1/2)``, the cell whose centre
is nearest (ties go to the later cell), and pixels more than half a stride beyond the outermost
centres get no colour. The report's channel view places its overlay canvas by the same rule.

Without a geometry the map is stretched over the whole image, which is the same rule with
``S = H/h`` and ``O = (S − 1)/2``; the result says so in ``placement`` so that a caption can too.

Colours follow the grids: the map's own range, centred on zero with a diverging colormap when it
has negative values (``featuremaps.render.scaling``), looked up in the colormap's 256-entry table
(``featuremaps.render.colormap``); NaN and ±Inf cells are drawn in :data:`NAN_COLOR` (magenta).

``threshold`` is in the units of the colour scale: a cell whose normalised value
``t = (x − low)/(high − low)`` (its position on the colour bar, 0 to 1) is below the threshold is
left transparent, so only strong responses show. On a map centred on zero ``t = 0.5`` is zero, so a
threshold above 0.5 keeps only positive values at least ``2·threshold − 1`` of the largest
magnitude. Non-finite cells have no position on the scale and are always drawn, so that they stay
visible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from featuremaps._errors import InputError, OptionError
from featuremaps.cells import nearest_cells
from featuremaps.render.colormap import (
    DEFAULT_CMAP,
    DEFAULT_DIVERGING_CMAP,
    NAN_COLOR,
    colorize,
    colormap_lut,
    colormap_warning,
)
from featuremaps.render.encode import encode_png
from featuremaps.render.scaling import (
    ValueRange,
    centred,
    compute_range,
    constant_text,
    fixed_range,
    format_ends,
    is_constant_range,
    is_signed_range,
    normalize,
)

if TYPE_CHECKING:
    # Only for annotations: rendering reads the numbers of a geometry and needs none of the
    # hooks and torch code that compute it (render sits downstream of geometry).
    from featuremaps.geometry import MapGeometry

__all__ = ["PLACED_BY_GEOMETRY", "STRETCHED", "Overlay", "overlay"]

STRETCHED = "stretched (no geometry)"
PLACED_BY_GEOMETRY = "receptive-field geometry"

# Floating-point slack when a pixel lies exactly on the border between two cells (empirical
# strides such as 2.0000000001 would otherwise flip a whole column).


@dataclass(frozen=True, eq=False)
class Overlay:
    """An overlay picture and the facts needed to caption it truthfully.

    ``pixels`` is (H, W, 3) uint8 (read-only), the image with the map blended in. ``placement``
    is ``"receptive-field geometry (<method>)"`` or ``"stretched (no geometry)"``. ``extent`` is
    the half-open pixel box ``(y0, x0, y1, x1)`` that the map's cells cover (None when none of the
    image is covered); pixels outside it are the image's. ``cells_shown`` of ``cells_total`` cells
    passed the threshold (non-finite cells always do; ``nonfinite`` counts them).
    """

    pixels: np.ndarray
    placement: str
    cmap: str
    value_range: ValueRange
    alpha: float
    threshold: float | None
    extent: tuple[int, int, int, int] | None
    cells_shown: int
    cells_total: int
    nonfinite: int
    warnings: tuple[str, ...] = field(default=())

    def __repr__(self) -> str:
        h, w = self.pixels.shape[:2]
        return (
            f"Overlay({w}x{h} px, {self.cells_shown} of {self.cells_total} cells, {self.cmap}, "
            f"range {self.value_range.vmin:.4g} … {self.value_range.vmax:.4g})"
        )

    @property
    def caption(self) -> str:
        """One line saying how the picture was made (placement, colours, alpha, threshold)."""
        r = self.value_range
        parts = [
            f"placed by {self.placement}",
            f"colormap {self.cmap}{', centred on 0' if r.symmetric else ''}",
            "range {} … {}".format(*format_ends(r.vmin, r.vmax)),
            f"alpha {self.alpha:g}",
        ]
        if self.threshold is not None:
            parts.append(
                f"threshold {self.threshold:g} of the range "
                f"({self.cells_shown} of {self.cells_total} cells shown)"
            )
        return " · ".join(parts)

    def to_png(self) -> bytes:
        """PNG bytes of :attr:`pixels`."""
        return encode_png(self.pixels)

    def _repr_png_(self) -> bytes:
        """Inline display in Jupyter."""
        return self.to_png()


def _unit_float(name: str, value: object, hint: str) -> float:
    """``value`` as a float in [0, 1], else an OptionError that shows what was received."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise OptionError(
            f"{name} {value!r} is not a number; expected a number from 0 to 1. {hint}"
        )
    v = float(value)
    if not 0.0 <= v <= 1.0:  # also rejects NaN
        raise OptionError(f"{name} {v:g} is outside 0 … 1; expected a number from 0 to 1. {hint}")
    return v


def _image_pixels(image: np.ndarray) -> np.ndarray:
    """The (H, W, 3) uint8 form of ``image`` (a new array; ``image`` is not modified)."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise InputError(
            f"image of shape {arr.shape}; expected (H, W) or (H, W, 3). For a (C, H, W) tensor "
            "use featuremaps.inputs.fed_picture(tensor, preprocessing)."
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"image of shape {arr.shape} is empty; expected at least 1×1 pixels.")
    if arr.dtype == np.uint8:
        pixels = arr.copy()
    elif arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all() or arr.min() < 0.0 or arr.max() > 1.0:
            low, high = (
                (float(arr[finite].min()), float(arr[finite].max()))
                if finite.any()
                else (
                    math.nan,
                    math.nan,
                )
            )
            raise InputError(
                f"float image with values {low:.4g} … {high:.4g}"
                f"{' and NaN/Inf' if not finite.all() else ''}; expected values in [0, 1] or a "
                "uint8 image. Make a picture of a normalised input with "
                "featuremaps.inputs.fed_picture(tensor, preprocessing)."
            )
        pixels = np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise InputError(
            f"image of dtype {arr.dtype}; expected uint8 (0 … 255) or floats in [0, 1]."
        )
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return np.ascontiguousarray(pixels)


def _cell_values(cell_map: np.ndarray) -> np.ndarray:
    arr = np.asarray(cell_map)
    if arr.ndim != 2:
        raise InputError(
            f"cell_map of shape {arr.shape}; expected one channel (h, w). Select it first, e.g. "
            "maps[channel]."
        )
    if arr.dtype.kind not in "fiub":
        raise InputError(
            f"cell_map of dtype {arr.dtype}; expected real numbers. Convert with .real or "
            ".astype(float)."
        )
    if arr.size == 0:
        raise InputError(f"cell_map of shape {arr.shape} is empty; expected at least one cell.")
    return arr


def _axis_cells(stride: float, offset: float, pixels: int, cells: int) -> np.ndarray:
    """For each pixel along one axis, the index of the cell painted there, or -1 for none."""
    j = nearest_cells(np.arange(pixels, dtype=np.float64), stride, offset)
    j[(j < 0) | (j >= cells)] = -1
    return j


def _stretched_axis(pixels: int, cells: int) -> tuple[float, float]:
    """Nearest-neighbour stretching of ``cells`` over ``pixels`` as (stride, offset)."""
    stride = pixels / cells
    return stride, (stride - 1) / 2


def _check_geometry(geometry: MapGeometry, shape: tuple[int, int]) -> None:
    # Duck-typed rather than isinstance, to keep render free of the geometry module (see imports).
    if not all(hasattr(geometry, a) for a in ("y", "x", "shape", "method", "name")):
        raise OptionError(
            f"geometry of type {type(geometry).__name__}; expected a MapGeometry from "
            "featuremaps.geometry.compute_geometry, or None to stretch the map."
        )
    if tuple(geometry.shape) != shape:
        raise InputError(
            f"geometry of layer {geometry.name!r} describes a {geometry.shape[0]}×"
            f"{geometry.shape[1]} map; cell_map is {shape[0]}×{shape[1]}. Pass the geometry of "
            "the layer the map comes from."
        )
    for label, axis in (("y", geometry.y), ("x", geometry.x)):
        if not (math.isfinite(axis.stride) and axis.stride > 0 and math.isfinite(axis.offset)):
            raise OptionError(
                f"geometry of layer {geometry.name!r} has {label} stride {axis.stride} and "
                f"offset {axis.offset}; expected a finite stride > 0 and a finite offset. Pass "
                "geometry=None to stretch the map instead."
            )


def _value_range(
    values: np.ndarray, value_range: tuple[float, float] | None
) -> tuple[ValueRange, bool]:
    """The colour range and whether it is diverging, by the grids' rules."""
    if value_range is not None:
        try:
            lo, hi = (float(v) for v in value_range)
        except (TypeError, ValueError):
            raise OptionError(
                f"value_range={value_range!r}; expected (low, high), two numbers."
            ) from None
        # Used exactly as given (scale "fixed" in the grids); ValueRange rejects non-finite or
        # reversed ends.
        fixed = fixed_range(lo, hi)
        return fixed, fixed.symmetric
    data = compute_range(values, symmetric=False)
    if is_signed_range(data.vmin):
        return centred(data), True
    return data, False


def overlay(
    image: np.ndarray,
    cell_map: np.ndarray,
    geometry: MapGeometry | None,
    *,
    alpha: float = 0.6,
    threshold: float | None = None,
    cmap: str | None = None,
    value_range: tuple[float, float] | None = None,
) -> Overlay:
    """Blend one channel's map over the input, each cell at its receptive-field centre.

    Args:
        image: the input as fed, (H, W) or (H, W, 3), uint8 or floats in [0, 1].
        cell_map: one channel of a layer's output, (h, w), any real dtype; NaN/Inf allowed.
        geometry: the layer's :class:`~featuremaps.geometry.MapGeometry` (its ``shape`` must be
            ``(h, w)``); None stretches the map over the image (``placement`` says so).
        alpha: opacity of the map, 0 (image only) to 1 (map only where it is drawn).
        threshold: 0 to 1 on the colour scale; cells whose normalised value is below it are
            left transparent. None (or 0) draws every cell. See the module docstring.
        cmap: a matplotlib colormap name; None picks viridis, or RdBu_r centred on zero when the
            map (or ``value_range``) is signed.
        value_range: ``(low, high)`` mapped to the ends of the colormap, used as given; None
            uses the map's own range (centred on zero when it has negative values).

    Returns:
        An :class:`Overlay`: (H, W, 3) uint8 ``pixels`` and how they were made. Nothing is
        written and neither ``image`` nor ``cell_map`` is modified.
    """
    a = _unit_float("alpha", alpha, "For example 0.6 (0 shows only the image).")
    thr = (
        None
        if threshold is None
        else _unit_float(
            "threshold",
            threshold,
            "It is a fraction of the colour range: for example 0.5 shows only the upper half.",
        )
    )
    pixels = _image_pixels(image)
    values = _cell_values(cell_map)
    rng, signed = _value_range(values, value_range)
    name = cmap if cmap is not None else (DEFAULT_DIVERGING_CMAP if signed else DEFAULT_CMAP)
    lut = colormap_lut(name)  # raises OptionError with the closest names

    big_h, big_w = pixels.shape[:2]
    h, w = values.shape
    if geometry is None:
        axis_y, axis_x = _stretched_axis(big_h, h), _stretched_axis(big_w, w)
        placement = STRETCHED
    else:
        _check_geometry(geometry, (h, w))
        axis_y = (geometry.y.stride, geometry.y.offset)
        axis_x = (geometry.x.stride, geometry.x.offset)
        placement = f"{PLACED_BY_GEOMETRY} ({geometry.method})"

    t = normalize(values, rng)  # float32 in [0, 1], NaN for NaN/±Inf
    nan = np.isnan(t)
    # Non-finite cells have no place on the scale and are always drawn, in magenta.
    shown = np.ones(t.shape, dtype=bool) if thr is None else (t >= np.float32(thr)) | nan
    colours = colorize(t, lut, NAN_COLOR)

    rows = _axis_cells(*axis_y, big_h, h)
    cols = _axis_cells(*axis_x, big_w, w)
    ys, xs = np.flatnonzero(rows >= 0), np.flatnonzero(cols >= 0)
    extent: tuple[int, int, int, int] | None = None
    if ys.size and xs.size:
        # The covered pixels form one box: cell indices are monotone along each axis.
        y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
        extent = (y0, x0, y1, x1)
        r, c = rows[y0:y1], cols[x0:x1]
        mask = shown[np.ix_(r, c)]
        if a > 0.0 and mask.any():
            paint = colours[np.ix_(r, c)].astype(np.float32)
            box = pixels[y0:y1, x0:x1]
            under = box.astype(np.float32)
            blended = np.rint(under * np.float32(1.0 - a) + paint * np.float32(a))
            box[mask] = np.clip(blended, 0, 255).astype(np.uint8)[mask]

    nonfinite = int(nan.sum())
    warnings: list[str] = []
    if geometry is None:
        warnings.append("no geometry: the map is stretched over the image, so cells may be off")
    if nonfinite:
        noun = "cell" if nonfinite == 1 else "cells"
        warnings.append(f"{nonfinite} NaN/Inf {noun} drawn in magenta")
    if extent is None:
        warnings.append("the map's cells cover none of the image")
    data = compute_range(values, symmetric=False)
    if nonfinite < values.size and is_constant_range(data.vmin, data.vmax, values.dtype):
        # Drawn in the one constant colour by normalize, which applies the same rule.
        warnings.append(f"the map is {constant_text(values.dtype)}: one colour")
    caution = colormap_warning(name)
    if caution is not None:
        warnings.append(caution)
    pixels.setflags(write=False)
    return Overlay(
        pixels=pixels,
        placement=placement,
        cmap=name,
        value_range=rng,
        alpha=a,
        threshold=thr,
        extent=extent,
        cells_shown=int(shown.sum()),
        cells_total=int(values.size),
        nonfinite=nonfinite,
        warnings=tuple(warnings),
    )
