"""Value ranges and normalisation: the step that decides which number becomes which colour.

Part of the pure ``render`` stage (arrays in, pixels out). Everything here works on finite values
only: NaN and ±Inf never widen a range, and they come out of :func:`normalize` as NaN so the
colouring step can paint them in a colour no colormap uses. Inputs are never modified.

One rule decides when a range is *constant*: :func:`is_constant_range`, a spread no wider than
rounding noise of the data type the values were computed in (exactly constant maps are its
special case). Every picture that builds a colour scale asks it, so rounding noise is never
stretched over a whole colormap, and every legend words it with :func:`constant_text`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from featuremaps._errors import OptionError

__all__ = [
    "NO_FINITE_TEXT",
    "RESOLUTION_ULPS",
    "DTypeLike",
    "ScaleMode",
    "ValueRange",
    "centred",
    "channel_extremes",
    "channel_ranges",
    "compute_range",
    "constant_mask",
    "constant_text",
    "dtype_name",
    "fixed_range",
    "format_ends",
    "is_constant_range",
    "is_signed",
    "is_signed_range",
    "merge_ranges",
    "normalize",
    "normalize_channels",
    "range_from_extremes",
    "ranges_from_extremes",
    "resolution",
]

ScaleMode = Literal["channel", "layer", "global", "fixed"]

# A range is constant when its spread is at most this many units of the data type's resolution
# (machine epsilon times the larger |end|). One rounding costs half a unit; a LayerNorm output
# has been through several (mean, variance, reciprocal square root, scale and shift) and a
# statistic of it (a token's L2 norm over D dims) adds its own: the norms of float32 LayerNorm
# outputs of centred tokens (D from 64 to 4096, no LayerNorm epsilon) spread over 2.3 to 2.5
# units. Real structure starts not far above: LayerNorm's epsilon shrinks low-variance tokens,
# which spreads vit_b_16's layer-0 token norms over 6 to 30 units, the same in a float64
# recomputation. 4 holds the first and draws the second. Rounding amplified by cancellation
# (tokens whose mean is many times their spread) can exceed it and is then drawn: this rule
# only judges the values' own resolution, not how they were computed.
RESOLUTION_ULPS = 4

# Machine epsilon of the dtypes values are computed in; bfloat16 is not a numpy dtype.
_EPS = {
    "float64": float(np.finfo(np.float64).eps),
    "float32": float(np.finfo(np.float32).eps),
    "float16": float(np.finfo(np.float16).eps),
    "bfloat16": 2.0**-7,
}

# A dtype as numpy has it, or its name ("bfloat16" has no numpy dtype).
DTypeLike = str | np.dtype[Any]


def dtype_name(dtype: DTypeLike) -> str:
    """The name of ``dtype`` as legends print it (``"float32"``, ``"bfloat16"``, ``"int64"``)."""
    return str(dtype).removeprefix("torch.") if isinstance(dtype, str) else np.dtype(dtype).name


def resolution(dtype: DTypeLike) -> float:
    """The relative resolution of ``dtype``: machine epsilon for a float dtype, 0 for exact
    types (integers, bools), of which only an exactly constant range is constant."""
    return _EPS.get(dtype_name(dtype), 0.0)


def is_constant_range(lo: float, hi: float, dtype: DTypeLike) -> bool:
    """Whether the range ``lo .. hi`` of values computed in ``dtype`` is constant: its spread
    is at most :data:`RESOLUTION_ULPS` units of ``dtype``'s resolution at ``max(|lo|, |hi|)``,
    i.e. rounding noise, not structure. ``lo == hi`` is the exact case; a range without finite
    ends (a map without finite values) is not constant, it has no range."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        return False
    return hi - lo <= RESOLUTION_ULPS * resolution(dtype) * max(abs(lo), abs(hi))


def constant_mask(lo: np.ndarray, hi: np.ndarray, dtype: DTypeLike) -> np.ndarray:
    """:func:`is_constant_range` for arrays of ends (broadcast), in float64."""
    lo64, hi64 = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    with np.errstate(all="ignore"):
        scale = RESOLUTION_ULPS * resolution(dtype) * np.maximum(np.abs(lo64), np.abs(hi64))
        return np.asarray(
            np.isfinite(lo64) & np.isfinite(hi64) & (lo64 <= hi64) & (hi64 - lo64 <= scale)
        )


def constant_text(dtype: DTypeLike) -> str:
    """How every picture and the report word a constant range of values computed in ``dtype``."""
    return f"constant (spread below {dtype_name(dtype)} resolution)"


# How every picture words a map without one finite value: it has no range ("n/a" at both ends).
NO_FINITE_TEXT = "no finite values: every cell is NaN/Inf"


def format_ends(lo: float, hi: float, digits: int = 4) -> tuple[str, str]:
    """The two ends of a range as legends print them: ``digits`` significant digits, more where
    those would print two different ends alike (a narrow but real range, drawn over the whole
    colormap, must not read "27.71 … 27.71")."""
    low, high = f"{lo:.{digits}g}", f"{hi:.{digits}g}"
    while low == high and lo != hi and digits < 17:
        digits += 1
        low, high = f"{lo:.{digits}g}", f"{hi:.{digits}g}"
    return low, high


@dataclass(frozen=True)
class ValueRange:
    """The data values that map to the two ends of a colormap.

    ``symmetric`` ranges are centred on zero (``vmin == -vmax``) so the middle colour of a
    diverging map means exactly 0.
    """

    vmin: float
    vmax: float
    symmetric: bool

    def __post_init__(self) -> None:
        # A range is user-facing through GridOptions.value_range, so a bad one is an option error.
        if not (math.isfinite(self.vmin) and math.isfinite(self.vmax)):
            raise OptionError(
                f"value range ({self.vmin}, {self.vmax}) is not finite; expected two finite "
                "numbers. Pass finite bounds such as (0, 1)."
            )
        if self.vmin > self.vmax:
            raise OptionError(
                f"value range ({self.vmin}, {self.vmax}) has low > high; expected (low, high) "
                f"with low <= high. Swap them: ({self.vmax}, {self.vmin})."
            )
        if self.symmetric and self.vmin != -self.vmax:
            raise OptionError(
                f"symmetric value range ({self.vmin}, {self.vmax}) is not centred on zero; "
                "expected vmin == -vmax. Use symmetric=False for an off-centre range."
            )


def is_signed(x: np.ndarray) -> bool:
    """Return True when any finite value of ``x`` is negative (NaN and -Inf do not count)."""
    mm = _finite_min_max(np.asarray(x))
    return mm is not None and mm[0] < 0


def is_signed_range(low: float | None) -> bool:
    """The centring rule, for a range already measured: signed when its low end is negative."""
    return low is not None and low < 0


def centred(r: ValueRange) -> ValueRange:
    """The smallest range centred on zero that holds ``r`` (how signed data is drawn)."""
    m = max(-r.vmin, r.vmax)
    return ValueRange(-m if m > 0 else 0.0, m, True)


def fixed_range(lo: float, hi: float) -> ValueRange:
    """A range given by the user, used exactly: diverging only when it is centred on zero."""
    return ValueRange(lo, hi, lo < 0 < hi and lo == -hi)


def _finite_min_max(a: np.ndarray) -> tuple[float, float] | None:
    """Min and max over the finite values of ``a``; None when it has none."""
    if a.size == 0:
        return None
    lo, hi = float(a.min()), float(a.max())
    # NaN propagates through min and max, and ±Inf would be one of them: finite ends mean every
    # value is finite, without a mask over the whole array (the common case).
    if math.isfinite(lo) and math.isfinite(hi):
        return lo, hi
    finite = np.isfinite(a)
    if not finite.any():
        return None
    vals = a[finite]
    return float(vals.min()), float(vals.max())


def _make_range(lo: float, hi: float, symmetric: bool) -> ValueRange:
    if symmetric:
        m = max(abs(lo), abs(hi))
        # 0.0 rather than -0.0 so a legend never prints "-0".
        return ValueRange(-m if m > 0 else 0.0, m, True)
    return ValueRange(lo, hi, False)


def compute_range(x: np.ndarray, *, symmetric: bool) -> ValueRange:
    """Range of the finite values of ``x``; ``symmetric`` gives ``(-m, m)`` with ``m = max|x|``.

    An array without finite values gives ``(0, 0)``.
    """
    mm = _finite_min_max(np.asarray(x))
    if mm is None:
        return ValueRange(0.0, 0.0, symmetric)
    return _make_range(mm[0], mm[1], symmetric)


def channel_ranges(x: np.ndarray, *, symmetric: bool) -> tuple[ValueRange, ...]:
    """One :func:`compute_range` per entry of the first axis, computed in one vectorised pass."""
    return ranges_from_extremes(*channel_extremes(x), symmetric=symmetric)


def channel_extremes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The finite minimum and maximum of each entry of the first axis, as float64 (``inf`` and
    ``-inf`` for an entry without finite values)."""
    a = np.asarray(x)
    if a.shape[0] == 0:
        return np.zeros(0), np.zeros(0)
    if a.dtype.kind != "f":
        # Integer and bool data: the ±inf fill values below need a float array.
        a = a.astype(np.float64)
    flat = a.reshape(a.shape[0], -1)
    finite = np.isfinite(flat)
    if finite.all():
        src_lo: np.ndarray = flat
        src_hi: np.ndarray = flat
    else:
        # Replace non-finite values by neutral elements instead of boolean-indexing row by row.
        src_lo = np.where(finite, flat, np.inf)
        src_hi = np.where(finite, flat, -np.inf)
    lo = np.min(src_lo, axis=1, initial=np.inf).astype(np.float64)
    hi = np.max(src_hi, axis=1, initial=-np.inf).astype(np.float64)
    return lo, hi


def ranges_from_extremes(
    lo: np.ndarray, hi: np.ndarray, *, symmetric: bool
) -> tuple[ValueRange, ...]:
    """The ranges :func:`channel_ranges` gives, from each channel's finite minimum and maximum
    measured already (NaN, or a minimum above the maximum, for a channel without finite values:
    it gets ``(0, 0)``)."""
    out = []
    for a_lo, a_hi in zip(np.asarray(lo).tolist(), np.asarray(hi).tolist(), strict=True):
        if not a_lo <= a_hi:  # no finite values in this channel
            out.append(ValueRange(0.0, 0.0, symmetric))
        else:
            out.append(_make_range(a_lo, a_hi, symmetric))
    return tuple(out)


def range_from_extremes(lo: np.ndarray, hi: np.ndarray) -> ValueRange:
    """The range :func:`compute_range` gives for a whole layer, from its channels' finite minima
    and maxima (NaN for a channel without finite values): ``(0, 0)`` when no channel has one."""
    have = np.asarray(lo) <= np.asarray(hi)
    if not have.any():
        return ValueRange(0.0, 0.0, False)
    return ValueRange(float(np.min(lo[have])), float(np.max(hi[have])), False)


def merge_ranges(ranges: Iterable[ValueRange]) -> ValueRange:
    """Union of ranges (for one scale shared by all layers).

    The union is symmetric when every input is; an empty input gives ``(0, 0)``.
    """
    rs = list(ranges)
    if not rs:
        return ValueRange(0.0, 0.0, False)
    sym = all(r.symmetric for r in rs)
    return ValueRange(min(r.vmin for r in rs), max(r.vmax for r in rs), sym)


def _normalize_bounds(
    x: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    symmetric: np.ndarray,
    dtype: DTypeLike | None = None,
    finite: bool = False,
) -> np.ndarray:
    """Map ``x`` into [0, 1] with broadcastable bounds; NaN where ``x`` is not finite
    (``finite``: the caller knows every value is, and the check is skipped).

    Clipping first keeps ``x - lo`` within ``hi - lo``, so the only overflow left is a width
    wider than the float's maximum, handled by halving both sides. Float32/float16 data with
    float32-exact bounds (the common case: ranges computed from the data) is worked in float32,
    about 30x faster than float64 with the same guarantees; everything else in float64. The
    choice never depends on the values, so one channel normalised alone or in a block gives
    the same result. A range that is constant for ``dtype`` (default: ``x``'s own) has no scale.
    """
    a = np.asarray(x)
    flat = constant_mask(lo, hi, a.dtype if dtype is None else dtype)
    work: type[np.floating] = np.float64
    if a.dtype in (np.float32, np.float16):
        with np.errstate(over="ignore"):
            # Bounds beyond float32's maximum become ±inf here and fail the exactness test.
            lo32, hi32 = lo.astype(np.float32), hi.astype(np.float32)
        if np.array_equal(lo32, lo) and np.array_equal(hi32, hi):
            work, lo, hi = np.float32, lo32, hi32
    with np.errstate(all="ignore"):
        xw = a.astype(work, copy=False)
        xc = np.clip(xw, lo, hi)  # a new array
        width = hi - lo
        wide = np.isinf(width)
        any_wide = bool(np.any(wide))
        # ``xc`` is needed again only for a range wider than the float's maximum.
        in_place = isinstance(xc, np.ndarray) and xc.ndim and not any_wide
        t = np.subtract(xc, lo, out=xc if in_place else None)
        t /= width
        if any_wide:
            t = np.where(wide, (xc * 0.5 - lo * 0.5) / (hi * 0.5 - lo * 0.5), t)
        if np.any(flat):
            # A constant range has no scale: values on it get the centre colour (symmetric,
            # i.e. exactly zero) or the low end; values off it are clipped to an end as usual.
            # Within a range constant up to rounding noise, the noise is not stretched either.
            on_value = np.where(symmetric, 0.5, 0.0)
            const = np.where(xw > hi, 1.0, np.where(xw < lo, 0.0, on_value))
            t = np.where(flat, const, t)
    t = t.astype(np.float32, copy=False)
    return t if finite else _nan_where_nonfinite(t, a)


def _nan_where_nonfinite(t: np.ndarray, x: np.ndarray) -> np.ndarray:
    # Clipping turned ±Inf into the end values; they must stay recognisable as non-finite.
    finite = np.isfinite(x)
    if not finite.all():
        t = np.where(finite, t, np.float32(np.nan)).astype(np.float32, copy=False)
    return t


def normalize(
    x: np.ndarray, r: ValueRange, *, dtype: DTypeLike | None = None, finite: bool = False
) -> np.ndarray:
    """Map ``x`` to float32 in [0, 1] through range ``r``; values outside ``r`` are clipped.

    Non-finite inputs come out as NaN. A constant range (:func:`is_constant_range` for
    ``dtype``, the dtype the values were computed in; default ``x``'s own) never divides by
    zero and never stretches rounding noise: a symmetric ``(0, 0)`` range maps to 0.5 (the
    centre colour), any other constant range to 0.0. ``finite=True`` says that every value of
    ``x`` is finite (the caller has counted them), which spares a pass over ``x``.
    """
    return _normalize_bounds(
        np.asarray(x),
        np.asarray(r.vmin, dtype=np.float64),
        np.asarray(r.vmax, dtype=np.float64),
        np.asarray(r.symmetric, dtype=bool),
        dtype,
        finite,
    )


def normalize_channels(
    x: np.ndarray,
    ranges: Sequence[ValueRange],
    *,
    dtype: DTypeLike | None = None,
    finite: bool = False,
) -> np.ndarray:
    """Normalise each entry of the first axis of ``x`` with its own range, in one pass (a
    constant range and ``finite`` as in :func:`normalize`)."""
    a = np.asarray(x)
    if len(ranges) != a.shape[0]:
        raise OptionError(
            f"got {len(ranges)} ranges for {a.shape[0]} channels; expected one range per "
            "channel. Compute them with channel_ranges()."
        )
    extra = (1,) * (a.ndim - 1)
    lo = np.array([r.vmin for r in ranges], dtype=np.float64).reshape(-1, *extra)
    hi = np.array([r.vmax for r in ranges], dtype=np.float64).reshape(-1, *extra)
    sym = np.array([r.symmetric for r in ranges], dtype=bool).reshape(-1, *extra)
    return _normalize_bounds(a, lo, hi, sym, dtype, finite)
