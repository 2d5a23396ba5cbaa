"""Attention pictures: per head, where one query token looks on the patch grid.

Part of the pure ``render`` stage. Attention probabilities ``(heads, L, S)`` of self-attention
over ``prefix + h*w`` tokens become two mosaics of the same kind as a convolution's channels (one
tile per head, legend "k of H heads"): the row of the first prefix token (the class token) and
the row of one patch (by default the centre one), each over the ``h x w`` patch keys; the prefix
keys' columns are left out, so a tile's values need not sum to 1. Probabilities are unsigned in
[0, 1]: viridis, one scale per mosaic (its minimum to its maximum over every head).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from featuremaps.render.grid import Grid, GridLabel, GridOptions, make_grid
from featuremaps.render.panels import Composite, stacked, text_block

__all__ = ["AttentionPicture", "make_attention_picture"]


@dataclass(frozen=True)
class AttentionPicture:
    """The picture and its mosaics: ``first`` (the first prefix token's row, ``None`` without
    prefix tokens) and ``patch`` (the chosen patch's row)."""

    picture: Composite
    first: Grid | None
    patch: Grid


def make_attention_picture(
    first: np.ndarray | None,
    patch: np.ndarray,
    where: tuple[int, int],
    options: GridOptions,
    label: GridLabel,
    note: str = "",
) -> AttentionPicture:
    """Mosaics of ``first`` (heads, h, w), the first prefix token's attention over the patches,
    and ``patch`` (heads, h, w), the attention of the patch at ``where`` (row, column); ``note``
    says where the probabilities come from ("recomputed", "returned by the model")."""
    heads, h, w = patch.shape
    options = replace(options, unit="head", scale="layer", value_range=None, cmap="viridis")
    if options.channels is None and options.order == "index":
        options = replace(options, max_channels=max(options.max_channels, heads))
    source = f" · {note}" if note else ""
    panels: list[np.ndarray] = []
    first_grid = None
    warnings: list[str] = []
    if first is not None:
        first_grid = make_grid(first, options, label=label)
        title = f"query: the first prefix token (class token) · keys: the {h}x{w} patches{source}"
        panels += [text_block([title]), first_grid.pixels]
        warnings += list(first_grid.warnings)
    patch_grid = make_grid(patch, options, label=label)
    title = f"query: patch (row {where[0]}, column {where[1]}) · keys: the {h}x{w} patches{source}"
    panels += [text_block([title]), patch_grid.pixels]
    warnings += [w for w in patch_grid.warnings if w not in warnings]
    return AttentionPicture(
        Composite(stacked(panels, gap=4), tuple(warnings)), first_grid, patch_grid
    )
