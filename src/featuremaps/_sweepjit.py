"""The statistics sweep compiled to machine code (numba), for :mod:`featuremaps.sweeps`.

One block of values is read from memory once and, while it stays in the CPU cache, gives every
number a data-set statistic needs: each channel's min, max and float64 sum, then its moments,
absolute sum, zero and near-zero counts, then a histogram of the block on its own power-of-two
lattice. The numpy sweep makes about ten passes (and as many temporary arrays) per block.

Imported on first use: numba takes about half a second to import, and compiles each kernel once
per dtype (a few seconds), then keeps the machine code in its on-disk cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import numba
import numpy as np

__all__ = ["block_sweep", "merge_histograms", "rows_sweep"]

F = TypeVar("F", bound=Callable[..., Any])


def _njit(**options: Any) -> Callable[[F], F]:
    """numba's ``njit`` without the GIL, its machine code cached on disk: next to this file, or
    in the user's cache folder. Where neither can be written, it compiles in every process."""

    def compile_(function: F) -> F:
        try:
            compiled: F = numba.njit(nogil=True, cache=True, **options)(function)
        except RuntimeError:  # numba found no writable place for its cache
            compiled = numba.njit(nogil=True, **options)(function)
        return compiled

    return compile_


_jit = _njit()
# reassoc: a sum may be split into several running sums (which vectorises); the order of the
# float64 additions changes only within rounding. Nothing is assumed about NaN or infinity.
_fast = _njit(fastmath={"reassoc", "contract", "nsz"})

# Each helper below takes one contiguous run of values: a slice, whose loop the compiler knows
# to start at index 0, so that it vectorises.


@_fast
def _extremes(run: Any, bits: Any, mask: Any, sign: Any) -> tuple[Any, Any, float]:
    """The min and max keys of ``run`` and its float64 sum. ``bits``: the same values as
    integers; a key is ``bits ^ ((bits >> sign) & mask)``, an integer that sorts as the float
    does (NaN past ±inf): an integer min/max vectorises where a float one does not."""
    a, b = mask, ~mask
    s = 0.0
    for j in range(run.size):
        i = bits[j]
        k = i ^ ((i >> sign) & mask)
        a = min(a, k)
        b = max(b, k)
        s += np.float64(run[j])
    return a, b, s


@_jit
def _value(key: Any, mask: Any, sign: Any, cell: Any, view: Any) -> float:
    """The float whose key is ``key``; ``cell``: one integer, ``view``: the same as a float."""
    cell[0] = key ^ ((key >> sign) & mask)
    return float(view[0])


@_fast
def _scaled_total(run: Any, factor: float) -> float:
    """The float64 sum of ``run * factor``."""
    s = 0.0
    for j in range(run.size):
        s += np.float64(run[j]) * factor
    return s


@_fast
def _moments(run: Any, guess: float, limit: Any) -> tuple[float, float, float, int, int]:
    """Sums of the deviations from ``guess`` and of their squares (float64), the absolute sum,
    and the counts of zeros and of values within ``limit`` of zero."""
    s1 = 0.0
    s2 = 0.0
    sa = 0.0
    zeros = 0
    near = 0
    for j in range(run.size):
        v = run[j]
        d = np.float64(v) - guess
        s1 += d
        s2 += d * d
        a = abs(v)
        sa += np.float64(a)
        zeros += v == 0
        near += a <= limit
    return s1, s2, sa, zeros, near


@_fast
def _moments_nonnegative(run: Any, guess: float, limit: Any) -> tuple[float, float, int, int]:
    """:func:`_moments` of values >= 0 (a ReLU's): no absolute values, no absolute sum (it is
    the sum)."""
    s1 = 0.0
    s2 = 0.0
    zeros = 0
    near = 0
    for j in range(run.size):
        v = run[j]
        d = np.float64(v) - guess
        s1 += d
        s2 += d * d
        zeros += v == 0
        near += v <= limit
    return s1, s2, zeros, near


@_jit
def _lattice_index(value: float, scale: float) -> int:
    """The index of the lattice bin of width ``1 / scale`` holding ``value``."""
    k = math.floor(value * scale)
    if k == 0 and value < 0:  # a negative value whose scaled value underflowed to -0.0
        return -1
    return int(k)


@_jit
def _block_lattice(lo: float, hi: float, bins: int) -> tuple[int, int]:
    """The narrowest width ``2**e`` at which ``lo..hi`` span fewer than ``bins`` lattice bins,
    and the index of ``lo``'s bin. The search starts below every width that fits (the merge
    relies on it: a block's width is never above the batch's): one step under the spread's
    estimate, which rounding can raise by a step, and at the smallest width where the spread's
    estimate rounds to 0 (two neighbouring floats)."""
    spread = hi / bins - lo / bins  # cannot overflow where hi - lo could
    e = math.frexp(spread)[1] - 2 if spread > 0 else -1022
    e = max(e, math.frexp(max(abs(lo), abs(hi)))[1] - 53, -1022)  # indices below 2**53
    e = min(e, 1023)
    while True:
        scale = math.ldexp(1.0, -e)
        a = _lattice_index(lo, scale)
        if _lattice_index(hi, scale) - a < bins:
            return e, a
        e += 1


@_jit
def _bin_run(run: Any, scale: float, start: int, underflow: bool, index: Any, counts: Any) -> None:
    """Count ``run`` into ``counts`` (4 x bins; bin ``k`` at lattice index ``start + k``).

    The indices first (a loop that vectorises), then the counting. Four sub-histograms take
    turns, so that runs of equal values (a ReLU's zeros) do not wait on one counter."""
    m = run.size
    for j in range(m):
        index[j] = math.floor(np.float64(run[j]) * scale) - start
    if underflow:
        for j in range(m):
            if index[j] == -start and run[j] < 0:
                index[j] = -1 - start
    m4 = m - m % 4
    for j in range(0, m4, 4):
        counts[0, index[j]] += 1
        counts[1, index[j + 1]] += 1
        counts[2, index[j + 2]] += 1
        counts[3, index[j + 3]] += 1
    for j in range(m4, m):
        counts[0, index[j]] += 1


@_jit
def _finish(
    out: Any,
    ints: Any,
    part: int,
    c: int,
    vmin: float,
    vmax: float,
    guess: float,
    sums: tuple[float, float, float, int, int],
    n: int,
) -> None:
    """Write channel ``c``'s numbers of one part: ``sums`` = deviations from ``guess``, their
    squares, the absolute sum, zeros and near-zeros of its ``n`` values."""
    s1, s2, sa, zeros, near = sums
    if vmin == vmax:  # exactly no spread, whatever the rounding
        out[0, part, c], out[1, part, c] = vmin, 0.0
    else:
        # Deviations of values near the float64 maximum may overflow: no correction then, and
        # squares that overflowed make M2 +inf.
        out[0, part, c] = guess + s1 / n if math.isfinite(s1) else guess
        out[1, part, c] = s2 if math.isinf(s2) else max(s2 - s1 * s1 / n, 0.0)
    out[2, part, c], out[3, part, c], out[4, part, c] = sa, vmin, vmax
    ints[0, part, c], ints[1, part, c], ints[2, part, c] = zeros, near, n


@_jit
def _block_binning(
    lattice: Any, b: int, lo: float, hi: float, bins: int
) -> tuple[bool, float, int]:
    """Choose block ``b``'s lattice (``lattice[b]``) for its values ``lo..hi``; returns whether
    its values are to be counted now, the scale and the first bin's lattice index. A constant
    block is counted once the batch's lattice is known."""
    if lo == hi:
        lattice[b, 0], lattice[b, 1], lattice[b, 2] = 0, 0, 1
        return False, 1.0, 0
    e, first = _block_lattice(lo, hi, bins)
    lattice[b, 0], lattice[b, 1], lattice[b, 2] = e, first, 0
    return True, math.ldexp(1.0, -e), first


@_jit
def _keep_counts(hist: Any, b: int, counts: Any) -> None:
    """Block ``b``'s counts: the four sub-histograms added (and cleared for the next block)."""
    for k in range(hist.shape[1]):
        hist[b, k] = counts[0, k] + counts[1, k] + counts[2, k] + counts[3, k]
    counts[:] = 0


@_jit
def block_sweep(
    flat: Any,
    bits: Any,
    mask: Any,
    sign: Any,
    shape: Any,
    blocks: Any,
    chosen: Any,
    limit: Any,
    bins: int,
    out: Any,
    ints: Any,
    lattice: Any,
    hist: Any,
    index: Any,
) -> bool:
    """Sweep the blocks ``chosen`` (rows of ``blocks``: row, n0, n1, c0, c1, l0, l1) of the
    ``shape`` = (N, C, L) values ``flat``; ``bits``: the same memory as integers of the same
    size, ``mask`` their largest value and ``sign`` the sign bit's position.

    Per block row ``r`` and channel ``c``: ``out[:, r, c]`` = mean, M2, absolute sum, min,
    max; ``ints[:, r, c]`` = zeros, values within ``limit`` of zero, values. Per block ``b``
    (unless ``bins`` is 0: no histogram): ``lattice[b]`` = (exponent, start, constant) and
    ``hist[b]`` its counts on that lattice (a constant block's value is its min). ``index``:
    room for the bin indices of a block's values of one sample, in an integer type that holds
    ``bins`` (the smallest counts fastest).
    Returns False at the first channel holding a non-finite value: the caller then takes the
    general path.

    A channel's moments are two passes over the block's values of it in float64: the sum (for
    a first mean), then the deviations from that mean and their squares, whose sum corrects it.
    """
    channels, length = shape[1], shape[2]
    cell = np.empty(1, dtype=bits.dtype)
    view = cell.view(flat.dtype)
    counts = np.zeros((4, max(bins, 1)), dtype=np.int64)
    for b in chosen:
        r, n0, n1, c0, c1, l0, l1 = blocks[b]
        n = (n1 - n0) * (l1 - l0)
        lo, hi = math.inf, -math.inf
        for c in range(c0, c1):
            a, z, s = mask, ~mask, 0.0  # the keys' identities: the largest and smallest
            for i in range(n0, n1):
                start = (i * channels + c) * length
                ka, kz, ks = _extremes(
                    flat[start + l0 : start + l1], bits[start + l0 : start + l1], mask, sign
                )
                a, z, s = min(a, ka), max(z, kz), s + ks
            vmin, vmax = _value(a, mask, sign, cell, view), _value(z, mask, sign, cell, view)
            if not (math.isfinite(vmin) and math.isfinite(vmax)):
                return False
            lo, hi = min(lo, vmin), max(hi, vmax)
            guess = s / n
            if not math.isfinite(guess):  # float64 values whose sum overflowed: sum v / n
                guess = 0.0
                for i in range(n0, n1):
                    start = (i * channels + c) * length
                    guess += _scaled_total(flat[start + l0 : start + l1], 1.0 / n)
            s1 = s2 = sa = 0.0
            zeros = near = 0
            for i in range(n0, n1):
                start = (i * channels + c) * length
                if vmin >= 0:
                    q = _moments_nonnegative(flat[start + l0 : start + l1], guess, limit)
                    s1, s2, zeros, near = s1 + q[0], s2 + q[1], zeros + q[2], near + q[3]
                else:
                    p = _moments(flat[start + l0 : start + l1], guess, limit)
                    s1, s2, sa = s1 + p[0], s2 + p[1], sa + p[2]
                    zeros, near = zeros + p[3], near + p[4]
            if vmin >= 0:
                sa = s
            _finish(out, ints, r, c, vmin, vmax, guess, (s1, s2, sa, zeros, near), n)
        if bins == 0:  # no histogram
            continue
        now, scale, first = _block_binning(lattice, b, lo, hi, bins)
        if not now:
            continue
        for i in range(n0, n1):
            # A block's values of one sample are contiguous: whole rows of channels c0..c1, or
            # a piece of one channel's row.
            start = (i * channels + c0) * length
            run = flat[start + l0 : start + (c1 - c0 - 1) * length + l1]
            _bin_run(run, scale, first, lo < 0 and scale < 1.0, index, counts)
        _keep_counts(hist, b, counts)
    return True


@_jit
def merge_histograms(
    lattice: Any, hist: Any, values: Any, sizes: Any, exponent: int, start: int, counts: Any
) -> bool:
    """Add each block's counts to ``counts`` (bin ``k`` at lattice index ``start + k`` of width
    ``2**exponent``). A block's lattice is finer or the same: its bin ``j`` lies whole in the
    bin ``(its start + j) >> (exponent - its exponent)``. A constant block adds its
    ``sizes[b]`` values of ``values[b]`` to the bin of that value.

    Returns False, having counted nothing, if a block's lattice is coarser or an index falls
    outside ``counts`` (neither should happen; nothing is written out of bounds then)."""
    scale = math.ldexp(1.0, -exponent)
    bins = counts.shape[0]
    for b in range(lattice.shape[0]):
        if not lattice[b, 2] and lattice[b, 0] > exponent:
            return False
    for b in range(lattice.shape[0]):
        if lattice[b, 2]:
            k = _lattice_index(values[b], scale) - start
            if not 0 <= k < bins:
                counts[:] = 0
                return False
            counts[k] += sizes[b]
            continue
        # Shifting an int64 by 63 already gives floor(k / 2**shift) for any larger shift (0 or
        # -1), and a larger shift is not defined on the machine.
        shift = min(exponent - lattice[b, 0], 63)
        for j in range(hist.shape[1]):
            if hist[b, j]:
                k = ((lattice[b, 1] + j) >> shift) - start
                if not 0 <= k < bins:
                    counts[:] = 0
                    return False
                counts[k] += hist[b, j]
    return True


# Channels per tile of rows_sweep: their running numbers (about 40 bytes each) fit in L1.
_TILE = 512


@_jit
def rows_sweep(
    flat: Any,
    bits: Any,
    mask: Any,
    sign: Any,
    channels: int,
    blocks: Any,
    chosen: Any,
    limit: Any,
    bins: int,
    out: Any,
    ints: Any,
    lattice: Any,
    hist: Any,
    index: Any,
) -> bool:
    """:func:`block_sweep` for values laid out channels last: ``flat`` holds rows of
    ``channels`` values (tokens, a Linear layer's outputs, channels-last maps), and block ``b``
    (``blocks[b]`` = first row, end row) is a run of whole rows, the ``b``-th part of the
    result (``out[:, b, c]``, ``ints[:, b, c]``). Each pass goes along the rows and keeps one
    running number per channel, so that its loop runs over neighbouring channels (and
    vectorises) however short the rows are."""
    key_lo = np.empty(channels, dtype=bits.dtype)
    key_hi = np.empty(channels, dtype=bits.dtype)
    total = np.empty(channels)
    s1 = np.empty(channels)
    s2 = np.empty(channels)
    sa = np.empty(channels)
    zeros = np.empty(channels, dtype=np.int64)
    near = np.empty(channels, dtype=np.int64)
    guess = np.empty(channels)
    cell = np.empty(1, dtype=bits.dtype)
    view = cell.view(flat.dtype)
    counts = np.zeros((4, max(bins, 1)), dtype=np.int64)
    for b in chosen:
        r0, r1 = blocks[b, 0], blocks[b, 1]
        n = r1 - r0
        key_lo[:] = mask
        key_hi[:] = ~mask
        total[:] = 0.0
        # Channels a tile at a time, so that their running numbers stay in the L1 cache.
        for c0 in range(0, channels, _TILE):
            c1 = min(c0 + _TILE, channels)
            for r in range(r0, r1):
                at = r * channels
                _row_extremes(
                    flat[at + c0 : at + c1],
                    bits[at + c0 : at + c1],
                    mask,
                    sign,
                    key_lo[c0:c1],
                    key_hi[c0:c1],
                    total[c0:c1],
                )
        lo, hi = math.inf, -math.inf
        for c in range(channels):
            vmin = _value(key_lo[c], mask, sign, cell, view)
            vmax = _value(key_hi[c], mask, sign, cell, view)
            if not (math.isfinite(vmin) and math.isfinite(vmax)):
                return False
            lo, hi = min(lo, vmin), max(hi, vmax)
            out[3, b, c], out[4, b, c] = vmin, vmax
            guess[c] = total[c] / n
        if not np.isfinite(guess).all():  # float64 values whose sum overflowed: sum v / n
            for c in range(channels):
                if not math.isfinite(guess[c]):
                    g = 0.0
                    for r in range(r0, r1):
                        g += np.float64(flat[r * channels + c]) / n
                    guess[c] = g
        s1[:] = 0.0
        s2[:] = 0.0
        sa[:] = 0.0
        zeros[:] = 0
        near[:] = 0
        for c0 in range(0, channels, _TILE):
            c1 = min(c0 + _TILE, channels)
            for r in range(r0, r1):
                _row_moments(
                    flat[r * channels + c0 : r * channels + c1],
                    guess[c0:c1],
                    limit,
                    s1[c0:c1],
                    s2[c0:c1],
                    sa[c0:c1],
                    zeros[c0:c1],
                    near[c0:c1],
                )
        for c in range(channels):
            sums = (s1[c], s2[c], sa[c], zeros[c], near[c])
            _finish(out, ints, b, c, out[3, b, c], out[4, b, c], guess[c], sums, n)
        if bins == 0:  # no histogram
            continue
        now, scale, first = _block_binning(lattice, b, lo, hi, bins)
        if now:
            run = flat[r0 * channels : r1 * channels]
            _bin_run(run, scale, first, lo < 0 and scale < 1.0, index, counts)
            _keep_counts(hist, b, counts)
    return True


@_fast
def _row_extremes(
    row: Any, bits: Any, mask: Any, sign: Any, key_lo: Any, key_hi: Any, total: Any
) -> None:
    """Fold one row (one value per channel) into the channels' min and max keys (see
    :func:`_extremes`) and float64 sums."""
    for c in range(row.size):
        i = bits[c]
        k = i ^ ((i >> sign) & mask)
        key_lo[c] = min(key_lo[c], k)
        key_hi[c] = max(key_hi[c], k)
        total[c] += np.float64(row[c])


@_fast
def _row_moments(
    row: Any, guess: Any, limit: Any, s1: Any, s2: Any, sa: Any, zeros: Any, near: Any
) -> None:
    """Fold one row into the channels' sums of :func:`_moments`."""
    for c in range(row.size):
        v = row[c]
        d = np.float64(v) - guess[c]
        s1[c] += d
        s2[c] += d * d
        a = abs(v)
        sa[c] += np.float64(a)
        zeros[c] += v == 0
        near[c] += a <= limit
