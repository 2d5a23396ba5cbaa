"""Layout evidence: what decides an output's layout, and the tracker that gathers it in a pass.

Between capture and the pure transforms in the flow (… → capture → **layouts** → stats/render).
Decisions come from evidence, never from the rank alone (:func:`decide`; the order is listed in
:mod:`featuremaps.layouts`): the module's own type and attributes, the layout of the tensor it was
given, the shapes under the probes, and what the pass has learnt so far (:class:`Facts`: patch
grids seen, the model's prefix tokens). :class:`LayoutTracker` follows tensors from module to
module inside the hooks of :func:`featuremaps.capture.capture` and takes each decision;
:func:`cached_probes` runs the probe passes (one sample, two samples, a second input size),
recording only shapes.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from featuremaps._errors import CaptureError
from featuremaps.hooks import OUTPUT, HookedOutput, run_hooked, walk
from featuremaps.layouts.patterns import TABLE, Rule
from featuremaps.layouts.registry import (
    ATTENTION,
    LAYOUTS,
    LND,
    NHWC,
    NLD,
    RETURNED,
    STATES,
    Layout,
    Shape,
    attention,
    dimension_type,
    generic,
    get,
    token_layout,
    undecided,
)
from featuremaps.naming import record_name, type_name

__all__ = [
    "PENDING",
    "Facts",
    "LayoutTracker",
    "Probe",
    "cached_probes",
    "decide",
    "needs_probes",
    "prefix_tokens",
]

# Modules that act on the last axis: their outputs have features last, whatever the rank.
_LAST_AXIS_TYPES = frozenset(
    {
        "Linear", "LazyLinear", "Bilinear", "NonDynamicallyQuantizableLinear", "LayerNorm",
        "RMSNorm", "Embedding",
    }
)  # fmt: skip
# Modules that act on every value alone (or on the whole tensor alike): the output has the
# layout of the input.
_ELEMENTWISE_TYPES = frozenset(
    {
        "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "CELU", "SELU", "GELU", "SiLU",
        "Mish", "Sigmoid", "Tanh", "Hardtanh", "Hardswish", "Hardsigmoid", "Softplus",
        "Softsign", "Tanhshrink", "Hardshrink", "Softshrink", "Threshold", "LogSigmoid",
        "Dropout", "AlphaDropout", "FeatureAlphaDropout", "Identity", "StochasticDepth",
        "DropPath", "QuickGELU", "GELUTanh", "Swish", "HardSwish", "HardSigmoid", "LayerScale",
        "Scale", "Affine",
    }
)  # fmt: skip
# Modules whose outputs never need probes to be read: channels-first by their own meaning,
# element-wise, or a vector head (a Linear on a flattened (N, F) input).
_SELF_DESCRIBING = _ELEMENTWISE_TYPES | {
    "Linear", "LazyLinear", "Flatten", "Unflatten", "Upsample", "UpsamplingNearest2d",
    "UpsamplingBilinear2d", "GroupNorm", "LocalResponseNorm", "Softmax", "LogSoftmax",
    "Softmax2d", "ChannelShuffle", "PixelShuffle", "PixelUnshuffle", "FrozenBatchNorm2d",
    "LayerNorm2d", "Conv2dNormActivation", "Conv3dNormActivation",
}  # fmt: skip
_RNN_TYPES = frozenset({"RNN", "LSTM", "GRU"})


def needs_probes(module_types: Sequence[str]) -> bool:
    """Whether some output of a model made of these module types can only be read with probes.

    Models made only of channels-first modules (``*1d``/``*2d``/``*3d``), element-wise modules
    and vector heads (every torchvision CNN) need none, so they run exactly once.
    """
    return any(dimension_type(t) is None and t not in _SELF_DESCRIBING for t in module_types)


@dataclass(frozen=True)
class Probe:
    """One record's output shape under the probes (``None``: that probe did not run or failed).

    ``one``: one sample at the input size; ``two``: two samples; ``resized``: one sample at a
    second input size.
    """

    one: Shape | None = None
    two: Shape | None = None
    resized: Shape | None = None


@dataclass
class Facts:
    """What a pass has learnt about the model so far, for the records that follow.

    ``prefix`` is the prefix-token count the model's attributes give (``None``: no attribute),
    ``prefix_source`` names them. ``grids`` lists channels-first maps seen so far in execution
    order: (record name, (h, w), (h, w) at the second input size or ``None``, channels).
    ``closed`` is true while every module seen is self-describing (see :func:`needs_probes`),
    so an element-wise module of unknown input is channels-first by elimination.
    """

    prefix: int | None = None
    prefix_source: str = ""
    grids: list[tuple[str, tuple[int, int], tuple[int, int] | None, int]] = field(
        default_factory=list
    )
    closed: bool = True


def _batch_axis(probe: Probe | None) -> tuple[int | None, str]:
    if probe is None or probe.one is None or probe.two is None:
        return None, "no batch probe"
    one, two = probe.one, probe.two
    if len(one) != len(two):
        return None, f"rank changes with the batch ({one} for 1 sample, {two} for 2)"
    moved = [i for i, (a, b) in enumerate(zip(one, two, strict=True)) if a != b]
    if len(moved) == 1 and two[moved[0]] == 2 * one[moved[0]]:
        if one[moved[0]] == 1:
            return moved[0], f"batch axis {moved[0]} (1 sample {one}, 2 samples {two})"
        return None, (
            f"axis {moved[0]} holds the batch folded with something else ({one[moved[0]]} for "
            f"1 sample, {two[moved[0]]} for 2)"
        )
    if not moved:
        return None, f"no axis follows the batch size ({one} for 1 and 2 samples)"
    return None, f"no single batch axis ({one} for 1 sample, {two} for 2)"


def _moving(probe: Probe | None) -> set[int] | None:
    if probe is None or probe.one is None or probe.resized is None:
        return None
    if len(probe.one) != len(probe.resized):
        return None
    return {i for i, (a, b) in enumerate(zip(probe.one, probe.resized, strict=True)) if a != b}


def _token_grid(
    tokens: int, tokens_resized: int | None, facts: Facts, width: int | None = None
) -> tuple[int, tuple[int, int], str] | None:
    """(prefix, grid, evidence) for ``tokens`` tokens, or ``None`` when no grid fits.

    ``width``: when given, the grid's map must also have this many channels.
    """
    for name, (h, w), resized, channels in reversed(facts.grids):
        prefix = tokens - h * w
        if prefix < 0 or h * w < 2 or (width is not None and channels != width):
            continue
        also = False
        if tokens_resized is not None and resized is not None and resized != (h, w):
            if tokens_resized - resized[0] * resized[1] != prefix:
                continue
            also = True
        where = f"grid {h}x{w} from '{name}'"
        if prefix == 0:
            return 0, (h, w), f"{where}; {tokens} tokens = {h}x{w} exactly"
        if facts.prefix is not None:
            if prefix == facts.prefix:
                return prefix, (h, w), f"{where}; {prefix} prefix = {facts.prefix_source}"
            continue
        if also:
            return prefix, (h, w), f"{where}; {prefix} prefix at both input sizes"
    return None


def _sequence(shape: Shape, batch: int, probe: Probe | None, facts: Facts, note: str) -> Layout:
    """A 3-D output with features last and the batch on ``batch`` (0 or 1)."""
    length_axis = 1 - batch
    tokens = (probe.one if probe and probe.one else shape)[length_axis]
    resized = probe.resized[length_axis] if probe and probe.resized else None
    found = _token_grid(tokens, resized, facts)
    if found is None:
        base = LND if batch == 1 else NLD
        return replace(base, note=f"{note}; no patch grid fits {tokens} tokens")
    prefix, grid, why = found
    return token_layout(prefix, grid, batch == 1, f"{note}; {why}")


def _permuted(given: str | None, dims: Sequence[int] | None, ndim: int) -> Layout | None:
    """The layout after a ``Permute(dims)`` of a tensor in layout ``given``."""
    if given is None or dims is None or len(dims) != ndim or ndim != 4:
        return None
    axes = {"NCHW": "NCHW", "NHWC->NCHW": "NHWC"}.get(given)
    if axes is None:
        return None
    out = "".join(axes[d] for d in dims)
    if out == "NCHW":
        return replace(LAYOUTS[0], note=f"Permute{tuple(dims)} of {given}")
    if out == "NHWC":
        return replace(NHWC, note=f"Permute{tuple(dims)} of {given}")
    return None


def decide(
    shape: Shape,
    module_type: str,
    input_layout: str | None = None,
    *,
    probe: Probe | None = None,
    facts: Facts | None = None,
    attrs: Mapping[str, Any] | None = None,
    key: str | None = None,
    rule: Rule | None = None,
) -> Layout:
    """The layout of an output of ``shape`` from a module of class ``module_type``.

    ``input_layout`` is the layout of the tensor the module was called with, when known;
    ``probe`` the output's shapes under the probes; ``facts`` what the pass learnt so far;
    ``attrs`` the module's own attributes that matter (``batch_first``, ``dims``); ``key`` the
    output's key inside a tuple/dict output; ``rule`` the rule of a known block the module is
    part of (:mod:`featuremaps.layouts.patterns`), used only without probe evidence. Evidence
    order: :mod:`featuremaps.layouts`.
    """
    shape = tuple(shape)
    ndim = len(shape)
    facts = facts if facts is not None else Facts()
    attrs = attrs or {}
    given = input_layout
    if given is not None and get(given, ndim).name == generic(ndim).name:
        given = None  # a layout of another rank (or unknown) says nothing about this output

    evidence = probe is not None and probe.one is not None
    for layout in LAYOUTS:  # a module's own type (the rank alone only without probes)
        if layout.detect(shape, module_type, given) and not (evidence and layout.name == "NC"):
            return layout
    if module_type in _RNN_TYPES:
        if key is not None and key.split(".")[0] == "1":
            return STATES
        if attrs.get("batch_first") is True:
            return _sequence(shape, 0, probe, facts, "batch_first=True")
        return _sequence(shape, 1, probe, facts, "batch_first=False")
    if module_type == "MultiheadAttention":
        if key == "1":
            return (
                replace(ATTENTION, note=RETURNED)
                if ndim == 4
                else undecided(ndim, "averaged attention weights (N, L, S)")
            )
        if ndim == 3:
            first = bool(attrs.get("batch_first"))
            return _sequence(shape, 0 if first else 1, probe, facts, f"batch_first={first}")
    if module_type == "Permute":
        permuted = _permuted(given, attrs.get("dims"), ndim)
        if permuted is not None:
            return permuted
    if module_type in _ELEMENTWISE_TYPES and given is not None:
        kept = get(given, ndim)
        if kept.name == "undecided":
            return undecided(ndim, "its input's layout is undecided")
        return kept
    if probe is None:
        known = _known_without_probes(shape, module_type, given, facts, rule)
        if known is not None:
            return known

    batch, batch_note = _batch_axis(probe)
    moving = _moving(probe)
    last_axis = module_type in _LAST_AXIS_TYPES
    if probe is None or probe.one is None:
        # No probes: only a model made of self-describing modules gets here (needs_probes).
        if ndim == 4 and facts.closed and not last_axis:
            return LAYOUTS[0]
        if ndim == 5 and facts.closed and not last_axis:
            return LAYOUTS[2]
        if ndim == 3 and last_axis:
            return replace(NLD, note="a last-axis module; no probes ran")
        if ndim == 4 and last_axis:
            return undecided(ndim, "a last-axis module's 4-D output; no probes ran")
        if ndim in (0, 1):
            return LAYOUTS[-1 if ndim == 0 else -2]
        return undecided(ndim, "no module type or probe settles it")
    if ndim in (0, 1):
        return LAYOUTS[-1 if ndim == 0 else -2]
    if batch is None:
        return undecided(ndim, batch_note)
    size_note = (
        "no second input size (the model refused it)"
        if moving is None
        else f"axes {sorted(moving)} move with the input size"
    )
    if ndim == 4 and batch == 0:
        if moving == {2, 3}:
            return replace(LAYOUTS[0], note=f"{batch_note}; {size_note}")
        if moving == {1, 2}:
            return replace(NHWC, note=f"{batch_note}; {size_note}")
        if moving == {2}:
            return undecided(
                ndim,
                f"{batch_note}; only axis 2 moves with the input size: tokens inside "
                "(N, heads, T, d) or similar, not a map",
            )
        return undecided(ndim, f"{batch_note}; {size_note}")
    if ndim == 3 and batch in (0, 1):
        other = 1 - batch
        if moving is not None and moving == {2}:
            return (
                replace(LAYOUTS[1], note=f"{batch_note}; {size_note}")
                if batch == 0
                else undecided(ndim, f"{batch_note}; {size_note}")
            )
        if (moving is not None and moving == {other}) or (moving is None and last_axis):
            why = size_note if moving is not None else "features last (a last-axis module)"
            return _sequence(shape, batch, probe, facts, f"{batch_note}; {why}")
        if moving is None:
            # Without a second size: tokens only when both axes match the patch embedding, the
            # count (prefix from the model's attributes + h*w) and the width (its channels).
            length = (probe.one if probe.one else shape)[other]
            found = _token_grid(length, None, facts, width=shape[2])
            if found is not None:
                prefix, grid, why = found
                note = f"{batch_note}; {why}; width {shape[2]} = its channels"
                return token_layout(prefix, grid, batch == 1, note)
        return undecided(ndim, f"{batch_note}; {size_note}")
    if ndim == 2 and batch == 0:
        return LAYOUTS[3]
    if ndim == 5 and batch == 0 and moving == {2, 3, 4}:
        return replace(LAYOUTS[2], note=f"{batch_note}; {size_note}")
    return undecided(ndim, f"{batch_note}; {size_note}")


def _known_without_probes(
    shape: Shape, module_type: str, given: str | None, facts: Facts, rule: Rule | None
) -> Layout | None:
    """What the module's meaning settles without probes, beyond its type: a module that acts on
    the last axis keeps a features-last layout it was given (the other axes pass through), and
    a known block's rule decides by rank (:mod:`featuremaps.layouts.patterns`)."""
    ndim = len(shape)
    if given is not None and module_type in _LAST_AXIS_TYPES:
        kept = get(given, ndim)
        if kept.drawable and kept.channel_axis == ndim - 1:
            return replace(kept, note=f"{module_type} acts on the last axis of its {given} input")
    if rule is None:
        return None
    kind, where = rule
    if kind == "tokens" and ndim == 3:
        return _sequence(shape, 0, None, facts, f"inside {where}: (N, T, D)")
    if kind == "NHWC" and ndim == 4:
        return replace(NHWC, note=f"inside {where}: (N, H, W, C)")
    if kind == "NCHW" and ndim == 4:
        return replace(LAYOUTS[0], note=f"inside {where}: (N, C, H, W)")
    if kind == TABLE:
        return undecided(
            ndim,
            f"inside {where}: computed from the model's own table, the same "
            "for every sample; not a map of the input",
        )
    return None


def prefix_tokens(model: torch.nn.Module) -> tuple[int | None, str]:
    """The prefix-token count the model's attributes give, and which attributes; ``None`` when
    it has none (``num_prefix_tokens``, or ``cls_token``/``class_token``, ``dist_token``,
    ``reg_token``/``register_tokens`` parameters, each counting its tokens)."""
    for path, module in model.named_modules():
        count = getattr(module, "num_prefix_tokens", None)
        if isinstance(count, int) and not isinstance(count, bool):
            return count, f"{path + '.' if path else ''}num_prefix_tokens"
    for path, module in model.named_modules():
        found: list[str] = []
        total = 0
        for attr in ("cls_token", "class_token", "dist_token", "reg_token", "register_tokens"):
            value = getattr(module, attr, None)
            if isinstance(value, torch.Tensor) and value.dim() >= 2:
                n = int(value.shape[-2])
                total += n
                found.append(f"{attr} ({n})")
        if found:
            return total, f"{path + '.' if path else ''}{' + '.join(found)}"
    return None, ""


# --------------------------------------------------------------------------------------------------
# The tracker and the probes of a capture pass


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


#: The layout of a record held back by :class:`LayoutTracker` until the probes have run.
PENDING = Layout("pending", None, None, None, "waiting for probes")
_PROBE_HELPS = frozenset({"undecided", "NLD", "LND->NLD"})


def _version(t: torch.Tensor) -> int | None:
    """The tensor's in-place version counter; ``None`` for inference tensors, which keep none."""
    try:
        return int(t._version)
    except RuntimeError:
        return None


class LayoutTracker:
    """Decides each output's layout during a pass, following layouts from module to module.

    A tensor is followed by identity (the same object, alive): in-place modules return the very
    tensor they were given, and a freed tensor's memory reused by a new one is never mistaken
    for it. Without probes, a decision that probes could change is left pending
    (:data:`PENDING`), with everything needed to take it again once they have run
    (:meth:`redecide`).
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: Any,
        probes: Mapping[str, Probe],
        input_layout: str | None,
        closed: bool,
        rules: Mapping[int, Rule] | None = None,
    ) -> None:
        self.model = model
        self.rules = rules or {}
        prefix, source = prefix_tokens(model) if probes or self.rules else (None, "")
        self.facts = Facts(prefix=prefix, prefix_source=source, closed=closed)
        self.probes = probes
        # Without probes, a decision they could change waits for them: in a model of
        # self-describing modules, or one whose other modules known blocks cover.
        self.can_wait = not probes and (closed or bool(self.rules))
        # id -> (the tensor, weakly; its version when recorded; the step that produced it).
        self.objects: dict[int, tuple[weakref.ref[torch.Tensor], int | None, int]] = {}
        self.batch_one = isinstance(inputs, torch.Tensor) and inputs.dim() > 0 and len(inputs) == 1
        # Every decision in order, to take them again: name, type, attrs, key, shape, the step
        # that produced the module's input (-1: the model input, None: unknown), the block rule.
        self.steps: list[
            tuple[str, str, dict[str, Any], str | None, tuple[int, ...], int | None, Rule | None]
        ]
        self.steps = []
        self.decided: list[str] = []
        self.pending = False
        self.final: dict[str, Layout] = {}
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
    ) -> Layout:
        given_step = self._step_of(given)
        given_layout = self._layout_of(given_step)
        shape = tuple(int(n) for n in t.shape)
        attrs = _attrs(module)
        rule = self.rules.get(id(module))
        self.steps.append((name, type_name(module), attrs, key, shape, given_step, rule))
        if given_layout == PENDING.name:
            layout = PENDING
        else:
            layout = self._decide(name, type_name(module), attrs, key, shape, given_layout, rule)
            if self.can_wait and layout.name in _PROBE_HELPS and not (rule and rule[0] == TABLE):
                layout = PENDING
        self.decided.append(layout.name)
        self.objects[id(t)] = (weakref.ref(t), _version(t), len(self.steps) - 1)
        if layout is PENDING:
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
        rule: Rule | None = None,
    ) -> Layout:
        probe = self.probes.get(name)
        if probe is not None and probe.one is None and self.batch_one:
            probe = replace(probe, one=shape)  # this pass is the 1-sample probe
        layout = decide(
            shape,
            module_type,
            given_layout,
            probe=probe,
            facts=self.facts,
            attrs=attrs,
            key=key,
            rule=rule,
        )
        if layout.name == ATTENTION.name and key == "1":  # weights the module returned
            tokens = self.final.get(name[: -len(key)] + "0")
            layout = attention(tokens, shape, layout.note)
        if layout.name == "NCHW" and len(shape) == 4:
            resized = probe.resized if probe is not None else None
            other = (resized[2], resized[3]) if resized is not None and len(resized) == 4 else None
            self.facts.grids.append((name, (shape[2], shape[3]), other, shape[1]))
        self.final[name] = layout
        return layout

    def redecide(self, probes: Mapping[str, Probe]) -> None:
        """Take every decision again, in order, with the probes' evidence."""
        self.probes = probes
        prefix, source = prefix_tokens(self.model)
        self.facts = Facts(prefix=prefix, prefix_source=source, closed=False)
        for i, (name, module_type, attrs, key, shape, given_step, rule) in enumerate(self.steps):
            given_layout = self._layout_of(given_step)
            layout = self._decide(name, module_type, attrs, key, shape, given_layout, rule)
            self.decided[i] = layout.name
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
    if inputs.dim() == 2 and not inputs.is_floating_point():
        # Token ids (N, L): the same ids twice over is a second, valid sequence length.
        return first, two, one.repeat(1, 2)
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
_PROBES: weakref.WeakKeyDictionary[nn.Module, dict[Any, dict[str, Probe]]]
_PROBES = weakref.WeakKeyDictionary()


# And per architecture (see :func:`architecture`), for another instance of the same one: two
# checkpoints compared, a model loaded again. The most recent few are kept.
_BY_ARCHITECTURE: dict[Any, dict[str, Probe]] = {}
_ARCHITECTURES_KEPT = 8
_SIMPLE = (bool, int, float, str, type(None))


def _simple(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(isinstance(v, _SIMPLE) for v in value)
    return isinstance(value, _SIMPLE)


def architecture(model: nn.Module) -> tuple[Any, ...]:
    """What the probes' shapes depend on, for every module: its path, its class, its plain
    attributes (sizes, strides, ``batch_first``, ``dims``...) and the shapes of its own
    parameters and buffers; not the values of the weights."""
    parts = []
    for path, module in model.named_modules():
        plain = tuple(
            sorted(
                (k, tuple(v) if isinstance(v, list) else v)
                for k, v in vars(module).items()
                if not k.startswith("_") and k != "training" and _simple(v)
            )
        )
        own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        shapes = tuple((n, tuple(t.shape)) for n, t in own if t is not None)
        kind = type(module)
        parts.append((path, kind.__module__, kind.__qualname__, plain, shapes))
    return tuple(parts)


def cached_probes(
    model: nn.Module, inputs: Any, modules: Mapping[str, nn.Module], train: bool
) -> dict[str, Probe]:
    """Each record's output shapes under the probes (:func:`_probe_shapes`), run once per model
    and input geometry (a data-set pass, one capture per batch, probes once) and once per
    architecture and input geometry within a process."""
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
        shared = (architecture(model), key)
        found = _BY_ARCHITECTURE.pop(shared, None)
        if found is None:
            found = _probe_shapes(model, inputs, modules, train)
        _BY_ARCHITECTURE[shared] = found  # the most recent last
        while len(_BY_ARCHITECTURE) > _ARCHITECTURES_KEPT:
            del _BY_ARCHITECTURE[next(iter(_BY_ARCHITECTURE))]
        per_model[key] = found
    return per_model[key]


def _probe_shapes(
    model: nn.Module, inputs: Any, modules: Mapping[str, nn.Module], train: bool
) -> dict[str, Probe]:
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
        name = OUTPUT if OUTPUT not in modules else f"{OUTPUT} (model)"
        for key, tensor in walk(output, None):
            shapes.setdefault(record_name(name, 1, key), tuple(int(n) for n in tensor.shape))
        runs.append(shapes)
    one, two, resized = runs
    names = set().union(*(r for r in runs if r is not None))
    return {
        n: Probe(
            one.get(n) if one else None,
            two.get(n) if two else None,
            resized.get(n) if resized else None,
        )
        for n in names
    }
