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

:class:`RunningHistogram` (:mod:`featuremaps.histograms`) counts all values of a layer (channels
pooled) into a fixed number of bins whose range follows the data, exactly; the fast path's sweep
over a batch's values is in :mod:`featuremaps.sweeps`. Both are importable from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from featuremaps import sweeps
from featuremaps._errors import InputError
from featuremaps.histograms import Binning, Histogram, RunningHistogram, bin_counts_torch
from featuremaps.sweeps import SWEEP_THREADS

__all__ = ["SWEEP_THREADS", "Binning", "Histogram", "RunningHistogram", "RunningStats"]


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

    def update(
        self, batch: np.ndarray | torch.Tensor, histogram: RunningHistogram | None = None
    ) -> None:
        """Add a batch: ``(N, C, ...)`` activations (channels on axis 1). It is not modified.

        With ``histogram``, the batch's values are also counted into it (the same counts as
        ``histogram.update(batch)``), in the same sweep over the values.

        A float32/float64 batch whose values are all finite takes a fast path; any other batch
        goes through the general numpy path, which masks NaN and ±Inf. A batch on a CUDA device
        is reduced there (:meth:`_update_on_device`): only per-channel numbers and the
        histogram's counts come to the host.

        Values near the float64 maximum overflow the sums kept (absolute sum, M2): those
        statistics become +inf, while the mean stays right.
        """
        with np.errstate(over="ignore"):
            self._update(batch, histogram)

    def _update(self, batch: np.ndarray | torch.Tensor, histogram: RunningHistogram | None) -> None:
        shape = tuple(batch.shape)
        if len(shape) < 2 or shape[1] != self.channels:
            raise InputError(
                f"batch of shape {shape}; expected (N, {self.channels}, ...) with the "
                "channels on axis 1"
            )
        if 0 in shape:  # no values: nothing to count
            return
        if isinstance(batch, torch.Tensor) and batch.device.type != "cpu":
            on_cuda = batch.device.type == "cuda" and not self.correlations
            if on_cuda and self._update_on_device(batch, histogram):
                return
            batch = batch.detach().float().cpu()  # MPS (no float64), NaN/Inf, correlations
        if self.correlations or not self._update_finite(batch, histogram):
            values = _host_values(batch)
            self._update_general(values)
            if histogram is not None:
                histogram.update(values)

    def _update_finite(
        self, batch: np.ndarray | torch.Tensor, histogram: RunningHistogram | None
    ) -> bool:
        """The fast path for an all-finite float batch; returns False (and changes nothing) when
        the batch holds a non-finite value or is not a float32/float64 batch.

        The values are swept block by block, small enough to stay in the CPU cache while a
        block goes through its few passes, on several threads: by the compiled sweep
        (:func:`featuremaps.sweeps.sweep_compiled`), or by numpy
        (:func:`featuremaps.sweeps.sweep_numpy`) where numba cannot be imported. Each block's
        moments are two passes in float64, and blocks are merged with the pairwise formulas. NaN
        and ±Inf show up in the channels' min and max.
        """
        values = _as_array(batch)
        if values is None or values.size == 0:
            return False
        # The largest value of the batch's dtype that is <= near_zero: comparing with it in that
        # dtype counts exactly the values a float64 comparison with near_zero would.
        limit = values.dtype.type(self.near_zero)
        if float(limit) > self.near_zero:  # float(): compared in float64, not in the dtype
            limit = np.nextafter(limit, values.dtype.type(-np.inf))
        # The compiled sweep keeps one histogram per block: with very many bins, numpy's sweep.
        many = histogram is not None and histogram.bins > sweeps.COMPILED_BINS
        compiled = None if many else sweeps.compiled_kernels()
        if compiled is not None:
            found = sweeps.sweep_compiled(compiled, values, self.channels, limit, histogram)
        else:
            x = np.ascontiguousarray(values).reshape(values.shape[0], self.channels, -1)
            found = sweeps.sweep_numpy(x, limit, histogram)
        if found is None:
            return False
        sums, minimum, maximum = found
        self._merge_moments(sums.count, sums.mean, sums.m2)
        self.minimum = np.minimum(self.minimum, minimum)
        self.maximum = np.maximum(self.maximum, maximum)
        self.abs_sum += sums.abs_sum
        self.zeros += sums.zeros
        self.near_zeros += sums.near
        if histogram is not None and sums.histogram is not None:
            histogram.counts += sums.histogram
        return True

    def _update_on_device(self, batch: torch.Tensor, histogram: RunningHistogram | None) -> bool:
        """The fast path in torch, where ``batch`` lives; returns False (and changes nothing)
        when the batch holds a non-finite value or is not a float batch.

        The same numbers as :meth:`_update_finite`: per-channel min and max first (NaN and ±Inf
        show up there), the moments as two passes in float64 (one float64 copy of the batch on
        the device), exact zero and near-zero counts, and the histogram's bins counted with
        ``bincount`` under the binning :meth:`RunningHistogram.prepare` gives. float16 and
        bfloat16 values (autocast) are widened to float32, which holds each of them exactly.
        """
        t = batch.detach()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        if t.dtype not in (torch.float32, torch.float64) or t.numel() == 0:
            return False
        x = t.reshape(t.shape[0], self.channels, -1)
        dims = (0, 2)
        minimum = x.amin(dim=dims).double().cpu().numpy()
        maximum = x.amax(dim=dims).double().cpu().numpy()
        if not (np.isfinite(minimum).all() and np.isfinite(maximum).all()):
            return False
        n = x.shape[0] * x.shape[2]
        total = x.sum(dim=dims, dtype=torch.float64)
        guess = total / n
        if not bool(torch.isfinite(guess).all()):  # a sum overflowed (values near the maximum)
            scaled = (x.to(torch.float64) / n).sum(dim=dims)
            guess = torch.where(torch.isfinite(guess), guess, scaled)
        d = x.to(torch.float64) - guess.view(1, -1, 1)
        shift = d.sum(dim=dims)  # ~0: what rounding left of the mean
        squares = d.square_().sum(dim=dims)
        del d
        m2 = torch.where(torch.isinf(squares), squares, squares - shift * shift / n)
        # Deviations of values near the float64 maximum may overflow: no correction then.
        mean = torch.where(torch.isfinite(shift), guess + shift / n, guess)
        signed = bool((minimum < 0).any())
        abs_sum = x.abs().sum(dim=dims, dtype=torch.float64) if signed else total
        dtype = np.dtype(np.float32 if x.dtype == torch.float32 else np.float64)
        limit = dtype.type(self.near_zero)
        if float(limit) > self.near_zero:  # as in _update_finite: the dtype's value <= near_zero
            limit = np.nextafter(limit, dtype.type(-np.inf))
        zeros = (x == 0).sum(dim=dims)
        near = (x.abs() <= float(limit)).sum(dim=dims)
        counts = None
        if histogram is not None:
            binning = histogram.prepare(float(minimum.min()), float(maximum.max()), dtype)
            counts = bin_counts_torch(x, binning, histogram.bins)
        mean_np, m2_np = mean.cpu().numpy(), m2.clamp_min(0).cpu().numpy()
        constant = minimum == maximum  # exactly no spread, whatever the rounding
        mean_np[constant], m2_np[constant] = minimum[constant], 0.0
        self._merge_moments(np.full(self.channels, n, dtype=np.int64), mean_np, m2_np)
        self.minimum = np.minimum(self.minimum, minimum)
        self.maximum = np.maximum(self.maximum, maximum)
        self.abs_sum += abs_sum.cpu().numpy()
        self.zeros += zeros.cpu().numpy()
        self.near_zeros += near.cpu().numpy()
        if histogram is not None and counts is not None:
            histogram.counts += counts
        return True

    def _update_general(self, batch: np.ndarray) -> None:
        arr = np.asarray(batch)
        rows = np.moveaxis(arr, 1, 0).reshape(self.channels, -1)  # (C, values)
        finite = np.isfinite(rows)
        n = finite.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            clean = np.where(finite, rows, 0.0).astype(np.float64)
            mean = clean.sum(axis=1) / np.maximum(n, 1)
            if not np.isfinite(mean).all():  # a sum overflowed (values near the maximum)
                scaled = (clean / np.maximum(n, 1)[:, None]).sum(axis=1)
                mean = np.where(np.isfinite(mean), mean, scaled)
            dev = np.where(finite, clean - mean[:, None], 0.0)
            m2 = np.einsum("ij,ij->i", dev, dev)
            self.abs_sum += np.abs(clean).sum(axis=1)
        self._merge_moments(n, mean, m2)
        self.minimum = np.minimum(self.minimum, np.where(finite, rows, np.inf).min(axis=1))
        self.maximum = np.maximum(self.maximum, np.where(finite, rows, -np.inf).max(axis=1))
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
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            d = mean_b - self.mean
            share = np.where(n > 0, n_b / np.maximum(n, 1), 0.0)
            # Means far apart near the float64 maximum: d overflows, the weighted sum does not.
            weighted = self.mean * (1 - share) + mean_b * share
            self.mean = np.where(np.isfinite(d), self.mean + d * share, weighted)
            # Nothing to correct when one side is empty (d may be huge there: d * d overflows).
            both = (n_a > 0) & (n_b > 0)
            self.m2 = self.m2 + m2_b + np.where(both, d * d * n_a * share, 0.0)
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


def _host_values(batch: np.ndarray | torch.Tensor) -> np.ndarray:
    """The batch as a host array for the general path; bfloat16 (which numpy lacks) widened to
    float32, exactly."""
    if not isinstance(batch, torch.Tensor):
        return np.asarray(batch)
    t = batch.detach().cpu().resolve_neg()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _as_array(batch: np.ndarray | torch.Tensor) -> np.ndarray | None:
    """The batch as a float32/float64 array, a view of its memory (any strides), or None for
    any other dtype."""
    if isinstance(batch, torch.Tensor):
        t = batch.detach().cpu()
        if t.dtype not in (torch.float32, torch.float64):
            return None
        return t.resolve_neg().numpy()  # a negated view (conj().imag) has no numpy view
    arr = np.asarray(batch)
    if arr.dtype not in (np.float32, np.float64):
        return None
    return arr
