"""Pyramids: each map again at half, quarter, ... resolution, built strip by strip on disk.

Between stitching and the writers (stitching → **pyramid** → writers). Level ``k + 1`` is the
2 x 2 mean of level ``k`` over the cells that hold a value (NaN = not computed), so a mean over
a half-background block is the mean of its tissue cells, and a block of background stays NaN.
Sizes round up (``ceil(n / 2)``), as Deep Zoom and TIFF pyramids expect. Only a band of rows of
two levels is in memory at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from featuremaps.io import WorkFolder

__all__ = ["PyramidLevel", "build_pyramid", "halve"]

#: Rows of the finer level read per step.
BAND = 512

Reader = Callable[[tuple[int, int], tuple[int, int]], np.ndarray]


@dataclass(frozen=True)
class PyramidLevel:
    """One level: its ``(rows, cols, k)`` shape, its scale (cells of level 0 per cell) and a
    reader of blocks (NaN where nothing was computed)."""

    shape: tuple[int, int, int]
    scale: int
    read: Reader


def halve(block: np.ndarray) -> np.ndarray:
    """The 2 x 2 NaN-ignoring mean of ``(h, w, k)`` (odd sizes: the last row/column alone)."""
    h, w, k = block.shape
    hh, ww = math.ceil(h / 2), math.ceil(w / 2)
    padded = np.full((hh * 2, ww * 2, k), np.nan, dtype=np.float32)
    padded[:h, :w] = block
    cells = padded.reshape(hh, 2, ww, 2, k)
    finite = np.isfinite(cells)
    total = np.where(finite, cells, 0.0).sum(axis=(1, 3), dtype=np.float64)
    count = finite.sum(axis=(1, 3))
    out = np.full((hh, ww, k), np.nan, dtype=np.float32)
    np.divide(total, count, out=out, where=count > 0, casting="unsafe")
    return out


def build_pyramid(
    base: PyramidLevel, work: WorkFolder, name: str, min_side: int = 256
) -> list[PyramidLevel]:
    """``base`` and halved levels until the long side is at most ``min_side`` cells."""
    levels = [base]
    while max(levels[-1].shape[:2]) > min_side:
        src = levels[-1]
        h, w, k = src.shape
        shape = (math.ceil(h / 2), math.ceil(w / 2), k)
        dst = work.disk_array(f"{name}.level{len(levels)}", shape, np.float32)
        for y0 in range(0, h, BAND):
            y1 = min(y0 + BAND, h)
            dst.write((y0 // 2, 0), halve(src.read((y0, y1), (0, w))))
        levels.append(PyramidLevel(shape, src.scale * 2, dst.read))
    return levels
