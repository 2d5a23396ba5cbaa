"""Class activation maps: which of a layer's activations mattered for the model's answer.

Pure computation on a model and its input tensor (no files, no pictures): :func:`class_maps`
runs the passes of :mod:`~featuremaps.classmaps.passes` (activations as the layer returned them,
gradients of the target by ``torch.autograd.grad``), applies the methods of
:mod:`~featuremaps.classmaps.methods` at the layer's own resolution, and measures each map with
:mod:`~featuremaps.classmaps.trust`. Layers are found by their record names (``name#2`` for a
module's second call) and may have any layout with cells: a 2-D grid (channels first or last),
tokens on their patch grid (prefix tokens excluded), a 1-D signal or a 3-D volume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from featuremaps._errors import GeometryError, OptionError
from featuremaps.classmaps.methods import (
    GRADIENT_METHODS,
    METHODS,
    channel_weighted,
    eigencam,
    gradient_map,
)
from featuremaps.classmaps.passes import Call, as_cells, find_calls, layer_gradients, masked_scores
from featuremaps.classmaps.targets import (
    Region,
    Resolved,
    Target,
    TargetSpec,
    chosen_output,
    resolve_targets,
    target_metric,
    target_scores,
)
from featuremaps.classmaps.trust import (
    SANITY_THRESHOLD,
    Curves,
    cell_regions,
    curves,
    random_orders,
    rank_correlation,
    reinitialised,
    resettable,
    value_order,
)
from featuremaps.geometry import MapGeometry, compute_geometry, measure_geometry
from featuremaps.hooks import run_hooked
from featuremaps.naming import suggest
from featuremaps.selection import select_modules

__all__ = [
    "METHODS",
    "SANITY_THRESHOLD",
    "ClassMap",
    "Region",
    "Target",
    "TargetSpec",
    "class_maps",
    "parse_methods",
]


@dataclass(frozen=True, eq=False)
class ClassMap:
    """One class activation map of one layer call, one method and one input.

    Attributes:
        layer: the record name of the layer call (``name#2`` for a second call).
        method: one of :data:`METHODS`.
        sample: the input's index in the batch.
        target: what the map explains (:class:`Target`).
        array: the map at the layer's own resolution, float32 ``(*cells)`` (``(h, w)`` for a
            2-D layer), after the method's own ReLU, before any scaling or resizing.
        layout: the layer's layout name; ``cells`` says what the cells are in words.
        geometry: where the cells of a 2-D map sit in the input (``None``: not known, and the
            map is stretched over the input wherever it is placed).
        deletion_auc, insertion_auc: areas under the deletion and insertion curves.
        random_auc, random_insertion_auc: the same for random cell orders (the control).
        curves, random_curves: the curves themselves.
        sanity_rank_correlation: the rank correlation with the map after re-initialising the
            layers above (see :mod:`featuremaps.classmaps.trust`).
        sanity_failed: that correlation is at least :data:`SANITY_THRESHOLD`.
        notes: what else a reader must know (why a number is missing, ties, the sign rule).
    """

    layer: str
    method: str
    sample: int
    target: Target
    array: np.ndarray
    layout: str
    cells: str = ""
    geometry: MapGeometry | None = None
    deletion_auc: float | None = None
    insertion_auc: float | None = None
    random_auc: float | None = None
    random_insertion_auc: float | None = None
    curves: Curves | None = None
    random_curves: Curves | None = None
    sanity_rank_correlation: float | None = None
    sanity_failed: bool | None = None
    notes: tuple[str, ...] = field(default=())

    def __repr__(self) -> str:
        return (
            f"ClassMap({self.layer!r}, {self.method}, sample {self.sample}, "
            f"{self.target.label()}, {self.array.shape})"
        )

    def to_json(self, array: str | None = None) -> dict[str, Any]:
        """The manifest's entry for this map; ``array`` is the path of its ``.npy`` file."""
        found: dict[str, Any] = {
            "layer": self.layer,
            "method": self.method,
            "sample": self.sample,
            "target": self.target.to_json(),
            "array": array,
            "shape": list(self.array.shape),
            "range": [float(self.array.min()), float(self.array.max())]
            if self.array.size
            else None,
            "layout": self.layout,
            "deletion_auc": self.deletion_auc,
            "insertion_auc": self.insertion_auc,
            "random_auc": self.random_auc,
            "random_insertion_auc": self.random_insertion_auc,
            "sanity_rank_correlation": _finite_or_none(self.sanity_rank_correlation),
            "sanity_failed": self.sanity_failed,
        }
        if self.cells:
            found["cells"] = self.cells
        if self.notes:
            found["notes"] = list(self.notes)
        return found


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and np.isfinite(value) else None


def parse_methods(methods: str | Sequence[str]) -> tuple[str, ...]:
    """``"gradcam,layercam"`` or a list → method names, checked."""
    items = methods.split(",") if isinstance(methods, str) else list(methods)
    found: list[str] = []
    for item in (m.strip().lower() for m in items):
        if item == "all":
            found.extend(METHODS)
            continue
        if item not in METHODS:
            raise OptionError(
                f"class map method '{item}' is unknown{suggest(item, list(METHODS))}; use one or "
                f"more of {', '.join(METHODS)} (or all)"
            )
        found.append(item)
    if not found:
        raise OptionError(f"no class map method given; use one or more of {', '.join(METHODS)}")
    return tuple(dict.fromkeys(found))


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, was_training in modes.items():
            m.training = was_training


def _scorer(key: str | None, resolved: Resolved) -> Callable[[Any], torch.Tensor]:
    def score(output: Any) -> torch.Tensor:
        scores, _ = chosen_output(output, key, len(resolved.targets))
        return target_scores(scores, resolved)

    return score


def _one(resolved: Resolved, n: int, times: int) -> Resolved:
    """Sample ``n``'s target repeated ``times`` (for a batch of variants of that input)."""
    return Resolved(
        [resolved.indices[n]] * times, [resolved.masks[n]] * times, [resolved.targets[n]] * times
    )


def _sample_scorer(
    key: str | None, resolved: Resolved, n: int, metric: bool
) -> Callable[[Any], torch.Tensor]:
    def score(output: Any) -> torch.Tensor:
        first = next(iter(t for _, t in _tensors(output)))
        batch = first.shape[0]
        scores, _ = chosen_output(output, key, batch)
        mine = _one(resolved, n, batch)
        return target_metric(scores, mine) if metric else target_scores(scores, mine)

    return score


def _input_metric(
    model: nn.Module, key: str | None, resolved: Resolved, n: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Input ``n``'s target metric on a batch of variants of that input."""
    metric = _sample_scorer(key, resolved, n, metric=True)
    return lambda x: metric(model(x))


def _tensors(output: Any) -> Iterator[tuple[str | None, torch.Tensor]]:
    from featuremaps.hooks import walk

    return walk(output, None)


def _maps(
    model: nn.Module,
    inputs: Any,
    calls: Sequence[Call],
    modules: dict[str, nn.Module],
    methods: Sequence[str],
    key: str | None,
    resolved: Resolved,
    found: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict[tuple[str, str], torch.Tensor]:
    """``{(call name, method): (N, *cells) float64 maps}`` for the resolved targets."""
    if found is None:
        _, found = layer_gradients(model, inputs, calls, modules, _scorer(key, resolved))
    result: dict[tuple[str, str], torch.Tensor] = {}
    for call in calls:
        a, g = found[call.name]
        a_cells = as_cells(call.layout, a)
        g_cells = as_cells(call.layout, g)
        assert a_cells is not None and g_cells is not None  # find_calls kept only these
        for method in methods:
            if method in GRADIENT_METHODS:
                result[call.name, method] = gradient_map(method, a_cells, g_cells)
            elif method == "eigencam":
                result[call.name, method] = eigencam(a_cells)
            else:
                result[call.name, method] = _scorecam(model, inputs, a_cells, key, resolved)
    return result


def _scorecam(
    model: nn.Module, inputs: Any, cells: torch.Tensor, key: str | None, resolved: Resolved
) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor):
        raise OptionError(
            "scorecam masks the input, so it needs one input tensor; use another method"
        )
    a = cells.detach().to(torch.float64)
    maps = []
    for n in range(a.shape[0]):
        scores = masked_scores(
            model, inputs[n : n + 1], cells[n], _sample_scorer(key, resolved, n, metric=False)
        )
        weights = torch.softmax(scores, 0).to(a.device)
        maps.append(channel_weighted(a[n : n + 1], weights[None])[0])
    return torch.stack(maps)


def _call_events(model: nn.Module, inputs: Any) -> list[tuple[str, str]]:
    """``(event, path)`` of every module call of the model, ``event`` being ``"start"`` or
    ``"end"``, in the order they happen (one forward pass, hooks removed afterwards)."""
    events: list[tuple[str, str]] = []
    handles = []

    def make(path: str, event: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            events.append((event, path))

        return hook

    try:
        for path, module in model.named_modules():
            if path:
                handles.append(module.register_forward_pre_hook(make(path, "start")))
                handles.append(module.register_forward_hook(make(path, "end")))
        run_hooked(model, inputs, {}, lambda out: None)
    finally:
        for handle in handles:
            handle.remove()
    return events


@dataclass(frozen=True)
class _Above:
    """The modules above one layer call: re-initialised by the sanity check (``paths``), and
    those with parameters that run after it too but were kept because they also ran before or
    around it (``kept``)."""

    paths: list[str]
    kept: list[str]


def _above(events: list[tuple[str, str]], call: Call) -> _Above | None:
    """The modules none of whose calls start before ``call`` has returned (``None``: the call is
    not a module's, e.g. the model's own output)."""
    ends = [i for i, (event, path) in enumerate(events) if event == "end" and path == call.path]
    if not call.path or len(ends) < call.call:
        return None
    returned = ends[call.call - 1]
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, (_, path) in enumerate(events):
        first.setdefault(path, i)
        last[path] = i
    paths = [p for p in first if first[p] > returned]
    kept = [p for p in first if first[p] < returned < last[p] and p != call.path]
    return _Above(paths, kept)


def class_maps(
    model: nn.Module,
    inputs: torch.Tensor | tuple[Any, ...] | dict[str, Any],
    *,
    layers: str | Sequence[str] | None = None,
    methods: str | Sequence[str] = "gradcam",
    target: TargetSpec = "top1",
    output: str | None = None,
    names: Sequence[str] | None = None,
    label: str | None = None,
    trust: bool = True,
    sanity: bool = True,
    steps: int = 16,
    geometry: bool = True,
) -> list[ClassMap]:
    """Class activation maps of the selected layer calls for every input of a batch.

    Args:
        model: any ``nn.Module``; it runs in eval mode and is left as it was (modes, hooks,
            parameters' ``.grad`` and ``requires_grad``).
        inputs: a batch tensor (or a tuple/dict of arguments; then without trust numbers and
            scorecam, which change the input).
        layers: record names or patterns (as :func:`featuremaps.capture`); ``None`` picks the
            last layer call whose output has cells.
        methods: names of :data:`METHODS`, a list or comma-separated.
        target: ``"top1"``, a class index or name, a :class:`Region`, or one per input.
        output: the part of a tuple/dict output whose scores are explained.
        names: class names (from the weights' metadata), for name targets and labels.
        label: how messages name the model (its spec).
        trust: compute deletion/insertion curves (against random cell orders).
        sanity: compute the model-randomisation check.
        steps: steps of the deletion/insertion curves.
        geometry: place 2-D maps by receptive-field geometry (else stretched).

    Returns:
        One :class:`ClassMap` per call, method and input, in that order.
    """
    chosen = parse_methods(methods)
    if steps < 1:
        raise OptionError(f"steps {steps} is not valid; expected 1 or more, e.g. 16")
    with _eval_mode(model):
        calls, modules = find_calls(model, inputs, layers, label)
        holder: list[Resolved] = []

        def score(out: Any) -> torch.Tensor:
            batch = _batch_of(inputs)
            scores, key = chosen_output(out, output, batch)
            holder.append(resolve_targets(scores, target, names, key))
            return target_scores(scores, holder[-1])

        _, found = layer_gradients(model, inputs, calls, modules, score)
        resolved = holder[-1]
        maps = _maps(model, inputs, calls, modules, chosen, output, resolved, found)
        geometries = _geometries(model, inputs, calls, modules) if geometry else {}
        trusted = (
            _trust(model, inputs, calls, maps, geometries, output, resolved, steps) if trust else {}
        )
        sane = _sanity(model, inputs, calls, chosen, output, resolved, maps) if sanity else {}
    agnostic = Target(None, None, None)
    result = []
    for call in calls:
        for method in chosen:
            for n in range(_batch_of(inputs)):
                array = maps[call.name, method][n].cpu().numpy().astype(np.float32)
                found_curves = trusted.get((call.name, method, n))
                random_curves = trusted.get((call.name, "random", n))
                check = sane.get((call.name, method, n), _Sanity(None, None))
                notes: list[str] = []
                if method == "eigencam":
                    notes.append(
                        "eigencam: the first principal component of the activations, its sign "
                        "chosen to correlate positively with their sum over channels"
                    )
                notes.extend(check.notes)
                result.append(
                    ClassMap(
                        layer=call.name,
                        method=method,
                        sample=n,
                        target=agnostic if method == "eigencam" else resolved.targets[n],
                        array=array,
                        layout=call.layout.name,
                        cells=call.cells_note,
                        geometry=geometries.get(call.name),
                        deletion_auc=None if found_curves is None else found_curves.deletion_auc,
                        insertion_auc=None if found_curves is None else found_curves.insertion_auc,
                        random_auc=None if random_curves is None else random_curves.deletion_auc,
                        random_insertion_auc=None
                        if random_curves is None
                        else random_curves.insertion_auc,
                        curves=found_curves,
                        random_curves=random_curves,
                        sanity_rank_correlation=check.rho,
                        sanity_failed=check.failed,
                        notes=tuple(notes),
                    )
                )
    return result


def _batch_of(inputs: Any) -> int:
    first = next(iter(t for _, t in _tensors(inputs)), None)
    return 1 if first is None or first.dim() == 0 else int(first.shape[0])


def _geometries(
    model: nn.Module, inputs: Any, calls: Sequence[Call], modules: dict[str, nn.Module]
) -> dict[str, MapGeometry]:
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
        return {}
    flat = [c for c in calls if c.layout.drawn_as == "channel grid"]
    if not flat:
        return {}
    # The analytic chain needs every leaf on the way; a layer it does not reach is measured.
    every = {**select_modules(model, None, None, False, None), **modules}
    found = compute_geometry(model, inputs[:1], layers=every, method="analytic")
    result = {}
    for call in flat:
        if call.name not in found:
            try:
                found[call.name] = measure_geometry(
                    model, inputs[:1], modules, call.name, call.layout.name
                )
            except GeometryError:
                continue
        result[call.name] = found[call.name]
    return result


def _trust(
    model: nn.Module,
    inputs: Any,
    calls: Sequence[Call],
    maps: dict[tuple[str, str], torch.Tensor],
    geometries: dict[str, MapGeometry],
    key: str | None,
    resolved: Resolved,
    steps: int,
) -> dict[tuple[str, str, int], Curves]:
    """Deletion and insertion curves per ``(call, method, input)`` and the random control per
    ``(call, "random", input)``. Curves are computed once per input for each distinct cell
    order and set of input regions: the control is shared by every call with the same cells
    and geometry, and methods that rank the cells alike (gradcam, xgradcam and hirescam under a
    global average pool) share theirs."""
    if not isinstance(inputs, torch.Tensor):
        return {}
    result: dict[tuple[str, str, int], Curves] = {}
    size = tuple(inputs.shape[2:])
    done: dict[tuple[bytes, int, bytes], Curves] = {}
    for call in calls:
        methods = [m for (name, m) in maps if name == call.name]
        cells = tuple(maps[call.name, methods[0]].shape[1:])
        if len(cells) != len(size):
            continue
        regions = cell_regions(cells, size, geometries.get(call.name))
        place = regions.tobytes() + repr(cells).encode()
        controls = random_orders(int(np.prod(cells)))
        for n in range(inputs.shape[0]):
            metric = _input_metric(model, key, resolved, n)
            sample = inputs[n : n + 1]
            runs = [
                _once(done, (place, n, order.tobytes()), metric, sample, regions, order, steps)
                for order in controls
            ]
            result[call.name, "random", n] = Curves(
                runs[0].fractions,
                np.mean([r.deletion for r in runs], axis=0),
                np.mean([r.insertion for r in runs], axis=0),
            )
            for method in methods:
                values = maps[call.name, method][n].cpu().numpy()
                order = value_order(values, ties=controls[0])
                mark = (place, n, order.tobytes())
                result[call.name, method, n] = _once(
                    done, mark, metric, sample, regions, order, steps
                )
    return result


def _once(
    done: dict[tuple[bytes, int, bytes], Curves],
    mark: tuple[bytes, int, bytes],
    metric: Callable[[torch.Tensor], torch.Tensor],
    sample: torch.Tensor,
    regions: np.ndarray,
    order: np.ndarray,
    steps: int,
) -> Curves:
    """:func:`curves`, remembered in ``done`` under ``mark`` (regions, input, order)."""
    if mark not in done:
        done[mark] = curves(metric, sample, regions, order, steps)
    return done[mark]


@dataclass(frozen=True)
class _Sanity:
    """One map's sanity check: the rank correlation (``None``: not measured), whether it fails,
    and why a number is missing or what was kept."""

    rho: float | None
    failed: bool | None
    notes: tuple[str, ...] = ()


def _sanity(
    model: nn.Module,
    inputs: Any,
    calls: Sequence[Call],
    methods: Sequence[str],
    key: str | None,
    resolved: Resolved,
    maps: dict[tuple[str, str], torch.Tensor],
) -> dict[tuple[str, str, int], _Sanity]:
    events = _call_events(model, inputs)
    result: dict[tuple[str, str, int], _Sanity] = {}
    for call in calls:
        above = _above(events, call)
        reset = [] if above is None else [p for p in above.paths if resettable(_module(model, p))]
        batch = maps[call.name, methods[0]].shape[0]
        if above is None or not reset:
            why = (
                f"sanity check: no module above '{call.name}' has parameters to re-initialise "
                "(reset_parameters), so the map cannot depend on learned weights above it"
            )
            for method, n in ((m, n) for m in methods for n in range(batch)):
                result[call.name, method, n] = _Sanity(None, None, (why,))
            continue
        kept = [p for p in above.paths + above.kept if p not in reset and _owns_weights(model, p)]
        kept_note = (
            (
                f"sanity check: kept {', '.join(kept[:3])}{' ...' if len(kept) > 3 else ''} "
                "(also runs before or around the layer, or has no reset_parameters)",
            )
            if kept
            else ()
        )
        twin = reinitialised(model, reset)
        twin_modules = {call.path: twin.get_submodule(call.path)}
        again = _maps(twin, inputs, [call], twin_modules, methods, key, resolved)
        for method in methods:
            for n in range(batch):
                result[call.name, method, n] = _compared(
                    maps[call.name, method][n].cpu().numpy(),
                    again[call.name, method][n].cpu().numpy(),
                    kept_note,
                )
    return result


def _module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path) if path else model


def _owns_weights(model: nn.Module, path: str) -> bool:
    return any(True for _ in _module(model, path).parameters(recurse=False))


def _compared(before: np.ndarray, after: np.ndarray, notes: tuple[str, ...]) -> _Sanity:
    """The rank correlation of a map with its re-initialised twin, and the verdict."""
    if np.ptp(before) == 0 or not np.isfinite(before).all():
        why = "sanity check: the map is constant (or not finite), so no rank correlation exists"
        return _Sanity(None, None, (*notes, why))
    if np.ptp(after) == 0 or not np.isfinite(after).all():
        why = (
            "sanity check: after re-initialising the layers above, the map is constant (or not "
            "finite): it changed entirely, so it passes without a rank correlation"
        )
        return _Sanity(None, False, (*notes, why))
    rho = rank_correlation(before, after)
    return _Sanity(rho, bool(rho >= SANITY_THRESHOLD), notes)
