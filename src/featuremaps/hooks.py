"""Hooks: run a model once with a forward hook on chosen modules, each output handed to a sink.

The mechanism under stage three of the flow (input → model → **capture** → transforms → render →
io): :func:`featuremaps.capture.capture` builds its records on it, and so do the layout probes
(:mod:`featuremaps.layouts.evidence`), the layer listing and the geometry tracer. A hook sees each
output tensor of a call (:class:`HookedOutput`) while it is still exactly what the module returned;
what happens to it is the :data:`Sink`'s business. A forward pass that fails is reported as a
:class:`~featuremaps._errors.CaptureError` naming the module that was running, the file and line in
the model's code, and the exception's own text.
"""

from __future__ import annotations

import dataclasses
import os
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from featuremaps._errors import CaptureError, FeaturemapsError
from featuremaps.naming import record_name

__all__ = [
    "OUTPUT",
    "CallSink",
    "HookedOutput",
    "OtherSink",
    "Sink",
    "replaced",
    "returned_type",
    "run_hooked",
    "walk",
]

#: The record name of the model's own return value (``output.<key>`` for its parts); ``output
#: (model)`` where a module of the model is called ``output`` already.
OUTPUT = "output"


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


#: The consumer of a hooked pass: :func:`run_hooked` calls it inside the forward hook with each
#: output tensor (:class:`HookedOutput`), while the value is still exactly what the module
#: returned. It must not keep a reference to ``out.tensor`` without copying it (later in-place
#: operations of the model change it), and its own errors stop the pass. A sink that returns a
#: tensor replaces that output for the rest of the model (same value, e.g. a copy: the class
#: maps keep the returned tensor for autograd and let the model go on with the copy); ``None``
#: leaves the output as it is.
Sink = Callable[[HookedOutput], "torch.Tensor | None"]


def walk(value: Any, key: str | None) -> Iterator[tuple[str | None, torch.Tensor]]:
    """Yield ``(key path, tensor)`` for every tensor inside a module's output: tuples, lists,
    dicts, named tuples and dataclasses, nested (the naming rule of :mod:`featuremaps.capture`)."""
    if isinstance(value, torch.Tensor):
        yield key, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from walk(v, str(k) if key is None else f"{key}.{k}")
    elif isinstance(value, (tuple, list)):
        fields = getattr(value, "_fields", None)  # namedtuples get their field names
        for i, v in enumerate(value):
            k = fields[i] if fields else str(i)
            yield from walk(v, k if key is None else f"{key}.{k}")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for item in dataclasses.fields(value):
            k = item.name
            yield from walk(getattr(value, k), k if key is None else f"{key}.{k}")


def replaced(value: Any, key: str | None, new: Mapping[str | None, torch.Tensor]) -> Any:
    """``value`` (a module's output) with the tensors at the key paths of ``new`` (the keys
    :func:`walk` yields) replaced; containers are rebuilt with their own types."""
    if isinstance(value, torch.Tensor):
        return new.get(key, value)
    if isinstance(value, Mapping):
        items = [
            (k, replaced(v, str(k) if key is None else f"{key}.{k}", new)) for k, v in value.items()
        ]
        if isinstance(value, dict):
            return _same_dict(value, items)
        return type(value)(items)  # type: ignore[call-arg]
    if isinstance(value, (tuple, list)):
        fields = getattr(value, "_fields", None)
        parts = []
        for i, v in enumerate(value):
            k = fields[i] if fields else str(i)
            parts.append(replaced(v, k if key is None else f"{key}.{k}", new))
        if fields:
            return type(value)(*parts)
        return type(value)(parts)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: replaced(
                getattr(value, f.name), f.name if key is None else f"{key}.{f.name}", new
            )
            for f in dataclasses.fields(value)
            if f.init
        }
        return dataclasses.replace(value, **changes)
    return value


def _same_dict(value: dict[Any, Any], items: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """A dict (or dict subclass such as OrderedDict) of the same type holding ``items``."""
    rebuilt = value.copy()
    rebuilt.update(items)
    return rebuilt


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

    def make_hook(path: str) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            calls[path] += 1
            given = args[0] if args and isinstance(args[0], torch.Tensor) else None
            found = False
            new: dict[str | None, torch.Tensor] = {}
            for key, tensor in walk(output, None):
                found = True
                swapped = sink(HookedOutput(path, module, calls[path], key, tensor, given))
                if swapped is not None:
                    new[key] = swapped
            if not found and on_other is not None:
                on_other(path, module, calls[path], returned_type(output))
            return replaced(output, None, new) if new else None

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
