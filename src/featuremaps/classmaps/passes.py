"""The forward and backward passes behind class maps: which calls, their values, their gradients.

Stage three of the flow (input → model → **capture** → ...), for class maps. The activations are
the values a call returned, copied inside the forward hook (the capture's rule), so an in-place
operation later in the model (``ReLU(inplace=True)``) cannot change them. The model then goes on
with a copy of that output, and the gradient of the target's score is taken with
``torch.autograd.grad`` with respect to the tensor the call returned: it is the gradient of that
very value, nothing accumulates in a parameter's ``.grad``, no ``requires_grad`` flag is set on
the model's parameters, and the hooks are removed afterwards. A call whose output does not
require a gradient (a frozen model) is given one as a new leaf. The model runs in eval mode and
its modes are restored, as for :func:`featuremaps.capture`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featuremaps._errors import CaptureError, LayerError
from featuremaps.capture import capture
from featuremaps.hooks import HookedOutput, run_hooked
from featuremaps.layouts import Layout
from featuremaps.layouts.arrays import channels_first, spatial_maps
from featuremaps.layouts.registry import (
    CHANNEL_GRID,
    SEQUENCE_MAP,
    SIGNAL_MAP,
    TOKEN_GRID,
    VOLUME_MONTAGE,
)
from featuremaps.naming import layers_hint
from featuremaps.selection import select_modules

__all__ = ["Call", "as_cells", "find_calls", "layer_gradients", "masked_scores"]

_CELLS = (CHANNEL_GRID, TOKEN_GRID, SIGNAL_MAP, VOLUME_MONTAGE, SEQUENCE_MAP)


@dataclass(frozen=True)
class Call:
    """One output of one call of a module, a class map's layer: ``name`` is its record name."""

    name: str
    path: str
    call: int
    key: str | None
    layout: Layout

    @property
    def cells_note(self) -> str:
        """What the map's cells are, in words (prefix tokens excluded, channels last)."""
        if self.layout.drawn_as == TOKEN_GRID and self.layout.grid is not None:
            h, w = self.layout.grid
            prefix = self.layout.prefix
            tokens = (
                f"; {prefix} prefix token{'s' if prefix != 1 else ''} excluded" if prefix else ""
            )
            return f"tokens on their {h}x{w} patch grid{tokens}"
        if self.layout.channel_axis not in (None, 1):
            return f"channels last ({self.layout.name})"
        return ""


def as_cells(layout: Layout, tensor: torch.Tensor) -> torch.Tensor | None:
    """The tensor as ``(N, C, *cells)``: channels first, tokens on their patch grid without the
    prefix tokens; by views only, so gradients map the same way. ``None`` without cells."""
    if layout.drawn_as not in _CELLS:
        return None
    grid = spatial_maps(layout, tensor)
    if grid is not None:
        return grid
    if layout.drawn_as == TOKEN_GRID:
        return None
    found = channels_first(layout, tensor)
    return found if found is not None and found.dim() >= 3 else None


def find_calls(
    model: nn.Module,
    inputs: Any,
    layers: str | Sequence[str] | None,
    label: str | None,
) -> tuple[list[Call], dict[str, nn.Module]]:
    """The selected calls that have cells, with their layouts (by a capture that keeps no values).

    ``layers=None`` picks the last call, in execution order, whose output has more than one
    cell (for a classifier, the last convolutional or token map before pooling).

    Raises:
        LayerError: a selected layer has no cells (a vector, attention, states), or nothing does.
    """
    selected_layers = layers if layers is not None else None
    found: list[tuple[str, str, int, str | None, Layout, tuple[int, ...]]] = []

    def keep(record: Any) -> None:
        found.append(
            (
                record.name,
                record.module,
                record.call,
                record.output_key,
                record.layout_info,
                tuple(record.tensor.shape),
            )
        )

    capture(
        model,
        inputs,
        layers=selected_layers,
        containers=layers is None,
        on_record=keep,
        copy=False,
        model_label=label,
    )
    calls: list[Call] = []
    refused: list[str] = []
    for name, path, call, key, layout, shape in found:
        cells = as_cells(layout, torch.empty(shape, device="meta"))
        if cells is None or (layers is None and cells[0, 0].numel() < 2):
            refused.append(f"'{name}' ({layout.name})")
            continue
        calls.append(Call(name, path, call, key, layout))
    if layers is None:
        if not calls:
            raise LayerError(
                f"no layer of {label or type(model).__name__} has an output with cells (a grid, "
                f"a signal or a volume) to place a class map on; name one with --layers. Run "
                f"{layers_hint(label)} to list the names."
            )
        calls = calls[-1:]
    elif refused:
        raise LayerError(
            f"{', '.join(refused[:3])} ha{'s' if len(refused) == 1 else 've'} no cells (a grid, "
            "a signal or a volume) to place a class map on; choose a layer with a map, e.g. the "
            f"last convolutional block. Run {layers_hint(label)} to list the names."
        )
    paths = [c.path for c in calls]
    modules = select_modules(model, tuple(paths) if paths != [""] else None, None, True, label)
    return calls, {p: m for p, m in modules.items() if p in paths}


def layer_gradients(
    model: nn.Module,
    inputs: Any,
    calls: Sequence[Call],
    modules: Mapping[str, nn.Module],
    score: Callable[[Any], torch.Tensor],
) -> tuple[Any, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """One forward and one backward pass: per call, its output and the gradient of
    ``score(model output).sum()`` with respect to it (see the module docstring).

    ``score`` returns one score per input, ``(N,)``; inputs are independent in eval mode, so one
    backward pass gives each input the gradient of its own target.

    Returns:
        The model's output (detached) and ``{name: (activations, gradients)}``, both as the
        layer returned them (same shape).
    """
    wanted = {(c.path, c.call, c.key): c.name for c in calls}
    graph: dict[str, torch.Tensor] = {}
    values: dict[str, torch.Tensor] = {}

    def sink(out: HookedOutput) -> torch.Tensor | None:
        name = wanted.get((out.path, out.call, out.key))
        if name is None:
            return None
        tensor = out.tensor
        if not tensor.is_floating_point():
            raise CaptureError(
                f"'{name}' returned {tensor.dtype} values, which have no gradient; choose a "
                "layer with floating-point output"
            )
        if not tensor.requires_grad:  # nothing before it needs a gradient: a new leaf
            tensor = tensor.detach().requires_grad_(True)
        graph[name] = tensor
        values[name] = tensor.detach().clone()
        return tensor.clone()  # the model goes on with a copy; `tensor` keeps its value

    output, _ = run_hooked(model, inputs, modules, sink, grad=True)
    missing = [c.name for c in calls if c.name not in graph]
    if missing:
        raise LayerError(f"'{missing[0]}' did not run in the gradient pass; choose another layer")
    total = score(output).sum()
    names = list(graph)
    try:
        grads = torch.autograd.grad(total, [graph[n] for n in names], allow_unused=True)
    except RuntimeError as exc:
        raise CaptureError(f"the backward pass from the target failed: {exc}") from exc
    result: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, grad in zip(names, grads, strict=True):
        if grad is None:
            raise LayerError(
                f"the target's score does not depend on '{name}' (no gradient reaches it); "
                "choose a layer on the path to the explained output"
            )
        result[name] = (values[name], grad.detach())
    return _detached(output), result


def _detached(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.detach()
    return output


def masked_scores(
    model: nn.Module,
    sample: torch.Tensor,
    cells: torch.Tensor,
    score: Callable[[Any], torch.Tensor],
    batch: int = 16,
) -> torch.Tensor:
    """Score-CAM's channel scores for one input: ``score`` of the model on the input multiplied
    by each channel's map, upsampled to the input's size (linear interpolation, corners not
    aligned) and scaled to [0, 1] (a constant channel gives a zero mask).

    ``sample`` is one input ``(1, C_in, *size)``; ``cells`` is ``(C, *cells)`` with as many
    cell axes as the input has size axes. Returns ``(C,)`` float64.
    """
    if sample.dim() - 2 != cells.dim() - 1 or cells.dim() - 1 not in (1, 2, 3):
        raise LayerError(
            f"scorecam masks the input with the layer's maps, so they need as many axes: the "
            f"input is {tuple(sample.shape)}, the maps {tuple(cells.shape[1:])}; use another method"
        )
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[cells.dim() - 1]
    scores = []
    with torch.no_grad():
        for start in range(0, cells.shape[0], batch):
            part = cells[start : start + batch].to(sample.dtype).unsqueeze(1)
            up = F.interpolate(part, size=tuple(sample.shape[2:]), mode=mode, align_corners=False)
            flat = up.reshape(up.shape[0], -1)
            low = flat.min(1, keepdim=True).values
            span = flat.max(1, keepdim=True).values - low
            scaled = torch.where(span > 0, (flat - low) / span.clamp_min(1e-30), 0.0)
            masks = scaled.reshape(up.shape)
            masked = sample * masks
            scores.append(score(model(masked)).detach().to(torch.float64))
    return torch.cat(scores)
