"""The ``run`` command's drawing step: one captured record, drawn as its layout says.

Between capture and render in the flow (capture -> layouts -> render): :func:`draw_record` picks
the picture for a record's layout (channel grid, tokens, signal, sequence, volume, attention,
bars) and returns it with what the manifest says about it; :func:`skip_reason` says why a
record is not drawn, :func:`ranked_by_file` picks a layer's channels by a saved data-set
statistic and :func:`global_range` measures the colour range that scale "global" shares over
all layers.
:mod:`featuremaps.commands.run` measures, encodes and writes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from featuremaps import layouts
from featuremaps._errors import OptionError
from featuremaps.capture import LayerRecord, capture
from featuremaps.dataset import SavedStats
from featuremaps.devices import Placement
from featuremaps.render import GridLabel, GridOptions, ValueRange, make_grid
from featuremaps.render.attention import make_attention_picture
from featuremaps.render.bars import make_bars
from featuremaps.render.scaling import centred, compute_range, is_signed_range, merge_ranges
from featuremaps.render.signal import Placement as AxisPlacement
from featuremaps.render.signal import make_signal_picture
from featuremaps.render.tokens import (
    PcaMemo,
    TokenPicture,
    TokenPlan,
    finish_token_picture,
    plan_token_picture,
)
from featuremaps.render.volume import make_volume_picture
from featuremaps.stats import ChannelStats

__all__ = [
    "Drawing",
    "SignalContext",
    "covers_whole_output",
    "draw_record",
    "finished",
    "global_range",
    "ranked_by_file",
    "skip_reason",
]


def skip_reason(record: LayerRecord, sample: int = 0) -> str | None:
    """Why ``record`` is not drawn for ``sample`` (its layout, an empty output, no such
    sample in its batch), or None when it is drawn."""
    layout = record.layout_info
    reason = layouts.skip_reason(layout, record.tensor.is_complex())
    if reason is None and record.tensor.numel() == 0:
        return f"empty output (shape {record.shape}); nothing to draw"
    axis = layout.batch_axis
    if reason is None and axis is not None and not 0 <= sample < record.shape[axis]:
        return f"no sample {sample} in a batch of {record.shape[axis]}"
    return reason


def global_range(
    model: nn.Module, tensor: torch.Tensor, cap: dict[str, Any], sample: int, placement: Placement
) -> ValueRange:
    """The colour range of scale "global": over every drawable record of one forward pass that
    only measures (nothing is kept), centred on 0 when it is signed."""
    ranges: list[ValueRange] = []

    def measure(record: LayerRecord) -> None:
        drawn_as = record.layout_info.drawn_as
        if skip_reason(record, sample) is None and drawn_as in (
            layouts.CHANNEL_GRID,
            layouts.TOKEN_GRID,
            layouts.SIGNAL_MAP,
            layouts.SEQUENCE_MAP,
            layouts.VOLUME_MONTAGE,
        ):
            ranges.append(compute_range(record.maps(sample), symmetric=False))

    with placement.autocast():
        capture(model, tensor, on_record=measure, copy=False, **cap)
    merged = merge_ranges(ranges) if ranges else ValueRange(0.0, 0.0, False)
    return centred(merged) if is_signed_range(merged.vmin) else merged


@dataclass
class Drawing:
    """One record's picture and what the manifest says about it."""

    picture: Any
    shown: tuple[int, ...] | None
    warnings: tuple[str, ...]
    pca: dict[str, Any] | None = None
    pca_array: np.ndarray | None = None
    tiles: bool = True  # the report can draw its channels as tiles from its data file

    @property
    def pending(self) -> bool:
        """Whether the picture waits for :func:`finished` (a token layer's PCA, ``pca_later``)."""
        return isinstance(self.picture, TokenPlan)


def _token_drawing(tokens: TokenPicture) -> Drawing:
    pca = tokens.pca
    return Drawing(
        tokens.picture,
        tokens.grid.channels,
        tokens.picture.warnings,
        {"explained_variance": list(pca.explained), "components": len(pca.explained)},
        np.concatenate([pca.mean[None], pca.basis]).astype(np.float32),
    )


def finished(drawing: Drawing, memo: PcaMemo | None = None) -> Drawing:
    """``drawing`` with its picture done: a token layer's PCA taken (on any thread: the plan
    holds its own copy of the tokens; ``memo``, the run's :class:`PcaMemo`); any other drawing
    as it is."""
    if isinstance(drawing.picture, TokenPlan):
        return _token_drawing(finish_token_picture(drawing.picture, memo))
    return drawing


@dataclass(frozen=True)
class SignalContext:
    """What a signal picture needs besides the record: the input (C, L) and the placement."""

    signal: np.ndarray | None
    placement: AxisPlacement | None


def draw_record(
    record: LayerRecord,
    sample: int,
    maps: np.ndarray | None,
    options: GridOptions,
    label: GridLabel,
    context: SignalContext | None = None,
    attention_patch: tuple[int, int] | None = None,
    stats: ChannelStats | None = None,
    pca_later: bool = False,
) -> Drawing:
    """Draw one record as its layout says (:data:`featuremaps.layouts` ``drawn_as``);
    ``stats``, the channel statistics of ``maps`` when the caller has them, spare the channel
    mosaic a pass over the maps. A range is judged constant in the dtype the record was computed
    in (bfloat16 under autocast, though its maps arrive as float32). With ``pca_later``, a token
    layer's drawing is :attr:`Drawing.pending`: its PCA is left to :func:`finished`."""
    layout = record.layout_info
    if options.dtype is None:
        options = replace(options, dtype=record.dtype)
    if layout.drawn_as == layouts.SIGNAL_MAP:
        assert maps is not None
        context = context or SignalContext(None, None)
        drawn = make_signal_picture(
            maps, options, label, signal=context.signal, placement=context.placement
        )
        return Drawing(drawn.picture, drawn.channels, drawn.picture.warnings, tiles=False)
    if layout.drawn_as == layouts.SEQUENCE_MAP:
        assert maps is not None  # (D, L): features as rows, positions on x
        drawn = make_signal_picture(maps, options, label, x_axis="position")
        return Drawing(drawn.picture, drawn.channels, drawn.picture.warnings, tiles=False)
    if layout.drawn_as == layouts.VOLUME_MONTAGE:
        assert maps is not None
        volume = make_volume_picture(maps, options, label)
        return Drawing(volume.picture, volume.channels, volume.picture.warnings, tiles=False)
    if layout.drawn_as == layouts.TOKEN_GRID:
        assert maps is not None
        _, head = layouts.token_parts(layout, record.tensor, sample)
        plan = plan_token_picture(maps, head, options, label)
        drawing = Drawing(plan, plan.grid.channels, plan.grid.warnings)
        return drawing if pca_later else finished(drawing)
    if layout.drawn_as == layouts.ATTENTION_MAP:
        assert maps is not None
        where = attention_patch or layouts.centre_patch(layout)
        patch = layouts.attention_rows(layout, record.tensor, sample, where)
        source = "returned by the model" if record.output_key == "1" else "recomputed"
        attention = make_attention_picture(
            maps if layout.prefix else None, patch, where, options, label, source
        )
        shown = (attention.first or attention.patch).channels
        return Drawing(attention.picture, shown, attention.picture.warnings)
    if layout.drawn_as == layouts.BAR_STRIP:
        vector = layouts.drawable_maps(layout, record.tensor, sample)
        title = f"{label.name} · {label.module_type} · {tuple(label.shape)}"
        bars = make_bars(
            vector[None], [f"sample {sample}"], title=title, stamp=label.stamp, dtype=options.dtype
        )
        return Drawing(bars, None, bars.warnings, tiles=False)
    assert maps is not None
    picture = make_grid(maps, options, label=label, stats=stats)
    return Drawing(picture, picture.channels, picture.warnings)


def covers_whole_output(maps: np.ndarray, tensor: torch.Tensor) -> bool:
    """Whether the drawn ``maps`` hold every value of ``tensor`` (one sample, nothing left out,
    converted exactly), so that statistics of the maps are statistics of the whole output."""
    return bool(maps.size == tensor.numel() and tensor.is_floating_point())


def ranked_by_file(
    grid: GridOptions, saved: SavedStats | None, name: str, channels: int, notes: list[str]
) -> GridOptions:
    """The grid options for one layer: its top channels by the saved data-set statistic."""
    if saved is None:
        return grid
    values = saved.values(name, grid.order)
    if values is None:
        notes.append(f"not in {saved.path.name}: top channels ranked on this input")
        return grid
    if len(values) != channels:
        raise OptionError(
            f"'{name}' has {channels} channels but the statistics file '{saved.path}' lists "
            f"{len(values)}; use a file made with the same model (featuremaps stats)"
        )
    key = np.nan_to_num(values, nan=-np.inf)
    top = np.argsort(-key, kind="stable")[: grid.max_channels]
    note = f"top {len(top)} by {grid.order} over the data set in {saved.path.name}"
    return replace(grid, channels=tuple(int(c) for c in top), channels_note=note)
