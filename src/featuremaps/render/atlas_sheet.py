"""Pure: an atlas sheet, the kept patches of every channel of a layer as one uint8 mosaic.

One row per channel: its top patches (best first, left to right), a gap, then its controls.
Each patch is enlarged by the same whole factor (nearest neighbour) so that pixels stay
pixels; a missing patch (fewer kept cells than columns) is left as background.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["OUTSIDE", "make_sheet"]

#: The colour of the part of a receptive field beyond the input (magenta: absent from photos).
OUTSIDE = (255, 0, 255)
_BACKGROUND = 255
_GAP = 2


def make_sheet(
    rows: Sequence[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
    *,
    min_tile: int = 32,
) -> npt.NDArray[np.uint8]:
    """An (H, W, 3) uint8 sheet of ``rows`` = per channel ``(top patches, control patches)``,
    each patch (h, w, 3) uint8; tiles are enlarged to at least ``min_tile`` pixels."""
    patches = [p for top, controls in rows for p in (*top, *controls)]
    ph = max((p.shape[0] for p in patches), default=1)
    pw = max((p.shape[1] for p in patches), default=1)
    scale = max(1, -(-min_tile // max(ph, pw)))
    th, tw = ph * scale, pw * scale
    ntop = max((len(t) for t, _ in rows), default=0)
    nctl = max((len(c) for _, c in rows), default=0)
    columns = ntop + nctl
    extra = 3 * _GAP if nctl else 0
    height = max(len(rows), 1) * (th + _GAP) + _GAP
    width = columns * (tw + _GAP) + _GAP + extra
    sheet = np.full((height, max(width, 1), 3), _BACKGROUND, dtype=np.uint8)
    for r, (top, controls) in enumerate(rows):
        y = _GAP + r * (th + _GAP)
        for c, patch in enumerate([*top]):
            _place(sheet, patch, y, _GAP + c * (tw + _GAP), scale)
        for c, patch in enumerate([*controls]):
            _place(sheet, patch, y, _GAP + extra + (ntop + c) * (tw + _GAP), scale)
    return sheet


def _place(sheet: np.ndarray, patch: np.ndarray, y: int, x: int, scale: int) -> None:
    big = np.repeat(np.repeat(patch, scale, axis=0), scale, axis=1)
    sheet[y : y + big.shape[0], x : x + big.shape[1]] = big
