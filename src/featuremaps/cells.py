"""Cells: the one rule that says which cell of a map an input coordinate belongs to.

Pure arithmetic shared by the geometry (``MapGeometry.nearest_cell``, the ``locate`` command)
and the overlay renderer, so a pixel is given to the same cell everywhere. Cell ``j`` is centred
on ``offset + j * stride`` and covers ``[centre - stride/2, centre + stride/2)``: a coordinate
exactly halfway between two centres belongs to the later cell. A tolerance of
:data:`TOLERANCE` strides absorbs float rounding in ``(coordinate - offset) / stride``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TOLERANCE", "nearest_cell", "nearest_cells"]

TOLERANCE = 1e-9


def nearest_cells(coordinates: np.ndarray, stride: float, offset: float) -> np.ndarray:
    """For each coordinate, the index of the cell whose box holds it (unbounded int64)."""
    p = np.asarray(coordinates, dtype=np.float64)
    return np.floor((p - offset) / stride + 0.5 + TOLERANCE).astype(np.int64)


def nearest_cell(coordinate: float, stride: float, offset: float, cells: int) -> int:
    """The cell (of ``cells``) whose box holds ``coordinate``, clamped to the map."""
    j = int(nearest_cells(np.asarray([coordinate]), stride, offset)[0])
    return min(max(j, 0), cells - 1)
