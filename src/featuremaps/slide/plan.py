"""Tiling plan: which windows of a large image to feed so that stitched maps are exact.

Pure arithmetic on the receptive-field geometry (:mod:`featuremaps.geometry`). For a layer with
cumulative stride ``S``, padding offset ``P`` (cell ``j`` sees input ``j·S − P … j·S − P + R − 1``)
and receptive field ``R``, a window whose origin is a multiple of ``S`` gives the same cells as the
whole image, shifted by ``origin / S``, wherever a cell's receptive field lies inside the window
or crosses only the image's own border (where the model pads as it would on the whole image).
So each tile is read with a halo of ``S·⌈P/S⌉`` input pixels before its core and
``S·⌈max(R − P − S, 0)/S⌉`` after it, windows are clipped to the image (never padded by us), and
only the core cells are kept. Nothing is averaged.

Several layers share one plan: the step is the least common multiple of their strides and the
halos the largest any of them needs, rounded up to the step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from featuremaps._errors import OptionError
from featuremaps.geometry import AxisGeometry, MapGeometry

__all__ = ["AxisPlan", "Halo", "LayerPlacement", "Tile", "TilePlan", "axis_halo", "make_plan"]


@dataclass(frozen=True)
class Halo:
    """Input pixels a window needs before and after its core along one axis."""

    before: int
    after: int


def _integer(value: float, what: str, layer: str) -> int:
    if abs(value - round(value)) > 1e-9:
        raise OptionError(
            f"layer '{layer}' has a {what} of {value:g} input pixels, not a whole number, so "
            "its cells cannot be stitched exactly; pick a convolution or pooling layer"
        )
    return round(value)


def axis_halo(axis: AxisGeometry, layer: str = "layer") -> Halo:
    """The halo one axis of a layer needs: ``S·⌈P/S⌉`` before, ``S·⌈max(R−P−S,0)/S⌉`` after."""
    stride = _integer(axis.stride, "stride", layer)
    if stride < 1:
        raise OptionError(f"layer '{layer}' has stride {axis.stride:g}; expected at least 1")
    # cell j sees j·S − P … j·S − P + R − 1, and its centre is j·S + offset
    padding = (axis.size - 1) / 2 - axis.offset
    before = stride * math.ceil(padding / stride - 1e-9)
    after = stride * math.ceil(max(axis.size - padding - stride, 0) / stride - 1e-9)
    return Halo(max(before, 0), max(after, 0))


@dataclass(frozen=True)
class LayerPlacement:
    """Where one layer's cells sit: stride ``S``, first-cell centre ``offset`` (per axis, in
    pixels of the level that was read; cell ``j`` is centred on ``j·S + offset``), and the number
    of cells of the whole image."""

    name: str
    stride: tuple[int, int]
    offset: tuple[float, float]
    receptive_field: tuple[float, float]
    cells: tuple[int, int]


@dataclass(frozen=True)
class AxisPlan:
    """The tiling of one axis: cores of ``core`` pixels starting at 0, halos, image length."""

    length: int
    core: int
    halo: Halo

    @property
    def count(self) -> int:
        """Number of tiles along the axis."""
        return max(1, math.ceil(self.length / self.core))

    def core_span(self, k: int) -> tuple[int, int]:
        """Pixels ``[start, end)`` of tile ``k``'s core."""
        return k * self.core, min((k + 1) * self.core, self.length)

    def window(self, k: int) -> tuple[int, int]:
        """Pixels ``[start, end)`` read for tile ``k``: core plus halos, clipped to the image."""
        a, b = self.core_span(k)
        return max(a - self.halo.before, 0), min(b + self.halo.after, self.length)

    def cells(self, k: int, stride: int, total: int) -> tuple[int, int]:
        """The whole-image cells ``[start, end)`` tile ``k`` contributes for a layer of stride
        ``stride`` with ``total`` cells; the last tile takes every cell up to the end."""
        per = self.core // stride
        start = k * per
        end = total if k == self.count - 1 else min((k + 1) * per, total)
        return start, max(end, start)


@dataclass(frozen=True)
class Tile:
    """One tile: its grid position, its core and the window read for it, as ``(y, x)`` spans."""

    row: int
    col: int
    core: tuple[tuple[int, int], tuple[int, int]]
    window: tuple[tuple[int, int], tuple[int, int]]

    @property
    def index(self) -> tuple[int, int]:
        return self.row, self.col


@dataclass(frozen=True)
class TilePlan:
    """Tiles over an image of ``(height, width)`` pixels for the layers in ``layers``."""

    y: AxisPlan
    x: AxisPlan
    step: tuple[int, int]
    layers: tuple[LayerPlacement, ...]

    @property
    def grid(self) -> tuple[int, int]:
        """Tiles per column and per row."""
        return self.y.count, self.x.count

    def tile(self, row: int, col: int) -> Tile:
        return Tile(
            row,
            col,
            (self.y.core_span(row), self.x.core_span(col)),
            (self.y.window(row), self.x.window(col)),
        )

    def tiles(self) -> Iterator[Tile]:
        """Every tile, row by row."""
        for r in range(self.y.count):
            for c in range(self.x.count):
                yield self.tile(r, c)

    def core_cells(self, tile: Tile, layer: LayerPlacement) -> tuple[slice, slice, int, int]:
        """For ``layer``: the slices of the window's output that are the tile's core cells, and
        the whole-image cell ``(row, col)`` where they go."""
        spans = []
        for axis, k, (w0, _), s, n in (
            (self.y, tile.row, tile.window[0], layer.stride[0], layer.cells[0]),
            (self.x, tile.col, tile.window[1], layer.stride[1], layer.cells[1]),
        ):
            start, end = axis.cells(k, s, n)
            local = start - w0 // s
            spans.append((slice(local, local + end - start), start))
        (sy, y0), (sx, x0) = spans
        return sy, sx, y0, x0

    def to_json(self) -> dict[str, object]:
        return {
            "core": [self.y.core, self.x.core],
            "halo_before": [self.y.halo.before, self.x.halo.before],
            "halo_after": [self.y.halo.after, self.x.halo.after],
            "step": list(self.step),
            "grid": list(self.grid),
        }


def placement(geometry: MapGeometry, cells: tuple[int, int]) -> LayerPlacement:
    """A layer's placement from its geometry and its whole-image cell counts."""
    name = geometry.name
    return LayerPlacement(
        name,
        (
            _integer(geometry.y.stride, "stride", name),
            _integer(geometry.x.stride, "stride", name),
        ),
        (geometry.y.offset, geometry.x.offset),
        (geometry.y.size, geometry.x.size),
        cells,
    )


def make_plan(
    size: tuple[int, int],
    layers: Sequence[LayerPlacement],
    halos: Sequence[tuple[Halo, Halo]],
    core: int,
) -> TilePlan:
    """A plan over an image of ``size = (height, width)`` pixels.

    Args:
        layers: the layers computed from each window (their strides set the step).
        halos: ``(y, x)`` halos each layer needs (see :func:`axis_halo`); the largest is used.
        core: the wanted core size in pixels; rounded up to a multiple of the step.
    """
    if not layers:
        raise OptionError("no layer to plan tiles for; name at least one with --layers")
    if core < 1:
        raise OptionError(f"tile core of {core} pixels; expected a positive size such as 1024")
    steps = []
    axes = []
    for axis, length in enumerate(size):
        step = math.lcm(*(layer.stride[axis] for layer in layers))
        before = max(h[axis].before for h in halos)
        after = max(h[axis].after for h in halos)
        halo = Halo(step * math.ceil(before / step), step * math.ceil(after / step))
        axes.append(AxisPlan(int(length), step * max(1, math.ceil(core / step)), halo))
        steps.append(step)
    return TilePlan(axes[0], axes[1], (steps[0], steps[1]), tuple(layers))
