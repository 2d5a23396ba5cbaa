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

:class:`RunningHistogram` counts all values of a layer (channels pooled) into a fixed number of
bins whose range follows the data, exactly: see its docstring for why no count is ever guessed.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from types import ModuleType
from typing import Any

import numpy as np
import torch

from featuremaps._errors import InputError

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
        (:func:`_sweep_compiled`), or by numpy (:func:`_sweep_numpy`) where numba cannot be
        imported. Each block's moments are two passes in float64, and blocks are merged with the
        pairwise formulas. NaN and ±Inf show up in the channels' min and max.
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
        many = histogram is not None and histogram.bins > _COMPILED_BINS
        compiled = None if many else _compiled()
        if compiled is not None:
            found = _sweep_compiled(compiled, values, self.channels, limit, histogram)
        else:
            x = np.ascontiguousarray(values).reshape(values.shape[0], self.channels, -1)
            found = _sweep_numpy(x, limit, histogram)
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
            counts = _bin_counts_torch(x, binning, histogram.bins)
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


# Values per block of the sweep: a block and its scratch buffers (float64 deviations, float
# scratch, a mask) stay in a core's L2 cache while it goes through its passes.
_BLOCK = 1 << 16


@dataclass
class _Sums:
    """One batch's per-channel numbers, as the sweep gathers them."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    abs_sum: np.ndarray
    zeros: np.ndarray
    near: np.ndarray
    histogram: np.ndarray | None


def _blocks(n: int, c: int, length: int) -> list[tuple[int, int, int, int, int, int, int]]:
    """``(row, n0, n1, c0, c1, l0, l1)`` blocks of about :data:`_BLOCK` values tiling an ``(n, c,
    length)`` array. Every channel lies in one block of each row ``0..rows-1``."""
    if c * length <= _BLOCK:
        step = _BLOCK // (c * length)
        return [(r, i, min(i + step, n), 0, c, 0, length) for r, i in enumerate(range(0, n, step))]
    if length <= _BLOCK:
        width = _BLOCK // length
        return [
            (i, i, i + 1, j, min(j + width, c), 0, length)
            for i in range(n)
            for j in range(0, c, width)
        ]
    pieces = range(0, length, _BLOCK)
    return [
        (i * len(pieces) + p, i, i + 1, j, j + 1, k, min(k + _BLOCK, length))
        for i in range(n)
        for j in range(c)
        for p, k in enumerate(pieces)
    ]


def _count(mask: np.ndarray) -> np.ndarray:
    """Per-channel counts of True in an ``(n, c, length)`` mask."""
    if mask.shape[0] == 1 and mask.shape[2] >= 1024:  # whole-row counts are much faster
        return np.array([np.count_nonzero(row) for row in mask[0]], dtype=np.int64)
    counts: np.ndarray = np.count_nonzero(mask, axis=(0, 2)).astype(np.int64)
    return counts


def _block(
    x: np.ndarray,
    nonnegative: bool,
    limit: np.floating,
    binning: Binning | None,
    bins: int,
    scratch: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Per-channel mean, M2, abs-sum, zero and near-zero counts of an ``(n, c, length)`` block
    of finite values, and its histogram counts (None without a binning).

    The moments are two passes in float64: the deviations from the block's mean are summed
    (what rounding left of the mean) and their squares summed. The mean is first estimated in
    the values' own dtype; any value near the true mean serves, since the float64 sum of the
    deviations corrects it (and a mean that overflowed the dtype is replaced by the midpoint).
    """
    wide, same, flags = (b[: x.size].reshape(x.shape) for b in scratch)
    axes = (0, 2)
    n = x.shape[0] * x.shape[2]
    guess = np.add.reduce(x, axis=axes).astype(np.float64) / n
    if not np.isfinite(guess).all():  # a sum overflowed (values near the maximum): sum x / n
        scaled = np.add.reduce(x.astype(np.float64) / n, axis=axes)
        guess = np.where(np.isfinite(guess), guess, scaled)
    np.subtract(x, guess[None, :, None], out=wide)
    shift = np.add.reduce(wide, axis=axes)
    np.multiply(wide, wide, out=wide)
    squares = np.add.reduce(wide, axis=axes)
    with np.errstate(invalid="ignore"):  # squares that overflowed: M2 is +inf
        m2 = np.where(np.isinf(squares), np.inf, squares - shift * shift / n)
    # Deviations of values near the float64 maximum may overflow: no correction then.
    mean = np.where(np.isfinite(shift), guess + shift / n, guess)
    if nonnegative:
        abs_sum = mean * n
        np.less_equal(x, limit, out=flags)
    else:
        np.abs(x, out=same)
        abs_sum = np.add.reduce(same, axis=axes, dtype=np.float64)
        np.less_equal(same, limit, out=flags)
    near = _count(flags)
    np.equal(x, 0, out=flags)
    zeros = _count(flags)
    hist = (
        None if binning is None else _bin_counts(x, binning, bins, same if binning.single else wide)
    )
    return mean, np.maximum(m2, 0), abs_sum, zeros, near, hist


def _join_rows(
    count: np.ndarray, mean: np.ndarray, m2: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel count, mean and M2 of the ``(rows, C)`` parts of a batch (every channel in
    one block of each row), joined with the pairwise formulas. The mean is weighted by shares
    of the count, which cannot overflow where ``count * mean`` could."""
    total = count.sum(axis=0)
    share = count / total
    joined = (share * mean).sum(axis=0)
    spread = mean - joined  # parts near the float64 maximum may overflow: M2 is then +inf
    return total, joined, m2.sum(axis=0) + (count * spread * spread).sum(axis=0)


#: The name prefix of the sweep's worker threads. They are kept between batches (starting a pool
#: per batch cost up to 40% on small layers) and wait idle whenever no sweep runs.
SWEEP_THREADS = "featuremaps-sweep"
_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    pool = _POOLS.get(workers)
    if pool is None:
        pool = _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix=SWEEP_THREADS)
    return pool


def _sweep(
    x: np.ndarray,
    nonnegative: np.ndarray,
    limit: np.floating,
    binning: Binning | None,
    bins: int = 0,
) -> _Sums:
    """Per-channel numbers of the finite ``(N, C, L)`` values ``x``, block by block on as many
    threads as torch uses (numpy lets go of the GIL), blocks merged with the pairwise formulas.
    ``nonnegative``: per channel, whether its minimum is >= 0."""
    n, c, length = x.shape
    blocks = _blocks(n, c, length)
    rows = blocks[-1][0] + 1
    count = np.zeros((rows, c), dtype=np.int64)
    mean, m2, abs_sum = np.zeros((rows, c)), np.zeros((rows, c)), np.zeros((rows, c))
    zeros, near = np.zeros((rows, c), dtype=np.int64), np.zeros((rows, c), dtype=np.int64)

    def run(chosen: list[int]) -> np.ndarray | None:
        size = max((b[2] - b[1]) * (b[4] - b[3]) * (b[6] - b[5]) for b in blocks)
        scratch = (np.empty(size), np.empty(size, dtype=x.dtype), np.empty(size, dtype=bool))
        total = None
        for i in chosen:
            r, n0, n1, c0, c1, l0, l1 = blocks[i]
            # Float64 values near the maximum overflow sums and deviations, which _block
            # handles (errstate is per thread).
            with np.errstate(over="ignore", invalid="ignore"):
                part = _block(
                    x[n0:n1, c0:c1, l0:l1],
                    bool(nonnegative[c0:c1].all()),
                    limit,
                    binning,
                    bins,
                    scratch,
                )
            count[r, c0:c1] = (n1 - n0) * (l1 - l0)
            mean[r, c0:c1], m2[r, c0:c1], abs_sum[r, c0:c1] = part[0], part[1], part[2]
            zeros[r, c0:c1], near[r, c0:c1] = part[3], part[4]
            if part[5] is not None:
                total = part[5] if total is None else total + part[5]
        return total

    workers = min(max(1, torch.get_num_threads()), len(blocks))
    if workers == 1:
        parts = [run(list(range(len(blocks))))]
    else:
        jobs = [list(range(len(blocks)))[w::workers] for w in range(workers)]
        parts = list(_pool(workers).map(run, jobs))
    total_n, batch_mean, batch_m2 = _join_rows(count, mean, m2)
    hist = None
    if binning is not None:
        hist = sum((p for p in parts if p is not None), np.zeros(bins, dtype=np.int64))
    return _Sums(
        total_n,
        batch_mean,
        batch_m2,
        abs_sum.sum(axis=0),
        zeros.sum(axis=0),
        near.sum(axis=0),
        hist,
    )


@cache
def _compiled() -> ModuleType | None:
    """The compiled sweep (:mod:`featuremaps._sweepjit`), or None where numba cannot be
    imported: the numpy sweep then gives the same numbers, more slowly."""
    try:
        from featuremaps import _sweepjit
    except ImportError:  # pragma: no cover - numba is a dependency; missing, or not for numpy
        return None
    return _sweepjit


# Fewer channels than this: values laid out channels last are gathered channel by channel.
_FEW_CHANNELS = 32

# The most histogram bins for the compiled sweep (its per-block counts: blocks x bins).
_COMPILED_BINS = 4096

_Found = tuple[_Sums, np.ndarray, np.ndarray]  # the sums, per-channel min and max (float64)


def _sweep_numpy(
    x: np.ndarray, limit: np.floating, histogram: RunningHistogram | None
) -> _Found | None:
    """Per-channel numbers (and histogram counts) of the ``(N, C, L)`` values ``x`` with numpy:
    min and max first, over all values (None when one is not finite), then :func:`_sweep`."""
    minimum = np.minimum.reduce(x, axis=(0, 2))
    maximum = np.maximum.reduce(x, axis=(0, 2))
    if not (np.isfinite(minimum).all() and np.isfinite(maximum).all()):
        return None
    binning = None
    if histogram is not None:
        binning = histogram.prepare(float(minimum.min()), float(maximum.max()), x.dtype)
    sums = _sweep(x, minimum >= 0, limit, binning, histogram.bins if histogram else 0)
    constant = minimum == maximum  # exactly no spread, whatever the rounding
    sums.mean[constant], sums.m2[constant] = minimum[constant], 0.0
    return sums, minimum.astype(np.float64), maximum.astype(np.float64)


def _channel_rows(values: np.ndarray, channels: int) -> np.ndarray | None:
    """The ``(N, C, ...)`` values as ``(rows, C)`` without a copy when their memory holds the
    channels last (tokens moved to channels first, channels-last maps, or one value per channel:
    a Linear layer's ``(N, C)``), else None."""
    last = np.moveaxis(values, 1, -1)
    return last.reshape(-1, channels) if last.flags.c_contiguous else None


def _sweep_compiled(
    compiled: Any,
    values: np.ndarray,
    channels: int,
    limit: np.floating,
    histogram: RunningHistogram | None,
) -> _Found | None:
    """:func:`_sweep_numpy`'s numbers from the compiled sweep (:mod:`featuremaps._sweepjit`):
    each block is read from memory once, on as many threads as torch uses, and histogrammed on
    its own lattice; the blocks' counts join the histogram's once the batch's range is known.

    ``values`` (N, C, ...) of any strides: swept in place when their memory holds each
    channel's values together (``block_sweep``) or the channels last (``rows_sweep``), which
    is also the layout where each sample has one value per channel; copied otherwise."""
    n = values.shape[0]
    length = values.size // max(n * channels, 1)
    first = values.reshape(n, channels, -1) if values.flags.c_contiguous else None
    rows = None if first is not None and length > 1 else _channel_rows(values, channels)
    if rows is not None and channels < _FEW_CHANNELS:
        # Rows of a few values: each channel's values are gathered into one run instead (a
        # copy, none for one channel); the statistics are over all of them either way.
        first, rows = np.ascontiguousarray(rows.T).reshape(1, channels, -1), None
        n, length = 1, first.shape[2]
    if rows is None and first is None:
        first = np.ascontiguousarray(values).reshape(n, channels, -1)
    bins = histogram.bins if histogram is not None else 0  # 0: no histogram
    if rows is not None:
        # Whole rows; at least 64 of them, over which a block's work per channel is shared.
        step = max(1, _BLOCK // channels, min(64, _BLOCK))
        starts = np.arange(0, rows.shape[0], step, dtype=np.int64)
        blocks = np.stack([starts, np.minimum(starts + step, rows.shape[0])], axis=1)
        parts, flat = len(blocks), rows.reshape(-1)
        width = int((blocks[:, 1] - blocks[:, 0]).max()) * channels
        part_of = np.arange(len(blocks))  # block b is part b, all channels
        first_channel = np.zeros(len(blocks), dtype=np.int64)
        sizes = (blocks[:, 1] - blocks[:, 0]) * channels
    else:
        assert first is not None
        blocks = np.array(_blocks(n, channels, length), dtype=np.int64)
        parts, flat = int(blocks[-1, 0]) + 1, first.reshape(-1)
        # A block's values of one sample, at most.
        width = int(
            ((blocks[:, 4] - blocks[:, 3] - 1) * length + blocks[:, 6] - blocks[:, 5]).max()
        )
        part_of, first_channel = blocks[:, 0], blocks[:, 3]
        sizes = (blocks[:, 2] - blocks[:, 1]) * (blocks[:, 4] - blocks[:, 3])
        sizes *= blocks[:, 6] - blocks[:, 5]
    out = np.zeros((5, parts, channels))
    ints = np.zeros((3, parts, channels), dtype=np.int64)
    lattice = np.zeros((len(blocks), 3), dtype=np.int64)
    hist = np.zeros((len(blocks), bins), dtype=np.int64)
    integer = np.int32 if flat.dtype == np.float32 else np.int64
    bits, mask = flat.view(integer), integer(np.iinfo(integer).max)
    sign = integer(8 * flat.itemsize - 1)
    # Bin indices (up to ``bins`` while the underflow of tiny negatives is mended) as the
    # smallest integers that hold them.
    index = np.uint8 if bins < 256 else np.int32
    arrays = (limit, bins, out, ints, lattice, hist)

    def run(chosen: np.ndarray) -> bool:
        scratch = np.empty(width, dtype=index)
        if rows is not None:
            found = compiled.rows_sweep(
                flat, bits, mask, sign, channels, blocks, chosen, *arrays, scratch
            )
        else:
            shape = np.array((n, channels, length), dtype=np.int64)
            found = compiled.block_sweep(
                flat, bits, mask, sign, shape, blocks, chosen, *arrays, scratch
            )
        return bool(found)

    order = np.arange(len(blocks), dtype=np.int64)
    workers = min(max(1, torch.get_num_threads()), len(blocks))
    if workers == 1:
        finite = run(order)
    else:
        jobs = [np.ascontiguousarray(order[w::workers]) for w in range(workers)]
        # Every job is waited for: none may still read the batch when this returns.
        finite = all(list(_pool(workers).map(run, jobs)))
    if not finite:
        return None
    total_n, batch_mean, batch_m2 = _join_rows(ints[2], out[0], out[1])
    minimum, maximum = out[3].min(axis=0), out[4].max(axis=0)
    constant = minimum == maximum
    batch_mean[constant], batch_m2[constant] = minimum[constant], 0.0
    counts = None
    if histogram is not None:
        histogram.prepare(float(minimum.min()), float(maximum.max()), flat.dtype)
        assert histogram.exponent is not None
        counts = np.zeros(bins, dtype=np.int64)
        constants = out[3][part_of, first_channel]  # a constant block's value: its min
        if not compiled.merge_histograms(
            lattice, hist, constants, sizes, histogram.exponent, histogram.start, counts
        ):
            return None  # the general path counts this batch (prepare() only made room)
    sums = _Sums(
        total_n,
        batch_mean,
        batch_m2,
        out[2].sum(axis=0),
        ints[0].sum(axis=0),
        ints[1].sum(axis=0),
        counts,
    )
    return sums, minimum, maximum


# Bin widths are powers of two between these exponents: above the lower one the reciprocal
# 2**-e is finite, so scaling a value by it is exact; at the upper one 4 bins hold every float64.
_MIN_EXPONENT = -1022
_MAX_EXPONENT = 1023


@dataclass(frozen=True)
class Histogram:
    """Counts of the finite values in ``[edges[i], edges[i + 1])`` (no value equals the last
    edge), and the number of non-finite values, which are counted apart and not binned."""

    edges: np.ndarray
    counts: np.ndarray
    nonfinite: int

    @property
    def total(self) -> int:
        """Number of finite values counted."""
        return int(self.counts.sum())


@dataclass
class RunningHistogram:
    """A histogram of every value passed to :meth:`update`, exact, in at most ``bins`` bins.

    The bins lie on a fixed lattice: bin ``k`` is ``[k * w, (k + 1) * w)`` with the width ``w``
    a power of two. Scaling by a power of two is exact in floating point, so ``floor(x / w)``
    puts every value in its true bin, and the edges ``k * w`` are exact numbers. The first batch
    gets the narrowest width at which its values span at most ``bins`` bins. When later values
    fall outside the ``bins`` bins kept, the width is doubled until everything seen fits: bin
    ``j`` of the doubled lattice is exactly bins ``2j`` and ``2j + 1`` of the old one, so adding
    their counts loses nothing. The result therefore equals ``np.histogram(all_values,
    bins=result().edges)`` exactly, however the values were split into batches; and whenever the
    width had to grow, the values span at least half of the bins. Memory is ``bins`` counters;
    time per batch is a few passes over the batch (scale, floor, ``bincount``).

    Args:
        bins: the most bins kept (at least 4).
    """

    bins: int = 128
    counts: np.ndarray = field(init=False)
    start: int = field(init=False, default=0)  # lattice index of counts[0]
    exponent: int | None = field(init=False, default=None)  # width 2**exponent; None: no data
    first: int = field(init=False, default=0)  # lattice indices of the first and last bin ...
    last: int = field(init=False, default=-1)  # ... that may hold values
    nonfinite: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.bins < 4:  # 4 bins of width 2**1023 hold every finite float64
            raise InputError(f"a histogram of {self.bins} bins; expected at least 4")
        self.counts = np.zeros(self.bins, dtype=np.int64)

    def update(self, values: np.ndarray) -> None:
        """Count ``values`` (any shape, any real dtype). They are not modified."""
        x = np.asarray(values).ravel()
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float64)
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())  # NaN and ±Inf show up here: no mask needed
        if not (math.isfinite(lo) and math.isfinite(hi)):
            finite = np.isfinite(x)
            n = int(np.count_nonzero(finite))
            self.nonfinite += x.size - n
            if n == 0:
                return
            x = x[finite]
            lo, hi = float(x.min()), float(x.max())
        binning = self.prepare(lo, hi, x.dtype)  # may replace self.counts: first
        self.counts += _bin_counts(x, binning, self.bins)

    def prepare(self, lo: float, hi: float, dtype: np.dtype) -> Binning:
        """Make room for finite values ``lo``..``hi`` of ``dtype`` (growing the width, moving the
        window) and say how to bin them; the caller then adds their :func:`_bin_counts`."""
        if self.exponent is None:
            self.exponent = _initial_exponent(lo, hi, self.bins)
            self.start = self.first = _index(lo, self.exponent)
            self.last = self.first - 1
        self._fit(lo, hi)
        # Scaling by 2**-exponent is exact (float32 and float16 convert exactly to float64). In
        # float32 too, as long as the scale is a normal float32 and every scaled value is below
        # 2**24, where float32 still holds every integer: then the cheaper float32 path is used.
        # k - start is then exact as well: both are integers below 2**24 (2**53 in float64).
        scale = math.ldexp(1.0, -self.exponent)
        top = max(abs(lo), abs(hi)) * scale
        window = abs(self.start) + self.bins  # k - start must stay exact too
        single = dtype == np.float32 and -126 <= -self.exponent <= 127 and max(top, window) < 2**24
        # A value scaled by 1 or more cannot underflow; by less, a negative value so small that
        # it underflows to -0.0 must still go to bin -1.
        return Binning(scale, self.start, single, lo < 0 and scale < 1)

    def _fit(self, lo: float, hi: float) -> None:
        """Grow the width and move the window until ``lo``..``hi`` and all counted values fit."""
        assert self.exponent is not None
        # Keep |x| / w below 2**53, so that bin indices are exact integers.
        magnitude = max(abs(lo), abs(hi))
        while self.exponent < math.frexp(magnitude)[1] - 53:
            self._double()
        while True:
            a = min(self.first, _index(lo, self.exponent))
            b = max(self.last, _index(hi, self.exponent))
            if b - a < self.bins:
                break
            self._double()
        if a < self.start or b >= self.start + self.bins:
            self._move(a)
        self.first, self.last = a, b

    def _double(self) -> None:
        """Double the bin width, adding the counts of each pair of bins that merge."""
        assert self.exponent is not None
        counts = self.counts
        if self.start % 2:  # pairs start at even lattice indices
            counts = np.concatenate([[0], counts])
            self.start -= 1
        if len(counts) % 2:
            counts = np.concatenate([counts, [0]])
        merged = counts.reshape(-1, 2).sum(axis=1)  # at most bins // 2 + 1 bins
        self.counts = np.zeros(self.bins, dtype=np.int64)
        self.counts[: len(merged)] = merged
        self.start //= 2
        self.first //= 2
        self.last //= 2
        self.exponent += 1

    def _move(self, start: int) -> None:
        """Put the window's first bin at lattice index ``start`` (counted bins must stay in)."""
        counts = np.zeros(self.bins, dtype=np.int64)
        if self.last >= self.first:
            src = slice(self.first - self.start, self.last - self.start + 1)
            counts[self.first - start : self.last - start + 1] = self.counts[src]
        self.counts, self.start = counts, start

    def merge(self, other: RunningHistogram) -> None:
        """Fold in a histogram gathered elsewhere (another worker, another shard)."""
        self.nonfinite += other.nonfinite
        if other.exponent is None or other.last < other.first:
            return
        theirs = RunningHistogram(other.bins)
        theirs.counts, theirs.start = other.counts.copy(), other.start
        theirs.exponent, theirs.first, theirs.last = other.exponent, other.first, other.last
        if self.exponent is None:
            self.exponent = theirs.exponent
            self.start = self.first = theirs.first
            self.last = self.first - 1
        while theirs.exponent < self.exponent:
            theirs._double()
        while self.exponent < theirs.exponent:
            self._double()
        low, high = theirs._edge(theirs.first), theirs._edge(theirs.last)
        self._fit(low, high)
        while theirs.exponent < self.exponent:  # _fit may have doubled again
            theirs._double()
        for k in range(theirs.first, theirs.last + 1):
            self.counts[k - self.start] += theirs.counts[k - theirs.start]

    def _edge(self, k: int) -> float:
        assert self.exponent is not None
        return math.ldexp(float(k), self.exponent)

    def result(self) -> Histogram:
        """Edges and counts from the first to the last non-empty bin (both empty arrays when no
        finite value was seen)."""
        occupied = np.flatnonzero(self.counts)
        if self.exponent is None or not len(occupied):
            return Histogram(np.zeros(0), np.zeros(0, dtype=np.int64), self.nonfinite)
        i, j = int(occupied[0]), int(occupied[-1]) + 1
        k = np.arange(self.start + i, self.start + j + 1, dtype=np.float64)  # exact: < 2**53
        with np.errstate(over="ignore"):  # only a last edge past the float64 maximum: inf
            edges = np.ldexp(k, self.exponent)
        return Histogram(edges, self.counts[i:j].copy(), self.nonfinite)


@dataclass(frozen=True)
class Binning:
    """How :func:`_bin_counts` puts values in bins: bin ``floor(x * scale) - start``, computed in
    float32 when ``single`` (exact there, see :meth:`RunningHistogram.prepare`), else in float64;
    ``underflow``: negative values may scale to -0.0 and need the check."""

    scale: float
    start: int
    single: bool
    underflow: bool


def _bin_counts(
    x: np.ndarray, binning: Binning, bins: int, scratch: np.ndarray | None = None
) -> np.ndarray:
    """The counts of the finite values ``x`` (any shape) in the ``bins`` bins that ``binning``
    describes; ``scratch``: a float buffer of ``x.size`` values or more of the binning's dtype,
    to use instead of allocating one."""
    dtype = np.float32 if binning.single else np.float64
    k = np.empty(x.shape, dtype=dtype) if scratch is None else scratch[: x.size].reshape(x.shape)
    np.multiply(x, dtype(binning.scale), out=k, dtype=dtype)
    np.floor(k, out=k)
    if binning.underflow:
        # A negative value so small that the scaled value underflows to -0.0 belongs in bin
        # -1 (-0.0 itself is zero and stays in bin 0).
        below = k == 0
        below &= x < 0
        k[below] = -1
    np.subtract(k, dtype(binning.start), out=k)  # exact: integers that the dtype holds
    # Every index is in 0..bins-1: the smallest integer type that holds them counts fastest.
    index = k.astype(np.uint8 if bins <= 256 else np.int32).ravel()
    counts: np.ndarray = torch.bincount(torch.from_numpy(index), minlength=bins).numpy()
    return counts


def _bin_counts_torch(x: torch.Tensor, binning: Binning, bins: int) -> np.ndarray:
    """:func:`_bin_counts` in torch, on the device of ``x`` (finite values); the counts come
    to the host."""
    wide = torch.float32 if binning.single else torch.float64
    k = torch.floor(x.to(wide) * binning.scale)  # a power of two: exact, as in _bin_counts
    if binning.underflow:
        k[(k == 0) & (x < 0)] = -1  # a negative value that underflowed to -0.0: bin -1
    k -= binning.start
    counts: np.ndarray = torch.bincount(k.flatten().long(), minlength=bins).cpu().numpy()
    return counts


def _index(value: float, exponent: int) -> int:
    """The lattice index of the bin of width ``2**exponent`` holding ``value``."""
    k = math.floor(math.ldexp(value, -exponent))
    return -1 if k == 0 and value < 0 else k  # an underflow to -0.0, as in update()


def _initial_exponent(lo: float, hi: float, bins: int) -> int:
    """The smallest width exponent worth trying for values ``lo``..``hi`` (:meth:`_fit` grows
    it until they fit); a constant gets bins 1/128 to 1/64 of its size."""
    if hi > lo:
        # lo / bins and hi / bins cannot overflow where hi - lo could. One step below the
        # estimate, which rounding can raise by one; neighbouring floats can make it 0.
        spread = hi / bins - lo / bins
        exponent = math.frexp(spread)[1] - 2 if spread > 0 else _MIN_EXPONENT
    else:
        exponent = math.frexp(abs(lo))[1] - 7 if lo else -7
    floor = math.frexp(max(abs(lo), abs(hi)))[1] - 53  # as in RunningHistogram._fit
    return min(max(exponent, floor, _MIN_EXPONENT), _MAX_EXPONENT)
