"""Geometry: where each cell of a captured 2-D map (or 1-D signal) sits in the input.

A transform stage beside statistics (input → model → capture → **geometry** → render). For a map
with cumulative stride ``S``, first-cell centre ``O`` and receptive-field size ``R`` (per axis, in
input pixels, pixel centres at integer coordinates), cell ``j`` is centred on ``O + j·S`` and sees
input pixels ``O + j·S ± (R − 1)/2``. For a single ``Conv2d(k, stride s, padding p)`` that is
``S = s``, ``O = (k − 1)/2 − p``, ``R = k`` — for ResNets the centre of the top-left cell is *not*
the centre of the ``S × S`` block, which is why stretching a map to the image size misplaces it.

Two methods, and each result says which was used:

* ``analytic``: the model runs once with hooks; every convolution and pooling layer composes its
  kernel, stride, padding and dilation onto the geometry of the tensor it received (tensors are
  followed through in-place operations by their storage). Element-wise layers keep the geometry.
* ``empirical``: where the analytic path is broken (an op it does not know, a tensor made by
  functional code), the gradient of two neighbouring output cells with respect to the input gives
  the centres (hence stride and offset) and the extent of the non-zero gradient gives the
  receptive field. This is the *effective* field: cells whose gradient is exactly zero (a ReLU
  that is off, the losing inputs of a max-pool) are not counted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from featuremaps._errors import OptionError
from featuremaps.cells import nearest_cell
from featuremaps.hooks import HookedOutput, run_hooked
from featuremaps.naming import record_name

__all__ = ["AxisGeometry", "GeometryTracker", "LineGeometry", "MapGeometry", "compute_geometry"]

# Layers whose output cell j depends on exactly the same input cells as its input cell j.
_ELEMENTWISE = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.GroupNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Identity,
)
# Sliding-window layers by their number of spatial axes.
_WINDOWS: dict[int, tuple[type[nn.Module], ...]] = {
    1: (nn.Conv1d, nn.MaxPool1d, nn.AvgPool1d),
    2: (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d),
}


@dataclass(frozen=True)
class AxisGeometry:
    """Geometry along one axis: cell ``j`` is centred on ``offset + j * stride``."""

    stride: float
    offset: float
    size: float

    def compose(self, kernel: int, stride: int, padding: int, dilation: int) -> AxisGeometry:
        """The geometry after a sliding window applied to a map with this geometry."""
        span = dilation * (kernel - 1)
        return AxisGeometry(
            stride=self.stride * stride,
            offset=self.offset + (span / 2 - padding) * self.stride,
            size=self.size + span * self.stride,
        )

    def center(self, j: float) -> float:
        """Input coordinate of the centre of cell ``j``."""
        return self.offset + j * self.stride

    def cells_seeing(self, coordinate: float, cells: int) -> range:
        """Indices of the cells (of ``cells``) whose receptive field contains ``coordinate``."""
        half = (self.size - 1) / 2
        lo = math.ceil((coordinate - half - self.offset) / self.stride - 1e-9)
        hi = math.floor((coordinate + half - self.offset) / self.stride + 1e-9)
        return range(max(lo, 0), min(hi, cells - 1) + 1)


IDENTITY = AxisGeometry(1.0, 0.0, 1.0)


@dataclass(frozen=True)
class MapGeometry:
    """Where the cells of one record's (N, C, H, W) output sit in the (H_in, W_in) input."""

    name: str
    y: AxisGeometry
    x: AxisGeometry
    shape: tuple[int, int]
    method: str

    def cell_center(self, row: int, col: int) -> tuple[float, float]:
        """Input ``(y, x)`` of the centre of cell ``(row, col)``."""
        return self.y.center(row), self.x.center(col)

    def cell_region(self, row: int, col: int) -> tuple[float, float, float, float]:
        """The receptive field of cell ``(row, col)`` as ``(y0, x0, y1, x1)``, inclusive, in
        input pixel coordinates; it may reach past the image border (padding)."""
        cy, cx = self.cell_center(row, col)
        hy, hx = (self.y.size - 1) / 2, (self.x.size - 1) / 2
        return cy - hy, cx - hx, cy + hy, cx + hx

    def cells_seeing(self, y: float, x: float) -> tuple[range, range]:
        """Row and column ranges of the cells whose receptive field contains input ``(y, x)``."""
        return self.y.cells_seeing(y, self.shape[0]), self.x.cells_seeing(x, self.shape[1])

    def nearest_cell(self, y: float, x: float) -> tuple[int, int]:
        """The cell whose centre is nearest input ``(y, x)`` (clamped to the map), by the same
        rule as the overlay (:mod:`featuremaps.cells`)."""
        return (
            nearest_cell(y, self.y.stride, self.y.offset, self.shape[0]),
            nearest_cell(x, self.x.stride, self.x.offset, self.shape[1]),
        )

    def clipped_region(
        self, row: int, col: int, height: int, width: int
    ) -> tuple[float, float, float, float]:
        """:meth:`cell_region` limited to an input of ``height`` x ``width`` pixels."""
        y0, x0, y1, x1 = self.cell_region(row, col)
        return max(y0, 0), max(x0, 0), min(y1, height - 1), min(x1, width - 1)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able description (for manifests)."""
        return {
            "method": self.method,
            "stride": [self.y.stride, self.x.stride],
            "offset": [self.y.offset, self.x.offset],
            "receptive_field": [self.y.size, self.x.size],
        }


@dataclass(frozen=True)
class LineGeometry:
    """Where the cells of one record's (N, C, L) output sit along the (L_in,) input signal."""

    name: str
    x: AxisGeometry
    length: int
    method: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-able description (for manifests), one value per axis like :class:`MapGeometry`."""
        return {
            "method": self.method,
            "stride": [self.x.stride],
            "offset": [self.x.offset],
            "receptive_field": [self.x.size],
        }


def _axes(value: Any, n: int) -> tuple[int, ...]:
    """One int per axis of a layer's ``kernel_size``-like argument (an int or a tuple)."""
    if isinstance(value, (tuple, list)):
        return tuple(int(value[min(i, len(value) - 1)]) for i in range(n))
    return (int(value),) * n


def _window(module: nn.Module, n: int = 2) -> tuple[tuple[int, ...], ...] | None:
    """(kernel, stride, padding, dilation) per axis of a sliding-window layer with ``n`` spatial
    axes, else None."""
    if isinstance(module, _WINDOWS.get(n, ())):
        padding = getattr(module, "padding", 0)
        if isinstance(padding, str):  # "same"/"valid" convolutions
            if padding == "valid":
                padding = 0
            else:
                k, d = _axes(module.kernel_size, n), _axes(getattr(module, "dilation", 1), n)
                padding = tuple(di * (ki - 1) // 2 for ki, di in zip(k, d, strict=True))
        stride = module.stride if module.stride is not None else module.kernel_size
        return (
            _axes(module.kernel_size, n),
            _axes(stride, n),
            _axes(padding, n),
            _axes(getattr(module, "dilation", 1), n),
        )
    return None


def _key(t: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    # In-place ops (ReLU(inplace=True), +=) keep the storage, so storage + shape follows a
    # tensor through them; a new tensor made by functional code gets a new key and is unknown.
    return t.untyped_storage().data_ptr(), tuple(t.shape)


class GeometryTracker:
    """Follows the analytic geometry through one forward pass, alongside any other hooks.

    Use as a context manager around a forward pass (featuremaps' own capture, or a plain call):
    it adds a pre-hook and a forward hook to each of ``modules`` and leaves them as it found
    them. ``found`` then maps record names to a :class:`MapGeometry` (images, ``(N, C, H, W)``)
    or a :class:`LineGeometry` (signals, ``(N, C, L)``), or to ``None`` where the analytic path
    broke. Only outputs of the input's own rank are described.
    """

    def __init__(self, inputs: torch.Tensor, modules: Mapping[str, nn.Module]) -> None:
        self._modules = modules
        self._rank = inputs.dim()
        self._known: dict[tuple[int, tuple[int, ...]], tuple[AxisGeometry, ...]] = {
            _key(inputs): (IDENTITY,) * (inputs.dim() - 2)
        }
        self._before: dict[int, tuple[AxisGeometry, ...] | None] = {}
        self._calls: dict[str, int] = {}
        self._handles: list[Any] = []
        self.found: dict[str, MapGeometry | LineGeometry | None] = {}

    def __enter__(self) -> GeometryTracker:
        for path, module in self._modules.items():
            if isinstance(module, torch.jit.ScriptModule):
                continue  # TorchScript modules run no Python hooks
            self._handles.append(module.register_forward_pre_hook(self._pre))
            self._handles.append(module.register_forward_hook(self._make_post(path)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _pre(self, module: nn.Module, args: Any) -> None:
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        self._before[id(module)] = self._known.get(_key(first)) if first is not None else None

    def _make_post(self, path: str) -> Any:
        def post(module: nn.Module, args: Any, output: Any) -> None:
            self._calls[path] = self._calls.get(path, 0) + 1
            if isinstance(output, torch.Tensor) and output.dim() == self._rank:
                self._observe(record_name(path, self._calls[path]), module, output)

        return post

    def _observe(self, name: str, module: nn.Module, t: torch.Tensor) -> None:
        before = self._before.get(id(module))
        window = _window(module, self._rank - 2)
        after: tuple[AxisGeometry, ...] | None = None
        if before is not None:
            if window is not None:
                k, s, p, d = window
                after = tuple(axis.compose(k[i], s[i], p[i], d[i]) for i, axis in enumerate(before))
            elif isinstance(module, _ELEMENTWISE):
                after = before
        if after is None:
            self.found[name] = None
            return
        self._known[_key(t)] = after
        if len(after) == 1:
            self.found[name] = LineGeometry(name, after[0], int(t.shape[2]), "analytic")
            return
        shape = (int(t.shape[2]), int(t.shape[3]))
        self.found[name] = MapGeometry(name, after[0], after[1], shape, "analytic")


def compute_geometry(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    layers: Mapping[str, nn.Module] | None = None,
    method: str = "auto",
) -> dict[str, MapGeometry]:
    """Geometry of every 4-D output of the selected leaf modules (default: all leaves).

    Args:
        model: the model; it runs in eval mode (analytic) and once per unknown layer with
            gradients (empirical); its modes are restored.
        inputs: one ``(1, C, H, W)`` input tensor.
        layers: ``{path: module}`` to describe (default: every leaf module).
        method: ``"auto"`` (analytic where possible, else empirical), ``"analytic"`` or
            ``"empirical"``.

    Returns:
        ``{record name: MapGeometry}`` in execution order.
    """
    if method not in ("auto", "analytic", "empirical"):
        raise OptionError(f"geometry method '{method}' is unknown; use auto, analytic or empirical")
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
        raise OptionError("compute_geometry needs one (1, C, H, W) input tensor")
    if layers is None:
        from featuremaps.selection import select_modules

        layers = select_modules(model, None, None, False, type(model).__name__)
    with GeometryTracker(inputs, layers) as tracker:
        run_hooked(model, inputs, {}, lambda out: None)

    result: dict[str, MapGeometry] = {}
    for name, found in tracker.found.items():
        geometry = found if isinstance(found, MapGeometry) else None
        if geometry is None or method == "empirical":
            if method == "analytic":
                continue
            geometry = _empirical(model, inputs, layers, name)
        if geometry is not None:
            result[name] = geometry
    return result


def _empirical(
    model: nn.Module, inputs: torch.Tensor, layers: Mapping[str, nn.Module], name: str
) -> MapGeometry | None:
    """Measure one layer's geometry from input gradients of two neighbouring output cells."""
    grabbed: list[torch.Tensor] = []

    def sink(out: HookedOutput) -> None:
        if out.name == name:
            grabbed.append(out.tensor.clone())  # a clone keeps later in-place ops out of the graph

    x = inputs.detach().clone().requires_grad_(True)
    run_hooked(model, x, layers, sink, grad=True)
    if not grabbed:
        return None
    out = grabbed[0]
    h, w = out.shape[2], out.shape[3]
    r0, c0 = h // 2, w // 2
    cells = [(r0, c0), (min(r0 + 1, h - 1), min(c0 + 1, w - 1))]
    boxes = []
    for r, c in cells:
        (grad,) = torch.autograd.grad(out[0, :, r, c].sum(), x, retain_graph=True)
        hit = grad[0].abs().sum(0) > 0
        ys, xs = torch.nonzero(hit, as_tuple=True)
        if ys.numel() == 0:
            return None
        boxes.append((r, c, ys.min().item(), ys.max().item(), xs.min().item(), xs.max().item()))
    (r0, c0, y0a, y1a, x0a, x1a), (r1, c1, y0b, y1b, x0b, x1b) = boxes
    cy0, cy1 = (y0a + y1a) / 2, (y0b + y1b) / 2
    cx0, cx1 = (x0a + x1a) / 2, (x0b + x1b) / 2
    in_h, in_w = inputs.shape[2], inputs.shape[3]
    sy = (cy1 - cy0) / (r1 - r0) if r1 != r0 else float(in_h)
    sx = (cx1 - cx0) / (c1 - c0) if c1 != c0 else float(in_w)
    y = AxisGeometry(sy, cy0 - r0 * sy, float(y1a - y0a + 1))
    xg = AxisGeometry(sx, cx0 - c0 * sx, float(x1a - x0a + 1))
    return MapGeometry(name, y, xg, (h, w), "empirical")
