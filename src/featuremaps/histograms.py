"""Histograms of every value of a layer over many inputs: exact counts in bins that follow the data.

Part of the pure statistics stage, beside :mod:`featuremaps.datastats`. :class:`RunningHistogram`
counts all values of a layer (channels pooled) into a fixed number of bins whose range follows the
data, exactly: see its docstring for why no count is ever guessed. :class:`Histogram` is its
result; :class:`Binning` and :func:`bin_counts` (and :func:`bin_counts_torch`, on the device)
put a batch's finite values in its bins, for the statistics' sweep too (:mod:`featuremaps.sweeps`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from featuremaps._errors import InputError

__all__ = ["Binning", "Histogram", "RunningHistogram", "bin_counts", "bin_counts_torch"]


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
        self.counts += bin_counts(x, binning, self.bins)

    def prepare(self, lo: float, hi: float, dtype: np.dtype) -> Binning:
        """Make room for finite values ``lo``..``hi`` of ``dtype`` (growing the width, moving the
        window) and say how to bin them; the caller then adds their :func:`bin_counts`."""
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
    """How :func:`bin_counts` puts values in bins: bin ``floor(x * scale) - start``, computed in
    float32 when ``single`` (exact there, see :meth:`RunningHistogram.prepare`), else in float64;
    ``underflow``: negative values may scale to -0.0 and need the check."""

    scale: float
    start: int
    single: bool
    underflow: bool


def bin_counts(
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


def bin_counts_torch(x: torch.Tensor, binning: Binning, bins: int) -> np.ndarray:
    """:func:`bin_counts` in torch, on the device of ``x`` (finite values); the counts come
    to the host."""
    wide = torch.float32 if binning.single else torch.float64
    k = torch.floor(x.to(wide) * binning.scale)  # a power of two: exact, as in bin_counts
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
