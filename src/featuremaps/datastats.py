"""Running per-channel statistics over many inputs: merged batch by batch, never all held.

Part of the pure statistics stage, for statistics over a data set rather than one sample
(:mod:`featuremaps.stats`). Each batch is reduced on its own in float64 with two passes (mean,
then squared deviations), and batches are merged with the pairwise formulas of Chan et al.::

    n = n_a + n_b,  d = mean_b - mean_a
    mean = mean_a + d * n_b / n
    M2   = M2_a + M2_b + d**2 * n_a * n_b / n
    C    = C_a + C_b + outer(d, d) * n_a * n_b / n        (co-moments, for correlations)

so the result equals a one-shot computation up to rounding, and stays right when the mean is
large next to the spread (a float32 sum of squares gives variance 8 instead of 1 at mean 1e4).
Statistics are over the finite values of each channel; correlations are over the positions
where every channel is finite.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from featuremaps._errors import InputError

__all__ = ["RunningStats"]


@dataclass
class RunningStats:
    """Per-channel statistics of a layer over everything passed to :meth:`update`.

    Args:
        channels: the layer's channel count C.
        near_zero: ``|x| <= near_zero`` counts as near zero (exact zeros are counted apart).
        correlations: also keep the C x C co-moments (memory C², time C² per value).
    """

    channels: int
    near_zero: float = 1e-6
    correlations: bool = False
    count: np.ndarray = field(init=False)
    mean: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)
    minimum: np.ndarray = field(init=False)
    maximum: np.ndarray = field(init=False)
    abs_sum: np.ndarray = field(init=False)
    zeros: np.ndarray = field(init=False)
    near_zeros: np.ndarray = field(init=False)
    nonfinite: np.ndarray = field(init=False)
    joint_count: int = field(init=False, default=0)
    joint_mean: np.ndarray = field(init=False)
    comoment: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        c = self.channels
        self.count = np.zeros(c, dtype=np.int64)
        self.mean = np.zeros(c)
        self.m2 = np.zeros(c)
        self.minimum = np.full(c, np.inf)
        self.maximum = np.full(c, -np.inf)
        self.abs_sum = np.zeros(c)
        self.zeros = np.zeros(c, dtype=np.int64)
        self.near_zeros = np.zeros(c, dtype=np.int64)
        self.nonfinite = np.zeros(c, dtype=np.int64)
        self.joint_mean = np.zeros(c)
        self.comoment = np.zeros((c, c) if self.correlations else (0, 0))

    def update(self, batch: np.ndarray) -> None:
        """Add a batch: ``(N, C, ...)`` activations (channels on axis 1). It is not modified."""
        arr = np.asarray(batch)
        if arr.ndim < 2 or arr.shape[1] != self.channels:
            raise InputError(
                f"batch of shape {arr.shape}; expected (N, {self.channels}, ...) with the "
                "channels on axis 1"
            )
        rows = np.moveaxis(arr, 1, 0).reshape(self.channels, -1)  # (C, values)
        finite = np.isfinite(rows)
        n = finite.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            clean = np.where(finite, rows, 0.0).astype(np.float64)
            mean = clean.sum(axis=1) / np.maximum(n, 1)
            dev = np.where(finite, clean - mean[:, None], 0.0)
            m2 = np.einsum("ij,ij->i", dev, dev)
        self._merge_moments(n, mean, m2)
        self.minimum = np.minimum(self.minimum, np.where(finite, rows, np.inf).min(axis=1))
        self.maximum = np.maximum(self.maximum, np.where(finite, rows, -np.inf).max(axis=1))
        self.abs_sum += np.abs(clean).sum(axis=1)
        self.zeros += np.count_nonzero(finite & (rows == 0), axis=1)
        self.near_zeros += np.count_nonzero(finite & (np.abs(clean) <= self.near_zero), axis=1)
        self.nonfinite += rows.shape[1] - n
        if self.correlations:
            joint = finite.all(axis=0)
            values = clean[:, joint]
            k = values.shape[1]
            if k:
                jmean = values.mean(axis=1)
                centred = values - jmean[:, None]
                self._merge_comoments(k, jmean, centred @ centred.T)

    def _merge_moments(self, n_b: np.ndarray, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        n_a = self.count
        n = n_a + n_b
        with np.errstate(invalid="ignore", divide="ignore"):
            d = mean_b - self.mean
            share = np.where(n > 0, n_b / np.maximum(n, 1), 0.0)
            self.mean = self.mean + d * share
            self.m2 = self.m2 + m2_b + d * d * n_a * share
        self.count = n

    def _merge_comoments(self, k: int, mean_b: np.ndarray, c_b: np.ndarray) -> None:
        n_a, n = self.joint_count, self.joint_count + k
        d = mean_b - self.joint_mean
        self.joint_mean = self.joint_mean + d * (k / n)
        self.comoment = self.comoment + c_b + np.outer(d, d) * (n_a * k / n)
        self.joint_count = n

    def merge(self, other: RunningStats) -> None:
        """Fold in statistics gathered elsewhere (another worker, another shard)."""
        if other.channels != self.channels or other.correlations != self.correlations:
            raise InputError(
                f"cannot merge statistics of {other.channels} channels into {self.channels}"
            )
        self._merge_moments(other.count, other.mean, other.m2)
        self.minimum = np.minimum(self.minimum, other.minimum)
        self.maximum = np.maximum(self.maximum, other.maximum)
        self.abs_sum += other.abs_sum
        self.zeros += other.zeros
        self.near_zeros += other.near_zeros
        self.nonfinite += other.nonfinite
        if self.correlations and other.joint_count:
            self._merge_comoments(other.joint_count, other.joint_mean, other.comoment)

    def result(self) -> dict[str, np.ndarray]:
        """Per-channel arrays: count, mean, std (population), min, max, absmean, zero and
        near-zero fractions (of finite values) and the non-finite fraction (of all values).
        Channels without finite values get NaN."""
        n = self.count
        seen = n + self.nonfinite
        with np.errstate(invalid="ignore", divide="ignore"):
            empty = n == 0
            return {
                "count": n.copy(),
                "mean": np.where(empty, np.nan, self.mean),
                "std": np.where(empty, np.nan, np.sqrt(self.m2 / n)),
                "min": np.where(empty, np.nan, self.minimum),
                "max": np.where(empty, np.nan, self.maximum),
                "absmean": np.where(empty, np.nan, self.abs_sum / n),
                "zeros": np.where(empty, np.nan, self.zeros / n),
                "near_zeros": np.where(empty, np.nan, self.near_zeros / n),
                "nonfinite": np.where(seen == 0, np.nan, self.nonfinite / np.maximum(seen, 1)),
            }

    def correlation(self) -> np.ndarray:
        """The C x C Pearson correlation over positions where every channel was finite; NaN
        where a channel is constant there."""
        if not self.correlations:
            raise InputError("correlations were not kept; create RunningStats(correlations=True)")
        var = np.diag(self.comoment)
        with np.errstate(invalid="ignore", divide="ignore"):
            corr: np.ndarray = self.comoment / np.sqrt(np.outer(var, var))
        return corr
