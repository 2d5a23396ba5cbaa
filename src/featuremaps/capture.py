"""Capture: run a model once with hooks on the selected modules; it returns plain records.

Stage three of the flow (input → model → **capture** → transforms → render → io). Forward hooks are
registered on the selected modules (through :func:`featuremaps.hooks.run_hooked`), the model runs
once, and every call of every selected module yields one :class:`LayerRecord` per output tensor,
in execution order. :func:`zero_channels` hooks the other way: it replaces outputs.

Why values are copied inside the hook: torchvision CNNs run ``ReLU(inplace=True)`` and
``out += identity`` after a layer has returned, so a hook that keeps a reference ends up holding the
value *after* later in-place operations (17 of 52 resnet18 leaf outputs come back already ReLU-ed).
A tensor's storage is shared by ``detach()`` and every view, so only a copy taken at the moment the
module returns is exact. The copy is made once, straight into the record; with ``on_record`` the
record is handed to the consumer at once and dropped afterwards, so memory stays bounded.

Naming rule (documented, tested literally):

* a record's ``name`` is the module's path in ``model.named_modules()``, e.g. ``layer1.0.relu``;
* the k-th call (k ≥ 2) of the same module appends ``#k``: ``layer1.0.relu#2``, ``layer1.0.relu#3``;
* each tensor inside a tuple, list, dict, named tuple or dataclass output appends ``.key``:
  ``lstm.0``, ``lstm.1.0``, ``head.boxes``, ``head#2.boxes``; ``None`` and other non-tensor
  items are left out;
* a call whose output holds no tensor at all (``None``, an image-list object) gives no record;
  it is listed in :attr:`Capture.no_tensor` with the type it returned;
* the model itself, when it is captured as a whole (a bare ``nn.Conv2d``, a TorchScript model),
  is called ``output``;
* the model's own return value is a record too, ``output`` (``output.<key>``, ``output.<i>`` for
  tuple, list and dict outputs), unless it is exactly a module's output already recorded (a
  classifier's ``fc``): then :attr:`Capture.outputs` names that record instead of repeating it.

Layouts (:mod:`featuremaps.layouts`) are decided inside the hooks from the module's type and
attributes and the layout of the tensor it was given (followed by storage and shape from module to
module, by :class:`featuremaps.layouts.evidence.LayoutTracker`). For models with module types
that do not say their own layout (LayerNorm, attention, Permute, RNNs, custom leaves), three cheap
probe passes run first, recording only shapes: one sample, two samples (the batch axis is the one
that doubles) and one sample at a second input size (spatial axes move, channels do not). Plain
CNNs run once, as before, and so do models built of known blocks (torchvision's ViT, Swin and
ConvNeXt: :mod:`featuremaps.layouts.patterns`), whose meaning settles the layouts inside them.
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from featuremaps import layouts
from featuremaps._errors import CaptureError, InputError, LayerError, OptionError
from featuremaps.attention import recompute_attention
from featuremaps.hooks import OUTPUT, HookedOutput, returned_type, run_hooked, walk
from featuremaps.layouts.evidence import PENDING, LayoutTracker, cached_probes
from featuremaps.layouts.patterns import pattern_rules
from featuremaps.naming import layers_hint, record_name, suggest, type_name
from featuremaps.selection import (
    as_patterns,
    matching_patterns,
    pattern_matches_module,
    select_modules,
    split_record,
)

__all__ = [
    "Capture",
    "LayerRecord",
    "NoTensor",
    "NotRun",
    "capture",
    "record_name",
    "returned_type",
    "zero_channels",
]

RecordCallback = Callable[["LayerRecord"], None]


@dataclass(frozen=True, eq=False)
class LayerRecord:
    """One output tensor of one call of one module, with the values it had when the module ran.

    Attributes:
        name: unique record name (see the module docstring for the rule).
        module: the module's path in ``model.named_modules()``.
        call: 1-based index of this call among the module's calls in this forward pass.
        module_type: the module's class name, e.g. ``"Conv2d"``.
        output_key: ``None`` for a plain tensor output, else the key path inside a tuple/list/dict.
        index: 0-based position of the record in execution order.
        tensor: a detached copy of the output, on the device and in the dtype it had.
        layout: axis names decided by :func:`featuremaps.layouts.decide`, e.g. ``"NCHW"`` or
            ``"tokens(prefix=1, grid=14x14)"``.
        layout_note: the evidence the layout rests on, in words (empty when the module's type
            says it alone).
    """

    name: str
    module: str
    call: int
    module_type: str
    output_key: str | None
    index: int
    tensor: torch.Tensor
    layout: str = ""
    layout_note: str = ""

    def __post_init__(self) -> None:
        if not self.layout:  # built by hand: decided from the shape and module type alone
            object.__setattr__(
                self, "layout", layouts.decide(tuple(self.tensor.shape), self.module_type).name
            )

    def __repr__(self) -> str:
        t = self.tensor
        return (
            f"LayerRecord({self.name!r}, {self.module_type}, {self.shape} {self.dtype} "
            f"{self.layout}, {t.device})"
        )

    @property
    def layout_info(self) -> layouts.Layout:
        """The registered layout (channel axis, how it is drawn); see :mod:`featuremaps.layouts`."""
        layout = layouts.get(self.layout, self.tensor.dim())
        return replace(layout, note=self.layout_note) if self.layout_note else layout

    def maps(self, sample: int = 0) -> np.ndarray:
        """One sample as drawable ``(C, H, W)`` float maps (float32 or float64), as its layout
        says; may share memory with :attr:`tensor`.

        Raises:
            OptionError: ``sample`` is not in the batch, or the layout is not drawn as maps.
        """
        if not 0 <= sample < self.tensor.shape[0]:
            raise OptionError(
                f"sample {sample} asked for, but layer '{self.name}' has a batch of "
                f"{self.tensor.shape[0]}; choose a sample from 0 to {self.tensor.shape[0] - 1}"
            )
        layout = self.layout_info
        if not layout.drawable:
            raise OptionError(
                f"layer '{self.name}' ({self.module_type}, {self.layout} {self.shape}) has no "
                f"maps to draw: {layout.reason}"
            )
        return layouts.drawable_maps(layout, self.tensor, sample)

    @property
    def shape(self) -> tuple[int, ...]:
        """The tensor's shape, batch dimension included."""
        return tuple(self.tensor.shape)

    @property
    def dtype(self) -> str:
        """The tensor's dtype without the ``torch.`` prefix, e.g. ``"float32"``."""
        return str(self.tensor.dtype).removeprefix("torch.")

    def _repr_html_(self) -> str:
        rows = {
            "name": self.name,
            "module": self.module,
            "call": self.call,
            "type": self.module_type,
            "shape": self.shape,
            "dtype": self.dtype,
            "layout": self.layout,
        }
        cells = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in rows.items()
        )
        return f"<table>{cells}</table>"


@dataclass(frozen=True)
class NotRun:
    """A selected module whose forward never produced a record, and why."""

    module: str
    module_type: str
    reason: str


@dataclass(frozen=True)
class NoTensor:
    """A selected module call whose output holds no tensor, and the type it returned instead."""

    name: str
    module: str
    call: int
    module_type: str
    returned: str

    @property
    def reason(self) -> str:
        """Why there is no record, in words."""
        return f"returned {self.returned}, not a tensor: nothing to record"


@dataclass(frozen=True)
class Capture(Sequence[LayerRecord]):
    """Records of one forward pass, in execution order.

    ``records`` is empty when the records were streamed to an ``on_record`` callback; ``total``
    always says how many records were produced. ``not_run`` lists the selected modules that
    never ran (e.g. ``MultiheadAttention.out_proj``, whose weights are used directly);
    ``no_tensor`` the selected calls that ran but returned no tensor (``None``, an image list),
    with the type they returned. ``outputs`` maps each tensor of the model's return value (key
    ``""`` for a plain tensor) to the record that holds it; ``probed`` says whether probe passes
    ran to decide layouts.
    """

    records: tuple[LayerRecord, ...]
    not_run: tuple[NotRun, ...]
    total: int
    output: Any = field(repr=False, default=None)
    outputs: dict[str, str] = field(default_factory=dict)
    probed: bool = False
    no_tensor: tuple[NoTensor, ...] = ()

    def __repr__(self) -> str:
        names = [r.name for r in self.records]
        shown = ", ".join(names[:3]) + (f", ... {names[-1]}" if len(names) > 4 else "")
        if 3 < len(names) <= 4:
            shown = ", ".join(names)
        return (
            f"Capture({self.total} records{': ' + shown if names else ' (streamed)'}; "
            f"{len(self.not_run)} never ran, {len(self.no_tensor)} without tensors)"
        )

    def __getitem__(self, index: Any) -> Any:
        return self.records[index]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[LayerRecord]:
        return iter(self.records)

    def names(self) -> list[str]:
        """Record names in execution order."""
        return [r.name for r in self.records]

    def get(self, name: str) -> LayerRecord:
        """Return the record called ``name``; raises ``KeyError`` with close names otherwise."""
        for r in self.records:
            if r.name == name:
                return r
        raise KeyError(name)

    def _repr_html_(self) -> str:
        head = "<tr><th>#</th><th>name</th><th>type</th><th>shape</th><th>layout</th></tr>"
        body = "".join(
            f"<tr><td>{r.index}</td><td>{html.escape(r.name)}</td>"
            f"<td>{html.escape(r.module_type)}</td><td>{r.shape}</td><td>{r.layout}</td></tr>"
            for r in self.records
        )
        extra = "".join(
            f"<tr><td>–</td><td>{html.escape(n.module)}</td><td>{html.escape(n.module_type)}</td>"
            f"<td colspan=2>not run: {html.escape(n.reason)}</td></tr>"
            for n in self.not_run
        )
        extra += "".join(
            f"<tr><td>–</td><td>{html.escape(n.name)}</td><td>{html.escape(n.module_type)}</td>"
            f"<td colspan=2>{html.escape(n.reason)}</td></tr>"
            for n in self.no_tensor
        )
        return f"<table>{head}{body}{extra}</table>"


NEVER_CALLED = "its forward was never called (the parent may use its weights directly)"
NEVER_CALLED_NO_WEIGHTS = (
    "its forward was never called (it has no weights: the parent skipped it on this input, e.g. "
    "a branch not taken, or a step that is the identity in eval mode)"
)
SCRIPTED = "TorchScript submodules run without Python hooks; only the model output is captured"


def capture(
    model: nn.Module,
    inputs: Any,
    *,
    layers: str | Sequence[str] | None = None,
    types: str | Sequence[str] | None = None,
    containers: bool = False,
    train: bool = False,
    grad: bool = False,
    on_record: RecordCallback | None = None,
    copy: bool = True,
    model_label: str | None = None,
    probe: bool | None = None,
    input_layout: str | None = None,
) -> Capture:
    """Run ``model`` on ``inputs`` once and capture the output of every selected module call.

    Args:
        model: any ``nn.Module`` (a TorchScript module yields only its final output).
        inputs: a tensor, a tuple of positional arguments, or a dict of keyword arguments.
        layers: name patterns (glob, exact name, ``re:REGEX``; ``name#k`` picks one call).
            ``None`` selects every leaf module (and the model's own output, ``output``).
        types: module class names to keep, e.g. ``"Conv2d"`` (subclasses match too).
        containers: also capture modules that have children.
        train: run in training mode (default: eval mode; the original modes are restored).
        grad: keep autograd on (default: ``torch.no_grad``).
        on_record: if given, each record is passed to it as soon as it exists and not kept, so
            an all-layers run does not hold every activation at once.
        copy: copy each output into its record (the default). With ``on_record`` and
            ``copy=False`` the record holds the module's live output instead: exact while the
            callback runs (the forward pass waits for it), but later in-place operations of the
            model will change it, so the callback must consume it (draw, measure, write) or
            clone it before returning, and must not modify it.
        model_label: how error messages name the model: the spec the commands load it from
            (their hints say ``featuremaps layers SPEC``); default its class name, with hints
            that say ``fm.list_layers(model)``.
        probe: run the shape probes that decide layouts (see the module docstring); ``None``
            (default) runs them only when the model has module types that need them.
        input_layout: the layout of a tensor ``inputs`` (default: ``NCHW`` for 4-D, ``NCDHW``
            for 5-D, unknown otherwise); ``"NCL"`` for signals.

    Returns:
        A :class:`Capture` with records in execution order and the selected modules that never ran.

    Raises:
        LayerError: a pattern or type selects nothing (with the closest names).
        CaptureError: the forward pass failed (with the module it failed in and the input shape).
    """
    if not isinstance(inputs, (torch.Tensor, tuple, Mapping)):
        raise InputError(
            f"capture() got inputs of type {type(inputs).__name__}; expected a tensor, a tuple of "
            "positional arguments or a dict of keyword arguments"
        )
    label = model_label or type_name(model)
    patterns = as_patterns(layers)
    type_filter = as_patterns(types)
    selected = select_modules(model, patterns, type_filter, containers, model_label)
    kept: list[LayerRecord] = []
    no_tensor: list[NoTensor] = []
    hit: set[str] = set()  # the patterns that kept at least one call
    count = 0
    keep_copy = copy or on_record is None  # kept records must never alias live tensors

    def emit(
        path: str,
        module: nn.Module,
        call: int,
        key: str | None,
        t: torch.Tensor,
        layout: Any,
        index: int | None = None,
        copied: bool = False,
    ) -> None:
        nonlocal count
        record = LayerRecord(
            name=record_name(path, call, key),
            module=path,
            call=call,
            module_type=type_name(module),
            output_key=key,
            index=count if index is None else index,
            tensor=t.detach().clone() if keep_copy and not copied else t.detach(),
            layout=layout.name,
            layout_note=layout.note,
        )
        if index is None:
            count += 1
        if on_record is None:
            kept.append(record)
        else:
            on_record(record)

    if isinstance(model, torch.jit.ScriptModule):
        output, _ = run_hooked(model, inputs, {}, _ignore, train=train, grad=grad)
        for key, tensor in walk(output, None):
            emit("output", model, 1, key, tensor, layouts.decide(tuple(tensor.shape), ""))
        not_run = tuple(NotRun(p, type_name(m), SCRIPTED) for p, m in selected.items() if p)
        return Capture(tuple(kept), not_run, count, output)

    # Every leaf is hooked so that layouts can be followed from module to module; records are
    # made only for the selected modules.
    leaves = select_modules(model, None, None, False, model_label)
    hooked = {**leaves, **selected}
    wanted = set(selected)
    self_describing = not layouts.needs_probes([type_name(m) for m in hooked.values()])
    # Known blocks (ViT, Swin, ConvNeXt) settle the layouts inside them without probes.
    rules = {} if self_describing or probe else pattern_rules(model)
    if probe is None:
        uncovered = [type_name(m) for m in hooked.values() if id(m) not in rules]
        probe = layouts.needs_probes(uncovered)
    if probe:
        rules = {}
    probes = cached_probes(model, inputs, hooked, train) if probe else {}
    closed = self_describing and not probe
    tracker = LayoutTracker(model, inputs, probes, input_layout, closed=closed, rules=rules)

    # Records whose layout needs probes that did not run (a Linear giving tokens in a model
    # of otherwise self-describing modules) are held, copied, until the probes have run.
    held: list[tuple[int, str, nn.Module, int, str | None, torch.Tensor]] = []

    def take(
        path: str, module: nn.Module, call: int, key: str | None, t: torch.Tensor, layout: Any
    ) -> None:
        nonlocal count
        if layout is not PENDING:
            emit(path, module, call, key, t, layout)
            return
        held.append((count, path, module, call, key, t.detach().clone()))
        count += 1

    def sink(out: HookedOutput) -> None:
        layout = tracker.decide(out.name, out.module, out.key, out.tensor, out.given)
        if out.path in wanted and _kept(out.path, out.call):
            take(out.path, out.module, out.call, out.key, out.tensor, layout)

    def _kept(path: str, call: int) -> bool:
        if patterns is None:
            return True
        found = matching_patterns(path, call, patterns)
        hit.update(found)
        return bool(found)

    def other(path: str, module: nn.Module, call: int, returned: str) -> None:
        if path in wanted and _kept(path, call):
            no_tensor.append(
                NoTensor(record_name(path, call, None), path, call, type_name(module), returned)
            )

    def attention(
        path: str,
        module: nn.Module,
        call: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: Any,
    ) -> None:
        if not _kept(path, call):
            return
        if _returned_weights(output):
            return  # the module returned its own per-head weights: already a record
        assert isinstance(module, nn.MultiheadAttention)
        weights = _recomputed(module, args, kwargs)
        query = args[0] if args else kwargs.get("query")
        given = tracker.layout_of(query) if isinstance(query, torch.Tensor) else None
        tokens = layouts.get(given, 3) if given else None
        if tokens is None or tokens.grid is None:  # e.g. a query transposed on the way in
            tokens = tracker.final.get(record_name(path, call, "0"))
        layout = layouts.attention(tokens, tuple(weights.shape), RECOMPUTED)
        emit(path, module, call, ATTENTION_KEY, weights, layout, copied=True)

    # Attention is recomputed for the MultiheadAttention modules a pattern names or matches
    # (they are containers: ``*`` patterns select their leaves), and for all of them when every
    # layer is selected; never under a type filter that leaves them out.
    attending = {
        p: m
        for p, m in model.named_modules()
        if isinstance(m, nn.MultiheadAttention)
        and (
            p in selected
            or (
                type_filter is None
                and (patterns is None or any(pattern_matches_module(q, p) for q in patterns))
            )
        )
    }
    output, calls = run_hooked(
        model,
        inputs,
        hooked,
        sink,
        train=train,
        grad=grad,
        on_other=other,
        on_call=attention if attending else None,
        calls_of=attending,
    )
    outputs: dict[str, str] = {}
    if "" not in hooked:  # a model that is its own only layer already gave "output"
        name = OUTPUT if OUTPUT not in hooked else f"{OUTPUT} (model)"
        for key, tensor in walk(output, None):
            recorded = tracker.recorded(tensor)
            if recorded is not None:
                outputs[key or ""] = recorded
                continue
            full = record_name(name, 1, key)
            layout = tracker.decide(full, model, key, tensor, None)
            if type_filter is None and _kept(name, 1):
                take(name, model, 1, key, tensor, layout)
                outputs[key or ""] = full
    if tracker.pending:
        tracker.redecide(cached_probes(model, inputs, hooked, train))
        probe = True
    for index, path, module, call, key, t in held:
        final = tracker.final[record_name(path, call, key)]
        emit(path, module, call, key, t, final, index=index, copied=True)
    kept.sort(key=lambda r: r.index)
    not_run = tuple(
        NotRun(path, type_name(selected[path]), _never_called(selected[path]))
        for path, n in calls.items()
        if n == 0 and path in wanted
    )
    if patterns is not None:
        _check_patterns_hit(patterns, hit, {p: calls[p] for p in selected}, label, model_label)
    return Capture(
        tuple(kept),
        not_run,
        count,
        output,
        outputs=outputs,
        probed=bool(probe),
        no_tensor=tuple(no_tensor),
    )


#: The output key of the attention probabilities recomputed for a ``MultiheadAttention`` call
#: that did not return them (record ``<module path>.attention``).
ATTENTION_KEY = "attention"
RECOMPUTED = (
    "recomputed: softmax(Q Kᵀ / √d_head) per head from the call's query and key and the "
    "module's own projections"
)


def _returned_weights(output: Any) -> bool:
    """Whether a ``MultiheadAttention`` call returned its per-head weights (N, heads, L, S)."""
    return (
        isinstance(output, tuple)
        and len(output) > 1
        and isinstance(output[1], torch.Tensor)
        and output[1].dim() == 4
    )


def _recomputed(
    module: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> torch.Tensor:
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")
    given = dict(zip(names, args, strict=False)) | kwargs
    with torch.no_grad():
        return recompute_attention(
            module,
            given["query"],
            given["key"],
            given["value"],
            key_padding_mask=given.get("key_padding_mask"),
            attn_mask=given.get("attn_mask"),
        ).detach()


def _ignore(out: HookedOutput) -> None:
    return None


def _never_called(module: nn.Module) -> str:
    """Why a module may never run: a parent can use a module's weights without calling it, but
    a module without weights is only ever skipped."""
    has_weights = next(iter(module.parameters()), None) is not None
    return NEVER_CALLED if has_weights else NEVER_CALLED_NO_WEIGHTS


def _check_patterns_hit(
    patterns: tuple[str, ...],
    hit: set[str],
    calls: Mapping[str, int],
    label: str,
    spec: str | None,
) -> None:
    """A pattern that kept no call of a module that ran selects nothing: an error, whatever its
    form (``name#k`` beyond the calls made, a glob whose modules ran fewer times)."""
    for pattern in patterns:
        if pattern in hit:
            continue
        ran = {p: n for p, n in calls.items() if n and pattern_matches_module(pattern, p)}
        if not ran:
            continue  # its modules never ran: listed in not_run with the reason
        path, n = max(ran.items(), key=lambda item: item[1])
        names = [record_name(path, k, None) for k in range(1, n + 1)]
        shown = ", ".join(names[:4]) + (", ..." if n > 4 else "")
        raise LayerError(
            f"layer '{pattern}' matches no call in {label}: '{path}' ran {n} "
            f"time{'s' if n != 1 else ''} ({shown}); did you mean '{names[-1]}'? Run "
            f"{layers_hint(spec)} to list every call."
        )


@contextlib.contextmanager
def zero_channels(
    model: nn.Module,
    masks: Mapping[str, Sequence[int]],
    widths: Mapping[str, int] | None = None,
) -> Iterator[dict[str, int]]:
    """Zero the given channels of the named records' outputs while the context is open.

    ``masks`` maps record names (``layer4.1.conv2``, ``layer1.0.relu#2``) to channel indices.
    Each selected call returns a copy of its output with those channels set to 0 (a forward hook
    that replaces the output), so later layers see the masked value, in-place operations included,
    and the model's parameters are never touched. The yielded dict counts, per record name, the
    forward passes in which the mask was applied; every hook is removed on exit. ``widths``
    optionally gives the channel count each record must have (that of the ranking the masks
    come from), so masks made for another model are refused instead of applied.

    Raises:
        LayerError: a name is not a call of a module of ``model``.
        OptionError: a channel index is out of range, or a width differs from ``widths`` (at the
            first forward pass).
        CaptureError: the record's output is not a single tensor with a channel axis.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise OptionError(
            "channels of a TorchScript model cannot be zeroed (it runs no Python hooks); "
            "load the model as Python code (a zoo name or 'package.module:factory')"
        )
    modules = {p: m for p, m in model.named_modules() if p}
    wanted: dict[str, dict[int, tuple[str, torch.Tensor]]] = {}
    for name, channels in masks.items():
        path, call = split_record(name, modules)
        if call == 0:
            raise LayerError(
                f"layer '{name}' not found in {type_name(model)}"
                f"{suggest(path, list(modules)) or '.'} Masks need a module's own output "
                "(a name from 'featuremaps layers', optionally with #k for its k-th call)."
            )
        index = torch.as_tensor(sorted({int(c) for c in channels}), dtype=torch.long)
        wanted.setdefault(path, {})[call] = (name, index)
    applied = dict.fromkeys(masks, 0)
    calls = dict.fromkeys(wanted, 0)
    # The channel axis of each masked record is the one capture reports (and statistics and
    # rankings use): learnt by one capture of those records on the first input seen.
    axes: dict[str, int | None] = {}
    learning = False

    def reset(module: nn.Module, args: Any) -> None:
        nonlocal learning
        if learning:
            return
        for path in calls:
            calls[path] = 0
        if not axes and args:
            learning = True  # the hooks below stand aside during this pass
            try:
                found = capture(model, args if len(args) > 1 else args[0], layers=list(masks))
            finally:
                learning = False
            for record in found:
                axes[record.name] = record.layout_info.channel_axis

    def make_hook(path: str) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if learning:
                return None
            calls[path] += 1
            entry = wanted[path].get(calls[path])
            if entry is None:
                return None
            name, index = entry
            if not isinstance(output, torch.Tensor) or output.dim() < 2:
                kind = type(output).__name__
                raise CaptureError(
                    f"'{name}' ({type_name(module)}) returns {kind} "
                    f"{tuple(output.shape) if isinstance(output, torch.Tensor) else ''}; zeroing "
                    "channels needs one tensor with a channel axis: pick another layer"
                )
            axis = axes.get(name)
            if axis is None:
                raise CaptureError(
                    f"'{name}' ({type_name(module)}) returns a tensor of shape "
                    f"{tuple(output.shape)} without a channel axis; pick another layer"
                )
            size = output.shape[axis]
            expected = widths.get(name) if widths is not None else None
            if expected is not None and expected != size:
                raise OptionError(
                    f"'{name}' has {size} channels but its ranking lists {expected}; use "
                    "statistics made with the same model and input size (featuremaps stats)"
                )
            if len(index) and int(index[-1]) >= size:
                raise OptionError(
                    f"channel {int(index[-1])} does not exist in '{name}', which has {size} "
                    "channels; check the stats file or --layers"
                )
            applied[name] += 1
            return output.index_fill(axis % output.dim(), index.to(output.device), 0)

        return hook

    handles = [model.register_forward_pre_hook(reset)]
    try:
        for path in wanted:
            handles.append(modules[path].register_forward_hook(make_hook(path)))
        yield applied
    finally:
        for handle in handles:
            handle.remove()
