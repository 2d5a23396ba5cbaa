"""Watch feature maps while a model trains: a look at a fixed probe batch every N steps.

Beside the ``run`` command in the flow (model → capture → stats → render), for a model that is
still training: :func:`watch` returns a :class:`Watcher`; its :meth:`Watcher.step` captures the
selected layers on the probe batch when the step is due (every ``every`` steps) and otherwise
does nothing at all. A look runs in eval mode under ``no_grad`` through
:func:`featuremaps.capture.capture`, which attaches its hooks for that one forward pass, removes
them and restores every module's train/eval mode, so between looks no hook is registered and the
training run is untouched. Each look draws the pictures ``run`` draws
(:func:`featuremaps.commands.run_drawing.draw_record`, same legends and layouts), the exact
histogram of each layer's values on the probe batch (:class:`featuremaps.histograms.
RunningHistogram`) and its channel statistics (:func:`featuremaps.stats.channel_stats`), as a
plain :class:`Look`; writers (:mod:`featuremaps.watch_writers`) turn looks into TensorBoard
events or files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from featuremaps import layouts
from featuremaps._errors import OptionError
from featuremaps.capture import LayerRecord, capture
from featuremaps.commands.run_drawing import SignalContext, draw_record, skip_reason
from featuremaps.geometry import GeometryTracker
from featuremaps.histograms import Histogram, RunningHistogram
from featuremaps.render import GridLabel, GridOptions
from featuremaps.render.signal import Placement as AxisPlacement
from featuremaps.selection import select_modules
from featuremaps.stats import ChannelStats, channel_stats

__all__ = ["HISTOGRAM_BINS", "LayerLook", "Look", "LookWriter", "Watcher", "layer_look", "watch"]

#: The most bins of each layer's histogram (bins are exact; see RunningHistogram).
HISTOGRAM_BINS = 64


@dataclass(frozen=True, eq=False)
class LayerLook:
    """One layer at one look: its picture (as ``run`` draws it for ``sample``), the exact
    histogram of its finite values over the whole probe batch and its channel statistics.

    ``dead_fraction`` is the fraction of channels whose every value over the probe batch is
    exactly 0 (a ReLU that never fires); ``mean_abs`` the mean of |x| over its finite values.
    ``picture`` is None (and ``skipped`` says why) for a layer that is not drawn. ``moments``:
    the finite values' min, max, sum and sum of squares (NaN, NaN, 0, 0 when there are none).
    """

    name: str
    module_type: str
    shape: tuple[int, ...]
    picture: Any
    skipped: str | None
    warnings: tuple[str, ...]
    stats: ChannelStats
    histogram: Histogram
    dead_fraction: float
    mean_abs: float
    moments: tuple[float, float, float, float]  # min, max, sum, sum of squares (float64)

    def __repr__(self) -> str:
        return (
            f"LayerLook({self.name!r}, {self.module_type}, shape {self.shape}, dead "
            f"{self.dead_fraction:.0%}, mean |x| {self.mean_abs:.4g})"
        )


@dataclass(frozen=True, eq=False)
class Look:
    """Every selected layer at one training step, in execution order."""

    step: int
    layers: tuple[LayerLook, ...]

    def __repr__(self) -> str:
        return f"Look(step {self.step}, {len(self.layers)} layers)"

    def get(self, name: str) -> LayerLook:
        """The layer called ``name`` (a record name, as :func:`featuremaps.capture` gives)."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        names = ", ".join(layer.name for layer in self.layers)
        raise OptionError(f"no layer '{name}' in this look; it has {names}")


class LookWriter(Protocol):
    """Where looks go: :class:`~featuremaps.watch_writers.TensorBoardWriter`,
    :class:`~featuremaps.watch_writers.FolderWriter`, or anything with these two methods."""

    def write(self, look: Look) -> None: ...

    def close(self) -> None: ...


def _channels_by_batch(record: LayerRecord) -> np.ndarray | None:
    """The layer's values as (C, values) over every sample of the probe batch, for the
    statistics per channel; None when its layout has no channels to measure."""
    layout = record.layout_info
    axis = layout.batch_axis
    samples = record.shape[axis] if axis is not None else 1
    parts = []
    for sample in range(samples):
        if skip_reason(record, sample) is not None:
            return None
        if layout.drawn_as == layouts.BAR_STRIP:
            vector = layouts.drawable_maps(layout, record.tensor, sample)
            parts.append(np.asarray(vector, dtype=np.float32).reshape(-1, 1))
        else:
            maps = record.maps(sample)
            parts.append(maps.reshape(maps.shape[0], -1))
    return np.concatenate(parts, axis=1)


def layer_look(
    record: LayerRecord,
    sample: int,
    grid: GridOptions,
    stamp: str | None = None,
    context: SignalContext | None = None,
) -> LayerLook:
    """Measure and draw one captured record (pure: the record is not changed); ``context``:
    the input signal and the record's place on its axis, for a signal drawn as ``run`` does."""
    values = record.tensor.detach()
    values = values.abs() if values.is_complex() else values  # complex: histogram of |x|
    flat = values.float().cpu().numpy().ravel()
    mask = np.isfinite(flat)
    finite = flat if mask.all() else flat[mask]
    histogram = RunningHistogram(bins=HISTOGRAM_BINS)
    if finite.size:
        histogram.update(finite)
    counted = histogram.result() if finite.size else Histogram(np.zeros(1), np.zeros(0, int), 0)
    counted = Histogram(counted.edges, counted.counts, int(flat.size - finite.size))
    nan = float("nan")
    if finite.size:
        wide = finite.astype(np.float64)  # sums in float64: float32 sums drift on large layers
        mean_abs = float(np.abs(wide).sum() / finite.size)
        moments = (float(finite.min()), float(finite.max()), float(wide.sum()), float(wide @ wide))
    else:
        mean_abs, moments = nan, (nan, nan, 0.0, 0.0)

    by_channel = _channels_by_batch(record)
    if by_channel is None:
        by_channel = finite.reshape(1, -1) if finite.size else np.zeros((1, 1), np.float32)
    stats = channel_stats(by_channel)
    dead = (stats.finite > 0) & (stats.zeros == 1.0)
    dead_fraction = float(dead.mean()) if len(dead) else 0.0

    reason = skip_reason(record, sample)
    picture = None
    warnings: tuple[str, ...] = ()
    if reason is None:
        maps = None if record.layout_info.drawn_as == layouts.BAR_STRIP else record.maps(sample)
        label = GridLabel(record.name, record.module_type, record.shape, stamp)
        drawing = draw_record(record, sample, maps, grid, label, context)
        picture, warnings = drawing.picture, tuple(drawing.warnings)
    return LayerLook(
        record.name,
        record.module_type,
        record.shape,
        picture,
        reason,
        warnings,
        stats,
        counted,
        dead_fraction,
        mean_abs,
        moments,
    )


class Watcher:
    """The handle :func:`watch` returns: call :meth:`step` once per training step.

    Also a context manager; leaving it closes the writer. Between looks it holds only the probe
    batch and its options: no hook, no reference to any activation.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        *,
        layers: str | Sequence[str] | None,
        types: str | Sequence[str] | None,
        every: int,
        writer: LookWriter | None,
        grid: GridOptions,
        sample: int,
        first: bool,
    ) -> None:
        self.model = model
        self.inputs = inputs
        self.layers = layers
        self.types = types
        self.every = every
        self.writer = writer
        self.grid = grid
        self.sample = sample
        self.first = first
        self.looks = 0
        self.last: Look | None = None

    def __repr__(self) -> str:
        return f"Watcher(every {self.every} steps, {self.looks} looks so far)"

    def due(self, step: int) -> bool:
        """Whether ``step`` gets a look: a multiple of ``every`` (step 0 only with ``first``)."""
        return step % self.every == 0 and (step > 0 or self.first)

    def step(self, step: int) -> Look | None:
        """Look at the model if ``step`` is due (see :meth:`due`) and return the look; else do
        nothing and return None."""
        if not self.due(step):
            return None
        return self.look(step)

    def look(self, step: int) -> Look:
        """Capture, measure and draw the selected layers on the probe batch now, in eval mode
        and without gradients (modes restored), and hand the look to the writer."""
        device = _device_of(self.model)
        probe = self.inputs.to(device) if device is not None else self.inputs
        found: list[LayerLook] = []
        # A signal batch (N, C, L): its pictures show the input and each cell's place on the
        # time axis, as run's do, from geometry followed through this same forward pass.
        signal = probe.dim() == 3 and not isinstance(self.model, torch.jit.ScriptModule)
        tracker = None
        if signal:
            every = select_modules(self.model, None, None, True, None)
            tracker = GeometryTracker(probe, every, self.model)
        given = probe[self.sample].detach().float().cpu().numpy() if signal else None

        def consume(record: LayerRecord) -> None:
            context = None
            if record.layout_info.drawn_as == layouts.SIGNAL_MAP:
                placed = tracker.found.get(record.name) if tracker is not None else None
                axis = getattr(placed, "x", None)
                on_axis = (
                    AxisPlacement(axis.stride, axis.offset, axis.size) if axis is not None else None
                )
                context = SignalContext(given, on_axis)
            found.append(layer_look(record, self.sample, self.grid, context=context))

        # capture() attaches its hooks for this forward pass only and restores train/eval modes
        # (so does the tracker); copy=False: each record is consumed before the pass goes on.
        with tracker or contextlib.nullcontext():
            capture(
                self.model,
                probe,
                layers=self.layers,
                types=self.types,
                on_record=consume,
                copy=False,
            )
        look = Look(int(step), tuple(found))
        self.looks += 1
        self.last = look
        if self.writer is not None:
            self.writer.write(look)
        return look

    def close(self) -> None:
        """Close the writer (flushes TensorBoard event files)."""
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _device_of(model: nn.Module) -> torch.device | None:
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return None


def watch(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    layers: str | Sequence[str] | None = None,
    types: str | Sequence[str] | None = None,
    every: int = 100,
    writer: LookWriter | str | Path | Any | None = None,
    grid: GridOptions | None = None,
    sample: int = 0,
    first: bool = True,
) -> Watcher:
    """Watch ``model``'s feature maps on the fixed probe batch ``inputs`` every ``every`` steps.

    Args:
        model: the model being trained (it is never changed: a look runs in eval mode under
            ``no_grad`` and restores each module's mode).
        inputs: the probe batch, a tensor (moved to the model's device at each look).
        layers, types: which layers, as in :func:`featuremaps.capture` (default every leaf).
        every: look at steps that are multiples of this (at least 1).
        writer: where looks go: a ``torch.utils.tensorboard.SummaryWriter`` or a folder path
            (TensorBoard event files, needs the ``tensorboard`` extra), a
            :class:`~featuremaps.watch_writers.FolderWriter` (PNG + JSON per look), any
            :class:`LookWriter`, a list of those (each look goes to all), or None (looks are
            only returned).
        grid: how to draw, as for ``run`` (default :class:`GridOptions`).
        sample: which sample of the probe batch is drawn (statistics use the whole batch).
        first: also look at step 0, before training changed anything.

    Returns:
        A :class:`Watcher`; call ``watcher.step(step)`` after each training step.
    """
    from featuremaps.watch_writers import resolve_writer

    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise OptionError(f"every={every!r} is not a step count; expected an integer of 1 or more")
    if not isinstance(inputs, torch.Tensor):
        raise OptionError(
            f"watch() got a probe batch of type {type(inputs).__name__}; expected a tensor "
            "(a fixed batch, e.g. the first batch of your validation set)"
        )
    if inputs.dim() > 0 and not 0 <= sample < len(inputs):
        raise OptionError(
            f"sample {sample} asked for, but the probe batch holds {len(inputs)}; choose a "
            f"sample from 0 to {len(inputs) - 1}"
        )
    return Watcher(
        model,
        inputs.detach(),
        layers=layers,
        types=types,
        every=every,
        writer=resolve_writer(writer),
        grid=grid or GridOptions(),
        sample=sample,
        first=first,
    )
