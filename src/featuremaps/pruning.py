"""Pruning: remove the lowest-ranked channels of a model for real, through its couplings.

The step after ranking (:mod:`featuremaps.dataset`) and ablation (:mod:`featuremaps.ablation`):
the channels a ranking calls unimportant are cut out of the weights, so the model gets smaller.
A channel rarely lives in one layer alone: a residual addition ties the channels of every block
of a stage, a concatenation passes a layer's channels to every later layer, a depthwise
convolution and a BatchNorm follow the convolution before them. Torch-Pruning's
``DependencyGraph`` finds these couplings (a *group*: every layer that must lose the same channels
together) and does the surgery; this module decides what each group loses and describes it.

* A group is named by its *root*, a Conv or Linear layer whose output channels it removes. Its
  channels are scored by the ranking statistic summed over every member whose output is
  recorded (the convolution, its BatchNorm, ...), and the lowest-scoring ones are removed
  (``ratio`` of the root's width, or ``k``); a group never loses all of its channels.
* ``removed`` names, per record (a Conv, Linear or BatchNorm output), the channel indices of
  that tensor which the removal takes away. Zeroing exactly those channels at exactly those
  tensors (:func:`featuremaps.capture.zero_channels`) computes what the pruned model computes:
  the test of every pruning (:attr:`PrunedModel.equivalence`).
* Groups whose channels reach a layer that mixes channels in a way zeroing cannot express (a
  LayerNorm normalises over all channels, attention splits them into heads) and the model's
  output layer (its channels are the answers) are not pruned; naming one is refused in one line.

Pure computation: nothing is written here. Torch-Pruning is an optional extra
(``featuremaps[prune]``), imported when a function needs it.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from featuremaps._errors import LayerError, OptionError
from featuremaps.selection import keep_record

__all__ = [
    "PruneGroup",
    "PrunePoint",
    "PruneResult",
    "PrunedModel",
    "apply_pruning",
    "choose_channels",
    "count_macs",
    "count_params",
    "find_groups",
    "import_torch_pruning",
    "is_class_scores",
    "measure_agreement",
    "measure_latency",
    "score_groups",
]

_ROOTS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.modules.batchnorm._BatchNorm,)


def import_torch_pruning() -> Any:
    """The ``torch_pruning`` module, or an OptionError naming the extra that provides it."""
    try:
        import torch_pruning
    except ImportError:
        raise OptionError(
            "pruning needs Torch-Pruning, which is not installed; install the extra: "
            "pip install 'featuremaps[prune]'"
        ) from None
    return torch_pruning


@dataclass(frozen=True)
class PruneGroup:
    """Layers that lose the same channels together, named by their root layer.

    ``outputs`` maps each member whose output channels go (Conv, Linear, BatchNorm) to its
    channel for each root channel (a concatenation shifts them); ``inputs`` lists the members
    that lose input channels (the layers that read the group's channels).
    """

    root: str
    width: int
    outputs: dict[str, dict[int, int]]
    inputs: tuple[str, ...]

    @property
    def layers(self) -> tuple[str, ...]:
        """Every named layer of the group, root first."""
        return tuple(dict.fromkeys((self.root, *self.outputs, *self.inputs)))


@dataclass
class PrunedModel:
    """A pruned copy of a model and what was taken out of it.

    ``removed`` maps record names to the channel indices removed from that tensor (zeroing them
    there is the same as removing them); ``per_group`` maps each root to its removed root
    channels; ``equivalence`` is the largest difference between the pruned model's output and
    the original's with the ``removed`` channels zeroed, relative to the output's largest value,
    on the example input.
    """

    model: nn.Module
    removed: dict[str, list[int]]
    per_group: dict[str, list[int]]
    equivalence: float = float("nan")
    widths: dict[str, int] = field(default_factory=dict)


def _names(model: nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in model.named_modules() if n}


def _output_layer(model: nn.Module, example: torch.Tensor) -> str | None:
    """The last Conv or Linear layer that runs: its channels are the model's answers."""
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda *_, n=n: order.append(n))
        for n, m in model.named_modules()
        if isinstance(m, _ROOTS)
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return order[-1] if order else None


def _out_width(module: nn.Module) -> int:
    if isinstance(module, _NORMS):
        return int(module.num_features)
    if isinstance(module, nn.Linear):
        return int(module.out_features)
    conv: nn.modules.conv._ConvNd = module  # type: ignore[assignment]
    return conv.out_channels


def _graph(model: nn.Module, example: torch.Tensor) -> Any:
    tp = import_torch_pruning()
    with torch.enable_grad(), warnings.catch_warnings():  # traced through autograd
        # Parameters used outside a module (a ViT's class token) are announced as a warning;
        # groups that reach them are refused with a reason instead (see _members).
        warnings.filterwarnings("ignore", message="Unwrapped parameters", category=UserWarning)
        return tp.DependencyGraph().build_dependency(model, example_inputs=example)


def _members(
    model: nn.Module, graph: Any, plan: Any
) -> tuple[list[tuple[str, str, list[int]]], str]:
    """Each named member of a pruning plan as (name, "out" or "in", its channel indices in the
    plan's order), or an empty list and why the plan reaches a layer zeroing cannot stand for."""
    names = _names(model)
    members: list[tuple[str, str, list[int]]] = []
    for dep, idxs in plan.items:
        target = dep.target.module
        name = names.get(id(target))
        if name is None:
            if isinstance(target, nn.Parameter):
                return [], f"its channels reach a bare parameter of {type(model).__name__}"
            continue  # an operation (addition, concatenation, reshape): no weights of its own
        local = [int(i if isinstance(i, int) else i.idx) for i in idxs]
        out = graph.is_out_channel_pruning_fn(dep.handler)
        depthwise = isinstance(target, _ROOTS[:3]) and target.groups > 1
        if isinstance(target, _NORMS) or (out and isinstance(target, _ROOTS)) or depthwise:
            members.append((name, "out", local))
        elif isinstance(target, _ROOTS):
            members.append((name, "in", local))
        else:
            return [], (
                f"its channels reach {type(target).__name__} '{name}', which mixes channels "
                "(removing one changes the others), so it is left whole"
            )
    return members, ""


def _plan(graph: Any, module: nn.Module, idxs: list[int]) -> Any:
    handler = graph.get_pruner_of_module(module).prune_out_channels
    return graph.get_pruning_group(module, handler, idxs=idxs)


def _describe(model: nn.Module, graph: Any, root: str) -> tuple[PruneGroup | None, str]:
    """The group of ``root`` with its member map, or None and why it cannot be pruned."""
    module = model.get_submodule(root)
    if module not in graph.module2node:
        return None, "it never runs as a layer (its weights are used directly by another layer)"
    width = int(graph.get_out_channels(module))
    # Asked for root channels 0..width-1 in order, each member lists its own index of them in
    # that order (a concatenation shifts them by an offset).
    members, why = _members(model, graph, _plan(graph, module, list(range(width))))
    if not members:
        return None, why or "nothing is coupled to it"
    outputs: dict[str, dict[int, int]] = {}
    for name, kind, local in members:
        if kind == "out":
            outputs.setdefault(name, {}).update(enumerate(local))
    inputs = tuple(dict.fromkeys(n for n, kind, _ in members if kind == "in"))
    return PruneGroup(root, width, outputs, inputs), ""


def find_groups(
    model: nn.Module, example: torch.Tensor, layers: Sequence[str] | None = None
) -> tuple[list[PruneGroup], dict[str, str]]:
    """The prunable groups of ``model`` (traced on ``example``) and the roots left out, with why.

    With ``layers`` (record patterns, as for ``run --layers``), only the groups of the Conv and
    Linear layers they match; a matched layer that cannot be pruned raises LayerError (one
    line, with the reason). Without, every group whose root is not the output layer.
    """
    was_training = model.training
    model.eval()
    try:
        output = _output_layer(model, example)
        graph = _graph(model, example)
    finally:
        model.train(was_training)
    patterns = tuple(layers) if layers else None
    roots = [n for n, m in model.named_modules() if n and isinstance(m, _ROOTS)]
    if patterns is not None:
        chosen = [n for n, m in model.named_modules() if n and keep_record(n, n, patterns)]
        if not chosen:
            raise LayerError(
                f"--layers {','.join(patterns)} matches no layer of {type(model).__name__}; "
                "list the Conv and Linear layers with 'featuremaps layers MODEL'"
            )
        # A glob also matches the BatchNorms and activations around the layers meant: keep the
        # Conv and Linear layers it names, and refuse only patterns that name none.
        roots = [n for n in chosen if isinstance(model.get_submodule(n), _ROOTS)]
        if not roots:
            module = model.get_submodule(chosen[0])
            raise LayerError(
                f"layer '{chosen[0]}' is a {type(module).__name__}; pruning removes the output "
                "channels of Conv and Linear layers (and what is coupled to them): name those, "
                "e.g. with --layers '*conv*'"
            )
    groups: list[PruneGroup] = []
    skipped: dict[str, str] = {}
    covered: set[str] = set()
    for root in roots:
        if root in covered:
            continue
        if root == output:
            why = "it is the model's output layer: its channels are the answers"
            group = None
        else:
            group, why = _describe(model, graph, root)
            if group is not None and output in group.outputs:
                group, why = None, f"its channels are coupled to the output layer '{output}'"
        if group is None:
            if patterns is not None:
                raise LayerError(
                    f"layer '{root}' cannot be pruned: {why}; leave it out of --layers"
                )
            skipped[root] = why
            continue
        covered.update(n for n in group.outputs)
        groups.append(group)
    return groups, skipped


def score_groups(
    groups: Sequence[PruneGroup], values: Mapping[str, np.ndarray]
) -> list[np.ndarray]:
    """Per group, each root channel's ranking statistic summed over the members that have one.

    ``values`` maps record names to one value per channel; NaN counts as 0 in the sum. Raises
    OptionError when a group has no member in ``values``.
    """
    out = []
    for group in groups:
        score = np.zeros(group.width, dtype=np.float64)
        found = 0
        for name, mapping in group.outputs.items():
            stat = values.get(name)
            if stat is None or len(stat) != len(mapping):
                continue
            found += 1
            stat = np.nan_to_num(np.asarray(stat, dtype=np.float64))
            for root_idx, idx in mapping.items():
                score[root_idx] += stat[idx]
        if not found:
            raise OptionError(
                f"no statistic for any layer coupled to '{group.root}' "
                f"({', '.join(group.outputs)}); give a stats file made with those layers"
            )
        out.append(score)
    return out


def choose_channels(
    groups: Sequence[PruneGroup],
    scores: Sequence[np.ndarray] | None,
    *,
    ratio: float | None = None,
    k: int | None = None,
    seed: int = 0,
) -> dict[str, list[int]]:
    """Per group root, the root channels to remove: the lowest-scoring ones, or random ones
    when ``scores`` is None (drawn with ``seed``). Each group loses ``floor(ratio * width)`` or
    ``k`` channels; a group would never lose all of them (OptionError)."""
    if (ratio is None) == (k is None):
        raise OptionError("give either a ratio (0 <= ratio < 1) or a channel count k, not both")
    if ratio is not None and not 0 <= ratio < 1:
        raise OptionError(f"--ratio {ratio}: expected a fraction of each layer, 0 <= ratio < 1")
    if k is not None and k < 0:
        raise OptionError(f"--k {k}: expected a channel count of 0 or more")
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        n = int(np.floor(ratio * group.width + 1e-9)) if ratio is not None else int(k or 0)
        if n >= group.width:
            raise OptionError(
                f"--k {n} would remove every channel of '{group.root}' ({group.width} channels); "
                f"expected a count below the narrowest layer's width, or a --ratio"
            )
        if scores is None:
            order = rng.permutation(group.width)
        else:
            key = np.asarray(scores[i], dtype=np.float64)
            order = np.argsort(key, kind="stable")
        out[group.root] = sorted(int(c) for c in order[:n])
    return out


def apply_pruning(
    model: nn.Module,
    example: torch.Tensor,
    groups: Sequence[PruneGroup],
    channels: Mapping[str, Sequence[int]],
) -> PrunedModel:
    """A pruned copy of ``model`` (the original is untouched) without ``channels`` of each group
    root, checked against the original with those channels zeroed on ``example``."""
    from featuremaps.capture import zero_channels

    pruned = copy.deepcopy(model).eval()
    graph = _graph(pruned, example)
    removed: dict[str, set[int]] = {}
    widths: dict[str, int] = {}
    for group in groups:
        idxs = list(channels.get(group.root, ()))
        if not idxs:
            continue
        plan = _plan(graph, pruned.get_submodule(group.root), idxs)
        if not graph.check_pruning_group(plan):
            raise OptionError(
                f"removing {len(idxs)} channels of '{group.root}' would leave a layer without "
                "channels; use a smaller --ratio or --k"
            )
        plan.prune()
        # In the original model's indexing: pruning an earlier group shifts the offsets at which
        # a concatenation places later groups' channels, but not the original tensors.
        for name, mapping in group.outputs.items():
            removed.setdefault(name, set()).update(mapping[c] for c in idxs)
            widths[name] = _out_width(model.get_submodule(name))
    result = PrunedModel(
        pruned,
        {n: sorted(v) for n, v in removed.items()},
        {g.root: sorted(int(c) for c in channels.get(g.root, ())) for g in groups},
        widths=widths,
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            got = pruned(example)
            with zero_channels(model, result.removed, widths):
                want = model(example)
    finally:
        model.train(was_training)
    if isinstance(got, torch.Tensor) and isinstance(want, torch.Tensor):
        scale = want.abs().max().clamp_min(1e-12)
        result.equivalence = float(((got - want).abs().max() / scale).item())
    return result


def count_params(model: nn.Module) -> int:
    """The number of parameters (weights and biases; not BatchNorm's running statistics)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example``, from torch's FLOP counter
    (which counts a multiply-accumulate as 2 operations)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example)
    return int(counter.get_total_flops() // 2)


def measure_latency(
    first: nn.Module, second: nn.Module, example: torch.Tensor, repeats: int = 15
) -> tuple[float, float]:
    """Median seconds of a forward pass of ``first`` and of ``second`` on ``example``, timed in
    alternation (one of each per round, after one warm-up each) so both see the same machine."""
    times: list[list[float]] = [[], []]
    with torch.no_grad():
        first(example)
        second(example)
        for _ in range(repeats):
            for i, model in enumerate((first, second)):
                start = time.perf_counter()
                model(example)
                if example.device.type == "cuda":
                    torch.cuda.synchronize(example.device)
                times[i].append(time.perf_counter() - start)
    return float(np.median(times[0])), float(np.median(times[1]))


# -- what the user gets: agreement with the original over a data set ---------------------------


@dataclass(frozen=True)
class PrunePoint:
    """One pruned model measured against the original.

    ``selection`` is ``"ranked"`` (the lowest-ranked channels removed) or ``"random"`` (as many
    random channels per group: the control). ``agreement`` is top-1 agreement with the original
    over the data (or the mean cosine of the outputs when they are not class scores, see
    :attr:`PruneResult.metric`); ``latency_ratio`` is the pruned model's median forward time over
    the original's, timed side by side.
    """

    selection: str
    ratio: float | None
    k: int | None
    params: int
    macs: int
    latency_ratio: float
    agreement: float
    equivalence: float
    removed: dict[str, list[int]] = field(default_factory=dict, compare=False, repr=False)
    per_group: dict[str, list[int]] = field(default_factory=dict, compare=False, repr=False)

    def row(self) -> dict[str, Any]:
        """The point as one flat row (without the channel lists), for a CSV file."""
        return {
            "selection": self.selection,
            "ratio": self.ratio,
            "k": self.k,
            "params": self.params,
            "macs": self.macs,
            "latency_ratio": self.latency_ratio,
            "agreement": self.agreement,
            "removed_channels": sum(len(v) for v in self.per_group.values()),
            "equivalence": self.equivalence,
        }


@dataclass
class PruneResult:
    """Every pruned model measured, with the model itself for the first ranked point."""

    points: list[PrunePoint]
    params_before: int
    macs_before: int
    metric: str
    stat: str
    ranking: str
    images: int
    groups: list[str]
    skipped: dict[str, str]
    failed: list[tuple[str, str]] = field(default_factory=list)
    model: nn.Module | None = field(default=None, repr=False)
    saved: str | None = None

    def __repr__(self) -> str:
        return (
            f"PruneResult({len(self.groups)} groups by {self.stat}, {len(self.points)} points, "
            f"{self.images} images, {self.metric})"
        )

    def point(self, selection: str, index: int = 0) -> PrunePoint:
        """The ``index``-th point of ``selection`` (``"ranked"`` or ``"random"``)."""
        return [p for p in self.points if p.selection == selection][index]

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per point."""
        return [p.row() for p in self.points]


def _similarity(base: torch.Tensor, other: torch.Tensor, classes: bool) -> float:
    """Per-batch sum of top-1 agreement (class scores) or of the outputs' cosine similarity."""
    if classes:
        return float((base.argmax(1) == other.argmax(1)).sum().item())
    a, b = base.flatten(1), other.flatten(1)
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12).sum().item())


def is_class_scores(output: Any) -> bool:
    """Whether a model output is one ``(images, classes)`` tensor with at least two classes."""
    return isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[1] >= 2


def measure_agreement(
    original: nn.Module,
    others: Sequence[nn.Module],
    batches: Any,
    placement: Any,
) -> tuple[list[float], str, int, list[tuple[str, str]]]:
    """Compare each of ``others`` with ``original`` on every batch of ``batches`` (a loader as
    :func:`featuremaps.dataset.make_loader` makes): the mean top-1 agreement, or the mean cosine
    of the outputs when they are not class scores; with the metric's name, the image count and
    the inputs that could not be read."""
    sums = np.zeros(len(others))
    images = 0
    metric = ""
    failed: list[tuple[str, str]] = []
    with torch.inference_mode():
        for batch, _, bad in batches:
            failed.extend(bad)
            if batch is None:
                continue
            batch = placement.inputs(batch)
            with placement.autocast():
                base = original(batch)
                outputs = [m(batch) for m in others]
            classes = is_class_scores(base)
            metric = metric or ("top1_agreement" if classes else "mean_cosine")
            base = base.detach().to("cpu", torch.float64)
            for i, out in enumerate(outputs):
                sums[i] += _similarity(base, out.detach().to("cpu", torch.float64), classes)
            images += len(batch)
    return [float(s / max(images, 1)) for s in sums], metric, images, failed
