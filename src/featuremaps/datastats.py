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
from dataclasses import dataclass, field

import numpy as np
import torch

from featuremaps._errors import InputError

__all__ = ["Histogram", "RunningHistogram", "RunningStats"]


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

    def update(self, batch: np.ndarray | torch.Tensor) -> None:
        """Add a batch: ``(N, C, ...)`` activations (channels on axis 1). It is not modified.

        A float tensor (or array) whose values are all finite takes a fast path in torch; any
        other batch goes through the general numpy path, which masks NaN and ±Inf.
        """
        shape = tuple(batch.shape)
        if len(shape) < 2 or shape[1] != self.channels:
            raise InputError(
                f"batch of shape {shape}; expected (N, {self.channels}, ...) with the "
                "channels on axis 1"
            )
        if self.correlations or not self._update_finite(batch):
            self._update_general(batch.numpy() if isinstance(batch, torch.Tensor) else batch)

    def _update_finite(self, batch: np.ndarray | torch.Tensor) -> bool:
        """The fast path for an all-finite float batch; returns False (and changes nothing) when
        the batch holds a non-finite value or is not a float32/float64 batch.

        The moments are the same two passes in float64 as the general path, done in place on
        one float64 copy with torch (the sum is finite exactly when every value is: NaN and ±Inf
        propagate, and float32 values cannot overflow a float64 sum); the counts use numpy's
        fast boolean reductions on the batch itself. Nothing else is allocated per value.
        """
        t = torch.as_tensor(batch).detach().cpu()
        if t.dtype not in (torch.float32, torch.float64) or t.numel() == 0:
            return False
        t = t.contiguous()
        dims = [0, *range(2, t.dim())]
        d = t.to(torch.float64, copy=True)
        total = d.sum(dims)
        if not bool(torch.isfinite(total).all()):
            return False
        n = t.numel() // self.channels
        mean = total / n
        minimum = t.amin(dims).double().numpy()
        maximum = t.amax(dims).double().numpy()
        nonnegative = bool((minimum >= 0).all())
        abs_sum = total if nonnegative else torch.linalg.vector_norm(d, ord=1, dim=dims)
        d -= mean.view((1, self.channels) + (1,) * (t.dim() - 2))
        shifted = d.sum(dims)  # ~0; removes what rounding left of the mean
        m2 = d.square_().sum(dims) - shifted * shifted / n
        del d
        values = t.numpy().reshape(t.shape[0], self.channels, -1)
        zeros = np.count_nonzero(values == 0, axis=(0, 2))
        # The largest value of the batch's dtype that is <= near_zero: comparing with it in that
        # dtype counts exactly the values a float64 comparison with near_zero would.
        limit = values.dtype.type(self.near_zero)
        if float(limit) > self.near_zero:  # float(): compared in float64, not in the dtype
            limit = np.nextafter(limit, values.dtype.type(-np.inf))
        if nonnegative:
            near = np.count_nonzero(values <= limit, axis=(0, 2))
        else:
            small = values <= limit
            small &= values >= -limit
            near = np.count_nonzero(small, axis=(0, 2))
        counts = np.full(self.channels, n, dtype=np.int64)
        self._merge_moments(counts, mean.numpy(), m2.clamp_min(0).numpy())
        self.minimum = np.minimum(self.minimum, minimum)
        self.maximum = np.maximum(self.maximum, maximum)
        self.abs_sum += abs_sum.numpy()
        self.zeros += zeros
        self.near_zeros += near
        return True

    def _update_general(self, batch: np.ndarray) -> None:
        arr = np.asarray(batch)
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
        if self.exponent is None:
            self.exponent = _initial_exponent(lo, hi, self.bins)
            self.start = self.first = _index(lo, self.exponent)
            self.last = self.first - 1
        self._fit(lo, hi)
        # Scaling by 2**-exponent is exact (float32 and float16 convert exactly to float64). In
        # float32 too, as long as the scale is a normal float32 and every scaled value is below
        # 2**24, where float32 still holds every integer: then the cheaper float32 path is used.
        scale = math.ldexp(1.0, -self.exponent)
        top = max(abs(lo), abs(hi)) * scale
        window = abs(self.start) + self.bins  # k - start must stay exact too
        if x.dtype == np.float32 and -126 <= -self.exponent <= 127 and max(top, window) < 2**24:
            k = np.multiply(x, np.float32(scale), dtype=np.float32)
        else:
            k = np.multiply(x, scale, dtype=np.float64)
        np.floor(k, out=k)
        if lo < 0:
            # A negative value so small that the scaled value underflows to -0.0 belongs in bin
            # -1 (-0.0 itself is zero and stays in bin 0).
            below = k == 0
            below &= x < 0
            k[below] = -1
        k -= self.start
        self.counts += np.bincount(k.astype(np.intp), minlength=self.bins)

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


def _index(value: float, exponent: int) -> int:
    """The lattice index of the bin of width ``2**exponent`` holding ``value``."""
    k = math.floor(math.ldexp(value, -exponent))
    return -1 if k == 0 and value < 0 else k  # an underflow to -0.0, as in update()


def _initial_exponent(lo: float, hi: float, bins: int) -> int:
    """The smallest width exponent worth trying for values ``lo``..``hi`` (:meth:`_fit` grows
    it until they fit); a constant gets bins 1/128 to 1/64 of its size."""
    if hi > lo:
        # lo / bins and hi / bins cannot overflow where hi - lo could.
        exponent = math.frexp(hi / bins - lo / bins)[1] - 1
    else:
        exponent = math.frexp(abs(lo))[1] - 7 if lo else -7
    floor = math.frexp(max(abs(lo), abs(hi)))[1] - 53  # as in RunningHistogram._fit
    return min(max(exponent, floor, _MIN_EXPONENT), _MAX_EXPONENT)
