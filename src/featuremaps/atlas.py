"""What each channel responds to over a data set: bounded top-k cells and random controls.

Pure computation in the data-set stage (records → :class:`CellHeap` per layer → crops): one pass
keeps, for every channel, the ``k`` cells with the largest values (:func:`top_heap`) and a
uniform random sample of ``m`` cells with a positive value (:func:`control_heap`), so memory is
O(channels × k) per layer whatever the number of inputs. Both are "keep the ``k`` smallest by a
total order" over cells that are unique by ``(input, cell)``, so two heaps merge exactly, in any
order and grouping, to the heap of the union (:meth:`CellHeap.merge`):

- top: ordered by value (largest first), then input index, then the cell's flat index;
- controls: ordered by a hash of ``(seed, channel, input, cell)`` (bottom-k sampling: the ``m``
  smallest hashes of the positive cells are a uniform sample without replacement), then input
  and cell. The sample depends on the seed only, not on batching or engine.

:func:`cell_box` and :func:`crop_box` turn a kept cell into the receptive field of the input as
fed (the rule of :class:`featuremaps.geometry.MapGeometry`) and its pixels, with the part beyond
the image marked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from featuremaps._errors import OptionError

__all__ = [
    "CellHeap",
    "cell_box",
    "control_heap",
    "crop_box",
    "top_heap",
]

_TOP, _CONTROL = "top", "control"
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finaliser: a well-spread 64-bit hash, the same on every machine."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        out: npt.NDArray[np.uint64] = (x ^ (x >> np.uint64(31))) & _MASK64
        return out


def _hashes(seed: int, inputs: np.ndarray, channels: int, cells: int) -> npt.NDArray[np.uint64]:
    """(C, N * cells) hashes of ``(seed, channel, input, cell)``."""
    with np.errstate(over="ignore"):
        base = _mix(np.uint64(seed & 0xFFFFFFFF) + np.arange(channels, dtype=np.uint64) * np.uint64(
            0x9E3779B97F4A7C15
        ))  # fmt: skip
        where = (
            inputs.astype(np.uint64)[:, None] * np.uint64(cells)
            + np.arange(cells, dtype=np.uint64)[None, :]
        ).reshape(-1)
        return _mix(base[:, None] ^ _mix(where[None, :] + np.uint64(0x632BE59BD9B4E019)))


@dataclass
class CellHeap:
    """At most ``k`` cells per channel of one layer, best first.

    ``values``, ``inputs`` (index of the input in the data set, -1 where empty), ``cells`` (flat
    index in the layer's grid ``grid``) and ``keys`` (the order: smaller first) are ``(C, k)``
    arrays. ``kind`` is ``"top"`` or ``"control"``; ``seed`` drives the controls' sample.
    """

    kind: str
    k: int
    grid: tuple[int, ...]
    values: npt.NDArray[np.float64]
    inputs: npt.NDArray[np.int64]
    cells: npt.NDArray[np.int64]
    keys: npt.NDArray[np.float64] | npt.NDArray[np.uint64]
    seed: int = 0

    @property
    def channels(self) -> int:
        return int(self.values.shape[0])

    def entries(self, channel: int) -> list[tuple[float, int, tuple[int, ...]]]:
        """``(value, input index, cell indices)`` of ``channel``, best first."""
        keep = self.inputs[channel] >= 0
        return [
            (float(v), int(i), tuple(int(x) for x in np.unravel_index(int(c), self.grid)))
            for v, i, c in zip(
                self.values[channel][keep],
                self.inputs[channel][keep],
                self.cells[channel][keep],
                strict=True,
            )
        ]

    def update(self, values: np.ndarray, inputs: np.ndarray) -> None:
        """Fold a batch ``values`` of shape ``(N, C, *grid)`` whose samples are the data set's
        inputs ``inputs`` (N indices) into the heap. Non-finite values are left out."""
        batch = _batch_heap(self.kind, self.k, values, inputs, self.seed)
        if batch.grid != self.grid or batch.channels != self.channels:
            raise OptionError(
                f"a batch of shape {tuple(values.shape)} does not fit a heap of "
                f"{self.channels} channels on a {self.grid} grid; expected every input of one "
                "size (use a fixed-size preprocessing such as --resize 224x224)"
            )
        self.merge(batch)

    def merge(self, other: CellHeap) -> None:
        """Keep the best ``k`` of both heaps per channel (exact: the heap of the union)."""
        if (other.kind, other.k, other.grid, other.seed) != (
            self.kind,
            self.k,
            self.grid,
            self.seed,
        ):
            raise OptionError(
                f"cannot merge a {other.kind} heap (k={other.k}, grid {other.grid}) into a "
                f"{self.kind} heap (k={self.k}, grid {self.grid}); expected the same layer and k"
            )
        values = np.concatenate([self.values, other.values], axis=1)
        inputs = np.concatenate([self.inputs, other.inputs], axis=1)
        cells = np.concatenate([self.cells, other.cells], axis=1)
        keys = np.concatenate([self.keys, other.keys], axis=1)
        self.values, self.inputs, self.cells, self.keys = _best(values, inputs, cells, keys, self.k)


def _empty(kind: str, k: int, channels: int, grid: tuple[int, ...], seed: int) -> CellHeap:
    keys: npt.NDArray[np.float64] | npt.NDArray[np.uint64] = (
        np.full((channels, 0), np.inf) if kind == _TOP else np.zeros((channels, 0), np.uint64)
    )
    return CellHeap(
        kind, k, grid, np.zeros((channels, 0)), np.zeros((channels, 0), np.int64),
        np.zeros((channels, 0), np.int64), keys, seed,
    )  # fmt: skip


def _best(
    values: np.ndarray, inputs: np.ndarray, cells: np.ndarray, keys: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row, the ``k`` entries smallest by ``(key, input, cell)``; empty slots (input -1)
    are dropped first."""
    empty = inputs < 0
    out = [np.empty((values.shape[0], 0), a.dtype) for a in (values, inputs, cells, keys)]
    rows = []
    for c in range(values.shape[0]):
        live = ~empty[c]
        order = np.lexsort((cells[c][live], inputs[c][live], keys[c][live]))[:k]
        rows.append(tuple(a[c][live][order] for a in (values, inputs, cells, keys)))
    if not rows:
        return out[0], out[1], out[2], out[3]
    width = max(len(r[0]) for r in rows)

    def stack(i: int, fill: float | int, dtype: npt.DTypeLike) -> np.ndarray:
        result = np.full((len(rows), width), fill, dtype=dtype)
        for c, r in enumerate(rows):
            result[c, : len(r[i])] = r[i]
        return result

    return (
        stack(0, np.nan, np.float64),
        stack(1, -1, np.int64),
        stack(2, -1, np.int64),
        stack(3, 0, keys.dtype),
    )


def _batch_heap(kind: str, k: int, values: np.ndarray, inputs: np.ndarray, seed: int) -> CellHeap:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim < 2:
        raise OptionError(f"expected values of shape (N, C, ...), got {values.shape}")
    n, channels, grid = values.shape[0], values.shape[1], tuple(values.shape[2:])
    cells = math.prod(grid)
    flat = np.moveaxis(values.reshape(n, channels, cells), 1, 0).reshape(channels, n * cells)
    where_input = np.repeat(np.asarray(inputs, dtype=np.int64), cells)
    where_cell = np.tile(np.arange(cells, dtype=np.int64), n)
    finite = np.isfinite(flat)
    if kind == _TOP:
        keys: np.ndarray = np.where(finite, -flat, np.inf)
        keep = finite
    else:
        keep = finite & (flat > 0)
        keys = np.where(
            keep, _hashes(seed, np.asarray(inputs, dtype=np.int64), channels, cells), _MASK64
        )
    heap = _empty(kind, k, channels, grid, seed)
    # Candidates: every cell whose key is within the k-th smallest (ties included), so the
    # choice among equal keys is made below, not by the partition.
    if keys.shape[1] > k:
        threshold = np.partition(keys, k - 1, axis=1)[:, k - 1 : k]
        candidates = (keys <= threshold) & keep
    else:
        candidates = keep
    columns = []
    for c in range(channels):
        # Flat order is (input, cell) order, so a stable sort on the key alone breaks ties by
        # input, then cell.
        found = np.flatnonzero(candidates[c])
        columns.append(found[np.argsort(keys[c, found], kind="stable")][:k])
    width = max((len(x) for x in columns), default=0)
    shape = (channels, width)
    heap.values = np.full(shape, np.nan)
    heap.inputs = np.full(shape, -1, np.int64)
    heap.cells = np.full(shape, -1, np.int64)
    heap.keys = np.zeros(shape, keys.dtype)
    for c, chosen in enumerate(columns):
        m = len(chosen)
        heap.values[c, :m] = flat[c, chosen]
        heap.inputs[c, :m] = where_input[chosen]
        heap.cells[c, :m] = where_cell[chosen]
        heap.keys[c, :m] = keys[c, chosen]
    return heap


def top_heap(channels: int, grid: tuple[int, ...], k: int) -> CellHeap:
    """An empty heap of the ``k`` largest values per channel of a layer with grid ``grid``."""
    if k < 1:
        raise OptionError(f"top-k of {k} is not valid; expected 1 or more, e.g. --top 9")
    return _empty(_TOP, k, channels, tuple(grid), 0)


def control_heap(channels: int, grid: tuple[int, ...], m: int, seed: int = 0) -> CellHeap:
    """An empty uniform sample of ``m`` positive cells per channel (``m`` may be 0)."""
    if m < 0:
        raise OptionError(f"{m} controls is not valid; expected 0 or more, e.g. --controls 3")
    return _empty(_CONTROL, m, channels, tuple(grid), seed)


def cell_box(
    region: tuple[float, float, float, float],
) -> tuple[int, int, int, int]:
    """``[top, left, bottom, right)`` pixel bounds (bottom and right exclusive) of a receptive
    field ``(y0, x0, y1, x1)`` given with inclusive, possibly fractional, pixel coordinates
    (:meth:`featuremaps.geometry.MapGeometry.cell_region`); fractional edges widen the box."""
    y0, x0, y1, x1 = region
    return (
        math.floor(y0 + 1e-9),
        math.floor(x0 + 1e-9),
        math.ceil(y1 - 1e-9) + 1,
        math.ceil(x1 - 1e-9) + 1,
    )


def crop_box(
    picture: np.ndarray, box: tuple[int, int, int, int], fill: float | tuple[float, ...] = 0
) -> tuple[np.ndarray, npt.NDArray[np.bool_]]:
    """The ``(H, W, ...)`` ``picture`` cut to ``box`` (``[top, left, bottom, right)``), with the
    part beyond the picture set to ``fill``; returns the crop and its mask of pixels inside the
    picture. ``picture`` is not modified."""
    top, left, bottom, right = box
    height, width = picture.shape[:2]
    out = np.empty((bottom - top, right - left, *picture.shape[2:]), dtype=picture.dtype)
    out[...] = fill
    inside = np.zeros((bottom - top, right - left), dtype=bool)
    y0, y1 = max(top, 0), min(bottom, height)
    x0, x1 = max(left, 0), min(right, width)
    if y0 < y1 and x0 < x1:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = picture[y0:y1, x0:x1]
        inside[y0 - top : y1 - top, x0 - left : x1 - left] = True
    return out, inside
