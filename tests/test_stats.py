"""Per-channel statistics: numpy as the oracle, float64 accuracy, NaN/Inf left out, no mutation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from featuremaps import InputError
from featuremaps.stats import STAT_NAMES, channel_stats, summarize


def _oracle(maps: np.ndarray) -> dict[str, list[float]]:
    """The same statistics the slow, obvious way: one channel at a time, finite values only."""
    out: dict[str, list[float]] = {name: [] for name in STAT_NAMES}
    for channel in maps.reshape(maps.shape[0], -1).astype(np.float64):
        v = channel[np.isfinite(channel)]
        if v.size == 0:
            for name in STAT_NAMES:
                out[name].append(np.nan)
            continue
        out["mean"].append(float(np.mean(v)))
        out["std"].append(float(np.std(v)))
        out["min"].append(float(np.min(v)))
        out["max"].append(float(np.max(v)))
        out["zeros"].append(float(np.mean(v == 0)))
    return out


def _assert_matches(maps: np.ndarray) -> None:
    stats = channel_stats(maps)
    expected = _oracle(maps)
    for name in STAT_NAMES:
        np.testing.assert_allclose(
            getattr(stats, name), expected[name], rtol=1e-12, atol=1e-12, err_msg=name
        )


def test_matches_numpy_on_relu_like_maps() -> None:
    rng = np.random.default_rng(0)
    maps = np.maximum(rng.normal(size=(16, 9, 7)), 0).astype(np.float32)
    _assert_matches(maps)
    assert channel_stats(maps).finite.tolist() == [63] * 16


def test_long_channels_with_holes_match_numpy() -> None:
    # Channels of 4096 values and more take other loops (zeros counted row by row).
    rng = np.random.default_rng(5)
    maps = np.maximum(rng.normal(size=(6, 70, 80)), 0).astype(np.float32)
    _assert_matches(maps)
    maps[1, 3, 4] = np.nan
    maps[2] = np.inf
    maps[3, :2] = -np.inf
    _assert_matches(maps)


def test_nan_and_inf_are_left_out_and_counted() -> None:
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(4, 5, 5)).astype(np.float32)
    maps[0, 0, 0] = np.nan
    maps[1, 2, 3] = np.inf
    maps[1, 0, 1] = -np.inf
    maps[2] = np.nan  # a channel without any finite value
    maps[3, :2] = 0.0
    _assert_matches(maps)
    stats = channel_stats(maps)
    assert stats.finite.tolist() == [24, 23, 0, 25]
    assert all(np.isnan(getattr(stats, name)[2]) for name in STAT_NAMES)
    assert stats.zeros[3] == pytest.approx(10 / 25)
    # Strict JSON comes later (the writer turns NaN into null); here NaN stays a float.
    assert np.isnan(stats.to_json()["mean"][2])


def test_float64_accumulation_at_a_large_mean() -> None:
    # One-pass float32 sums give a variance of about 8 instead of 1 at a mean of 1e4.
    rng = np.random.default_rng(2)
    maps = (1e4 + rng.normal(size=(2, 256, 256))).astype(np.float32)
    stats = channel_stats(maps)
    exact = maps.astype(np.float64).reshape(2, -1)
    np.testing.assert_allclose(stats.mean, exact.mean(axis=1), rtol=1e-13)
    np.testing.assert_allclose(stats.std, exact.std(axis=1), rtol=1e-9)
    assert np.all(np.abs(stats.std - 1.0) < 0.01)


def test_integer_bool_and_empty_inputs() -> None:
    _assert_matches(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    stats = channel_stats(np.array([[True, False, False, True]]))
    assert stats.mean.tolist() == [0.5] and stats.zeros.tolist() == [0.5]
    empty = channel_stats(np.zeros((0, 3, 3), dtype=np.float32))
    assert empty.mean.shape == (0,) and empty.to_json() == {name: [] for name in STAT_NAMES}
    no_values = channel_stats(np.zeros((2, 0, 4), dtype=np.float32))
    assert no_values.finite.tolist() == [0, 0] and np.isnan(no_values.max).all()


def test_input_is_not_modified() -> None:
    maps = np.random.default_rng(3).normal(size=(3, 4, 4)).astype(np.float32)
    maps[0, 0, 0] = np.nan
    before = maps.copy()
    channel_stats(maps)
    np.testing.assert_array_equal(maps, before)


def test_bad_maps_are_refused() -> None:
    with pytest.raises(InputError, match=r"maps of shape \(\); expected \(C, \.\.\.\)"):
        channel_stats(np.float32(1.0))
    with pytest.raises(InputError, match="maps of dtype complex64; expected real numbers"):
        channel_stats(np.zeros((2, 2), dtype=np.complex64))


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=6),
        elements=st.floats(-1e6, 1e6, width=32) | st.sampled_from([0.0, np.nan, np.inf]),
    )
)
def test_properties_hold_for_any_maps(maps: np.ndarray) -> None:
    stats = channel_stats(maps)
    has = stats.finite > 0
    assert np.all(stats.min[has] <= stats.mean[has] + 1e-9 * np.abs(stats.mean[has]) + 1e-9)
    assert np.all(stats.mean[has] <= stats.max[has] + 1e-9 * np.abs(stats.mean[has]) + 1e-9)
    assert np.all(stats.std[has] >= 0)
    assert np.all((stats.zeros[has] >= 0) & (stats.zeros[has] <= 1))
    _assert_matches(maps)


@pytest.mark.parametrize("holes", [0, 1, 7])
def test_summarize_matches_numpy_over_finite_values(holes: int) -> None:
    import torch

    import featuremaps as fm

    rng = np.random.default_rng(holes)
    values = (rng.standard_normal((2, 5, 6, 7)) * 100 + 1e4).astype(np.float32)
    flat = values.reshape(-1)
    spots = rng.choice(flat.size, size=holes, replace=False)
    flat[spots] = np.array([np.nan, np.inf, -np.inf] * 3, dtype=np.float32)[:holes]
    lo, hi, mean, nonfinite = fm.summarize(torch.from_numpy(values))
    finite = flat[np.isfinite(flat)].astype(np.float64)
    assert nonfinite == holes
    assert (lo, hi) == (finite.min(), finite.max())
    assert mean == pytest.approx(finite.mean(), rel=1e-12)
    assert fm.summarize(torch.full((1, 2, 2, 2), float("nan"))) == (None, None, None, 8)


@pytest.mark.parametrize("holes", [0, 1, 7, 42])
def test_summary_of_channels_equals_summarize_of_the_same_values(holes: int) -> None:
    import torch

    from featuremaps.stats import channel_stats, summarize, summary_of_channels

    rng = np.random.default_rng(holes)
    values = (rng.standard_normal((5, 6, 7)) * 100 + 1e4).astype(np.float32)
    flat = values.reshape(-1)
    flat[:holes] = np.array([np.nan, np.inf, -np.inf] * 14, dtype=np.float32)[:holes]
    if holes == 42:  # the first channel (6 x 7 values) has no finite value at all
        assert not np.isfinite(values[0]).any()
    expected = summarize(torch.from_numpy(values))
    lo, hi, mean, nonfinite = summary_of_channels(channel_stats(values), values.size)
    assert (lo, hi, nonfinite) == (expected[0], expected[1], expected[3])
    assert mean == pytest.approx(expected[2], rel=1e-12)


def test_summary_of_channels_without_finite_values() -> None:
    from featuremaps.stats import channel_stats, summary_of_channels

    values = np.full((2, 3, 3), np.nan, dtype=np.float32)
    assert summary_of_channels(channel_stats(values), values.size) == (None, None, None, 18)


def test_means_of_float64_values_near_the_maximum() -> None:
    # Their float64 sums overflow; the means must not (nor warn), in every summary of a record.
    import warnings

    from featuremaps.stats import _summarize_on_device, summary_of_channels

    top = float(np.finfo(np.float64).max)
    v = np.array([[top, top, -top], [-top, -(2.0**970), 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = channel_stats(v)
        np.testing.assert_allclose(stats.mean, [top / 3, -top / 3 - 2.0**970 / 3], rtol=1e-15)
        assert not np.isnan(stats.std).any()
        want = float(np.sum(v.ravel() / v.size))
        rounding = 4 * np.spacing(top / 2)  # the means of such magnitudes, rounded
        for low, high, mean, nonfinite in (
            summarize(torch.from_numpy(v)),
            summary_of_channels(stats, v.size),
            _summarize_on_device(torch.from_numpy(v)),  # the CUDA/MPS code, on a CPU tensor
        ):
            assert (low, high, nonfinite) == (-top, top, 0)
            assert mean is not None and abs(mean - want) <= rounding


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("buffer", [None, 1024])
def test_channel_means_are_numpy_float64_sums_to_the_last_bit(
    dtype: type, buffer: int | None
) -> None:
    # The sums are taken from the float64 copy the deviations need (channel_stats casts each
    # block once); they must be numpy's own float64 sums of the narrow values, bit for bit, for
    # rows shorter and longer than numpy's buffer, a whole number of buffers or not.
    rng = np.random.default_rng(7)
    before = np.getbufsize()
    if buffer is not None:
        np.setbufsize(buffer)
    try:
        size = np.getbufsize()
        for rows, length in [(64, 7), (9, size - 1), (5, size), (3, 3 * size), (4, 2 * size + 331)]:
            # Magnitudes over many octaves: partial sums round, so the order of the additions
            # shows in the last bits (values of one scale often sum exactly in any order).
            spread = np.exp(rng.uniform(-20 if dtype == np.float32 else -8, 8, (rows, length)))
            maps = (rng.standard_normal((rows, length)) * spread).astype(dtype)
            maps[0] = -0.0  # a row of negative zeros: its mean is 0.0, as numpy's is
            maps[1, ::2] = 0
            expected = np.sum(maps, axis=1, dtype=np.float64) / length
            got = channel_stats(maps).mean
            assert got.tobytes() == expected.tobytes(), (rows, length)
    finally:
        np.setbufsize(before)
