"""Filters: the weights behind a layer's output channels, ready to draw (pure computation).

Beside capture in the flow (model → **filters** → render → io): a feature map says what a layer
computed, its filters say what it looks for. :func:`filters` reads one Conv or Linear layer's
weight as float32 on the CPU (no gradient, no change of mode or device, nothing hooked) and
returns a :class:`Filters`: the arrays a picture of it draws, chosen by the rules below, and
each output channel's (each filter's) L1 and L2 norm. Drawing is
:func:`featuremaps.render.filters.make_filter_sheet`; nothing here draws or writes.

Every weight is first put in one layout, one row per output channel: ``(out, in / groups, *k)``
(a transposed convolution stores ``(in, out / groups, *k)``; its rows are regrouped so that row
``o`` holds the kernels that make output channel ``o``). A grouped convolution's filter ``o``
sees only its group's ``in / groups`` input channels, and those are what it shows. The kind of
picture:

=========  ============================================================  =====================
kind       when                                                          ``values``
=========  ============================================================  =====================
rgb        a 2-D convolution over 3 input channels, one group (the       (out, kH, kW, 3)
           first layer of an RGB model): each filter as a colour patch
kernels    other 2-D convolutions with kernels up to :data:`MAX_KERNEL`  (out, in_g, kH, kW)
           wide and at most :data:`MAX_KERNEL_INPUTS` input kernels per
           filter: each filter as a mosaic of its input kernels
rows       1-D convolutions with at most :data:`MAX_KERNEL_INPUTS`       (out, in_g, k)
           input kernels per filter: one row of taps per input channel
matrix     Linear layers, and convolutions whose kernels are 1 (×1 ×1):  (out, in_g)
           the weights as an out × in matrix
norms      every other convolution (large kernels, many inputs, all      (out, in_g)
           3-D ones): the L2 norm of each kernel, out × in
=========  ============================================================  =====================

Weights are signed and drawn centred on zero; norms are not. The bias is not part of a filter
and not counted in its norms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from featuremaps._errors import LayerError
from featuremaps.checkpoints import LoadedModel
from featuremaps.naming import layers_hint, suggest, type_name
from featuremaps.selection import split_record

__all__ = [
    "MAX_KERNEL",
    "MAX_KERNEL_INPUTS",
    "FilterKind",
    "Filters",
    "filter_layers",
    "filter_norms",
    "filters",
    "has_filters",
]

FilterKind = Literal["rgb", "kernels", "rows", "matrix", "norms"]

#: The widest kernel (along any axis) a "kernels" mosaic draws cell by cell; wider kernels get
#: their norms drawn (a 7×7 kernel is the largest of the common CNNs' inner layers).
MAX_KERNEL = 7
#: The most input kernels one filter's mosaic (or rows picture) holds: 64 kernels of 3×3 make an
#: 8×8 block about 100 pixels wide; more would make every filter tile unreadably large.
MAX_KERNEL_INPUTS = 64

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass(frozen=True, eq=False)
class Filters:
    """One layer's filters, as :func:`filters` read them.

    ``layer`` is the module path, ``module_type`` its class name, ``weight_shape`` the weight's
    shape as stored, ``groups`` the convolution's groups (1 for Linear). ``kind`` and ``values``
    follow the table in :mod:`featuremaps.filters`; ``values`` is float32 (float64 for
    "norms") and read-only, one entry per output channel on its first axis. ``l1`` and ``l2``
    are each filter's norms over all its weights (``sum |w|`` and ``sqrt(sum w²)``, float64,
    one per output channel). ``weight_range`` is the finite minimum and maximum over the whole
    weight (``None`` when no weight is finite); ``nonfinite`` counts NaN/Inf weights. ``note``
    says in words what ``values`` shows.
    """

    layer: str
    module_type: str
    kind: FilterKind
    weight_shape: tuple[int, ...]
    groups: int
    values: np.ndarray
    l1: np.ndarray
    l2: np.ndarray
    weight_range: tuple[float, float] | None
    nonfinite: int
    note: str

    @property
    def out_channels(self) -> int:
        """The number of filters (output channels)."""
        return int(self.l1.shape[0])

    @property
    def signed(self) -> bool:
        """Whether ``values`` are weights (drawn centred on zero) rather than norms."""
        return self.kind != "norms"

    @property
    def max_abs(self) -> float:
        """The largest finite ``|w|`` of the layer (0 when none is finite)."""
        r = self.weight_range
        return 0.0 if r is None else max(abs(r[0]), abs(r[1]))

    def __repr__(self) -> str:
        return (
            f"Filters({self.layer!r}, {self.module_type}, weight {self.weight_shape}, "
            f"{self.out_channels} filters drawn as {self.kind})"
        )


# TorchScript keeps a module's Python class only as its name (``original_name``).
_SCRIPTED = {
    **{cls.__name__: "conv" for cls in _CONV},
    **{cls.__name__: "transposed" for cls in _TRANSPOSED},
    "Linear": "linear",
}


def _layer_kind(module: nn.Module) -> str | None:
    """ "conv", "transposed", "linear" or None, by class (subclasses too) or, for a TorchScript
    module, by the name of the class it was scripted from."""
    if isinstance(module, _TRANSPOSED):
        return "transposed"
    if isinstance(module, _CONV):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, torch.jit.ScriptModule):
        return _SCRIPTED.get(type_name(module))
    return None


def has_filters(module: nn.Module) -> bool:
    """Whether :func:`filters` can read ``module`` (a Conv, transposed Conv or Linear layer,
    also scripted, with a materialised weight)."""
    if _layer_kind(module) is None:
        return False
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and not isinstance(
        weight, nn.parameter.UninitializedParameter
    )


def filter_layers(model: nn.Module) -> list[str]:
    """The module paths of ``model`` whose filters :func:`filters` draws, in registration order."""
    return [p for p, m in model.named_modules() if has_filters(m)]


def _standard_weight(module: nn.Module, weight: np.ndarray) -> np.ndarray:
    """The weight as ``(out, in / groups, *k)``, one row per output channel."""
    if _layer_kind(module) != "transposed":
        return weight
    groups = _groups(module)
    in_g, out_g = weight.shape[0] // groups, weight.shape[1]
    k = weight.shape[2:]
    grouped = weight.reshape(groups, in_g, out_g, *k).swapaxes(1, 2)
    return np.ascontiguousarray(grouped.reshape(groups * out_g, in_g, *k))


def filter_norms(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each output channel's L1 and L2 norm of a weight laid out ``(out, ...)``, in float64.

    NaN/Inf weights make their filter's norms NaN/Inf, as they would in any sum.
    """
    flat = np.asarray(weight).reshape(len(weight), -1)
    l1 = np.empty(len(flat), dtype=np.float64)
    l2 = np.empty(len(flat), dtype=np.float64)
    # In float64, a band of rows at a time: a 100-million-weight layer needs no float64 copy.
    step = max(1, (1 << 22) // max(flat.shape[1], 1))
    for i in range(0, len(flat), step):
        w = flat[i : i + step].astype(np.float64)
        l1[i : i + step] = np.abs(w).sum(axis=1)
        l2[i : i + step] = np.sqrt((w * w).sum(axis=1))
    return l1, l2


def _kind(module: nn.Module, w: np.ndarray) -> tuple[FilterKind, str]:
    """Which picture the standard weight ``w`` gets, and the words that say what it shows."""
    if _layer_kind(module) == "linear":
        return "matrix", f"weights as an out x in matrix ({w.shape[0]} x {w.shape[1]})"
    in_g, k = w.shape[1], tuple(w.shape[2:])
    ktext = "x".join(str(n) for n in k)
    if all(n == 1 for n in k):
        return "matrix", f"{ktext} kernels: weights as an out x in matrix ({w.shape[0]} x {in_g})"
    spatial = len(k)
    if spatial == 2 and in_g == 3 and _groups(module) == 1 and _layer_kind(module) == "conv":
        return "rgb", (
            f"each filter's {ktext} kernels over input channels 0, 1, 2 as red, green, blue; "
            "one symmetric scale over all filters, 0 = mid-grey"
        )
    if spatial == 2 and max(k) <= MAX_KERNEL and in_g <= MAX_KERNEL_INPUTS:
        return "kernels", (
            f"each filter: its {in_g} input kernels ({ktext}), input channels left to right, "
            "then top to bottom"
        )
    if spatial == 1 and in_g <= MAX_KERNEL_INPUTS:
        return "rows", f"each filter: one row per input channel ({in_g}), {k[0]} taps left to right"
    why = (
        "3-D kernels"
        if spatial == 3
        else f"kernels over {MAX_KERNEL}"
        if max(k) > MAX_KERNEL
        else f"over {MAX_KERNEL_INPUTS} input kernels per filter"
    )
    return "norms", (
        f"{why}: each cell the L2 norm of one {ktext} kernel (row: filter, column: input channel)"
    )


def _groups(module: nn.Module) -> int:
    groups = getattr(module, "groups", 1)
    return groups if isinstance(groups, int) else 1


def _groups_note(module: nn.Module, w: np.ndarray) -> str:
    groups = _groups(module)
    if groups == 1:
        return ""
    out_g = w.shape[0] // groups
    return (
        f"; groups={groups}: filter o sees only input channels "
        f"{w.shape[1]}·(o // {out_g}) to {w.shape[1]}·(o // {out_g}) + {w.shape[1] - 1}"
    )


def _resolve(model: nn.Module, layer: str, label: str, spec: str | None) -> tuple[str, nn.Module]:
    modules = dict(model.named_modules())
    hint = f"Run {layers_hint(spec)} to list the names."
    path, call = split_record(layer, modules)
    if call == 0 or path not in modules:
        names = [p for p in modules if p]
        candidates = filter_layers(model) or names
        found = suggest(layer, candidates) or suggest(layer, names) or "."
        raise LayerError(
            f"layer '{layer}' not found in {label}{found} Expected the name of a Conv or Linear "
            f"layer. {hint}"
        )
    module = modules[path]
    if not has_filters(module):
        has = getattr(module, "weight", None) is not None
        what = "a weight that is not a filter" if has else "no weight"
        known = filter_layers(model)
        examples = f" (here: {', '.join(known[:3])}{', ...' if len(known) > 3 else ''})"
        raise LayerError(
            f"layer '{layer}' of {label} is a {type_name(module)}, which has {what}; expected "
            f"a Conv or Linear layer{examples if known else ''}. {hint}"
        )
    return path, module


def filters(model: nn.Module | LoadedModel | str, layer: str) -> Filters:
    """Read the filters of one Conv or Linear layer of ``model`` (see :mod:`featuremaps.filters`).

    Args:
        model: an ``nn.Module``, a :class:`~featuremaps.LoadedModel` or a model spec string
            (as the commands take it, e.g. ``"shapes_cnn"``).
        layer: the layer's module path as :func:`~featuremaps.list_layers` names it
            (``"layer1.0.conv1"``); a record name of a later call (``"conv#2"``) names the same
            module and so the same filters.

    Returns:
        The :class:`Filters`: what to draw and each output channel's L1 and L2 norm. The model is
        not changed: no gradient is recorded, its mode and device stay as they were.

    Raises:
        LayerError: ``layer`` is not a module of ``model`` (closest names suggested), or it is not
            a Conv or Linear layer (a ReLU, a pooling, a normalisation, a container).
    """
    if isinstance(model, str):
        from featuremaps.models import load_model

        loaded: LoadedModel | None = load_model(model)
    else:
        loaded = model if isinstance(model, LoadedModel) else None
    module_tree = loaded.model if loaded is not None else model
    if not isinstance(module_tree, nn.Module):
        raise LayerError(
            f"got a {type(module_tree).__name__} as the model; expected an nn.Module, a "
            "LoadedModel or a model spec such as 'resnet18'"
        )
    spec = loaded.cli_spec if loaded is not None else None
    label = spec or type_name(module_tree)
    path, module = _resolve(module_tree, layer, label, spec)
    with torch.no_grad():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):  # has_filters() checked it; for the types
            raise LayerError(f"layer '{layer}' of {label} has no weight tensor")
        stored = weight.detach().to(device="cpu", dtype=torch.float32)
        raw = np.array(stored.numpy(), dtype=np.float32, copy=True)  # never the model's storage
    w = _standard_weight(module, raw)
    kind, note = _kind(module, w)
    note += _groups_note(module, w)
    l1, l2 = filter_norms(w)
    finite = np.isfinite(w)
    nonfinite = int(w.size - np.count_nonzero(finite))
    weight_range = None
    if finite.any():
        vals = w if nonfinite == 0 else w[finite]
        weight_range = (float(vals.min()), float(vals.max()))
    values: np.ndarray
    if kind == "rgb":
        values = np.ascontiguousarray(np.moveaxis(w, 1, -1))
    elif kind == "matrix":
        values = w.reshape(w.shape[0], w.shape[1])
    elif kind == "norms":
        per_kernel = w.astype(np.float64).reshape(w.shape[0], w.shape[1], -1)
        values = np.sqrt((per_kernel * per_kernel).sum(axis=2))
    else:
        values = w
    for array in (values, l1, l2):
        array.setflags(write=False)
    return Filters(
        layer=path,
        module_type=type_name(module),
        kind=kind,
        weight_shape=tuple(int(n) for n in raw.shape),
        groups=_groups(module),
        values=values,
        l1=l1,
        l2=l2,
        weight_range=weight_range,
        nonfinite=nonfinite,
        note=note,
    )
