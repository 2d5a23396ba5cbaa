"""Running statistics: streaming equals one shot, stable at large means, merges, correlations;
running histograms equal np.histogram on their final edges however the data is split."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import featuremaps.datastats as datastats
import featuremaps.sweeps as sweeps
from featuremaps._errors import InputError
from featuremaps.datastats import RunningHistogram, RunningStats


@pytest.fixture(params=["compiled", "numpy"])
def sweep(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on each implementation of the fast path: the compiled sweep (checked to be
    the one that runs) and the numpy sweep, which is used where numba cannot be imported."""
    if request.param == "numpy":
        monkeypatch.setattr(sweeps, "compiled_kernels", lambda: None)
    else:
        assert sweeps.compiled_kernels() is not None, "numba is a dependency: it must import"

        def numpy_sweep(*args: object) -> None:
            raise AssertionError("the compiled sweep was expected to run")

        monkeypatch.setattr(sweeps, "sweep_numpy", numpy_sweep)
    return str(request.param)


_TOP = float(np.finfo(np.float64).max)


def _data(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((9, 4, 5, 6)).astype(np.float32) * np.array([1, 3, 0.1, 1])[
        None, :, None, None
    ].astype(np.float32)
    x[:, 3] = 2.5  # a constant channel
    x[0, 1, 0, :3] = [np.nan, np.inf, -np.inf]
    x[2, 0, 1, 1] = 0.0
    x[:, 2] = np.maximum(x[:, 2], 0)  # many exact zeros, as after a ReLU
    return x


def _oracle(x: np.ndarray, near: float) -> dict[str, np.ndarray]:
    rows = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1).astype(np.float64)
    out: dict[str, list[float]] = {k: [] for k in ("mean", "std", "min", "max", "absmean")}
    zeros, nears, bad = [], [], []
    for row in rows:
        ok = row[np.isfinite(row)]
        out["mean"].append(ok.mean())
        out["std"].append(ok.std())
        out["min"].append(ok.min())
        out["max"].append(ok.max())
        out["absmean"].append(np.abs(ok).mean())
        zeros.append(np.mean(ok == 0))
        nears.append(np.mean(np.abs(ok) <= near))
        bad.append(np.mean(~np.isfinite(row)))
    result = {k: np.array(v) for k, v in out.items()}
    result.update(zeros=np.array(zeros), near_zeros=np.array(nears), nonfinite=np.array(bad))
    return result


@pytest.mark.parametrize("chunks", [[9], [1] * 9, [2, 3, 4], [5, 1, 3]])
def test_streaming_equals_one_shot_numpy(chunks: list[int]) -> None:
    x = _data(0)
    stats = RunningStats(4, near_zero=0.05)
    start = 0
    for size in chunks:
        stats.update(x[start : start + size])
        start += size
    got, want = stats.result(), _oracle(x, 0.05)
    for key, expected in want.items():
        np.testing.assert_allclose(got[key], expected, rtol=1e-12, atol=1e-12, err_msg=key)
    assert got["std"][3] == 0.0 and got["nonfinite"][1] == pytest.approx(3 / (9 * 30))


def test_large_mean_keeps_its_variance() -> None:
    rng = np.random.default_rng(1)
    x = (1e4 + rng.standard_normal((50, 1, 64, 64))).astype(np.float32)
    stats = RunningStats(1)
    for i in range(0, 50, 7):
        stats.update(x[i : i + 7])
    expected = x.astype(np.float64).var()
    assert stats.result()["std"][0] ** 2 == pytest.approx(expected, rel=1e-9)
    naive = np.mean(x * x, dtype=np.float32) - np.mean(x, dtype=np.float32) ** 2
    assert abs(naive - expected) > 0.5  # the one-pass float32 formula is far off here


def test_merging_shards_equals_one_pass() -> None:
    x = _data(2)
    whole = RunningStats(4, correlations=True)
    whole.update(x)
    a, b = RunningStats(4, correlations=True), RunningStats(4, correlations=True)
    a.update(x[:4])
    b.update(x[4:])
    a.merge(b)
    for key, value in whole.result().items():
        np.testing.assert_allclose(a.result()[key], value, rtol=1e-12, err_msg=key)
    np.testing.assert_allclose(a.correlation(), whole.correlation(), rtol=1e-10, atol=1e-12)


def test_streaming_correlation_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    base = rng.standard_normal((12, 1, 8, 8))
    x = np.concatenate([base, 2 * base + 0.01 * rng.standard_normal(base.shape), -base], axis=1)
    stats = RunningStats(3, correlations=True)
    for i in range(0, 12, 5):
        stats.update(x[i : i + 5])
    rows = np.moveaxis(x, 1, 0).reshape(3, -1)
    np.testing.assert_allclose(stats.correlation(), np.corrcoef(rows), rtol=1e-10, atol=1e-12)
    assert stats.correlation()[0, 1] > 0.99 and stats.correlation()[0, 2] == pytest.approx(-1)


def test_wrong_channel_count_is_refused() -> None:
    with pytest.raises(InputError, match=r"expected \(N, 4, \.\.\.\)"):
        RunningStats(4).update(np.zeros((2, 3, 5)))


# RunningHistogram: the streamed counts equal np.histogram of all values on the final edges.


def _grows() -> list[np.ndarray]:
    """Batches whose range grows a lot after the first, with NaN/Inf and exact zeros."""
    rng = np.random.default_rng(4)
    first = rng.standard_normal((3, 4, 5)).astype(np.float32)
    wider = (rng.standard_normal((2, 4, 5)) * 1e3 + 5e3).astype(np.float32)
    wider[0, 0, :3] = [np.nan, np.inf, -np.inf]
    lower = np.concatenate([rng.uniform(-7e4, -6e4, 17), np.zeros(5), [np.nan]])
    return [first, wider, lower.astype(np.float32), (rng.standard_normal(40) * 1e-3)]


def _stream(batches: list[np.ndarray], chunks: int, bins: int = 64) -> RunningHistogram:
    hist = RunningHistogram(bins)
    for batch in batches:
        for piece in np.array_split(batch.ravel(), chunks):
            hist.update(piece)
    return hist


def _oracle_counts(batches: list[np.ndarray], edges: np.ndarray) -> np.ndarray:
    values = np.concatenate([b.ravel().astype(np.float64) for b in batches])
    counts, _ = np.histogram(values, bins=edges)  # NaN/Inf are outside every edge
    return counts


@pytest.mark.parametrize("chunks", [1, 2, 3, 7])
def test_streamed_histogram_equals_numpy_on_its_edges(chunks: int) -> None:
    batches = _grows()
    values = np.concatenate([b.ravel().astype(np.float64) for b in batches])
    before = [b.copy() for b in batches]
    got = _stream(batches, chunks).result()
    np.testing.assert_array_equal(got.counts, _oracle_counts(batches, got.edges))
    assert got.total == np.isfinite(values).sum() and got.nonfinite == 4
    assert got.edges[0] <= np.nanmin(values[np.isfinite(values)]) < got.edges[1]
    assert got.edges[-2] <= np.max(values[np.isfinite(values)]) < got.edges[-1]
    # Equal power-of-two widths, and the range grew without losing resolution.
    widths = np.diff(got.edges)
    assert np.all(widths == widths[0]) and np.log2(widths[0]) == np.round(np.log2(widths[0]))
    assert 32 <= len(got.counts) <= 64
    # However the values were split, the result is the same: the narrowest width that fits.
    one_shot = _stream([values], 1).result()
    np.testing.assert_array_equal(got.edges, one_shot.edges)
    np.testing.assert_array_equal(got.counts, one_shot.counts)
    for b, original in zip(batches, before, strict=True):
        np.testing.assert_array_equal(b, original)  # inputs untouched


def test_histogram_of_a_constant_is_one_bin_holding_it() -> None:
    for value in (2.5, -3.0, 0.0, 1e-30, 7e12):
        batches = [np.full(10, value), np.full((2, 3), value, dtype=np.float32)]
        got = _stream(batches, 2).result()
        assert got.counts.tolist() == [16] and got.edges[0] <= value < got.edges[1]
        np.testing.assert_array_equal(got.counts, _oracle_counts(batches, got.edges))


def test_histogram_zero_signs_and_underflowing_negatives() -> None:
    # -0.0 is zero (bin [0, w)); -5e-324 scaled by 1/w underflows to -0.0 yet belongs below 0.
    batches = [np.array([-5e-324, -0.0, 0.0, 300.0, 1e-320])]
    got = _stream(batches, 1, bins=16).result()
    np.testing.assert_array_equal(got.counts, _oracle_counts(batches, got.edges))
    assert got.edges[0] < 0 and got.counts[0] == 1


def test_histogram_only_nonfinite_and_empty() -> None:
    hist = RunningHistogram(8)
    hist.update(np.array([np.nan, np.inf]))
    hist.update(np.zeros(0))
    got = hist.result()
    assert got.nonfinite == 2 and got.total == 0 and len(got.edges) == len(got.counts) == 0
    hist.update(np.arange(5))  # integers are counted as floats
    assert hist.result().total == 5 and hist.result().nonfinite == 2


@given(
    st.lists(
        st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=30),
        min_size=1,
        max_size=5,
    ),
    st.integers(min_value=4, max_value=130),
)
def test_streamed_histogram_property(batches: list[list[float]], bins: int) -> None:
    arrays = [np.array(b, dtype=np.float32) for b in batches]
    hist = RunningHistogram(bins)
    for a in arrays:
        hist.update(a)
    got = hist.result()
    values = np.concatenate(arrays).astype(np.float64)
    finite = values[np.isfinite(values)]
    assert got.nonfinite == len(values) - len(finite) and got.total == len(finite)
    assert len(got.counts) <= bins
    if len(finite):
        np.testing.assert_array_equal(got.counts, _oracle_counts(arrays, got.edges))


def test_merged_histograms_equal_one_pass() -> None:
    batches = _grows()
    whole = _stream(batches, 1).result()
    for split in range(len(batches) + 1):
        a, b = _stream(batches[:split], 1), _stream(batches[split:], 1)
        a.merge(b)
        got = a.result()
        np.testing.assert_array_equal(got.edges, whole.edges)
        np.testing.assert_array_equal(got.counts, whole.counts)
        assert got.nonfinite == whole.nonfinite


def test_too_few_bins_are_refused() -> None:
    with pytest.raises(InputError, match="a histogram of 3 bins; expected at least 4"):
        RunningHistogram(3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_batches_take_the_fast_path_and_agree_with_numpy(
    dtype: type, monkeypatch: pytest.MonkeyPatch, sweep: str
) -> None:
    import torch

    def general(self: RunningStats, batch: np.ndarray) -> None:
        raise AssertionError("finite batches must not take the general path")

    monkeypatch.setattr(RunningStats, "_update_general", general)

    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 5, 7, 3)).astype(dtype)
    x[:, 1] = np.abs(x[:, 1])  # one non-negative channel among signed ones
    x[0, 2, 0, 0] = 0.0
    # (N, L, C) tokens moved to (N, C, L): a non-contiguous tensor, as the stats command passes.
    tokens = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x.reshape(6, 5, 21), 1, 2)))
    stats = RunningStats(5, near_zero=0.3)
    stats.update(tokens[:4].movedim(-1, 1))
    stats.update(tokens[4:].movedim(-1, 1))
    got, want = stats.result(), _oracle(x, 0.3)
    for key, expected in want.items():
        np.testing.assert_allclose(got[key], expected, rtol=1e-12, atol=1e-12, err_msg=key)


def test_near_zero_counts_the_same_on_both_paths_when_float32_rounds_the_threshold_up(
    sweep: str,
) -> None:
    # float32(0.1) = 0.10000000149 > 0.1: a value equal to it is not within 0.1 of zero.
    x = np.full((2, 1, 3, 3), np.float32(0.1))
    fast, general = RunningStats(1, near_zero=0.1), RunningStats(1, near_zero=0.1)
    fast.update(x)
    general._update_general(x)
    assert fast.result()["near_zeros"][0] == general.result()["near_zeros"][0] == 0.0
    x[0, 0, 0, 0] = np.nextafter(np.float32(0.1), np.float32(0))  # just below 0.1: counted
    fast.update(x)
    assert fast.result()["near_zeros"][0] == pytest.approx(1 / 36)


def test_histogram_stays_exact_when_a_float64_batch_left_a_far_window() -> None:
    h = RunningHistogram(128)
    first = np.arange(-(2**24 + 5), -(2**24 + 5) + 100, dtype=np.float64)
    second = np.array([-16777215.0], dtype=np.float32)
    h.update(first)
    h.update(second)
    result = h.result()
    expected, _ = np.histogram(np.concatenate([first, second.astype(np.float64)]), result.edges)
    np.testing.assert_array_equal(result.counts, expected)


def _layer(kind: str, seed: int, shape: tuple[int, ...] = (5, 6, 4, 9)) -> np.ndarray:
    """A batch like a layer's output: signed (BN-like), non-negative (ReLU-like, many exact
    zeros), or a large mean with a small spread."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * rng.uniform(0.1, 3, shape[1])[None, :, None, None]
    if kind == "relu":
        x = np.maximum(x, 0)
    elif kind == "large_mean":
        x = 1e4 + x / 3
    x = x.astype(np.float32)
    x.reshape(-1)[::17] = 0.0
    x.reshape(-1)[5::23] = -0.0
    x.reshape(-1)[3::29] = np.float32(0.25) if kind != "large_mean" else x.reshape(-1)[3::29]
    x.reshape(-1)[7::31] = -np.float32(0.25) if kind == "signed" else x.reshape(-1)[7::31]
    return x


def _channels_last(x: np.ndarray) -> np.ndarray:
    """``x`` (N, C, ...) with the same values, its memory holding the channels last."""
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)


@pytest.fixture(params=["channels first", "channels last"])
def layout(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Callable[[np.ndarray], np.ndarray]:
    """Batches laid out in memory channel by channel, or channels last (tokens, channels-last
    maps); with the compiled sweep, checks that the kernel for that layout is the one that
    runs."""
    kernels = sweeps.compiled_kernels()  # None when the `sweep` fixture chose numpy's
    other = "rows_sweep" if request.param == "channels first" else "block_sweep"

    def refuse(*args: object) -> bool:
        raise AssertionError(f"{other} was not expected for {request.param} batches")

    if kernels is not None:
        monkeypatch.setattr(kernels, other, refuse)
    monkeypatch.setattr(sweeps, "_FEW_CHANNELS", 1)  # rows of 6 channels are swept as rows
    if request.param == "channels first":
        return np.ascontiguousarray
    return _channels_last


@pytest.mark.parametrize("block", [7, 50, 1000, 1 << 16])
@pytest.mark.parametrize("kind", ["signed", "relu", "large_mean"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_path_with_histogram_equals_numpy_however_blocked(
    block: int,
    kind: str,
    dtype: type,
    monkeypatch: pytest.MonkeyPatch,
    sweep: str,
    layout: Callable[[np.ndarray], np.ndarray],
) -> None:
    def general(self: RunningStats, batch: np.ndarray) -> None:
        raise AssertionError("finite batches must not take the general path")

    monkeypatch.setattr(RunningStats, "_update_general", general)
    monkeypatch.setattr(sweeps, "_BLOCK", block)  # blocks of samples, channels, rows
    batches = [layout(_layer(kind, seed).astype(dtype)) for seed in range(3)]
    batches[1] = batches[1] * 4  # the histogram's range grows
    stats, hist = RunningStats(6, near_zero=0.25), RunningHistogram(64)
    for b in batches:
        stats.update(b, histogram=hist)
    x = np.concatenate(batches)
    got, want = stats.result(), _oracle(x, 0.25)
    for key, expected in want.items():
        rtol = 1e-9 if kind == "large_mean" and key == "std" else 1e-12
        np.testing.assert_allclose(got[key], expected, rtol=rtol, atol=1e-12, err_msg=key)
    result = hist.result()
    np.testing.assert_array_equal(result.counts, _oracle_counts(batches, result.edges))
    assert result.total == x.size and result.nonfinite == 0
    alone = RunningHistogram(64)
    for b in batches:
        alone.update(b)
    np.testing.assert_array_equal(alone.result().edges, result.edges)
    np.testing.assert_array_equal(alone.result().counts, result.counts)


def test_fused_histogram_takes_the_general_path_too() -> None:
    x = _data(5)  # NaN and ±Inf: the general path, and the histogram counts them apart
    stats, hist = RunningStats(4), RunningHistogram(32)
    stats.update(x, histogram=hist)
    result = hist.result()
    np.testing.assert_array_equal(result.counts, _oracle_counts([x], result.edges))
    assert result.nonfinite == 3


@pytest.mark.parametrize("shape", [(16, 1000), (40, 64), (3, 5, 1, 1), (1, 7), (2000, 1)])
def test_one_value_per_channel_per_sample_is_swept_by_rows(
    shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Linear layer's (N, C): each channel has one value per sample, so the sweep goes along
    # the rows of channels (rows_sweep), not along each channel's one-value runs; rows of a
    # few channels are gathered channel by channel instead (block_sweep over long runs).
    kernels = sweeps.compiled_kernels()
    assert kernels is not None
    expected = "rows_sweep" if shape[1] >= sweeps._FEW_CHANNELS else "block_sweep"
    other = {"rows_sweep": "block_sweep", "block_sweep": "rows_sweep"}[expected]

    def refuse(*args: object) -> bool:
        raise AssertionError(f"{shape}: {expected} was expected")

    monkeypatch.setattr(kernels, other, refuse)
    rng = np.random.default_rng(12)
    scale = rng.uniform(0.1, 4, shape[1]).reshape((1, -1) + (1,) * (len(shape) - 2))
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    x.reshape(-1)[::7] = 0.0
    stats, hist = RunningStats(shape[1], near_zero=0.3), RunningHistogram(32)
    stats.update(x, histogram=hist)
    got, want = stats.result(), _oracle(x.reshape(shape[0], shape[1], -1), 0.3)
    for key, expected in want.items():
        np.testing.assert_allclose(got[key], expected, rtol=1e-12, atol=1e-12, err_msg=key)
    result = hist.result()
    np.testing.assert_array_equal(result.counts, _oracle_counts([x], result.edges))


def test_negated_views_and_empty_batches() -> None:
    import torch

    z = torch.randn(40, 6, dtype=torch.complex64)
    imag = z.conj().imag  # a view with torch's negative bit: no numpy view of it as it is
    for batch in (imag, imag.reshape(4, 10, 6).movedim(-1, 1)):
        stats = RunningStats(6)
        stats.update(batch)
        x = batch.resolve_neg().numpy()
        want = _oracle(x.reshape(x.shape[0], 6, -1), 1e-6)
        np.testing.assert_allclose(stats.result()["mean"], want["mean"], rtol=1e-12)
    stats, hist = RunningStats(6), RunningHistogram(8)
    for empty in (np.zeros((0, 6)), np.zeros((3, 6, 0)), torch.zeros(0, 6, 2)):
        stats.update(empty, histogram=hist)  # nothing to count, and no error
    assert stats.result()["count"].tolist() == [0] * 6 and hist.result().total == 0


def test_channels_last_torch_maps_are_swept_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    t = torch.randn(2, 40, 5, 7).contiguous(memory_format=torch.channels_last)
    copies = []
    real = np.ascontiguousarray

    def counted(a: np.ndarray, *args: object, **kwargs: object) -> np.ndarray:
        copies.append(a.shape)
        return real(a, *args, **kwargs)

    monkeypatch.setattr(datastats.np, "ascontiguousarray", counted)
    stats, hist = RunningStats(40), RunningHistogram(16)
    stats.update(t, histogram=hist)
    monkeypatch.setattr(datastats.np, "ascontiguousarray", real)
    assert not [shape for shape in copies if len(shape) == 4], "the maps were copied"
    x = t.numpy()
    got, want = stats.result(), _oracle(x, 1e-6)
    for key, expected in want.items():
        np.testing.assert_allclose(got[key], expected, rtol=1e-12, atol=1e-12, err_msg=key)
    np.testing.assert_array_equal(hist.result().counts, _oracle_counts([x], hist.result().edges))


def test_constant_channels_get_exactly_zero_spread(sweep: str) -> None:
    x = np.full((4, 3, 300), 0.1, dtype=np.float32)
    x[:, 1] = 7e3
    x[:, 2] = 0.0
    stats = RunningStats(3)
    stats.update(x[:1])
    stats.update(x[1:])
    assert stats.result()["std"].tolist() == [0.0, 0.0, 0.0]


def test_fast_path_histogram_puts_underflowing_negatives_below_zero(sweep: str) -> None:
    x = np.array([[-1e-45, -0.0, 0.0, 300.0, 1e-45, -7.0]], dtype=np.float32)[:, :, None]
    x = np.repeat(x, 3, axis=0).reshape(1, 18, 1).transpose(0, 2, 1)  # (1, 1, 18)
    stats, hist = RunningStats(1), RunningHistogram(4)
    stats.update(x, histogram=hist)
    result = hist.result()
    np.testing.assert_array_equal(result.counts, _oracle_counts([x], result.edges))


@pytest.mark.parametrize("bins", [4, 255, 256])
def test_fast_path_bins_float64_negatives_that_underflow_when_scaled(bins: int, sweep: str) -> None:
    # Width 2 (scale 0.5): the smallest subnormal scales to -0.0 but lies in the bin below zero,
    # here the window's last bin: index -start = bins - 1 before the mend, bins with 255 bins.
    tiny = -np.nextafter(0.0, 1.0)
    x = np.array([[[-2.0 * bins, tiny, tiny, -3.0, -2.0 * bins + 1.0, tiny]]])  # (1, 1, 6)
    stats, hist = RunningStats(1), RunningHistogram(bins)
    stats.update(x, histogram=hist)
    result = hist.result()
    np.testing.assert_array_equal(result.counts, _oracle_counts([x], result.edges))
    assert result.edges[-1] == 0.0 and result.counts[-1] == 3


@pytest.mark.parametrize("block", [40, 1 << 16])
def test_fast_path_histogram_joins_blocks_of_far_apart_ranges(
    block: int, monkeypatch: pytest.MonkeyPatch, sweep: str
) -> None:
    # Blocks of one channel each (block 40): a tiny range, a wide signed one, two constants and
    # a range far from zero; the compiled sweep bins each block on its own lattice first.
    monkeypatch.setattr(sweeps, "_BLOCK", block)
    rng = np.random.default_rng(8)
    x = np.empty((3, 5, 40), dtype=np.float32)
    x[:, 0] = rng.uniform(0, 1e-3, (3, 40))
    x[:, 1] = rng.uniform(-100, 100, (3, 40))
    x[:, 2] = 5.0
    x[:, 3] = 0.0
    x[:, 4] = rng.uniform(3e4, 3e4 + 1, (3, 40))
    batches = [x[:, :2], x]  # the first batch sets a fine lattice; the second widens it
    for first in (batches[0], x[:, 2:4]):  # ... or a lattice chosen for constants only
        stats, hist, alone = (
            RunningStats(first.shape[1]),
            RunningHistogram(64),
            RunningHistogram(64),
        )
        stats.update(first, histogram=hist)
        alone.update(first)
        wide = RunningStats(5)
        wide.update(x, histogram=hist)
        alone.update(x)
        result = hist.result()
        np.testing.assert_array_equal(result.counts, _oracle_counts([first, x], result.edges))
        np.testing.assert_array_equal(result.edges, alone.result().edges)
        np.testing.assert_array_equal(result.counts, alone.result().counts)
        got, want = wide.result(), _oracle(x, 1e-6)
        for key, expected in want.items():
            np.testing.assert_allclose(got[key], expected, rtol=1e-12, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("where", [(0, 0, 0), (2, 4, 39)])
def test_a_non_finite_value_in_any_block_leaves_the_fast_path_without_a_trace(
    where: tuple[int, int, int], monkeypatch: pytest.MonkeyPatch, sweep: str
) -> None:
    monkeypatch.setattr(sweeps, "_BLOCK", 40)  # many blocks, on both threads
    x = _layer("signed", 9, (3, 5, 40, 1)).reshape(3, 5, 40)
    x[where] = np.nan
    stats, hist = RunningStats(5), RunningHistogram(32)
    stats.update(x, histogram=hist)
    result = hist.result()
    assert result.nonfinite == 1 and result.total == x.size - 1
    np.testing.assert_array_equal(result.counts, _oracle_counts([x], result.edges))
    got, want = stats.result(), _oracle(x, 1e-6)
    for key, expected in want.items():
        np.testing.assert_allclose(got[key], expected, rtol=1e-12, atol=1e-12, err_msg=key)


@pytest.mark.parametrize(
    ("lo", "bins", "block"),
    [
        (np.ldexp(1.5632816408204102, 30), 100, 1 << 16),  # lo / 100 == hi / 100
        (1.5632816408204102, 100, 64),
        (2.0**-1022, 4, 1 << 16),  # lo / 4 and hi / 4 round to the same subnormal
    ],
)
def test_fast_path_histogram_of_neighbouring_float64_values(
    lo: float, bins: int, block: int, monkeypatch: pytest.MonkeyPatch, sweep: str
) -> None:
    # A block of two neighbouring floats: the estimate of its spread per bin rounds to 0, and
    # its lattice must still be as fine as the batch's (else counts were lost, or written
    # outside the histogram), without leaving the fast path.
    def general(self: RunningStats, batch: np.ndarray) -> None:
        raise AssertionError("finite batches must not take the general path")

    monkeypatch.setattr(RunningStats, "_update_general", general)
    monkeypatch.setattr(sweeps, "_BLOCK", block)
    hi = np.nextafter(lo, np.inf)
    x = np.empty((2, 1, 1 << 16))
    x[0, 0] = lo
    x[0, 0, ::2] = hi
    x[1, 0] = np.linspace(lo, lo * 3.5 if lo < 1e-300 else lo + 1e-3, 1 << 16)
    stats, hist, alone = RunningStats(1), RunningHistogram(bins), RunningHistogram(bins)
    stats.update(x, histogram=hist)
    alone.update(x)
    result = hist.result()
    assert result.total == x.size
    np.testing.assert_array_equal(result.counts, _oracle_counts([x], result.edges))
    np.testing.assert_array_equal(result.edges, alone.result().edges)
    one = RunningHistogram(bins)
    one.update(np.array([lo, hi]))  # two neighbouring values: the narrowest width holds them
    assert one.result().edges[1] - one.result().edges[0] <= max(np.spacing(lo) * 2, 2.0**-1022)


def test_histograms_of_very_many_bins_are_counted_by_the_numpy_sweep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def compiled(*args: object) -> None:
        raise AssertionError("the compiled sweep keeps blocks x bins counts: not for 5000 bins")

    monkeypatch.setattr(sweeps, "sweep_compiled", compiled)
    x = _layer("signed", 11)
    stats, hist = RunningStats(6), RunningHistogram(5000)
    stats.update(x, histogram=hist)
    result = hist.result()
    assert result.total == x.size
    np.testing.assert_array_equal(result.counts, _oracle_counts([x], result.edges))


def test_merging_block_histograms_refuses_what_it_cannot_place() -> None:
    # A block lattice coarser than the batch's, or a bin outside the window: nothing is counted
    # (and nothing written out of bounds); the caller then counts the batch on the general path.
    kernels = sweeps.compiled_kernels()
    assert kernels is not None
    hist = np.zeros((1, 4), dtype=np.int64)
    hist[0, 1] = 5
    sizes, values = np.array([5]), np.array([0.0])
    for lattice, exponent, start in (([[3, 0, 0]], 2, 0), ([[0, 40, 0]], 0, 0)):
        counts = np.zeros(4, dtype=np.int64)
        placed = kernels.merge_histograms(
            np.array(lattice, dtype=np.int64), hist, values, sizes, exponent, start, counts
        )
        assert not placed and not counts.any()
    counts = np.zeros(4, dtype=np.int64)
    assert kernels.merge_histograms(np.array([[0, 0, 0]]), hist, values, sizes, 1, 0, counts)
    assert counts.tolist() == [5, 0, 0, 0]  # bin 1 of width 1 lies in bin 0 of width 2


@pytest.mark.parametrize(
    "values",
    [
        [_TOP, _TOP, -_TOP],  # true mean _TOP / 3
        [-_TOP, -(2.0**970), 0.0, 0.0, 0.0],  # true mean about -3.6e307
        [_TOP / 2] * 8 + [-_TOP] * 3,
    ],
)
@pytest.mark.parametrize("block", [2, 1 << 16])
def test_means_of_values_near_the_float64_maximum(
    values: list[float], block: int, monkeypatch: pytest.MonkeyPatch, sweep: str
) -> None:
    # Sums and deviations overflow float64 here; the mean must not (nor turn NaN or change
    # sign), on the fast paths, the general path, the device path and when batches merge.
    import torch

    monkeypatch.setattr(sweeps, "_BLOCK", block)
    x = np.array(values)[None, None, :]
    want = float(np.sum(np.array(values) / len(values)))
    fast, general, merged = RunningStats(1), RunningStats(1), RunningStats(1)
    fast.update(x)
    general._update_general(x)
    half = len(values) // 2
    merged.update(x[:, :, :half])
    merged.update(x[:, :, half:])
    device = RunningStats(1)  # the torch path of CUDA batches, on a CPU tensor
    assert device._update_on_device(torch.from_numpy(x), None)
    for stats in (fast, general, merged, device):
        got = stats.result()
        assert got["mean"][0] == pytest.approx(want, rel=1e-12)
        assert not np.isnan(got["std"][0])


def test_float64_values_whose_sum_overflows_keep_their_mean(sweep: str) -> None:
    top = np.finfo(np.float64).max
    x = np.full((2, 2, 8), top / 2)  # sums of 16 such values overflow float64
    x[:, 1] = -top / 4
    x[0, 1, 0] = np.nextafter(-top / 4, 0)
    stats = RunningStats(2)
    stats.update(x)
    got = stats.result()
    assert got["mean"][0] == top / 2 and got["std"][0] == 0.0
    assert got["mean"][1] == pytest.approx(-top / 4, rel=1e-15)
    assert got["std"][1] == np.inf  # squared spreads there overflow float64, on both paths
    assert got["min"][1] == -top / 4 and got["max"][1] == np.nextafter(-top / 4, 0)


@given(
    st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=120),
    st.integers(min_value=1, max_value=4),
    st.sampled_from([4, 5, 64, 255, 256, 300]),  # bin indices held in 8 bits or in 32
    st.sampled_from([3, 16, 1 << 16]),
)
# Blocks whose lattices are 64 or more doublings finer than the batch's.
@example([-0.0, 1.2214555e36, -3.8183741e16, 4.0161625e16, -0.0, -3.8183741e16], 1, 4, 3)
@settings(deadline=None)  # the first example may compile the sweep
def test_fast_path_histogram_property(
    values: list[float], channels: int, bins: int, block: int
) -> None:
    # Any finite float32 values (subnormals, -0.0, both extremes), any blocking: the fast path's
    # histogram equals RunningHistogram.update's, which equals np.histogram on its edges.
    n = len(values) // channels
    if n == 0:
        return
    x = np.array(values[: n * channels], dtype=np.float32).reshape(n, channels, 1)
    previous, sweeps._BLOCK = sweeps._BLOCK, block
    try:
        stats, hist, alone = RunningStats(channels), RunningHistogram(bins), RunningHistogram(bins)
        stats.update(x, histogram=hist)
    finally:
        sweeps._BLOCK = previous
    alone.update(x)
    result = hist.result()
    np.testing.assert_array_equal(result.edges, alone.result().edges)
    np.testing.assert_array_equal(result.counts, alone.result().counts)
    np.testing.assert_array_equal(result.counts, _oracle_counts([x], result.edges))
    assert result.total == x.size
    got = stats.result()
    np.testing.assert_array_equal(got["min"], x.min(axis=(0, 2)).astype(np.float64))
    np.testing.assert_array_equal(got["max"], x.max(axis=(0, 2)).astype(np.float64))


@pytest.mark.parametrize("kind", ["signed", "relu", "large_mean"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_device_path_equals_numpy(kind: str, dtype: str) -> None:
    # The torch path that CUDA batches take, run here on CPU tensors (the code is the same).
    import torch

    batches = [torch.from_numpy(_layer(kind, seed)).to(getattr(torch, dtype)) for seed in range(3)]
    batches[1] = batches[1] * 4  # the histogram's range grows
    stats, hist = RunningStats(6, near_zero=0.25), RunningHistogram(64)
    for b in batches:
        assert stats._update_on_device(b, hist)
    values = [b.double().numpy() for b in batches]  # bfloat16 widens exactly
    got, want = stats.result(), _oracle(np.concatenate(values), 0.25)
    for key, expected in want.items():
        rtol = 1e-9 if kind == "large_mean" and key == "std" else 1e-12
        np.testing.assert_allclose(got[key], expected, rtol=rtol, atol=1e-12, err_msg=key)
    result = hist.result()
    np.testing.assert_array_equal(result.counts, _oracle_counts(values, result.edges))
    assert result.total == sum(v.size for v in values)


def test_device_path_leaves_non_finite_batches_to_the_general_path() -> None:
    import torch

    stats, hist = RunningStats(4), RunningHistogram(32)
    assert not stats._update_on_device(torch.from_numpy(_data(5)), hist)
    assert stats.count.sum() == 0 and hist.counts.sum() == 0  # nothing changed
    assert stats._update_on_device(torch.ones(2, 4, 3), hist)  # and a finite one is taken


def test_device_path_puts_underflowing_negatives_below_zero() -> None:
    import torch

    x = np.array([-1e-45, -0.0, 0.0, 300.0, 1e-45, -7.0] * 3, dtype=np.float32).reshape(1, 1, 18)
    stats, hist = RunningStats(1), RunningHistogram(4)
    assert stats._update_on_device(torch.from_numpy(x), hist)
    result = hist.result()
    np.testing.assert_array_equal(result.counts, _oracle_counts([x], result.edges))


@pytest.mark.gpu
def test_cuda_batches_are_reduced_on_the_device_and_agree_with_the_host() -> None:
    import torch

    batches = [torch.from_numpy(_layer(kind, seed)) for seed, kind in enumerate(("signed", "relu"))]
    on_host, host_hist = RunningStats(6, near_zero=0.25), RunningHistogram(64)
    on_gpu, gpu_hist = RunningStats(6, near_zero=0.25), RunningHistogram(64)
    for b in batches:
        on_host.update(b.numpy(), histogram=host_hist)
        on_gpu.update(b.cuda(), histogram=gpu_hist)
    for key, expected in on_host.result().items():
        np.testing.assert_allclose(on_gpu.result()[key], expected, rtol=1e-12, err_msg=key)
    np.testing.assert_array_equal(gpu_hist.result().counts, host_hist.result().counts)
    np.testing.assert_array_equal(gpu_hist.result().edges, host_hist.result().edges)


def test_bfloat16_and_integer_tensors_are_counted_on_the_host() -> None:
    import torch

    values = torch.tensor([[[0.5, -1.0, 0.0, 2.0]], [[1.5, 0.25, -0.0, 3.0]]])  # (2, 1, 4)
    for batch in (values.to(torch.bfloat16), (values * 4).to(torch.int16)):
        stats, hist = RunningStats(1), RunningHistogram(16)
        stats.update(batch, histogram=hist)
        wide = batch.double().numpy()
        got, want = stats.result(), _oracle(wide, 1e-6)
        for key, expected in want.items():
            np.testing.assert_allclose(got[key], expected, rtol=1e-12, err_msg=key)
        result = hist.result()
        np.testing.assert_array_equal(result.counts, _oracle_counts([wide], result.edges))


@pytest.mark.slow
def test_compiled_sweep_runs_where_numba_cannot_cache_it() -> None:
    # numba refuses cache=True where no cache folder is writable: the sweep is then compiled
    # in the process instead (a fresh process, since the module is imported once).
    import json
    import subprocess
    import sys

    code = """
import json, numba, numpy as np
real = numba.njit
def njit(*args, **options):
    if options.get("cache"):
        raise RuntimeError("cannot cache function: no locator available")
    return real(*args, **options)
numba.njit = njit
from featuremaps import datastats, sweeps
assert sweeps.compiled_kernels() is not None
def numpy_sweep(*args):
    raise AssertionError("the compiled sweep was expected to run")
sweeps.sweep_numpy = numpy_sweep
x = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 5
stats, hist = datastats.RunningStats(3), datastats.RunningHistogram(8)
stats.update(x, histogram=hist)
print(json.dumps([stats.result()["mean"].tolist(), hist.result().counts.tolist()]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    means, counts = json.loads(out.stdout)
    x = np.arange(24, dtype=np.float64).reshape(2, 3, 4) - 5
    alone = RunningHistogram(8)
    alone.update(x.astype(np.float32))
    np.testing.assert_allclose(means, x.mean(axis=(0, 2)), rtol=1e-15)
    assert counts == alone.result().counts.tolist()
