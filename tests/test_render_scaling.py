"""Property tests for featuremaps.render.scaling: ranges and normalisation vs. numpy oracles."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from featuremaps._errors import OptionError
from featuremaps.render import (
    ValueRange,
    channel_ranges,
    compute_range,
    is_signed,
    merge_ranges,
    normalize,
    normalize_channels,
)
from featuremaps.render.colormap import level_indices

# No deadline: the first example pays for imports. Applied per test so no global profile leaks
# into other test modules.
props = settings(deadline=None, max_examples=150)

FLOAT_DTYPES = st.sampled_from([np.float16, np.float32, np.float64])

# Any float array, NaN and ±Inf included, up to 3-D.
any_arrays = FLOAT_DTYPES.flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6))
)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def value_ranges(draw: st.DrawFn) -> ValueRange:
    """Arbitrary valid ranges, including constant ones and ones wider than float64's maximum."""
    if draw(st.booleans()):
        m = abs(draw(finite_floats))
        return ValueRange(-m if m > 0 else 0.0, m, True)
    a, b = sorted((draw(finite_floats), draw(finite_floats)))
    return ValueRange(a, b, False)


def finite_values(x: np.ndarray) -> np.ndarray:
    return x[np.isfinite(x)]


def check_normalized(out: np.ndarray, x: np.ndarray) -> None:
    assert out.dtype == np.float32
    assert out.shape == x.shape
    # NaN exactly where the input is not finite, [0, 1] everywhere else.
    np.testing.assert_array_equal(np.isnan(out), ~np.isfinite(x))
    fin = out[~np.isnan(out)]
    assert np.all((fin >= 0.0) & (fin <= 1.0))


@props
@given(any_arrays, st.booleans())
def test_normalize_own_range_is_unit_interval_or_nan(x: np.ndarray, symmetric: bool) -> None:
    before = x.copy()
    out = normalize(x, compute_range(x, symmetric=symmetric))
    check_normalized(out, x)
    np.testing.assert_array_equal(x, before)  # NaN-aware: equal_nan is the default here


@props
@given(any_arrays, value_ranges())
def test_normalize_any_range_clips_into_unit_interval(x: np.ndarray, r: ValueRange) -> None:
    before = x.copy()
    out = normalize(x, r)
    check_normalized(out, x)
    np.testing.assert_array_equal(x, before)


@props
@given(
    FLOAT_DTYPES,
    hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
    finite_floats,
    st.booleans(),
)
def test_constant_arrays_never_give_nan_inf_or_warnings(
    dtype: type[np.floating], shape: tuple[int, ...], value: float, symmetric: bool
) -> None:
    with np.errstate(over="ignore"):
        x = np.full(shape, value).astype(dtype)
    if not np.isfinite(x).all():  # the value overflowed the dtype: not a finite constant
        return
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        r = compute_range(x, symmetric=symmetric)
        out = normalize(x, r)
    assert np.isfinite(out).all()
    # A constant array is its own (degenerate) range unless made symmetric around zero.
    if not symmetric or x.flat[0] == 0:
        expected = 0.5 if symmetric else 0.0
        np.testing.assert_array_equal(out, np.float32(expected))


@props
@given(any_arrays)
def test_symmetric_range_is_centred_and_maps_zero_to_half(x: np.ndarray) -> None:
    r = compute_range(x, symmetric=True)
    assert r.symmetric
    assert r.vmin == -r.vmax
    assert normalize(np.zeros(3), r).tolist() == [0.5, 0.5, 0.5]
    fin = finite_values(x).astype(np.float64)
    m = float(np.abs(fin).max()) if fin.size else 0.0
    assert r.vmax == m


@props
@given(
    FLOAT_DTYPES.flatmap(
        lambda dt: hnp.arrays(dt, st.integers(1, 40), elements={"allow_nan": False})
    ),
    value_ranges(),
)
def test_normalize_preserves_order(x: np.ndarray, r: ValueRange) -> None:
    finite = x[np.isfinite(x)]
    order = np.argsort(finite, kind="stable")
    out = normalize(finite, r)[order]
    assert np.all(np.diff(out) >= 0)
    own = normalize(finite, compute_range(finite, symmetric=False))[order]
    assert np.all(np.diff(own) >= 0)


@props
@given(any_arrays, st.booleans())
def test_compute_range_matches_numpy_on_finite_values(x: np.ndarray, symmetric: bool) -> None:
    r = compute_range(x, symmetric=symmetric)
    with_nan = np.where(np.isfinite(x), x.astype(np.float64), np.nan)
    if not np.isfinite(x).any():
        assert (r.vmin, r.vmax) == (0.0, 0.0)
        return
    lo, hi = float(np.nanmin(with_nan)), float(np.nanmax(with_nan))
    if symmetric:
        assert (r.vmin, r.vmax) == (-max(-lo, hi), max(-lo, hi)) or max(-lo, hi) == 0
    else:
        assert (r.vmin, r.vmax) == (lo, hi)


@props
@given(
    FLOAT_DTYPES.flatmap(
        lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=2, max_dims=3, max_side=5))
    ),
    st.booleans(),
)
def test_channel_ranges_and_normalize_channels_match_per_channel_calls(
    x: np.ndarray, symmetric: bool
) -> None:
    ranges = channel_ranges(x, symmetric=symmetric)
    assert ranges == tuple(compute_range(c, symmetric=symmetric) for c in x)
    out = normalize_channels(x, ranges)
    expected = np.stack([normalize(c, r) for c, r in zip(x, ranges, strict=True)])
    np.testing.assert_array_equal(out, expected)


@props
@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(max_dims=2, max_side=6),
        elements=st.floats(-1e6, 1e6),
    ),
    st.floats(-1e6, 1e6),
    st.floats(1e-3, 1e6),
)
def test_normalize_matches_the_plain_formula(x: np.ndarray, lo: float, width: float) -> None:
    r = ValueRange(lo, lo + width, False)
    expected = np.clip((x - r.vmin) / (r.vmax - r.vmin), 0.0, 1.0)
    np.testing.assert_allclose(normalize(x, r), expected, rtol=0, atol=1e-6)


@props
@given(any_arrays)
def test_is_signed_means_a_negative_finite_value(x: np.ndarray) -> None:
    assert is_signed(x) == bool(np.any(finite_values(x) < 0))


@props
@given(st.lists(value_ranges(), max_size=5))
def test_merge_ranges_is_the_union(ranges: list[ValueRange]) -> None:
    m = merge_ranges(ranges)
    if not ranges:
        assert (m.vmin, m.vmax) == (0.0, 0.0)
        return
    assert m.vmin == min(r.vmin for r in ranges)
    assert m.vmax == max(r.vmax for r in ranges)
    assert m.symmetric == all(r.symmetric for r in ranges)


def test_normalize_known_values() -> None:
    x = np.array([-1.0, 0.0, 1.0, 2.0, 3.0, np.nan, np.inf, -np.inf], dtype=np.float32)
    out = normalize(x, ValueRange(0.0, 2.0, False))
    np.testing.assert_array_equal(out[:5], [0.0, 0.0, 0.5, 1.0, 1.0])
    assert np.isnan(out[5:]).all()


def test_constant_range_maps_to_low_end_or_centre() -> None:
    x = np.array([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(normalize(x, ValueRange(2.0, 2.0, False)), [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(normalize(x - 2, ValueRange(0.0, 0.0, True)), [0.0, 0.5, 1.0])


def test_compute_range_without_finite_values_is_zero() -> None:
    r = compute_range(np.array([np.nan, np.inf]), symmetric=True)
    assert (r.vmin, r.vmax, r.symmetric) == (0.0, 0.0, True)
    assert str(r.vmin) == "0.0"  # not "-0.0", which a legend would print as "-0"


def test_value_range_rejects_reversed_bounds() -> None:
    with pytest.raises(OptionError, match=r"has low > high.*Swap them"):
        ValueRange(2.0, 1.0, False)


def test_value_range_rejects_non_finite_bounds() -> None:
    with pytest.raises(OptionError, match=r"is not finite; expected two finite numbers"):
        ValueRange(0.0, float("inf"), False)


def test_value_range_rejects_off_centre_symmetric() -> None:
    with pytest.raises(OptionError, match=r"is not centred on zero"):
        ValueRange(-1.0, 2.0, True)


def test_normalize_channels_needs_one_range_per_channel() -> None:
    with pytest.raises(OptionError, match=r"got 1 ranges for 2 channels"):
        normalize_channels(np.zeros((2, 3)), [ValueRange(0.0, 1.0, False)])


@props
@given(any_arrays, value_ranges(), st.booleans(), st.integers(1, 256))
def test_the_shortcuts_for_known_finite_values_give_the_same_colour_levels(
    x: np.ndarray, r: ValueRange, per_channel: bool, levels: int
) -> None:
    # What a grid knows from its statistics (every value finite) and that the normalised
    # values are its own to scale in place must not change a single level index.
    finite = bool(np.isfinite(x).all())
    before = x.copy()
    if per_channel and x.shape[0]:
        ranges = channel_ranges(x, symmetric=r.symmetric)
        plain = normalize_channels(x, ranges)
        quick = normalize_channels(x, ranges, finite=finite)
        again = normalize_channels(x, ranges, finite=finite)
    else:
        plain, quick, again = normalize(x, r), normalize(x, r, finite=finite), normalize(x, r)
    np.testing.assert_array_equal(quick, plain)
    expected = level_indices(plain, levels, 255)
    np.testing.assert_array_equal(level_indices(plain, levels, 255), expected)  # not changed
    np.testing.assert_array_equal(level_indices(quick, levels, 255, in_unit=finite), expected)
    np.testing.assert_array_equal(level_indices(again, levels, 255, in_unit=finite), expected)
    np.testing.assert_array_equal(x, before)
