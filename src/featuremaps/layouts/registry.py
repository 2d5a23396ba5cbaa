"""The layout registry: every named layout of a captured output, and what each name means.

Between capture and the pure transforms in the flow (… → capture → **layouts** → stats/render):
:class:`Layout` says where an output's batch and channel axes are and how one sample is drawn
(``drawn_as``) or why it is not; :data:`LAYOUTS` and the parametrised layouts (tokens on a patch
grid, attention over them) are the names a manifest writes, and :func:`get` reads them back. Which
layout an output has is decided in :mod:`featuremaps.layouts.evidence`; the names are listed in
:mod:`featuremaps.layouts`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

__all__ = [
    "ATTENTION",
    "ATTENTION_MAP",
    "BAR_STRIP",
    "CHANNEL_GRID",
    "LAYOUTS",
    "LND",
    "NHWC",
    "NLD",
    "RETURNED",
    "SEQUENCE_MAP",
    "SIGNAL_MAP",
    "STATES",
    "TOKEN_GRID",
    "UNDECIDED_REASON",
    "VOLUME_MONTAGE",
    "Layout",
    "Shape",
    "attention",
    "dimension_type",
    "generic",
    "get",
    "token_layout",
    "undecided",
]

CHANNEL_GRID = "channel grid"
TOKEN_GRID = "token grid"
BAR_STRIP = "bar strip"
SIGNAL_MAP = "signal heat map"
SEQUENCE_MAP = "sequence heat map"
VOLUME_MONTAGE = "volume montage"
ATTENTION_MAP = "attention map"

Shape = tuple[int, ...]


def dimension_type(module_type: str) -> int | None:
    """2 for ``Conv2d``, ``BatchNorm2d``, ``LayerNorm2d``... (the spatial rank in the name)."""
    match = re.search(r"([123])[dD]$", module_type)
    return int(match[1]) if match else None


@dataclass(frozen=True)
class Layout:
    """One output layout: where its axes are, how it is drawn, or why it is not.

    Attributes:
        name: as written in the manifest, e.g. ``"NCHW"`` or ``"tokens(prefix=1, grid=14x14)"``.
        ndim: the tensor rank it applies to (``None``: any).
        channel_axis: the channel (feature) axis of the whole tensor, or ``None``.
        drawn_as: how a sample is drawn (:data:`CHANNEL_GRID`, :data:`TOKEN_GRID`, ...), or
            ``None`` when it is not.
        reason: why it is not drawn (``None`` when it is).
        detect: for the fixed entries of :data:`LAYOUTS`, ``detect(shape, module_type, given)``
            says whether a module's own type settles this layout.
        to_maps: for drawable layouts, the permutation of one sample's axes that gives maps with
            channels first; ``None`` keeps the order.
        batch_axis: the batch axis (``None``: no batch axis, e.g. recurrent states).
        prefix, grid: tokens only: prefix tokens first, then ``grid`` = (h, w) patch tokens.
        note: the evidence the decision rests on, in words (not part of the name).
    """

    name: str
    ndim: int | None
    channel_axis: int | None
    drawn_as: str | None
    reason: str | None
    detect: Callable[[Shape, str, str | None], bool] = field(
        default=lambda shape, module_type, given: False, repr=False, compare=False
    )
    to_maps: tuple[int, ...] | None = None
    batch_axis: int | None = 0
    prefix: int = 0
    grid: tuple[int, int] | None = None
    note: str = field(default="", compare=False)

    @property
    def drawable(self) -> bool:
        return self.drawn_as is not None


def _typed(rank: int, spatial: int) -> Callable[[Shape, str, str | None], bool]:
    return lambda shape, module_type, given: (
        len(shape) == rank and dimension_type(module_type) == spatial
    )


def _rank(n: int) -> Callable[[Shape, str, str | None], bool]:
    return lambda shape, module_type, given: len(shape) == n


_TOO_FEW = "output has {} dimension(s); nothing to draw"

#: The fixed layouts, tried in order on a module's type alone (:func:`~featuremaps.layouts.decide`).
LAYOUTS: tuple[Layout, ...] = (
    Layout("NCHW", 4, 1, CHANNEL_GRID, None, _typed(4, 2)),
    Layout("NCL", 3, 1, SIGNAL_MAP, None, _typed(3, 1)),
    Layout("NCDHW", 5, 1, VOLUME_MONTAGE, None, _typed(5, 3)),
    Layout("NC", 2, 1, BAR_STRIP, None, _rank(2)),
    Layout("N", 1, None, None, _TOO_FEW.format(1), _rank(1)),
    Layout("scalar", 0, None, None, _TOO_FEW.format(0), _rank(0)),
)
NHWC = Layout("NHWC->NCHW", 4, 3, CHANNEL_GRID, None, to_maps=(2, 0, 1))
# A sequence with features last and no patch grid for its tokens: one sample (L, D) is drawn as
# a feature x position heat map, (D, L).
NLD = Layout("NLD", 3, 2, SEQUENCE_MAP, None, to_maps=(1, 0))
LND = Layout("LND->NLD", 3, 2, SEQUENCE_MAP, None, to_maps=(1, 0), batch_axis=1)
STATES = Layout(
    "states(layers, N, H)",
    3,
    2,
    None,
    "recurrent hidden/cell states (layers x directions, N, hidden): not a map; listed, not drawn",
    batch_axis=1,
)
ATTENTION = Layout(
    "attention(N, heads, L, S)",
    4,
    1,
    None,
    "attention probabilities without a known patch grid for both queries and keys; listed, "
    "not drawn",
)
RETURNED = "returned by the model"
UNDECIDED_REASON = "layout undecided from the evidence; not drawn rather than guessed"
_BY_NAME = {layout.name: layout for layout in (*LAYOUTS, NHWC, NLD, LND, STATES, ATTENTION)}
_BY_NAME["NHWC"] = NHWC  # manifests written before the arrow was added
_TOKENS = re.compile(r"^(LND->)?tokens\(prefix=(\d+), grid=(\d+)x(\d+)\)$")
_ATTENTION = re.compile(r"^attention\(N, heads, L, S; prefix=(\d+), grid=(\d+)x(\d+)\)$")


def _attention_on_grid(prefix: int, grid: tuple[int, int], note: str = "") -> Layout:
    return Layout(
        f"attention(N, heads, L, S; prefix={prefix}, grid={grid[0]}x{grid[1]})",
        4,
        1,
        ATTENTION_MAP,
        None,
        prefix=prefix,
        grid=grid,
        note=note,
    )


def attention(tokens: Layout | None, shape: Shape, note: str) -> Layout:
    """The layout of attention probabilities of ``shape`` (N, heads, L, S) whose queries are
    ``tokens`` (the layout of the attention module's output, when known): on the patch grid
    when it is self-attention over those tokens (``L = S = prefix + h*w``)."""
    if tokens is not None and tokens.drawn_as == TOKEN_GRID and tokens.grid is not None:
        count = tokens.prefix + tokens.grid[0] * tokens.grid[1]
        if len(shape) == 4 and shape[2] == shape[3] == count:
            return _attention_on_grid(tokens.prefix, tokens.grid, note)
        return replace(ATTENTION, note=f"{note}; {tuple(shape)} is not {count} x {count} tokens")
    return replace(ATTENTION, note=f"{note}; its tokens have no known patch grid")


def undecided(ndim: int, note: str) -> Layout:
    """The layout of an output the evidence does not settle (``note``: why); never drawn."""
    return Layout("undecided", ndim, None, None, UNDECIDED_REASON, batch_axis=None, note=note)


def generic(ndim: int) -> Layout:
    """The layout of an ``ndim``-D output in no known layout (``"5-D"``); not drawn."""
    return Layout(f"{ndim}-D", ndim, None, None, _TOO_FEW.format(ndim) + " in a known layout")


def token_layout(
    prefix: int, grid: tuple[int, int], sequence_first: bool, note: str = ""
) -> Layout:
    """Tokens: ``prefix`` tokens first, then ``grid`` = (h, w) patch tokens, batch first or
    (``sequence_first``) second."""
    name = f"tokens(prefix={prefix}, grid={grid[0]}x{grid[1]})"
    return Layout(
        f"LND->{name}" if sequence_first else name,
        3,
        2,
        TOKEN_GRID,
        None,
        batch_axis=1 if sequence_first else 0,
        prefix=prefix,
        grid=grid,
        note=note,
    )


def get(name: str, ndim: int) -> Layout:
    """The layout a manifest calls ``name`` (fixed or parametrised), or the generic one."""
    layout = _BY_NAME.get(name)
    if layout is not None and layout.ndim == ndim:
        return layout
    match = _TOKENS.match(name)
    if match and ndim == 3:
        grid = (int(match[3]), int(match[4]))
        return token_layout(int(match[2]), grid, bool(match[1]))
    match = _ATTENTION.match(name)
    if match and ndim == 4:
        return _attention_on_grid(int(match[1]), (int(match[2]), int(match[3])))
    if name == "undecided":
        return undecided(ndim, "")
    return generic(ndim)
