"""Running statistics: streaming equals one shot, stable at large means, merges, correlations."""

from __future__ import annotations

import numpy as np
import pytest

from featuremaps._errors import InputError
from featuremaps.datastats import RunningStats


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
