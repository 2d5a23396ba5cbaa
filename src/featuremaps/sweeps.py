"""The sweep: one pass of a float batch's values, block by block on several threads.

Part of the pure statistics stage (:mod:`featuremaps.datastats`): the fast path of
:meth:`~featuremaps.datastats.RunningStats.update` for an all-finite float32/float64 batch. The
values are cut into blocks small enough to stay in a core's cache while a block goes through its
few passes (moments in float64, min and max, zero and near-zero counts, histogram counts), the
blocks are shared among worker threads kept between batches (:data:`SWEEP_THREADS`), and the
blocks' numbers are merged with the pairwise formulas. :func:`sweep_compiled` runs the numba
kernels of :mod:`featuremaps._sweepjit` (imported only when first needed); :func:`sweep_numpy`
gives the same numbers with numpy where numba cannot be imported.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any

import numpy as np
import torch

from featuremaps.histograms import Binning, RunningHistogram, bin_counts

__all__ = ["COMPILED_BINS", "SWEEP_THREADS", "compiled_kernels", "sweep_compiled", "sweep_numpy"]


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
        None if binning is None else bin_counts(x, binning, bins, same if binning.single else wide)
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
def compiled_kernels() -> ModuleType | None:
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
COMPILED_BINS = 4096

_Found = tuple[_Sums, np.ndarray, np.ndarray]  # the sums, per-channel min and max (float64)


def sweep_numpy(
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


def sweep_compiled(
    compiled: Any,
    values: np.ndarray,
    channels: int,
    limit: np.floating,
    histogram: RunningHistogram | None,
) -> _Found | None:
    """:func:`sweep_numpy`'s numbers from the compiled sweep (:mod:`featuremaps._sweepjit`):
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
