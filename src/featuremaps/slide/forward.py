"""The model side of a slide run: which layers, their geometry and halos, whether the model is
local (so tiles stitch exactly), and one forward pass per window.

Between the model and the tiling plan (model → **forward** → plan → stitching). Geometry comes
from :mod:`featuremaps.geometry` (analytic, empirical where the analytic chain breaks); the
forward passes go through :func:`featuremaps.capture.capture`, stopped as soon as the last
wanted layer has given its output.

Locality is measured, not assumed, with two probes on a random input before the run:

* **far corner**: a patch in the bottom-right corner is changed; cells whose receptive field
  does not reach that patch must not move at all (squeeze-excitation, Group/InstanceNorm over
  space and global attention move them; 7e-7 is enough to tell);
* **stitching**: the input is cut into small tiles by the very plan used for the slide, and the
  stitched map must equal the whole-input map (max abs error <= 1e-4 of its max). This catches
  what the first probe cannot: size-dependent padding, a geometry the analytic pass got wrong.

A model that fails either runs in a labelled approximate mode.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from featuremaps._errors import CaptureError, LayerError
from featuremaps.capture import LayerRecord, capture
from featuremaps.devices import Placement
from featuremaps.geometry import MapGeometry, compute_geometry
from featuremaps.naming import layers_hint
from featuremaps.selection import select_modules
from featuremaps.slide.plan import Halo, axis_halo, make_plan, placement

__all__ = [
    "EXACT_TOLERANCE",
    "Locality",
    "SlideLayer",
    "TileForward",
    "check_locality",
    "resolve_layers",
    "whole_cells",
]

#: Stitched maps must equal a whole-input forward to this fraction of the map's largest value.
EXACT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class SlideLayer:
    """A layer to map over a slide: its record name, channels, geometry and the halo it needs."""

    name: str
    channels: int
    geometry: MapGeometry
    halo: tuple[Halo, Halo]


class _Enough(CaptureError):
    """Raised from inside the forward pass once every wanted layer has been seen."""


class TileForward:
    """Runs the model on one window and returns the wanted layers' maps as ``(C, h, w)``
    float32 tensors on the CPU, stopping the forward pass after the last of them.

    With a ``placement`` the window goes to its device and the pass runs under its autocast;
    without one the window is used as given (the model's own device and precision). A pass on
    the ``meta`` device (shapes only) keeps its maps there.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        label: str | None,
        placement: Placement | None = None,
    ) -> None:
        self.model = model
        self.layers = tuple(layers)
        self.label = label
        self.placement = placement
        self._modules = sorted({name.partition("#")[0] for name in self.layers})

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        got: dict[str, torch.Tensor] = {}

        def keep(record: LayerRecord) -> None:
            if record.name in self.layers:
                value = record.tensor[0].detach()
                host = value.device if value.is_meta else torch.device("cpu")
                got[record.name] = value.to(host, torch.float32, copy=True)
                if len(got) == len(self.layers):
                    raise _Enough("done")

        place = self.placement
        if place is not None:
            x = place.inputs(x)
        with (
            contextlib.suppress(_Enough),
            place.autocast() if place is not None else contextlib.nullcontext(),
        ):
            capture(
                self.model,
                x,
                layers=self._modules,
                containers=True,
                on_record=keep,
                copy=False,
                model_label=self.label,
            )
        missing = [name for name in self.layers if name not in got]
        if missing:
            raise LayerError(
                f"layer(s) {', '.join(missing)} gave no 4-D output on an input of shape "
                f"{tuple(x.shape)}; pick layers from {layers_hint(self.label)}"
            )
        return got


def _halo(geometry: MapGeometry) -> tuple[Halo, Halo]:
    return axis_halo(geometry.y, geometry.name), axis_halo(geometry.x, geometry.name)


def _max_halo(halos: Sequence[tuple[Halo, Halo]]) -> tuple[Halo, Halo]:
    return (
        Halo(max(h[0].before for h in halos), max(h[0].after for h in halos)),
        Halo(max(h[1].before for h in halos), max(h[1].after for h in halos)),
    )


def resolve_layers(
    model: nn.Module, names: Sequence[str], label: str | None, probe: torch.Tensor
) -> list[SlideLayer]:
    """The layers named ``names`` (record names such as ``layer2`` or ``layer1.0.relu#2``) with
    their geometry and halos, measured on ``probe`` (a ``(1, C, H, W)`` input).

    A container (``layer2``) is placed like the last leaf that finished inside it (its output);
    each layer's halo is the largest any layer computed before it needs, so that a branch that
    merges functionally (``out += identity``) is covered too.
    """
    order: list[tuple[str, str, tuple[int, ...]]] = []
    capture(
        model,
        probe,
        containers=True,
        on_record=lambda r: order.append((r.name, r.module, r.shape)),
        copy=False,
        model_label=label,
    )
    known = {name for name, _, _ in order}
    analytic = compute_geometry(model, probe, method="analytic")
    result = []
    for name in names:
        if name not in known:
            # Let the selection explain an unknown name with its closest matches.
            select_modules(model, (name.partition("#")[0],), None, True, label)
            raise LayerError(
                f"'{name}' gave no output on a {tuple(probe.shape)} input; pick a record name "
                f"from {layers_hint(label)}"
            )
        position = next(i for i, (n, _, _) in enumerate(order) if n == name)
        shape = order[position][2]
        if len(shape) != 4:
            raise LayerError(
                f"'{name}' gives an output of shape {shape}; a slide map needs a (N, C, H, W) "
                "layer such as a convolution, a block or a stage"
            )
        module = order[position][1]
        geometry = analytic.get(name)
        if geometry is None:
            inner = [
                analytic[n]
                for n, m, _ in order[:position]
                if n in analytic and (m.startswith(module + ".") or not module)
            ]
            if inner and inner[-1].shape == shape[2:]:
                last = inner[-1]
                geometry = MapGeometry(name, last.y, last.x, last.shape, last.method)
        if geometry is None:
            modules = select_modules(model, (module,), None, True, label)
            geometry = compute_geometry(model, probe, layers=modules, method="empirical").get(name)
        if geometry is None:
            raise LayerError(
                f"the cells of '{name}' cannot be placed on the input (no receptive field "
                "found); pick a convolution or pooling layer"
            )
        before = [_halo(analytic[n]) for n, _, _ in order[: position + 1] if n in analytic]
        result.append(
            SlideLayer(name, int(shape[1]), geometry, _max_halo([*before, _halo(geometry)]))
        )
    return result


def whole_cells(
    model: nn.Module,
    layers: Sequence[str],
    size: tuple[int, int],
    channels: int,
    label: str | None,
) -> dict[str, tuple[int, int]]:
    """Cell counts ``(rows, cols)`` of each layer for a whole input of ``size`` pixels, from a
    forward pass on the ``meta`` device (shapes only, no memory for values)."""
    meta = copy.deepcopy(model).to("meta")
    x = torch.empty((1, channels, *size), device="meta")
    maps = TileForward(meta, layers, label)(x)
    return {name: (int(t.shape[1]), int(t.shape[2])) for name, t in maps.items()}


@dataclass(frozen=True)
class Locality:
    """What the probes found: ``exact`` is True when tiles stitch exactly."""

    exact: bool
    corner_change: float
    stitch_error: float
    reason: str

    def to_json(self) -> dict[str, object]:
        return {
            "exact": self.exact,
            "far_corner_change": self.corner_change,
            "stitch_error": self.stitch_error,
            "reason": self.reason,
        }


def _far_corner_change(
    forward: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    layers: Sequence[SlideLayer],
    x: torch.Tensor,
) -> float:
    """Largest change, relative to the map maximum, of cells whose receptive field does not
    reach a changed patch in the bottom-right corner."""
    h, w = x.shape[2], x.shape[3]
    patch = 8
    y = x.clone()
    y[:, :, h - patch :, w - patch :] = -y[:, :, h - patch :, w - patch :] + 1.0
    before, after = forward(x), forward(y)
    worst = 0.0
    for layer in layers:
        a, b = before[layer.name], after[layer.name]
        g = layer.geometry
        rows = [
            j for j in range(a.shape[1]) if g.y.center(j) + (g.y.size - 1) / 2 < h - patch - 0.5
        ]
        cols = [
            j for j in range(a.shape[2]) if g.x.center(j) + (g.x.size - 1) / 2 < w - patch - 0.5
        ]
        if not rows or not cols:
            continue
        far = (slice(None), slice(0, rows[-1] + 1), slice(0, cols[-1] + 1))
        scale = float(a.abs().max()) or 1.0
        worst = max(worst, float((a[far] - b[far]).abs().max()) / scale)
    return worst


def stitch(
    forward: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    layers: Sequence[SlideLayer],
    x: torch.Tensor,
    core: int,
    cells: dict[str, tuple[int, int]],
) -> dict[str, torch.Tensor]:
    """Maps of ``x`` computed tile by tile with the slide plan (cores of ``core`` pixels)."""
    placements = [placement(layer.geometry, cells[layer.name]) for layer in layers]
    plan = make_plan((x.shape[2], x.shape[3]), placements, [layer.halo for layer in layers], core)
    out = {
        layer.name: torch.full((layer.channels, *cells[layer.name]), math.nan) for layer in layers
    }
    for tile in plan.tiles():
        (y0, y1), (x0, x1) = tile.window
        maps = forward(x[:, :, y0:y1, x0:x1])
        for where in placements:
            sy, sx, r, c = plan.core_cells(tile, where)
            core_maps = maps[where.name][:, sy, sx]
            out[where.name][:, r : r + core_maps.shape[1], c : c + core_maps.shape[2]] = core_maps
    return out


def check_locality(
    forward: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    layers: Sequence[SlideLayer],
    channels: int,
    step: tuple[int, int],
    seed: int = 0,
) -> Locality:
    """Run both probes (see the module docstring) on a random input just big enough."""
    halo = _max_halo([layer.halo for layer in layers])
    reach = max(max(layer.geometry.y.size, layer.geometry.x.size) for layer in layers)
    sy, sx = step
    generator = torch.Generator().manual_seed(seed)
    # Far corner: big enough that the first cells' receptive fields stay clear of the corner.
    h, w = (s * math.ceil((reach + 2 * s + 8) / s) + s // 2 for s in step)
    probe = torch.randn((1, channels, h, w), generator=generator)
    corner = _far_corner_change(forward, layers, probe)
    # Stitching: three small cores per axis (the middle one with both halos inside the input,
    # and a ragged end).
    core = max(sy, sx)
    h = halo[0].before + 3 * core + halo[0].after + sy // 2
    w = halo[1].before + 3 * core + halo[1].after + sx // 2
    x = torch.randn((1, channels, h, w), generator=generator)
    full = forward(x)
    cells = {name: (int(t.shape[1]), int(t.shape[2])) for name, t in full.items()}
    stitched = stitch(forward, layers, x, core, cells)
    error = 0.0
    for layer in layers:
        a, b = full[layer.name], stitched[layer.name]
        scale = float(a.abs().max()) or 1.0
        diff = (a - b).abs()
        error = max(error, float(torch.nan_to_num(diff, nan=math.inf).max()) / scale)
    if corner > 0:
        reason = (
            f"changing a far corner of the input moved cells it cannot reach by {corner:.2g} "
            "(relative to the map maximum): the model mixes information across the whole input "
            "(squeeze-excitation, normalisation over space, global attention), so tiles are "
            "approximate"
        )
    elif error > EXACT_TOLERANCE:
        reason = (
            f"tiles stitched with the planned halos differ from a whole-input pass by "
            f"{error:.2g} of the map maximum (size-dependent padding or a receptive field wider "
            "than measured), so tiles are approximate"
        )
    else:
        reason = "local: far-corner change 0 and stitched tiles equal a whole-input pass"
    return Locality(corner == 0 and error <= EXACT_TOLERANCE, corner, error, reason)


def to_input(
    pixels: np.ndarray, mean: Sequence[float] | None, std: Sequence[float] | None
) -> torch.Tensor:
    """``(h, w, 3)`` uint8 pixels as the model's ``(1, 3, h, w)`` float input ([0, 1], then
    normalised when ``mean``/``std`` are given)."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).unsqueeze(0)
    x = x.to(torch.float32).div_(255.0)
    if mean is not None and std is not None:
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        x = x.sub_(m).div_(s)
    return x
