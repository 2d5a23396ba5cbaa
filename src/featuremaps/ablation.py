"""Ablation: zero the lowest-ranked channels of some layers and measure what the output loses.

A ranking (per-channel statistics over a data set, :mod:`featuremaps.dataset`) claims that some
channels matter little; this module measures the claim. For each K, the K lowest-ranked channels
of every chosen layer are zeroed during the forward pass (:func:`featuremaps.capture.zero_channels`:
hooks replace the outputs, the model's weights are untouched) and the masked model's outputs are
compared with the unmasked ones on the same images:

* **top-1 agreement**: the fraction of images whose arg-max class is unchanged;
* **mean |Δlogit|**: the mean absolute change of every output value;
* **KL divergence** ``KL(p || q)`` of the masked softmax ``q`` from the unmasked ``p``, in nats,
  averaged over images (computed from log-softmax in float64).

The control zeroes K *random* channels per layer instead (a fresh permutation per trial, the first K
of it for each K, so each trial's masks are nested like the ranked ones). A ranking is worth
something when its curve stays above the random band. Pure computation: nothing is written here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from featuremaps._errors import CaptureError, FeaturemapsError, InputError, OptionError
from featuremaps.capture import zero_channels
from featuremaps.dataset import batch_paths, read_batch
from featuremaps.devices import Placement, model_device
from featuremaps.engine import EngineOptions, EngineReport, ModelJob, ModelSpec, run_job
from featuremaps.inputs import Preprocessing, load_input

__all__ = [
    "AblationJob",
    "AblationPartial",
    "AblationPoint",
    "AblationResult",
    "lowest_first",
    "measure_ablation",
]

METRICS = ("agreement", "mean_abs_dlogit", "kl")


def lowest_first(values: np.ndarray) -> np.ndarray:
    """Channel indices ordered from the lowest statistic to the highest (ties: lower index first).

    A NaN statistic (a channel without one finite value) counts as the lowest, as in the
    statistics' ranks.
    """
    key = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=-np.inf)
    return np.argsort(key, kind="stable")


@dataclass(frozen=True)
class AblationPoint:
    """The output change with ``k`` channels zeroed per layer, for one choice of channels.

    ``selection`` is ``"ranked"`` or ``"random"``; ``trial`` numbers the random draws (0 for
    ranked); ``zeroed`` is the number of channels zeroed over all layers (K is capped at a
    layer's width) and ``masks`` names them per layer.
    """

    selection: str
    k: int
    trial: int
    zeroed: int
    agreement: float
    mean_abs_dlogit: float
    kl: float
    masks: dict[str, tuple[int, ...]] = field(default_factory=dict, compare=False)


@dataclass
class AblationResult:
    """Every measured point, with what was masked and over which inputs."""

    points: list[AblationPoint]
    channels: dict[str, int]
    order: dict[str, list[int]]
    stat: str
    ks: tuple[int, ...]
    trials: int
    images: int
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    # Where the ranking came from: a statistics file, or the measured inputs themselves
    # (in-sample); set by :func:`featuremaps.ablate`, empty when the caller gave the values.
    ranking: str = ""
    engine: EngineReport | None = None

    def __repr__(self) -> str:
        ks = ",".join(map(str, self.ks))
        return (
            f"AblationResult({len(self.channels)} layers, {self.stat}, K {ks}, {self.trials} "
            f"random trials, {self.images} images, {len(self.points)} points)"
        )

    def rows(self) -> list[dict[str, Any]]:
        """One row per point, for a CSV file."""
        return [
            {
                "selection": p.selection,
                "k": p.k,
                "trial": p.trial,
                "zeroed": p.zeroed,
                "top1_agreement": p.agreement,
                "mean_abs_dlogit": p.mean_abs_dlogit,
                "kl": p.kl,
            }
            for p in self.points
        ]

    def curve(self) -> list[dict[str, Any]]:
        """Per K: the ranked value of each metric and the random trials' mean, min and max."""
        out = []
        for k in self.ks:
            ranked = next(p for p in self.points if p.selection == "ranked" and p.k == k)
            rand = [p for p in self.points if p.selection == "random" and p.k == k]
            entry: dict[str, Any] = {"k": k, "zeroed": ranked.zeroed}
            for metric in METRICS:
                entry[f"ranked_{metric}"] = getattr(ranked, metric)
                values = np.array([getattr(p, metric) for p in rand])
                stats = (values.mean(), values.min(), values.max()) if len(values) else (None,) * 3
                for name, value in zip(("mean", "min", "max"), stats, strict=True):
                    entry[f"random_{metric}_{name}"] = None if value is None else float(value)
            out.append(entry)
        return out


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[1] >= 2:
        return output.detach().to("cpu", torch.float64)  # small; MPS has no float64
    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
    raise OptionError(
        f"ablation compares class scores, shaped (images, classes); this model returns {shape}. "
        "Use a classifier, or wrap the model so it returns one (images, classes) tensor"
    )


def check_classifier(
    model: nn.Module,
    paths: Sequence[Path],
    channels: int | None,
    preprocessing: Preprocessing,
    placement: Placement | None = None,
) -> None:
    """Run the model on the first readable input and raise OptionError unless it returns class
    scores; inputs that cannot be read are left for the main pass to count."""
    for path in paths:
        try:
            item = load_input(path, channels=channels, preprocessing=preprocessing)
        except FeaturemapsError:
            continue
        placement = placement or Placement(model_device(model))
        with _evaluating(model), placement.autocast():
            _logits(_forward(model, placement.inputs(item.tensor)))
        return


def _compare(base: torch.Tensor, masked: torch.Tensor) -> np.ndarray:
    """Per-batch sums of (agreement, mean |Δlogit| per image, KL) for :data:`METRICS`."""
    agree = (base.argmax(1) == masked.argmax(1)).sum().item()
    dlogit = (masked - base).abs().mean(1).sum().item()
    logp = torch.log_softmax(base, 1)
    logq = torch.log_softmax(masked, 1)
    kl = (logp.exp() * (logp - logq)).sum(1).clamp_min(0).sum().item()
    return np.array([agree, dlogit, kl], dtype=np.float64)


def _masks(order: Mapping[str, np.ndarray], k: int) -> tuple[dict[str, tuple[int, ...]], int]:
    masks = {name: tuple(int(c) for c in idx[:k]) for name, idx in order.items()}
    return masks, sum(len(v) for v in masks.values())


def check_options(ks: Iterable[int], trials: int) -> tuple[int, ...]:
    """The sorted distinct K values; raises OptionError for negative counts or trials."""
    given = list(ks)
    out = tuple(sorted({int(k) for k in given}))
    if not out or out[0] < 0:
        raise OptionError(
            f"--k {','.join(map(str, given))}: expected channel counts of 0 or more, e.g. 0,8,16"
        )
    if trials < 0:
        raise OptionError(f"--random {trials}: expected 0 or more random trials")
    return out


@dataclass
class AblationPartial:
    """One batch's per-point sums (points x :data:`METRICS`), what a worker returns."""

    sums: np.ndarray
    images: int = 0
    passes: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None  # a masked layer that did not run: raised on the driver


@dataclass
class AblationJob(ModelJob):
    """The measurement passes as a :class:`featuremaps.engine.Job`: an item is a list of paths
    (one batch); each mask of ``masks`` is run on it and compared with the unmasked output.

    ``model`` and ``placement`` are used where given (the local engine) and never pickled; a
    worker elsewhere loads the model from ``spec``.
    """

    spec: ModelSpec | None
    channels: int | None
    preprocessing: Preprocessing
    masks: list[dict[str, tuple[int, ...]]]
    widths: dict[str, int]
    model: nn.Module | None = None
    placement: Placement | None = None

    def read(self, item: Sequence[Path]) -> Any:
        return read_batch(item, self.channels, self.preprocessing)

    def describe_compute(self) -> dict[str, Any] | None:
        return None if self.placement is None else self.placement.describe()

    def compute(self, data: Any) -> AblationPartial:
        batch, _, bad = data
        out = AblationPartial(np.zeros((len(self.masks), len(METRICS))), failed=list(bad))
        if batch is None:
            return out
        model, placement = self.model, self.placement
        assert model is not None and placement is not None  # set by open()
        with _evaluating(model):
            batch = placement.inputs(batch)
            with placement.autocast():
                base = _logits(_forward(model, batch))
            done: dict[tuple[tuple[str, tuple[int, ...]], ...], np.ndarray] = {}
            for i, masks in enumerate(self.masks):
                key = tuple(sorted((n, tuple(sorted(v))) for n, v in masks.items()))
                if key in done:  # the same channels again (K=0, or K at a layer's width)
                    out.sums[i] += done[key]
                    continue
                with zero_channels(model, masks, self.widths) as applied, placement.autocast():
                    masked = _logits(_forward(model, batch))
                missing = [n for n, count in applied.items() if masks[n] and count == 0]
                if missing:
                    out.error = (
                        f"layer '{missing[0]}' did not run on {tuple(batch.shape)} inputs, so "
                        "its channels could not be zeroed; pick layers from 'featuremaps "
                        "layers MODEL'"
                    )
                    return out
                done[key] = _compare(base, masked)
                out.sums[i] += done[key]
                out.passes += 1
        out.images = len(batch)
        return out


def measure_ablation(
    model: nn.Module,
    paths: Sequence[Path],
    values: Mapping[str, np.ndarray],
    *,
    ks: Iterable[int],
    stat: str,
    channels: int | None,
    preprocessing: Preprocessing,
    trials: int = 3,
    seed: int = 0,
    batch_size: int = 16,
    workers: int = 2,
    progress: Callable[[int], object] | None = None,
    placement: Placement | None = None,
    engine: EngineOptions | None = None,
    spec: ModelSpec | None = None,
    status: Callable[[str], object] | None = None,
) -> AblationResult:
    """Zero the K lowest-ranked channels of each layer in ``values`` and measure the output change.

    Args:
        model: a classifier (its output must be one ``(images, classes)`` tensor).
        paths: the inputs, read like ``featuremaps stats`` reads them (unreadable ones skipped).
        values: per record name, the ranking statistic of each channel (lowest = zeroed first).
        ks: the K values; 0 measures the model against itself (exactly no change).
        stat: the statistic's name, kept in the result.
        channels: the model's input channel count, if known.
        trials: random-channel controls per K (0 for none), drawn with ``seed``.
        progress: called with 1 after each masked forward pass (a mask that repeats an earlier
            one, such as K=0 for every random draw, is measured once).
        placement: where the model runs and in which precision (default: where its weights
            are, float32); the logits are compared on the host in float64.
        engine: where the batches run (:mod:`featuremaps.engine`; default local); the ray
            engine's workers load the model from ``spec``. Per-batch sums are added in batch
            order, so both engines give the same curve. ``status`` gets the engine's line.
    """
    ks = check_options(ks, trials)
    if not values:
        raise OptionError("no layer to ablate; name layers with --layers")
    order = {name: lowest_first(v) for name, v in values.items()}
    widths = {name: len(v) for name, v in values.items()}
    rng = np.random.default_rng(seed)
    shuffled = [
        {name: rng.permutation(len(v)) for name, v in values.items()} for _ in range(trials)
    ]
    configs: list[tuple[str, int, int, dict[str, tuple[int, ...]], int]] = []
    for k in ks:
        configs.append(("ranked", k, 0, *_masks(order, k)))
        for t, perm in enumerate(shuffled, start=1):
            configs.append(("random", k, t, *_masks(perm, k)))

    placement = placement or Placement(model_device(model))
    cuda = placement.device.type == "cuda"
    remote = engine is not None and engine.name != "local"
    job = AblationJob(
        spec, channels, preprocessing, [c[3] for c in configs], widths,
        None if remote else model, None if remote else placement,
    )  # fmt: skip
    sums = np.zeros((len(configs), len(METRICS)))
    images = 0
    failed: list[tuple[str, str]] = []

    def fold(_key: int, partial: AblationPartial) -> None:
        nonlocal sums, images
        failed.extend(partial.failed)
        if partial.error is not None:
            raise CaptureError(partial.error)
        sums += partial.sums
        images += partial.images
        if progress is not None:
            progress(partial.passes)

    report = run_job(
        job, batch_paths(paths, preprocessing, batch_size), fold, engine, readers=workers,
        pin_memory=cuda, progress=None if status is None else (lambda _n, line: status(line)),
    )  # fmt: skip
    if images == 0:
        first = failed[0][1] if failed else "no inputs"
        raise InputError(
            f"none of the {len(paths)} inputs could be read (first: {first}); check the files"
        )
    means = sums / images
    points = [
        AblationPoint(selection, k, t, zeroed, *_floats(means[i]), masks=masks)
        for i, (selection, k, t, masks, zeroed) in enumerate(configs)
    ]
    return AblationResult(
        points=points,
        channels={name: len(v) for name, v in values.items()},
        order={name: [int(c) for c in idx] for name, idx in order.items()},
        stat=stat,
        ks=ks,
        trials=trials,
        images=images,
        failed=failed,
        seconds=report.seconds["wall"],
        engine=report,
    )


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd inside; every module's own train/eval flag restored after."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.inference_mode():
            yield
    finally:
        for m, was_training in modes.items():
            m.training = was_training


def _floats(row: np.ndarray) -> tuple[float, float, float]:
    return float(row[0]), float(row[1]), float(row[2])


def _forward(model: nn.Module, batch: torch.Tensor) -> Any:
    try:
        return model(batch)
    except FeaturemapsError:
        raise
    except Exception as exc:
        raise CaptureError(
            f"the model's forward pass failed on input of shape {tuple(batch.shape)}: "
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        ) from exc
