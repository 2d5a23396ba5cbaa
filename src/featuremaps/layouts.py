"""Layouts: what the axes of a captured output mean, and how (or whether) it becomes pictures.

Between capture and the pure transforms in the flow (… → capture → **layouts** → stats/render).
Every output tensor gets one :class:`Layout`: its ``name`` as written in the manifest, where its
batch and channel axes are, how one sample becomes drawable maps (``drawn_as``) or why it cannot.
Everything else (the run, statistics, ablation, the report) asks the layout instead of testing
``len(shape)``, so a new kind of output is one entry here and one renderer.

Names (the manifest's ``layout``)::

    NCHW, NCL, NCDHW, NC, N, scalar     channels first; drawn as channel grids, signal heat maps,
                                        volume montages, bar strips (scalars are not drawn)
    NHWC->NCHW                          channels last, drawn as NCHW
    tokens(prefix=1, grid=14x14)        (N, T, D): T = prefix + h*w patch tokens on an h x w grid
    LND->tokens(prefix=0, grid=4x6)     the same with the sequence first, (T, N, D)
    NLD, LND->NLD                       a sequence with features last and no patch grid
    states(layers, N, H)                recurrent hidden/cell states
    attention(N, heads, L, S)           attention probabilities (rows: queries, columns: keys)
    attention(N, heads, L, S; prefix=1, grid=14x14)
                                        the same for self-attention over tokens on a known patch
                                        grid (L = S = prefix + h*w): drawn per head, the first
                                        prefix token's row and one patch's row on the grid
    undecided                           the evidence does not settle it: never drawn

Decisions come from evidence, never from the rank alone (:func:`decide`):

1. the module's own meaning: ``*2d`` modules give NCHW, ``*1d`` NCL, ``*3d`` NCDHW; an RNN's
   ``batch_first``; a ``Permute``'s ``dims`` applied to the layout it was given; an element-wise
   module (activation, dropout, ...) keeps the layout it was given;
2. probes (run by :mod:`featuremaps.capture` only for models with other module types): the
   output's shape for one sample, for two samples (the axis that doubles is the batch axis), and
   for a second input size (spatial axes move, channel axes do not);
3. for tokens, the patch grid is the spatial size of a channels-first map seen earlier in the
   same pass (the patch embedding), and the prefix count ``T - h*w`` must equal what the model's
   attributes say (``num_prefix_tokens``, ``cls_token``/``class_token``, ``dist_token``, register
   tokens) or, without such attributes, be the same at the second input size.

Whatever is left open is ``undecided``, with the evidence in words, and is not drawn.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from featuremaps._errors import OptionError

__all__ = [
    "ATTENTION_MAP",
    "BAR_STRIP",
    "CHANNEL_GRID",
    "LAYOUTS",
    "SIGNAL_MAP",
    "TOKEN_GRID",
    "VOLUME_MONTAGE",
    "Facts",
    "Layout",
    "Probe",
    "attention",
    "attention_rows",
    "centre_patch",
    "channels_first",
    "decide",
    "drawable_maps",
    "get",
    "maps_shape",
    "needs_probes",
    "prefix_tokens",
    "skip_reason",
    "token_parts",
]

CHANNEL_GRID = "channel grid"
TOKEN_GRID = "token grid"
BAR_STRIP = "bar strip"
SIGNAL_MAP = "signal heat map"
VOLUME_MONTAGE = "volume montage"
ATTENTION_MAP = "attention map"

Shape = tuple[int, ...]

# Modules that act on the last axis: their outputs have features last, whatever the rank.
_LAST_AXIS_TYPES = frozenset(
    {"Linear", "LazyLinear", "Bilinear", "NonDynamicallyQuantizableLinear", "LayerNorm", "RMSNorm"}
)
# Modules that act on every value alone (or on the whole tensor alike): the output has the
# layout of the input.
_ELEMENTWISE_TYPES = frozenset(
    {
        "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "CELU", "SELU", "GELU", "SiLU",
        "Mish", "Sigmoid", "Tanh", "Hardtanh", "Hardswish", "Hardsigmoid", "Softplus",
        "Softsign", "Tanhshrink", "Hardshrink", "Softshrink", "Threshold", "LogSigmoid",
        "Dropout", "AlphaDropout", "FeatureAlphaDropout", "Identity", "StochasticDepth",
        "DropPath", "QuickGELU", "GELUTanh", "Swish", "HardSwish", "HardSigmoid", "LayerScale",
        "Scale", "Affine",
    }
)  # fmt: skip
# Modules whose outputs never need probes to be read: channels-first by their own meaning,
# element-wise, or a vector head (a Linear on a flattened (N, F) input).
_SELF_DESCRIBING = _ELEMENTWISE_TYPES | {
    "Linear", "LazyLinear", "Flatten", "Unflatten", "Upsample", "UpsamplingNearest2d",
    "UpsamplingBilinear2d", "GroupNorm", "LocalResponseNorm", "Softmax", "LogSoftmax",
    "Softmax2d", "ChannelShuffle", "PixelShuffle", "PixelUnshuffle", "FrozenBatchNorm2d",
    "LayerNorm2d", "Conv2dNormActivation", "Conv3dNormActivation",
}  # fmt: skip
_RNN_TYPES = frozenset({"RNN", "LSTM", "GRU"})


def _dimension_type(module_type: str) -> int | None:
    """2 for ``Conv2d``, ``BatchNorm2d``, ``LayerNorm2d``... (the spatial rank in the name)."""
    match = re.search(r"([123])[dD]$", module_type)
    return int(match[1]) if match else None


def needs_probes(module_types: Sequence[str]) -> bool:
    """Whether some output of a model made of these module types can only be read with probes.

    Models made only of channels-first modules (``*1d``/``*2d``/``*3d``), element-wise modules
    and vector heads (every torchvision CNN) need none, so they run exactly once.
    """
    return any(_dimension_type(t) is None and t not in _SELF_DESCRIBING for t in module_types)


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
        len(shape) == rank and _dimension_type(module_type) == spatial
    )


def _rank(n: int) -> Callable[[Shape, str, str | None], bool]:
    return lambda shape, module_type, given: len(shape) == n


_TOO_FEW = "output has {} dimension(s); nothing to draw"
_SEQUENCE = (
    "a sequence with features last and no patch grid found for its tokens; listed, not drawn"
)

#: The fixed layouts, tried in order on a module's type alone (see :func:`decide`).
LAYOUTS: tuple[Layout, ...] = (
    Layout("NCHW", 4, 1, CHANNEL_GRID, None, _typed(4, 2)),
    Layout("NCL", 3, 1, SIGNAL_MAP, None, _typed(3, 1)),
    Layout("NCDHW", 5, 1, VOLUME_MONTAGE, None, _typed(5, 3)),
    Layout("NC", 2, 1, BAR_STRIP, None, _rank(2)),
    Layout("N", 1, None, None, _TOO_FEW.format(1), _rank(1)),
    Layout("scalar", 0, None, None, _TOO_FEW.format(0), _rank(0)),
)
NHWC = Layout("NHWC->NCHW", 4, 3, CHANNEL_GRID, None, to_maps=(2, 0, 1))
NLD = Layout("NLD", 3, 2, None, _SEQUENCE)
LND = Layout("LND->NLD", 3, 2, None, _SEQUENCE, batch_axis=1)
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


def _undecided(ndim: int, note: str) -> Layout:
    return Layout("undecided", ndim, None, None, UNDECIDED_REASON, batch_axis=None, note=note)


def _other(ndim: int) -> Layout:
    return Layout(f"{ndim}-D", ndim, None, None, _TOO_FEW.format(ndim) + " in a known layout")


def _tokens(prefix: int, grid: tuple[int, int], sequence_first: bool, note: str = "") -> Layout:
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
        return _tokens(int(match[2]), grid, bool(match[1]))
    match = _ATTENTION.match(name)
    if match and ndim == 4:
        return _attention_on_grid(int(match[1]), (int(match[2]), int(match[3])))
    if name == "undecided":
        return _undecided(ndim, "")
    return _other(ndim)


# --------------------------------------------------------------------------------------------------
# Evidence


@dataclass(frozen=True)
class Probe:
    """One record's output shape under the probes (``None``: that probe did not run or failed).

    ``one``: one sample at the input size; ``two``: two samples; ``resized``: one sample at a
    second input size.
    """

    one: Shape | None = None
    two: Shape | None = None
    resized: Shape | None = None


@dataclass
class Facts:
    """What a pass has learnt about the model so far, for the records that follow.

    ``prefix`` is the prefix-token count the model's attributes give (``None``: no attribute),
    ``prefix_source`` names them. ``grids`` lists channels-first maps seen so far in execution
    order: (record name, (h, w), (h, w) at the second input size or ``None``, channels).
    ``closed`` is true while every module seen is self-describing (see :func:`needs_probes`),
    so an element-wise module of unknown input is channels-first by elimination.
    """

    prefix: int | None = None
    prefix_source: str = ""
    grids: list[tuple[str, tuple[int, int], tuple[int, int] | None, int]] = field(
        default_factory=list
    )
    closed: bool = True


def _batch_axis(probe: Probe | None) -> tuple[int | None, str]:
    if probe is None or probe.one is None or probe.two is None:
        return None, "no batch probe"
    one, two = probe.one, probe.two
    if len(one) != len(two):
        return None, f"rank changes with the batch ({one} for 1 sample, {two} for 2)"
    moved = [i for i, (a, b) in enumerate(zip(one, two, strict=True)) if a != b]
    if len(moved) == 1 and two[moved[0]] == 2 * one[moved[0]]:
        if one[moved[0]] == 1:
            return moved[0], f"batch axis {moved[0]} (1 sample {one}, 2 samples {two})"
        return None, (
            f"axis {moved[0]} holds the batch folded with something else ({one[moved[0]]} for "
            f"1 sample, {two[moved[0]]} for 2)"
        )
    if not moved:
        return None, f"no axis follows the batch size ({one} for 1 and 2 samples)"
    return None, f"no single batch axis ({one} for 1 sample, {two} for 2)"


def _moving(probe: Probe | None) -> set[int] | None:
    if probe is None or probe.one is None or probe.resized is None:
        return None
    if len(probe.one) != len(probe.resized):
        return None
    return {i for i, (a, b) in enumerate(zip(probe.one, probe.resized, strict=True)) if a != b}


def _token_grid(
    tokens: int, tokens_resized: int | None, facts: Facts, width: int | None = None
) -> tuple[int, tuple[int, int], str] | None:
    """(prefix, grid, evidence) for ``tokens`` tokens, or ``None`` when no grid fits.

    ``width``: when given, the grid's map must also have this many channels.
    """
    for name, (h, w), resized, channels in reversed(facts.grids):
        prefix = tokens - h * w
        if prefix < 0 or h * w < 2 or (width is not None and channels != width):
            continue
        also = False
        if tokens_resized is not None and resized is not None and resized != (h, w):
            if tokens_resized - resized[0] * resized[1] != prefix:
                continue
            also = True
        where = f"grid {h}x{w} from '{name}'"
        if prefix == 0:
            return 0, (h, w), f"{where}; {tokens} tokens = {h}x{w} exactly"
        if facts.prefix is not None:
            if prefix == facts.prefix:
                return prefix, (h, w), f"{where}; {prefix} prefix = {facts.prefix_source}"
            continue
        if also:
            return prefix, (h, w), f"{where}; {prefix} prefix at both input sizes"
    return None


def _sequence(shape: Shape, batch: int, probe: Probe | None, facts: Facts, note: str) -> Layout:
    """A 3-D output with features last and the batch on ``batch`` (0 or 1)."""
    length_axis = 1 - batch
    tokens = (probe.one if probe and probe.one else shape)[length_axis]
    resized = probe.resized[length_axis] if probe and probe.resized else None
    found = _token_grid(tokens, resized, facts)
    if found is None:
        base = LND if batch == 1 else NLD
        return replace(base, note=f"{note}; no patch grid fits {tokens} tokens")
    prefix, grid, why = found
    return _tokens(prefix, grid, batch == 1, f"{note}; {why}")


def _permuted(given: str | None, dims: Sequence[int] | None, ndim: int) -> Layout | None:
    """The layout after a ``Permute(dims)`` of a tensor in layout ``given``."""
    if given is None or dims is None or len(dims) != ndim or ndim != 4:
        return None
    axes = {"NCHW": "NCHW", "NHWC->NCHW": "NHWC"}.get(given)
    if axes is None:
        return None
    out = "".join(axes[d] for d in dims)
    if out == "NCHW":
        return replace(LAYOUTS[0], note=f"Permute{tuple(dims)} of {given}")
    if out == "NHWC":
        return replace(NHWC, note=f"Permute{tuple(dims)} of {given}")
    return None


def decide(
    shape: Shape,
    module_type: str,
    input_layout: str | None = None,
    *,
    probe: Probe | None = None,
    facts: Facts | None = None,
    attrs: Mapping[str, Any] | None = None,
    key: str | None = None,
) -> Layout:
    """The layout of an output of ``shape`` from a module of class ``module_type``.

    ``input_layout`` is the layout of the tensor the module was called with, when known;
    ``probe`` the output's shapes under the probes; ``facts`` what the pass learnt so far;
    ``attrs`` the module's own attributes that matter (``batch_first``, ``dims``); ``key`` the
    output's key inside a tuple/dict output. See the module docstring for the order of evidence.
    """
    shape = tuple(shape)
    ndim = len(shape)
    facts = facts if facts is not None else Facts()
    attrs = attrs or {}
    given = input_layout
    if given is not None and get(given, ndim).name == _other(ndim).name:
        given = None  # a layout of another rank (or unknown) says nothing about this output

    evidence = probe is not None and probe.one is not None
    for layout in LAYOUTS:  # a module's own type (the rank alone only without probes)
        if layout.detect(shape, module_type, given) and not (evidence and layout.name == "NC"):
            return layout
    if module_type in _RNN_TYPES:
        if key is not None and key.split(".")[0] == "1":
            return STATES
        if attrs.get("batch_first") is True:
            return _sequence(shape, 0, probe, facts, "batch_first=True")
        return _sequence(shape, 1, probe, facts, "batch_first=False")
    if module_type == "MultiheadAttention":
        if key == "1":
            return (
                replace(ATTENTION, note=RETURNED)
                if ndim == 4
                else _undecided(ndim, "averaged attention weights (N, L, S)")
            )
        if ndim == 3:
            first = bool(attrs.get("batch_first"))
            return _sequence(shape, 0 if first else 1, probe, facts, f"batch_first={first}")
    if module_type == "Permute":
        permuted = _permuted(given, attrs.get("dims"), ndim)
        if permuted is not None:
            return permuted
    if module_type in _ELEMENTWISE_TYPES and given is not None:
        kept = get(given, ndim)
        if kept.name == "undecided":
            return _undecided(ndim, "its input's layout is undecided")
        return kept

    batch, batch_note = _batch_axis(probe)
    moving = _moving(probe)
    last_axis = module_type in _LAST_AXIS_TYPES
    if probe is None or probe.one is None:
        # No probes: only a model made of self-describing modules gets here (needs_probes).
        if ndim == 4 and facts.closed and not last_axis:
            return LAYOUTS[0]
        if ndim == 5 and facts.closed and not last_axis:
            return LAYOUTS[2]
        if ndim == 3 and last_axis:
            return replace(NLD, note="a last-axis module; no probes ran")
        if ndim == 4 and last_axis:
            return _undecided(ndim, "a last-axis module's 4-D output; no probes ran")
        if ndim in (0, 1):
            return LAYOUTS[-1 if ndim == 0 else -2]
        return _undecided(ndim, "no module type or probe settles it")
    if ndim in (0, 1):
        return LAYOUTS[-1 if ndim == 0 else -2]
    if batch is None:
        return _undecided(ndim, batch_note)
    size_note = (
        "no second input size (the model refused it)"
        if moving is None
        else f"axes {sorted(moving)} move with the input size"
    )
    if ndim == 4 and batch == 0:
        if moving == {2, 3}:
            return replace(LAYOUTS[0], note=f"{batch_note}; {size_note}")
        if moving == {1, 2}:
            return replace(NHWC, note=f"{batch_note}; {size_note}")
        if moving == {2}:
            return _undecided(
                ndim,
                f"{batch_note}; only axis 2 moves with the input size: tokens inside "
                "(N, heads, T, d) or similar, not a map",
            )
        return _undecided(ndim, f"{batch_note}; {size_note}")
    if ndim == 3 and batch in (0, 1):
        other = 1 - batch
        if moving is not None and moving == {2}:
            return (
                replace(LAYOUTS[1], note=f"{batch_note}; {size_note}")
                if batch == 0
                else _undecided(ndim, f"{batch_note}; {size_note}")
            )
        if (moving is not None and moving == {other}) or (moving is None and last_axis):
            why = size_note if moving is not None else "features last (a last-axis module)"
            return _sequence(shape, batch, probe, facts, f"{batch_note}; {why}")
        if moving is None:
            # Without a second size: tokens only when both axes match the patch embedding, the
            # count (prefix from the model's attributes + h*w) and the width (its channels).
            length = (probe.one if probe.one else shape)[other]
            found = _token_grid(length, None, facts, width=shape[2])
            if found is not None:
                prefix, grid, why = found
                note = f"{batch_note}; {why}; width {shape[2]} = its channels"
                return _tokens(prefix, grid, batch == 1, note)
        return _undecided(ndim, f"{batch_note}; {size_note}")
    if ndim == 2 and batch == 0:
        return LAYOUTS[3]
    if ndim == 5 and batch == 0 and moving == {2, 3, 4}:
        return replace(LAYOUTS[2], note=f"{batch_note}; {size_note}")
    return _undecided(ndim, f"{batch_note}; {size_note}")


def prefix_tokens(model: torch.nn.Module) -> tuple[int | None, str]:
    """The prefix-token count the model's attributes give, and which attributes; ``None`` when
    it has none (``num_prefix_tokens``, or ``cls_token``/``class_token``, ``dist_token``,
    ``reg_token``/``register_tokens`` parameters, each counting its tokens)."""
    for path, module in model.named_modules():
        count = getattr(module, "num_prefix_tokens", None)
        if isinstance(count, int) and not isinstance(count, bool):
            return count, f"{path + '.' if path else ''}num_prefix_tokens"
    for path, module in model.named_modules():
        found: list[str] = []
        total = 0
        for attr in ("cls_token", "class_token", "dist_token", "reg_token", "register_tokens"):
            value = getattr(module, attr, None)
            if isinstance(value, torch.Tensor) and value.dim() >= 2:
                n = int(value.shape[-2])
                total += n
                found.append(f"{attr} ({n})")
        if found:
            return total, f"{path + '.' if path else ''}{' + '.join(found)}"
    return None, ""


# --------------------------------------------------------------------------------------------------
# From a decided layout to arrays


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
