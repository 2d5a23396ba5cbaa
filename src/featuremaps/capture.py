"""Capture: the only code that registers hooks on a model; it returns plain records.

Stage three of the flow (input → model → **capture** → transforms → render → io). Forward hooks are
registered on the selected modules, the model runs once, and every call of every selected module
yields one :class:`LayerRecord` per output tensor, in execution order.

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
module). For models with module types that do not say their own layout (LayerNorm, attention,
Permute, RNNs, custom leaves), three cheap probe passes run first, recording only shapes: one
sample, two samples (the batch axis is the one that doubles) and one sample at a second input size
(spatial axes move, channels do not). Plain CNNs run once, as before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import os
import traceback
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from featuremaps import layouts
from featuremaps._errors import CaptureError, FeaturemapsError, InputError, LayerError, OptionError
from featuremaps.attention import recompute_attention
from featuremaps.naming import record_name, suggest, type_name
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


@dataclass(frozen=True, slots=True)
class HookedOutput:
    """One output tensor of one module call, as :func:`run_hooked`'s hook sees it: ``tensor`` is
    still exactly what the module returned; ``given`` is the call's first tensor argument (or
    None); ``call`` counts the module's calls from 1; ``key`` says where in a tuple or dict
    output the tensor sits (None for a lone tensor)."""

    path: str
    module: nn.Module
    call: int
    key: str | None
    tensor: torch.Tensor
    given: torch.Tensor | None

    @property
    def name(self) -> str:
        """The record name of this output (:func:`featuremaps.naming.record_name`)."""
        return record_name(self.path, self.call, self.key)


Sink = Callable[[HookedOutput], None]


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
SCRIPTED = "TorchScript submodules run without Python hooks; only the model output is captured"


def _walk(value: Any, key: str | None) -> Iterator[tuple[str | None, torch.Tensor]]:
    """Yield ``(key path, tensor)`` for every tensor inside a module's output."""
    if isinstance(value, torch.Tensor):
        yield key, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _walk(v, str(k) if key is None else f"{key}.{k}")
    elif isinstance(value, (tuple, list)):
        fields = getattr(value, "_fields", None)  # namedtuples get their field names
        for i, v in enumerate(value):
            k = fields[i] if fields else str(i)
            yield from _walk(v, k if key is None else f"{key}.{k}")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for item in dataclasses.fields(value):
            k = item.name
            yield from _walk(getattr(value, k), k if key is None else f"{key}.{k}")


def returned_type(value: Any) -> str:
    """How a module output without tensors is named in listings: ``NoneType``, ``ImageList``,
    ``tuple (ImageList, NoneType)``, ``dict (no tensors)``."""
    kind = type(value).__name__
    if isinstance(value, (tuple, list)) and value:
        items = [type(v).__name__ for v in value[:4]] + (["..."] if len(value) > 4 else [])
        return f"{kind} ({', '.join(items)})"
    if isinstance(value, (Mapping, tuple, list)) or dataclasses.is_dataclass(value):
        return f"{kind} (no tensors)"
    return kind


def _call_model(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def _describe_inputs(inputs: Any) -> str:
    if isinstance(inputs, torch.Tensor):
        return f"input of shape {tuple(inputs.shape)}"
    return f"inputs of type {type(inputs).__name__}"


OtherSink = Callable[[str, nn.Module, int, str], None]
#: ``(path, module, call, args, kwargs, output)`` after a call of a module in ``calls_of``.
CallSink = Callable[[str, nn.Module, int, tuple[Any, ...], dict[str, Any], Any], None]


def run_hooked(
    model: nn.Module,
    inputs: Any,
    modules: Mapping[str, nn.Module],
    sink: Sink,
    *,
    train: bool = False,
    grad: bool = False,
    on_other: OtherSink | None = None,
    on_call: CallSink | None = None,
    calls_of: Mapping[str, nn.Module] | None = None,
) -> tuple[Any, dict[str, int]]:
    """Run ``model`` once with a forward hook on each of ``modules``; return output and call counts.

    ``sink`` is called inside the hook with each output tensor (:class:`HookedOutput`), while
    the value is still exactly what the module returned, with the call's first tensor argument,
    so a consumer can follow values from module to module.
    ``on_other(path, module, call, returned)`` is called for a call whose output holds no tensor,
    with the type it returned (:func:`returned_type`). ``on_call(path, module, call, args,
    kwargs, output)`` is called after each call of the modules in ``calls_of`` (after ``sink``),
    with the call's own arguments (attention is recomputed from them); ``call`` counts that
    module's calls. The model's train/eval flags are restored
    module by module afterwards, and every hook is removed even if the forward fails.

    Raises:
        CaptureError: the forward pass failed; the message names the module that was running
            (or says that the model's own code failed, outside any module), the file, line and
            function where the exception was raised, and the exception's own text.
    """
    calls = dict.fromkeys(modules, 0)
    # The modules running right now, outermost first: a failure belongs to the innermost one,
    # and to none when the stack is empty (the model's own forward code).
    active: list[str] = []
    finished: list[str] = []
    handles = []

    def make_hook(path: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            calls[path] += 1
            given = args[0] if args and isinstance(args[0], torch.Tensor) else None
            found = False
            for key, tensor in _walk(output, None):
                found = True
                sink(HookedOutput(path, module, calls[path], key, tensor, given))
            if not found and on_other is not None:
                on_other(path, module, calls[path], returned_type(output))

        return hook

    call_counts = dict.fromkeys(calls_of or {}, 0)

    def make_call_hook(path: str) -> Callable[[nn.Module, Any, Any, Any], None]:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            call_counts[path] += 1
            if on_call is not None:
                on_call(path, module, call_counts[path], tuple(args), dict(kwargs), output)

        return hook

    def make_enter(path: str) -> Callable[[nn.Module, Any], None]:
        def enter(module: nn.Module, args: Any) -> None:
            active.append(path)

        return enter

    def make_leave(path: str) -> Callable[[nn.Module, Any, Any], None]:
        def leave(module: nn.Module, args: Any, output: Any) -> None:
            if active and active[-1] == path:
                active.pop()
            finished[:] = [path]

        return leave

    modes = {m: m.training for m in model.modules()}
    try:
        for path, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(path)))
        for path, module in (calls_of or {}).items():
            hook = make_call_hook(path)
            handles.append(module.register_forward_hook(hook, with_kwargs=True))
        for path, module in model.named_modules():
            if path and not isinstance(module, torch.jit.ScriptModule):
                handles.append(module.register_forward_pre_hook(make_enter(path)))
                handles.append(module.register_forward_hook(make_leave(path)))
        model.train(train)
        with torch.set_grad_enabled(grad):
            try:
                output = _call_model(model, inputs)
            except FeaturemapsError:
                raise  # our own errors from a record consumer already say what is wrong
            except Exception as exc:  # re-raised with the user's context, chain kept
                raise _forward_failure(model, inputs, exc, active, finished) from exc
    finally:
        for handle in handles:
            handle.remove()
        for m, was_training in modes.items():
            m.training = was_training
    return output, calls


_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_OWN_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _raised_at(exc: BaseException) -> str:
    """``file:line (in function)`` of the deepest frame of the traceback in the model's code:
    not inside torch (whose modules only call into the model) and not inside featuremaps."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not os.path.abspath(f.filename).startswith((_TORCH_DIR, _OWN_DIR))
    ]
    if not frames:
        return ""
    frame = frames[-1]
    return f" at {frame.filename}:{frame.lineno} (in {frame.name})"


def _exception_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:1000]}" if text else type(exc).__name__


def _forward_failure(
    model: nn.Module, inputs: Any, exc: BaseException, active: list[str], finished: list[str]
) -> CaptureError:
    where = _raised_at(exc)
    what = _exception_text(exc)
    if active or next(iter(model.children()), None) is None:
        # A model without submodules is its own only layer: the failure is that layer's.
        name = f"'{active[-1]}' " if active else "the model "
        kind = type(model.get_submodule(active[-1]) if active else model).__name__
        return CaptureError(
            f"the model's forward pass failed in {name}({kind}){where} on "
            f"{_describe_inputs(inputs)}: {what}; check the input size and channel count the "
            "model expects"
        )
    if not where:  # no frame of the model's code: calling it failed (e.g. its signature)
        return CaptureError(
            f"the model's forward pass failed on {_describe_inputs(inputs)}: {what}; check "
            "the arguments its forward takes"
        )
    when = f"after its module '{finished[0]}' returned" if finished else "before any module ran"
    return CaptureError(
        f"the model's forward pass failed in its own forward code, outside any submodule"
        f"{where}, {when}, on {_describe_inputs(inputs)}: {what}"
    )


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
        model_label: how error messages name the model (default: its class name).
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
    selected = select_modules(model, patterns, type_filter, containers, label)
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
        for key, tensor in _walk(output, None):
            emit("output", model, 1, key, tensor, layouts.decide(tuple(tensor.shape), ""))
        not_run = tuple(NotRun(p, type_name(m), SCRIPTED) for p, m in selected.items() if p)
        return Capture(tuple(kept), not_run, count, output)

    # Every leaf is hooked so that layouts can be followed from module to module; records are
    # made only for the selected modules.
    leaves = select_modules(model, None, None, False, label)
    hooked = {**leaves, **selected}
    wanted = set(selected)
    types_of = [type_name(m) for m in hooked.values()]
    if probe is None:
        probe = layouts.needs_probes(types_of)
    probes = _cached_probes(model, inputs, hooked, train) if probe else {}
    tracker = _LayoutTracker(model, inputs, probes, input_layout, closed=not probe)

    # Records whose layout needs probes that did not run (a Linear giving tokens in a model
    # of otherwise self-describing modules) are held, copied, until the probes have run.
    held: list[tuple[int, str, nn.Module, int, str | None, torch.Tensor]] = []

    def take(
        path: str, module: nn.Module, call: int, key: str | None, t: torch.Tensor, layout: Any
    ) -> None:
        nonlocal count
        if layout is not _PENDING:
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
        name = _OUTPUT if _OUTPUT not in hooked else f"{_OUTPUT} (model)"
        for key, tensor in _walk(output, None):
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
        tracker.redecide(_cached_probes(model, inputs, hooked, train))
        probe = True
    for index, path, module, call, key, t in held:
        final = tracker.final[record_name(path, call, key)]
        emit(path, module, call, key, t, final, index=index, copied=True)
    kept.sort(key=lambda r: r.index)
    not_run = tuple(
        NotRun(path, type_name(selected[path]), NEVER_CALLED)
        for path, n in calls.items()
        if n == 0 and path in wanted
    )
    if patterns is not None:
        _check_patterns_hit(patterns, hit, {p: calls[p] for p in selected}, label)
    return Capture(
        tuple(kept),
        not_run,
        count,
        output,
        outputs=outputs,
        probed=bool(probe),
        no_tensor=tuple(no_tensor),
    )


_OUTPUT = "output"

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


def _attrs(module: nn.Module) -> dict[str, Any]:
    """The attributes of a module that say what its output's axes are."""
    found: dict[str, Any] = {}
    batch_first = getattr(module, "batch_first", None)
    if isinstance(batch_first, bool):
        found["batch_first"] = batch_first
    dims = getattr(module, "dims", None)
    if isinstance(dims, (list, tuple)) and all(isinstance(d, int) for d in dims):
        found["dims"] = tuple(dims)
    return found


_PENDING = layouts.Layout("pending", None, None, None, "waiting for probes")
_PROBE_HELPS = frozenset({"undecided", "NLD", "LND->NLD"})


def _version(t: torch.Tensor) -> int | None:
    """The tensor's in-place version counter; ``None`` for inference tensors, which keep none."""
    try:
        return int(t._version)
    except RuntimeError:
        return None


class _LayoutTracker:
    """Decides each output's layout during a pass, following layouts from module to module.

    A tensor is followed by identity (the same object, alive): in-place modules return the very
    tensor they were given, and a freed tensor's memory reused by a new one is never mistaken
    for it. Without probes, a decision that probes could change is left pending
    (:data:`_PENDING`), with everything needed to take it again once they have run
    (:meth:`redecide`).
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: Any,
        probes: Mapping[str, layouts.Probe],
        input_layout: str | None,
        closed: bool,
    ) -> None:
        self.model = model
        prefix, source = layouts.prefix_tokens(model) if probes else (None, "")
        self.facts = layouts.Facts(prefix=prefix, prefix_source=source, closed=closed)
        self.probes = probes
        self.can_wait = not probes and closed
        # id -> (the tensor, weakly; its version when recorded; the step that produced it).
        self.objects: dict[int, tuple[weakref.ref[torch.Tensor], int | None, int]] = {}
        self.batch_one = isinstance(inputs, torch.Tensor) and inputs.dim() > 0 and len(inputs) == 1
        # Every decision in order, to take them again: name, type, attrs, key, shape, the step
        # that produced the module's input (-1: the model input, None: unknown).
        self.steps: list[tuple[str, str, dict[str, Any], str | None, tuple[int, ...], int | None]]
        self.steps = []
        self.decided: list[str] = []
        self.pending = False
        self.final: dict[str, layouts.Layout] = {}
        self.input_layout: str | None = None
        if isinstance(inputs, torch.Tensor):
            self.input_layout = input_layout or {4: "NCHW", 5: "NCDHW"}.get(inputs.dim())
            self.objects[id(inputs)] = (weakref.ref(inputs), _version(inputs), -1)

    def _step_of(self, t: torch.Tensor | None) -> int | None:
        entry = self.objects.get(id(t)) if t is not None else None
        if entry is None or entry[0]() is not t:
            return None
        return entry[2]

    def _layout_of(self, step: int | None) -> str | None:
        if step is None:
            return None
        return self.input_layout if step < 0 else self.decided[step]

    def decide(
        self,
        name: str,
        module: nn.Module,
        key: str | None,
        t: torch.Tensor,
        given: torch.Tensor | None,
    ) -> layouts.Layout:
        given_step = self._step_of(given)
        given_layout = self._layout_of(given_step)
        shape = tuple(int(n) for n in t.shape)
        attrs = _attrs(module)
        self.steps.append((name, type_name(module), attrs, key, shape, given_step))
        if given_layout == _PENDING.name:
            layout = _PENDING
        else:
            layout = self._decide(name, type_name(module), attrs, key, shape, given_layout)
            if self.can_wait and layout.name in _PROBE_HELPS:
                layout = _PENDING
        self.decided.append(layout.name)
        self.objects[id(t)] = (weakref.ref(t), _version(t), len(self.steps) - 1)
        if layout is _PENDING:
            # Something here needs probes, so the model is not made of channels-first modules
            # only: nothing later is channels-first by elimination.
            self.pending = True
            self.facts.closed = False
        return layout

    def _decide(
        self,
        name: str,
        module_type: str,
        attrs: dict[str, Any],
        key: str | None,
        shape: tuple[int, ...],
        given_layout: str | None,
    ) -> layouts.Layout:
        probe = self.probes.get(name)
        if probe is not None and probe.one is None and self.batch_one:
            probe = replace(probe, one=shape)  # this pass is the 1-sample probe
        layout = layouts.decide(
            shape,
            module_type,
            given_layout,
            probe=probe,
            facts=self.facts,
            attrs=attrs,
            key=key,
        )
        if layout.name == layouts.ATTENTION.name and key == "1":  # weights the module returned
            tokens = self.final.get(name[: -len(key)] + "0")
            layout = layouts.attention(tokens, shape, layout.note)
        if layout.name == "NCHW" and len(shape) == 4:
            resized = probe.resized if probe is not None else None
            other = (resized[2], resized[3]) if resized is not None and len(resized) == 4 else None
            self.facts.grids.append((name, (shape[2], shape[3]), other, shape[1]))
        self.final[name] = layout
        return layout

    def redecide(self, probes: Mapping[str, layouts.Probe]) -> None:
        """Take every decision again, in order, with the probes' evidence."""
        self.probes = probes
        prefix, source = layouts.prefix_tokens(self.model)
        self.facts = layouts.Facts(prefix=prefix, prefix_source=source, closed=False)
        for i, (name, module_type, attrs, key, shape, given_step) in enumerate(self.steps):
            given_layout = self._layout_of(given_step)
            self.decided[i] = self._decide(name, module_type, attrs, key, shape, given_layout).name
        self.pending = False

    def layout_of(self, tensor: torch.Tensor) -> str | None:
        """The layout decided for ``tensor`` when a recorded module returned it (or the input)."""
        return self._layout_of(self._step_of(tensor))

    def recorded(self, tensor: torch.Tensor) -> str | None:
        """The record that holds exactly ``tensor`` (same object, not changed in place since)."""
        entry = self.objects.get(id(tensor))
        version = _version(tensor)
        if entry is None or entry[0]() is not tensor or version is None or entry[1] != version:
            return None
        return self.steps[entry[2]][0] if entry[2] >= 0 else None


def _probe_inputs(
    inputs: torch.Tensor,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """One sample, two samples, and one sample at a second size (spatial axes grown by
    different amounts, so each moves differently; ``None`` for inputs without spatial axes)."""
    one = inputs[:1]
    two = torch.cat([one, one])
    first = None if len(inputs) == 1 else one  # the capture pass itself is the 1-sample probe
    if inputs.dim() < 3 or not inputs.is_floating_point():
        return first, two, None
    spatial = tuple(int(n) for n in one.shape[2:])
    # Multiples of 32 keep patch embeddings and stride-32 networks aligned; unequal growth tells
    # the spatial axes apart (64 rows, 32 columns; 8 more frames for clips).
    grow = {1: (64,), 2: (64, 32), 3: (8, 64, 32)}.get(len(spatial))
    if grow is None:
        return one, two, None
    size = tuple(n + g for n, g in zip(spatial, grow, strict=True))
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
    resized = torch.nn.functional.interpolate(one, size=size, mode=mode, align_corners=False)
    return first, two, resized


# Probe results per model and input geometry, so a data-set pass (one capture per batch) probes
# once. Keyed weakly by the model: a model that is freed takes its entries with it.
_PROBES: weakref.WeakKeyDictionary[nn.Module, dict[Any, dict[str, layouts.Probe]]]
_PROBES = weakref.WeakKeyDictionary()


def _cached_probes(
    model: nn.Module, inputs: Any, modules: Mapping[str, nn.Module], train: bool
) -> dict[str, layouts.Probe]:
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 1:
        return _probe_shapes(model, inputs, modules, train)
    key = (
        tuple(inputs.shape[1:]),
        len(inputs) == 1,
        inputs.dtype,
        str(inputs.device),
        tuple(modules),
        train,
    )
    per_model = _PROBES.setdefault(model, {})
    if key not in per_model:
        per_model[key] = _probe_shapes(model, inputs, modules, train)
    return per_model[key]


def _probe_shapes(
    model: nn.Module, inputs: Any, modules: Mapping[str, nn.Module], train: bool
) -> dict[str, layouts.Probe]:
    """Each record's output shape for one sample, two samples and a second input size.

    Only shapes are kept (no copies). A probe the model refuses (a fixed input size, a batch
    norm in training mode with one sample) is left out; its evidence is then missing.
    """
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 2 or inputs.shape[0] < 1:
        return {}
    runs: list[dict[str, tuple[int, ...]] | None] = []
    for probe_input in _probe_inputs(inputs):
        if probe_input is None:
            runs.append(None)
            continue
        shapes: dict[str, tuple[int, ...]] = {}

        def sink(out: HookedOutput, into: dict[str, tuple[int, ...]] = shapes) -> None:
            into[out.name] = tuple(int(n) for n in out.tensor.shape)

        try:
            output, _ = run_hooked(model, probe_input, modules, sink, train=train)
        except CaptureError:
            runs.append(None)
            continue
        name = _OUTPUT if _OUTPUT not in modules else f"{_OUTPUT} (model)"
        for key, tensor in _walk(output, None):
            shapes.setdefault(record_name(name, 1, key), tuple(int(n) for n in tensor.shape))
        runs.append(shapes)
    one, two, resized = runs
    names = set().union(*(r for r in runs if r is not None))
    return {
        n: layouts.Probe(
            one.get(n) if one else None,
            two.get(n) if two else None,
            resized.get(n) if resized else None,
        )
        for n in names
    }


def _check_patterns_hit(
    patterns: tuple[str, ...], hit: set[str], calls: Mapping[str, int], label: str
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
            f"'featuremaps layers {label}' to list every call."
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
