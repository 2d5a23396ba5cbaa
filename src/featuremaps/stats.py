"""Per-channel statistics of one sample's maps: pure numbers, no drawing, no files.

Part of the pure "statistics" stage (capture → **stats** → render → report/io). The run computes
these for every channel of the drawn sample as each record arrives, stores them in the manifest,
and the HTML report shows them as a sortable table.

Every statistic is taken over the *finite* values of a channel (NaN and ±Inf are left out, as in
the rest of featuremaps) and accumulated in float64. The standard deviation is the population one
(``ddof=0``) computed in two passes (mean first, then the mean squared deviation), because the
one-pass ``E[x²] − E[x]²`` loses every digit when the mean is large next to the spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from featuremaps._errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = [
    "RANKABLE",
    "STAT_NAMES",
    "TOP_K_ORDERS",
    "ChannelStats",
    "channel_stats",
    "summarize",
    "summary_of_channels",
]

# The statistic vocabulary, in one place.
#: Per-channel statistics of one sample, as stored in a run's manifest (``channel_stats``).
STAT_NAMES = ("mean", "std", "min", "max", "zeros")
#: Data-set statistics (``featuremaps stats``) that can rank channels (``ablate --stat``).
RANKABLE = ("absmean", "mean", "std", "max", "min")
#: Statistics that pick a layer's top-K channels to draw (``--channels top:K:STAT``).
TOP_K_ORDERS = ("mean", "max", "std", "absmean")


@dataclass(frozen=True, eq=False)
class ChannelStats:
    """Statistics per channel, each a (C,) float64 array (``finite`` is int64).

    ``zeros`` is the fraction of a channel's finite values that are exactly 0 (for example what
    a ReLU switched off). A channel without any finite value has NaN in every statistic and
    ``finite == 0``.
    """

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    zeros: np.ndarray
    finite: np.ndarray

    def __repr__(self) -> str:
        return f"ChannelStats({len(self.mean)} channels, finite values {int(self.finite.sum())})"

    def to_json(self) -> dict[str, list[Any]]:
        """Plain lists for the manifest (NaN stays NaN here; the writer turns it into null)."""
        return {name: getattr(self, name).tolist() for name in STAT_NAMES}


_BLOCK_VALUES = 1 << 20  # values per block of channels (8 MB of float64 deviations)


def _zeros_per_row(flat: np.ndarray) -> np.ndarray:
    """How many values of each row are exactly 0 (NaN is not)."""
    is_zero = flat == 0
    if flat.shape[1] < 4096:
        return np.asarray(np.count_nonzero(is_zero, axis=1))
    # Long rows: counting each row whole is three to four times faster than counting along
    # an axis, which sums the booleans as integers.
    return np.fromiter((np.count_nonzero(row) for row in is_zero), np.int64, len(is_zero))


def _cast_row_sums(values: np.ndarray) -> np.ndarray:
    """``np.sum(narrow, axis=1, dtype=np.float64)`` of the float32/float16 rows ``narrow`` that
    ``values`` (rows, n) holds cast to float64, the same sums to the last bit, read from the
    cast copy instead of casting the rows again.

    Summing narrower floats in float64, numpy casts each row a buffer of ``np.getbufsize()``
    values at a time and adds the buffer's pairwise sum to the row's total, buffer after buffer;
    summing float64 rows needs no buffer, and numpy then takes the pairwise sum of the whole row,
    which can differ in the last digit. Here the buffers' pairwise sums are taken together (one
    reduction over a (rows, buffers, values) view) and added up in order. Tested against numpy's
    own sums (tests/test_stats.py)."""
    rows, n = values.shape
    size = np.getbufsize()
    whole = n // size
    total = np.zeros(rows, dtype=np.float64)
    if whole:
        parts = values[:, : whole * size].reshape(rows, whole, size).sum(axis=2)
        for j in range(whole):
            total += parts[:, j]
    if n % size:  # the values after the last whole buffer (all of a row shorter than one)
        total += values[:, whole * size :].sum(axis=1)
    return total


def _row_stats(flat: np.ndarray, scratch: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(n, mean, std, min, max, zeros)`` of each row of a (rows, values) float array.

    ``scratch`` is a float64 buffer of at least ``flat.size`` values, reused between blocks: the
    deviations are written into it instead of into a new array per block.
    """
    # A mask only when needed: the common case is all finite, and masked reductions are slower.
    # A float64 sum of float32/float16 values cannot overflow, so a finite sum proves every value
    # finite without building the mask; float64 input (or a NaN/Inf somewhere) takes the slow way.
    total: np.ndarray | None = None
    dev = scratch[: flat.size].reshape(flat.shape)
    cast = flat.dtype != np.float64
    if cast:
        np.copyto(dev, flat)  # casting is exact
        with np.errstate(invalid="ignore", over="ignore"):  # inf + -inf is an answer, not an error
            total = _cast_row_sums(dev)
    every = total is not None and bool(np.isfinite(total).all())
    finite = np.ones((1, 1), dtype=bool) if every else np.isfinite(flat)
    every = every or bool(finite.all())
    where: np.ndarray | bool = True if every else finite
    rows = flat.shape[0]
    n = np.full(rows, flat.shape[1], dtype=np.int64) if every else finite.sum(1, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if total is None or not every:
            total = np.asarray(np.sum(flat, axis=1, dtype=np.float64, where=where))
        mean = np.asarray(total) / n
        if flat.dtype == np.float64 and not np.isfinite(mean[n > 0]).all():
            # A float64 sum overflowed (values near the maximum): sum the values / n instead.
            scaled = np.sum(flat / np.maximum(n, 1)[:, None], axis=1, where=where)
            mean = np.where(np.isfinite(mean), mean, scaled)
        # Values near the float64 maximum: deviations may overflow, and std be +inf.
        # The values cast into the buffer, then the means taken off in place: the same numbers
        # as one subtraction cast on the fly (casting is exact), in two thirds of its time.
        if not cast:
            np.copyto(dev, flat)
        np.subtract(dev, mean[:, None], out=dev)
        if not every:
            dev[~finite] = 0.0
        std = np.sqrt(np.einsum("ij,ij->i", dev, dev) / n)
        if every and flat.shape[1]:  # the plain reductions are the faster loops
            low, high = np.min(flat, axis=1), np.max(flat, axis=1)
        else:
            low = np.min(flat, axis=1, initial=np.inf, where=where)
            high = np.max(flat, axis=1, initial=-np.inf, where=where)
        low, high = low.astype(np.float64), high.astype(np.float64)
        zeros = np.asarray(_zeros_per_row(flat) / n, dtype=np.float64)
    return n, mean, std, low, high, zeros


def channel_stats(maps: np.ndarray) -> ChannelStats:
    """Mean, std, min, max and fraction of zeros of each channel of ``maps`` (C, ...).

    ``maps`` is any real array whose first axis is the channel (one sample's ``(C, H, W)``
    maps, or ``(C, L)``); it is not modified.
    """
    arr = np.asarray(maps)
    if arr.ndim < 1:
        raise InputError(
            f"maps of shape {arr.shape}; expected (C, ...) with channels first. Select one sample "
            "of the batch first."
        )
    if arr.dtype.kind not in "fiub":
        raise InputError(
            f"maps of dtype {arr.dtype}; expected real numbers. Convert with .real or "
            ".astype(float)."
        )
    c = arr.shape[0]
    flat = arr.reshape(c, int(np.prod(arr.shape[1:], dtype=np.int64)))
    if flat.dtype.kind != "f":
        flat = flat.astype(np.float64)  # integers and bools: exact in float64, and ±inf fills work
    # A few channels at a time: the float64 deviations of a whole (64, 512, 512) layer would take
    # 128 MB on top of the activation, for no gain in speed.
    step = max(1, _BLOCK_VALUES // max(flat.shape[1], 1))
    scratch = np.empty(min(step, max(c, 1)) * flat.shape[1], dtype=np.float64)
    parts = [_row_stats(flat[i : i + step], scratch) for i in range(0, c, step)] or [
        _row_stats(flat, scratch)
    ]
    n, mean, std, low, high, zeros = (np.concatenate(column) for column in zip(*parts, strict=True))
    empty = n == 0
    for values in (mean, std, low, high, zeros):
        values[empty] = np.nan
    return ChannelStats(
        mean=mean,
        std=std,
        min=low,
        max=high,
        zeros=zeros,
        finite=n,
    )


def summarize(tensor: torch.Tensor) -> tuple[float | None, float | None, float | None, int]:
    """``(min, max, mean, nonfinite count)`` over the finite values of ``tensor`` (all samples).

    The mean is a float64 sum over the values divided by their count. On the CPU that is numpy's
    pairwise float64 summation over the tensor's own memory (no float64 copy of the tensor; about
    ten times faster than torch's float64 ``sum``, and its result can differ from torch's in the
    last digit). On another device the reductions run there and only the four numbers come back.
    """
    import torch  # here: the rest of this module is numpy only, for the render package

    if tensor.is_complex() or tensor.numel() == 0:
        return None, None, None, 0
    t = tensor.detach()
    if t.device.type != "cpu":
        return _summarize_on_device(t)
    if t.dtype not in (torch.float32, torch.float64, torch.float16):
        t = t.float()  # bfloat16 (numpy has no such type), integers, bools: exact in float32/64
    values = t.numpy()
    with np.errstate(invalid="ignore", over="ignore"):  # inf + -inf is an answer, not an error
        total = float(np.sum(values, dtype=np.float64))
    # A float64 sum of float16/float32 values cannot overflow, so it is finite iff every value
    # is; float64 values could overflow the sum itself, so they are checked one by one.
    if math.isfinite(total) and (values.dtype != np.float64 or bool(np.isfinite(values).all())):
        return float(values.min()), float(values.max()), total / values.size, 0
    finite = values[np.isfinite(values)]
    nonfinite = int(values.size - finite.size)
    if finite.size == 0:
        return None, None, None, nonfinite
    with np.errstate(over="ignore"):
        mean = float(np.sum(finite, dtype=np.float64)) / finite.size
    if not math.isfinite(mean):  # float64 values near the maximum: sum the values / count
        mean = float(np.sum(finite / finite.size, dtype=np.float64))
    return float(finite.min()), float(finite.max()), mean, nonfinite


def summary_of_channels(
    stats: ChannelStats, size: int
) -> tuple[float | None, float | None, float | None, int]:
    """:func:`summarize` of the ``size`` values that ``stats`` describe, without reading them
    again: the smallest channel minimum, the largest maximum, the mean of the finite values
    (each channel's float64 mean weighted by its count, which can differ from a single sum in
    the last digit) and the values that were not finite."""
    have = stats.finite > 0
    count = int(stats.finite.sum())
    if not have.any():
        return None, None, None, size - count
    # Weighted by shares of the count, which cannot overflow where mean * count could.
    mean = float(np.sum(stats.mean[have] * (stats.finite[have] / count)))
    low, high = float(np.min(stats.min[have])), float(np.max(stats.max[have]))
    return low, high, mean, size - count


def _summarize_on_device(t: torch.Tensor) -> tuple[float | None, float | None, float | None, int]:
    """:func:`summarize` computed where ``t`` lives (CUDA, MPS): four numbers come back."""
    import torch

    wide = torch.float32 if t.device.type == "mps" else torch.float64  # MPS has no float64
    t = t if t.is_floating_point() else t.float()
    finite = torch.isfinite(t)
    count = int(finite.sum())
    nonfinite = t.numel() - count
    if count == 0:
        return None, None, None, nonfinite
    if nonfinite:
        t = t[finite]
    low, high = torch.aminmax(t)
    mean = float(t.sum(dtype=wide)) / count
    if not math.isfinite(mean):  # values near the maximum: sum the values / count
        mean = float((t.to(wide) / count).sum())
    return float(low), float(high), mean, nonfinite
