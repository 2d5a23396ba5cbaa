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
  A container (a block, a stage) whose output is exactly the tensor a leaf call returned has that
  call's geometry, and says so (``same_as``). Upsampling and transposed convolutions are not
  composed: what follows them is left to the measurement, which refuses it.
* ``empirical``: where the analytic path is broken (an op it does not know, a tensor made by
  functional code), the input gradients of a run of neighbouring cells along each axis are
  measured, on the map's own grid (channels-last and token layouts from
  :mod:`featuremaps.layouts`). The shift of the non-zero gradient between neighbours gives the
  stride and its extent the receptive field; the result is kept only where it can be trusted:
  every neighbour's support moves by the same non-zero step at both ends and keeps its size, and
  none reaches the input border (where the field would be cut off). Otherwise the layer is
  refused with a :class:`GeometryError` saying why. The field measured is
  the *effective* one: inputs whose gradient is exactly zero (a ReLU that is off, the losing
  inputs of a max-pool) are not counted.
"""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from featuremaps import layouts
from featuremaps._errors import GeometryError, OptionError
from featuremaps.cells import nearest_cell
from featuremaps.hooks import HookedOutput, run_hooked
from featuremaps.naming import layers_hint, record_name

__all__ = [
    "AxisGeometry",
    "GeometryError",
    "GeometryTracker",
    "LineGeometry",
    "MapGeometry",
    "compute_geometry",
    "measure_geometry",
]

# Channel gates: a container whose output is its input scaled per channel by a gate computed from
# the whole map (squeeze-excitation in torchvision's MobileNetV3/EfficientNet, timm's SE blocks).
# Cell j keeps the field of its input cell j, plus one global term: the geometry describes that
# local part and says so in its method, and the chain goes on through it.
_GATES = frozenset({"SqueezeExcitation", "SqueezeExcite", "SEModule", "EffectiveSEModule"})
GATE_NOTE = "local part: a squeeze-excitation gate on the way also pools the whole input"

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
    """Where the cells of one record's (N, C, H, W) output sit in the (H_in, W_in) input.

    ``same_as`` names the leaf call whose very tensor a container returned (its geometry is that
    call's); empty otherwise.
    """

    name: str
    y: AxisGeometry
    x: AxisGeometry
    shape: tuple[int, int]
    method: str
    same_as: str = ""

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
        described: dict[str, Any] = {
            "method": self.method,
            "stride": [self.y.stride, self.x.stride],
            "offset": [self.y.offset, self.x.offset],
            "receptive_field": [self.y.size, self.x.size],
        }
        if self.same_as:
            described["same_as"] = self.same_as
        return described


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


def _key(t: torch.Tensor) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    # In-place ops (ReLU(inplace=True), +=) keep the storage, so storage + shape follows a
    # tensor through them; a new tensor made by functional code gets a new key and is unknown.
    # The strides tell a permuted view (channels last) from the tensor it views.
    return t.untyped_storage().data_ptr(), tuple(t.shape), tuple(t.stride())


class GeometryTracker:
    """Follows the analytic geometry through one forward pass, alongside any other hooks.

    Use as a context manager around a forward pass (featuremaps' own capture, or a plain call):
    it adds a pre-hook and a forward hook to each of ``modules`` and leaves them as it found
    them. ``found`` then maps record names to a :class:`MapGeometry` (images, ``(N, C, H, W)``)
    or a :class:`LineGeometry` (signals, ``(N, C, L)``), or to ``None`` where the analytic path
    broke. Only outputs of the input's own rank are described. A container among ``modules``
    is described only where its output is exactly the tensor a leaf call returned.

    With ``model``, only forward passes of ``model`` on ``inputs`` itself are followed, each
    counting calls from one: other passes inside the block (a capture's shape probes run on
    other inputs) neither add records nor shift the call numbers in the names.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        modules: Mapping[str, nn.Module],
        model: nn.Module | None = None,
    ) -> None:
        self._modules = modules
        self._model = model
        self._inputs = inputs
        self._active = model is None
        self._rank = inputs.dim()
        # storage key -> (the tensor registered, weakly; its geometry). An entry counts only
        # while that tensor lives: once it is freed, a new tensor may get the same memory.
        # The note is empty, or GATE_NOTE once a channel gate was on the way.
        self._known: dict[
            tuple[int, tuple[int, ...], tuple[int, ...]],
            tuple[weakref.ref[torch.Tensor], tuple[AxisGeometry, ...], str],
        ] = {_key(inputs): (weakref.ref(inputs), (IDENTITY,) * (inputs.dim() - 2), "")}
        self._before: dict[int, tuple[tuple[AxisGeometry, ...], str] | None] = {}
        self._calls: dict[str, int] = {}
        # id of a tensor a leaf returned -> (the tensor, weakly; its version; the record name).
        self._made: dict[int, tuple[weakref.ref[torch.Tensor], int, str]] = {}
        self._handles: list[Any] = []
        self.found: dict[str, MapGeometry | LineGeometry | None] = {}

    def __enter__(self) -> GeometryTracker:
        if self._model is not None:
            self._handles.append(self._model.register_forward_pre_hook(self._start))
        for path, module in self._modules.items():
            if isinstance(module, torch.jit.ScriptModule):
                continue  # TorchScript modules run no Python hooks
            self._handles.append(module.register_forward_pre_hook(self._pre))
            self._handles.append(module.register_forward_hook(self._make_post(path)))
        # Gates not among ``modules`` are followed too (not described), so the chain goes on.
        for module in self._model.modules() if self._model is not None else ():
            if type(module).__name__ in _GATES and all(
                module is not m for m in self._modules.values()
            ):
                self._handles.append(module.register_forward_pre_hook(self._pre))
                self._handles.append(module.register_forward_hook(self._gate_post(None)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _start(self, module: nn.Module, args: Any) -> None:
        self._active = bool(args) and args[0] is self._inputs
        if self._active:
            self._calls = {}

    def _pre(self, module: nn.Module, args: Any) -> None:
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        known = self._known.get(_key(first)) if first is not None else None
        alive = known is not None and known[0]() is not None
        self._before[id(module)] = (known[1], known[2]) if known is not None and alive else None

    def _make_post(self, path: str) -> Any:
        def post(module: nn.Module, args: Any, output: Any) -> None:
            if not self._active:
                return
            self._calls[path] = self._calls.get(path, 0) + 1
            if isinstance(output, torch.Tensor) and output.dim() == self._rank:
                name = record_name(path, self._calls[path])
                if type(module).__name__ in _GATES:
                    self._gate(name, module, args, output)
                elif path and next(iter(module.children()), None) is not None:
                    self._resolve(name, output)
                else:
                    self._observe(name, module, output)
                    self._made[id(output)] = (weakref.ref(output), output._version, name)

        return post

    def _gate_post(self, name: str | None) -> Any:
        def post(module: nn.Module, args: Any, output: Any) -> None:
            if self._active and isinstance(output, torch.Tensor):
                self._gate(name, module, args, output)

        return post

    def _gate(self, name: str | None, module: nn.Module, args: Any, t: torch.Tensor) -> None:
        """A channel gate: its output keeps its input's geometry, noted as the local part."""
        before = self._before.get(id(module))
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if before is None or first is None or first.shape != t.shape or t.dim() != self._rank:
            if name is not None:
                self.found[name] = None
            return
        self._known[_key(t)] = (weakref.ref(t), before[0], GATE_NOTE)
        if name is not None:
            self._describe(name, t, before[0], GATE_NOTE)

    def _resolve(self, name: str, t: torch.Tensor) -> None:
        """A container: the geometry of the leaf call that returned this very tensor (not
        changed in place since), else unknown."""
        made = self._made.get(id(t))
        leaf = made[2] if made is not None and made[0]() is t and made[1] == t._version else None
        found = self.found.get(leaf) if leaf is not None else None
        if isinstance(found, MapGeometry):
            self.found[name] = replace(found, name=name, same_as=found.same_as or str(leaf))
        elif isinstance(found, LineGeometry):
            self.found[name] = replace(found, name=name)
        else:
            self.found[name] = None

    def _observe(self, name: str, module: nn.Module, t: torch.Tensor) -> None:
        before = self._before.get(id(module))
        window = _window(module, self._rank - 2)
        after: tuple[AxisGeometry, ...] | None = None
        if before is not None:
            axes = before[0]
            if window is not None:
                k, s, p, d = window
                after = tuple(axis.compose(k[i], s[i], p[i], d[i]) for i, axis in enumerate(axes))
            elif isinstance(module, _ELEMENTWISE):
                after = axes
        if after is None or before is None:
            self.found[name] = None
            return
        self._known[_key(t)] = (weakref.ref(t), after, before[1])
        self._describe(name, t, after, before[1])

    def _describe(
        self, name: str, t: torch.Tensor, after: tuple[AxisGeometry, ...], note: str
    ) -> None:
        method = f"analytic, {note}" if note else "analytic"
        if len(after) == 1:
            self.found[name] = LineGeometry(name, after[0], int(t.shape[2]), method)
            return
        shape = (int(t.shape[2]), int(t.shape[3]))
        self.found[name] = MapGeometry(name, after[0], after[1], shape, method)


def compute_geometry(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    layers: Mapping[str, nn.Module] | None = None,
    method: str = "auto",
) -> dict[str, MapGeometry]:
    """Geometry of every 4-D output of the selected modules (default: all leaves).

    Args:
        model: the model; it runs in eval mode (analytic) and once per unknown layer with
            gradients (empirical); its modes are restored.
        inputs: one ``(1, C, H, W)`` input tensor.
        layers: ``{path: module}`` to describe (default: every leaf module). A container is
            described by the leaf call whose tensor it returns, else measured.
        method: ``"auto"`` (analytic where possible, else empirical), ``"analytic"`` or
            ``"empirical"``.

    Returns:
        ``{record name: MapGeometry}`` in execution order. A layer the measurement refuses
        (:func:`measure_geometry` says why) is left out.
    """
    if method not in ("auto", "analytic", "empirical"):
        raise OptionError(f"geometry method '{method}' is unknown; use auto, analytic or empirical")
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
        raise OptionError("compute_geometry needs one (1, C, H, W) input tensor")
    if layers is None:
        from featuremaps.selection import select_modules

        layers = select_modules(model, None, None, False, None)
    with GeometryTracker(inputs, layers, model) as tracker:
        run_hooked(model, inputs, {}, lambda out: None)

    unknown = [n for n, g in tracker.found.items() if method == "empirical" or g is None]
    decided = _layouts_of(model, inputs, layers) if unknown and method != "analytic" else {}
    result: dict[str, MapGeometry] = {}
    for name, found in tracker.found.items():
        geometry = found if isinstance(found, MapGeometry) else None
        if geometry is None or method == "empirical":
            if method == "analytic":
                continue
            try:
                geometry = measure_geometry(model, inputs, layers, name, decided.get(name, ""))
            except GeometryError:
                continue
        result[name] = geometry
    return result


def _layouts_of(
    model: nn.Module, inputs: torch.Tensor, modules: Mapping[str, nn.Module]
) -> dict[str, str]:
    """The layout decided for each record of ``modules`` (by a capture that keeps no values)."""
    from featuremaps.capture import capture

    decided: dict[str, str] = {}
    capture(
        model,
        inputs,
        layers=[p for p in modules if p] or None,  # exact paths; none: the model is one layer
        containers=True,
        on_record=lambda r: decided.__setitem__(r.name, r.layout),
        copy=False,
    )
    return decided


def measure_geometry(
    model: nn.Module,
    inputs: torch.Tensor,
    layers: Mapping[str, nn.Module],
    name: str,
    layout: str | None = None,
    spec: str | None = None,
) -> MapGeometry:
    """Measure the geometry of record ``name`` from input gradients, or refuse.

    ``layers`` holds the module that makes the record; ``layout`` is the record's layout name
    (default: decided by a capture; empty: unknown), which says where its 2-D grid of cells
    is. Along each axis, a run of up to four neighbouring cells (through the map's centre) is
    measured: the non-zero input gradient of each must lie strictly inside the input, and move
    by the same non-zero step at both ends from each cell to the next, keeping its extent on the
    other axis. ``spec`` names the model in messages as the commands load it (None: a model
    object, whose layers ``fm.list_layers(model)`` lists).

    Raises:
        GeometryError: what was measured and why it gives no stride, offset and field: no 2-D
            grid, a single row or column, a cell with no gradient, a field that reaches the
            input border, or cells that are not evenly spaced (upsampling, windowed attention).
    """
    if layout is None:
        layout = _layouts_of(model, inputs, layers).get(name)
    grabbed: list[torch.Tensor] = []

    def sink(out: HookedOutput) -> None:
        if out.name == name:
            grabbed.append(out.tensor.clone())  # a clone keeps later in-place ops out of the graph

    x = inputs.detach().clone().requires_grad_(True)
    run_hooked(model, x, layers, sink, grad=True)
    if not grabbed:
        raise GeometryError(
            f"'{name}' gave no tensor output on a {tuple(inputs.shape)} input, so its cells "
            f"cannot be measured; pick a record name from {layers_hint(spec)}"
        )
    out = grabbed[0]
    described = layouts.get(layout, out.dim()) if layout else None
    maps = layouts.spatial_maps(described, out) if described is not None else None
    if maps is None or not maps.requires_grad:
        raise GeometryError(
            f"'{name}' gives an output of shape {tuple(out.shape)} in layout "
            f"{layout or 'unknown'}, which has no 2-D grid of cells that depend on the input; "
            "pick a layer that gives maps or patch tokens"
        )
    h, w = int(maps.shape[2]), int(maps.shape[3])
    if h < 2 or w < 2:
        raise GeometryError(
            f"'{name}' has a {h}x{w} map: a stride needs two cells along each axis; give a "
            "larger input (--size) or pick an earlier layer"
        )
    in_h, in_w = int(inputs.shape[2]), int(inputs.shape[3])
    boxes: dict[tuple[int, int], tuple[int, int, int, int]] = {}
    # Channels mixed with fixed random weights, not summed: a plain sum can be constant by
    # construction (the channels of a LayerNorm's output sum to its bias), a zero gradient.
    mix = torch.randn(maps.shape[1], generator=torch.Generator().manual_seed(0)).to(maps)

    def box(r: int, c: int) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) of the input pixels with a non-zero gradient of cell (r, c)."""
        if (r, c) not in boxes:
            (grad,) = torch.autograd.grad((maps[0, :, r, c] * mix).sum(), x, retain_graph=True)
            ys, xs = torch.nonzero(grad[0].abs().sum(0) > 0, as_tuple=True)
            if ys.numel() == 0:
                raise GeometryError(
                    f"cell ({r}, {c}) of '{name}' has a zero gradient with respect to every "
                    "input pixel (a ReLU that is off?), so its field cannot be measured; try "
                    "another input or a layer before the activation"
                )
            found = (int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max()))
            if found[0] == 0 or found[2] == 0 or found[1] == in_h - 1 or found[3] == in_w - 1:
                raise GeometryError(
                    f"the input gradient of cell ({r}, {c}) of '{name}' reaches the border of "
                    f"the {in_h}x{in_w} input (rows {found[0]}..{found[1]}, columns "
                    f"{found[2]}..{found[3]}), so its receptive field is cut off there and "
                    "cannot be measured; give a larger input (--size) or pick a layer whose "
                    "geometry follows from its convolutions"
                )
            boxes[(r, c)] = found
        return boxes[(r, c)]

    rows, cols = _run_of_cells(h), _run_of_cells(w)
    r_mid, c_mid = rows[len(rows) // 2], cols[len(cols) // 2]
    y = _axis_from(name, "rows", rows, [box(r, c_mid) for r in rows], 0)
    xg = _axis_from(name, "columns", cols, [box(r_mid, c) for c in cols], 2)
    return MapGeometry(name, y, xg, (h, w), "empirical")


def _run_of_cells(n: int) -> list[int]:
    """Up to four neighbouring cell indices through the middle of an axis of ``n`` cells."""
    start = min(max(n // 2 - 1, 0), max(n - 4, 0))
    return list(range(start, min(start + 4, n)))


def _axis_from(
    name: str, axis: str, cells: list[int], boxes: list[tuple[int, int, int, int]], at: int
) -> AxisGeometry:
    """One axis from the gradient boxes of neighbouring cells along it (``at``: 0 for rows,
    2 for columns), or GeometryError where they are not one fixed step apart."""
    starts = [b[at] for b in boxes]
    ends = [b[at + 1] for b in boxes]
    across = {b[2 - at : 4 - at] for b in boxes}
    steps = {b - a for a, b in itertools.pairwise(starts)}
    steps |= {b - a for a, b in itertools.pairwise(ends)}
    if len(steps) != 1 or min(steps) <= 0 or len(across) != 1:
        raise GeometryError(
            f"the cells of '{name}' are not evenly spaced over the input: along the {axis}, "
            f"cells {cells[0]}..{cells[-1]} see input {axis} "
            f"{', '.join(f'{a}..{b}' for a, b in zip(starts, ends, strict=True))}, not one "
            "fixed step apart with one size (upsampling, a transposed convolution or windowed "
            "attention on the way?), so no stride describes them; pick a layer before that step"
        )
    step = float(steps.pop())
    centre = (starts[0] + ends[0]) / 2
    return AxisGeometry(step, centre - cells[0] * step, float(ends[0] - starts[0] + 1))
