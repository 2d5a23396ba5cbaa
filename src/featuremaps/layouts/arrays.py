"""Layout arrays: a captured output read through its decided layout, as arrays to draw or measure.

Between capture and the pure transforms in the flow (… → capture → **layouts** → stats/render):
one sample as channels-first maps (:func:`drawable_maps`), a token layout's patch maps and prefix
vectors (:func:`token_parts`), a query's attention over the patch grid (:func:`attention_rows`),
the whole batch as ``(N, C, ...)`` for statistics (:func:`channels_first`), and why an output is
not drawn (:func:`skip_reason`).
"""

from __future__ import annotations

import numpy as np
import torch

from featuremaps._errors import OptionError
from featuremaps.layouts.registry import ATTENTION_MAP, CHANNEL_GRID, TOKEN_GRID, Layout, Shape

__all__ = [
    "attention_rows",
    "centre_patch",
    "channels_first",
    "drawable_maps",
    "maps_shape",
    "skip_reason",
    "token_parts",
]


def skip_reason(layout: Layout, complex_valued: bool = False) -> str | None:
    """Why a record with this layout is not drawn, or ``None`` when it is."""
    if complex_valued:
        return "complex-valued output; not drawn"
    if layout.drawable:
        return None
    return f"{layout.reason} ({layout.note})" if layout.note else layout.reason


def _sample(layout: Layout, tensor: torch.Tensor, sample: int) -> torch.Tensor:
    axis = layout.batch_axis if layout.batch_axis is not None else 0
    return tensor.select(axis, sample).detach()


def _as_float(t: torch.Tensor) -> np.ndarray:
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t.cpu().numpy()


def token_parts(layout: Layout, tensor: torch.Tensor, sample: int) -> tuple[np.ndarray, np.ndarray]:
    """One sample of a token layout as ``(D, h, w)`` patch maps and ``(prefix, D)`` vectors."""
    tokens = _sample(layout, tensor, sample)  # (T, D)
    assert layout.grid is not None
    h, w = layout.grid
    patches = tokens[layout.prefix :].reshape(h, w, tokens.shape[-1]).permute(2, 0, 1)
    return _as_float(patches), _as_float(tokens[: layout.prefix])


def centre_patch(layout: Layout) -> tuple[int, int]:
    """The patch at the centre of a token or attention layout's grid, (row, column)."""
    assert layout.grid is not None
    return layout.grid[0] // 2, layout.grid[1] // 2


def attention_rows(
    layout: Layout, tensor: torch.Tensor, sample: int, query: int | tuple[int, int]
) -> np.ndarray:
    """One query's attention over the patch keys, per head, as ``(heads, h, w)`` maps.

    ``query``: a prefix token's index, or a patch's (row, column) on the grid. The prefix keys'
    columns are left out (so a map's values sum to 1 minus the prefix keys' share).
    """
    assert layout.grid is not None
    h, w = layout.grid
    weights = _sample(layout, tensor, sample)  # (heads, L, S)
    if isinstance(query, tuple):
        row, column = query
        if not (0 <= row < h and 0 <= column < w):
            raise OptionError(
                f"patch ({row}, {column}) asked for, but the patch grid is {h}x{w}; choose a row "
                f"from 0 to {h - 1} and a column from 0 to {w - 1}"
            )
        index = layout.prefix + row * w + column
    else:
        index = query
    rows = weights[:, index, layout.prefix :]
    return _as_float(rows.reshape(rows.shape[0], h, w))


def drawable_maps(layout: Layout, tensor: torch.Tensor, sample: int) -> np.ndarray:
    """One sample of a drawable output as a float array (float32 or float64) with channels
    first: ``(C, H, W)`` maps, ``(D, h, w)`` patch-token maps, ``(heads, h, w)`` attention of
    the first prefix token (or, without one, the centre patch) over the patches, ``(C, L)`` signals,
    ``(C, D, H, W)`` volumes, ``(F,)`` vectors.

    The array may share memory with ``tensor`` (no copy for float32 NCHW on the CPU).
    """
    if layout.drawn_as == TOKEN_GRID:
        return token_parts(layout, tensor, sample)[0]
    if layout.drawn_as == ATTENTION_MAP:
        query = 0 if layout.prefix else centre_patch(layout)
        return attention_rows(layout, tensor, sample, query)
    maps = _sample(layout, tensor, sample)
    if layout.to_maps is not None:
        maps = maps.permute(*layout.to_maps)
    return _as_float(maps)


def maps_shape(layout: Layout, shape: Shape) -> Shape:
    """The shape of one drawn sample of an output of ``shape`` (see :func:`drawable_maps`)."""
    if layout.drawn_as == TOKEN_GRID and layout.grid is not None:
        return (shape[2], *layout.grid)
    if layout.drawn_as == ATTENTION_MAP and layout.grid is not None:
        return (shape[1], *layout.grid)
    axis = layout.batch_axis if layout.batch_axis is not None else 0
    sample = tuple(n for i, n in enumerate(shape) if i != axis)
    if layout.to_maps is None:
        return sample
    return tuple(sample[i] for i in layout.to_maps)


def channels_first(layout: Layout, tensor: torch.Tensor) -> torch.Tensor | None:
    """The tensor as ``(N, C, ...)`` (batch first, channels second); ``None`` without channels."""
    if layout.channel_axis is None or layout.batch_axis is None or tensor.dim() < 2:
        return None
    if layout.batch_axis != 0:
        tensor = tensor.movedim(layout.batch_axis, 0)
    axis = layout.channel_axis
    if layout.batch_axis > axis:
        axis += 1
    return tensor if axis == 1 else tensor.movedim(axis, 1)


def spatial_maps(layout: Layout, tensor: torch.Tensor) -> torch.Tensor | None:
    """The tensor as ``(N, C, H, W)`` maps on its 2-D grid, by views and reshapes only (so
    gradients flow through it): channels first as it is, channels last moved, tokens without
    their prefix on the patch grid. ``None`` for a layout without a 2-D grid of cells."""
    if layout.drawn_as == TOKEN_GRID and layout.grid is not None and layout.batch_axis is not None:
        tokens = tensor.movedim(layout.batch_axis, 0)[:, layout.prefix :]
        h, w = layout.grid
        return tokens.reshape(tokens.shape[0], h, w, tokens.shape[-1]).permute(0, 3, 1, 2)
    if layout.drawn_as == CHANNEL_GRID and tensor.dim() == 4:
        return channels_first(layout, tensor)
    return None
