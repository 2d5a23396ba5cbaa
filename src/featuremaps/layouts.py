"""Layouts: what the axes of a captured output mean, and how (or whether) it becomes pictures.

Between capture and the pure transforms in the flow (… → capture → **layouts** → stats/render).
Every output tensor gets one :class:`Layout` from the registry :data:`LAYOUTS`: the first adapter
whose ``detect`` accepts the output's shape, module type and the layout of the tensor the module
was given (when capture knows it). A layout says

* its ``name`` as written in the manifest (``NCHW``, ``NHWC``, ``NCL``, ``NCDHW``, ``NLD`` tokens,
  ``NC`` vectors, ...),
* where its channel axis is (``None`` when it has none), which statistics, masks and rankings use,
* how one sample becomes drawable ``(C, H, W)`` maps (``drawn_as``), or the reason it cannot.

Everything else (the run, statistics, ablation, the report) asks the layout instead of testing
``len(shape)``, so a new kind of output is one adapter here.

Evidence, not guesses: a 4-D output is channels-last only when the module itself says so (a
``Linear`` or ``LayerNorm`` acts on the last axis), or when it passes through the layout of its
input unchanged (an activation after such a module). A 3-D output is ``NCL`` after 1-d modules
and ``NLD`` (tokens, features last) otherwise, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "CHANNEL_GRID",
    "LAYOUTS",
    "Layout",
    "channels_first",
    "decide",
    "drawable_maps",
    "get",
    "maps_shape",
    "skip_reason",
]

CHANNEL_GRID = "channel grid"

# Modules that act on the last axis: their outputs have features last, whatever the rank.
_LAST_AXIS_TYPES = frozenset(
    {"Linear", "LazyLinear", "Bilinear", "NonDynamicallyQuantizableLinear", "LayerNorm", "RMSNorm"}
)


@dataclass(frozen=True)
class Layout:
    """One output layout: how to recognise it, where its channels are, how it is drawn.

    Attributes:
        name: axis names as written in the manifest, e.g. ``"NCHW"``.
        ndim: the tensor rank it applies to (``None``: any).
        channel_axis: the channel axis of the whole tensor (batch included), or ``None``.
        drawn_as: how a sample is drawn (:data:`CHANNEL_GRID`), or ``None`` when it is not.
        reason: why it is not drawn (``None`` when it is).
        to_maps: for drawable layouts, the permutation of one sample's axes that gives
            ``(C, H, W)``; ``None`` keeps the order.
        detect: ``detect(shape, module_type, input_layout)`` says whether this layout applies.
    """

    name: str
    ndim: int | None
    channel_axis: int | None
    drawn_as: str | None
    reason: str | None
    detect: Callable[[tuple[int, ...], str, str | None], bool]
    to_maps: tuple[int, ...] | None = None

    @property
    def drawable(self) -> bool:
        return self.drawn_as is not None


def _rank(n: int) -> Callable[[tuple[int, ...], str, str | None], bool]:
    return lambda shape, module_type, given: len(shape) == n


def _channels_last(shape: tuple[int, ...], module_type: str, given: str | None) -> bool:
    return len(shape) == 4 and (module_type in _LAST_AXIS_TYPES or given == "NHWC")


def _one_d(shape: tuple[int, ...], module_type: str, given: str | None) -> bool:
    return len(shape) == 3 and (module_type.endswith("1d") or given == "NCL")


_TOO_FEW = "output has {} dimension(s); channel grids need (N, C, H, W)"
_NOT_YET = "sequence and token pictures are not drawn yet"

#: The registry, tried in order; an output no entry accepts gets a generic "<n>-D" layout.
LAYOUTS: tuple[Layout, ...] = (
    Layout("NHWC", 4, 3, CHANNEL_GRID, None, _channels_last, to_maps=(2, 0, 1)),
    Layout("NCHW", 4, 1, CHANNEL_GRID, None, _rank(4)),
    Layout("NCL", 3, 1, None, f"output is 3-D (NCL); {_NOT_YET}", _one_d),
    Layout("NLD", 3, 2, None, f"output is 3-D (NLD); {_NOT_YET}", _rank(3)),
    Layout(
        "NCDHW",
        5,
        1,
        None,
        "output is a 5-D volume (N, C, D, H, W); volume pictures are not drawn yet",
        _rank(5),
    ),
    Layout(
        "NC",
        2,
        1,
        None,
        "output is a vector per sample (N, C); channel grids need (N, C, H, W)",
        _rank(2),
    ),
    Layout(
        "N", 1, None, None, "output has 1 dimension(s); channel grids need (N, C, H, W)", _rank(1)
    ),
    Layout(
        "scalar",
        0,
        None,
        None,
        "output has 0 dimension(s); channel grids need (N, C, H, W)",
        _rank(0),
    ),
)
_BY_NAME = {layout.name: layout for layout in LAYOUTS}


def _other(ndim: int) -> Layout:
    return Layout(f"{ndim}-D", ndim, None, None, _TOO_FEW.format(ndim), _rank(ndim))


def decide(shape: tuple[int, ...], module_type: str, input_layout: str | None = None) -> Layout:
    """The layout of an output of ``shape`` from a module of class ``module_type``.

    ``input_layout`` is the layout of the tensor the module was called with, when known: a module
    that keeps the rank (an activation, a dropout) keeps the layout it was given.
    """
    shape = tuple(shape)
    given = input_layout if input_layout in _BY_NAME else None
    if given is not None and _BY_NAME[given].ndim != len(shape):
        given = None
    for layout in LAYOUTS:
        if layout.detect(shape, module_type, given):
            return layout
    return _other(len(shape))


def get(name: str, ndim: int) -> Layout:
    """The registered layout called ``name`` (a manifest's ``layout``), or the generic one."""
    layout = _BY_NAME.get(name)
    return layout if layout is not None and layout.ndim == ndim else _other(ndim)


def skip_reason(layout: Layout, complex_valued: bool = False) -> str | None:
    """Why a record with this layout is not drawn, or ``None`` when it is."""
    if complex_valued:
        return "complex-valued output; not drawn"
    return None if layout.drawable else layout.reason


def drawable_maps(layout: Layout, tensor: torch.Tensor, sample: int) -> np.ndarray:
    """One sample of a drawable output as a ``(C, H, W)`` float array (float32 or float64).

    The array may share memory with ``tensor`` (no copy for float32 NCHW on the CPU).
    """
    maps = tensor[sample].detach()
    if layout.to_maps is not None:
        maps = maps.permute(*layout.to_maps)
    if maps.dtype not in (torch.float32, torch.float64):
        maps = maps.float()
    return maps.cpu().numpy()


def maps_shape(layout: Layout, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The ``(C, H, W)`` shape of one drawn sample of an output of ``shape``."""
    sample = tuple(shape[1:])
    if layout.to_maps is None:
        return sample
    return tuple(sample[i] for i in layout.to_maps)


def channels_first(layout: Layout, tensor: torch.Tensor) -> torch.Tensor | None:
    """The tensor with its channel axis second, ``(N, C, ...)``; ``None`` without channels."""
    if layout.channel_axis is None or tensor.dim() < 2:
        return None
    if layout.channel_axis == 1:
        return tensor
    return tensor.movedim(layout.channel_axis, 1)
