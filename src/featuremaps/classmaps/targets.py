"""Targets: the scalar a class map explains, one per input, taken from the model's output.

Pure functions on the output of a forward pass. The output the target is read from is the model's
return value, or one named part of it (``output="out"`` for a dict, ``"0"`` for a tuple; the key
paths of :func:`featuremaps.hooks.walk`). Its shape says what a target is:

* ``(N, K)`` class scores: class ``k`` of input ``n`` is ``output[n, k]``; its probability is the
  softmax over ``K``.
* ``(N, K, *cells)`` dense scores (segmentation): class ``k`` summed over a region of the cells: a
  mask, a box, or by default the cells where ``k`` is the top class (all cells when there are none).
* ``(N,)`` one score per input (a regression): the score itself.

Anything else has no scalar target per input, and says so in one line: above all a detector's
list of per-image dicts (boxes, scores, labels), whose parts would otherwise pass for scores
when their first axis happens to match the batch (one box for one image).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from featuremaps._errors import OptionError
from featuremaps.hooks import walk
from featuremaps.naming import suggest

__all__ = ["Region", "Target", "TargetSpec", "chosen_output", "resolve_targets", "target_scores"]


@dataclass(frozen=True)
class Region:
    """A dense (segmentation) target: class ``index`` (or name) summed over a region of the
    output's cells, given as a boolean ``mask`` of the output's cell shape or a ``box``
    ``(x0, y0, x1, y1)`` in output cells (``x1``, ``y1`` excluded). Neither: the cells where
    the class is the top class."""

    index: int | str
    mask: np.ndarray | None = None
    box: tuple[int, int, int, int] | None = None


#: What ``target=`` accepts: ``"top1"``, a class index, a class name, a :class:`Region`, or a
#: sequence of those with one entry per input; also a tensor or array of class indices (0-D: one
#: for all, 1-D: one per input, as a batch's labels come).
TargetSpec = int | str | Region | Sequence[int | str | Region] | np.ndarray | torch.Tensor


@dataclass(frozen=True)
class Target:
    """What one map explains, as measured on the input.

    Attributes:
        index: the class index (``None`` for a one-score output or a class-agnostic method).
        name: the class name from the weights' metadata, where known.
        score: the target's score on the input (a logit, or summed over the region).
        probability: its softmax probability, for class scores.
        output: the output key the score was read from (``None``: the model's return value).
        region: how a dense target's region was chosen, in words (``None`` otherwise).
    """

    index: int | None
    name: str | None
    score: float | None
    probability: float | None = None
    output: str | None = None
    region: str | None = None

    def label(self) -> str:
        """``"class 5 'cat' (score 3.21, p 0.84)"`` as legends write it."""
        if self.index is None and self.score is None:
            return "no target (class-agnostic)"
        what = "output score" if self.index is None else f"class {self.index}"
        if self.name:
            what += f" '{self.name}'"
        numbers = [] if self.score is None else [f"score {self.score:.4g}"]
        if self.probability is not None:
            numbers.append(f"p {self.probability:.3g}")
        if self.region:
            numbers.append(self.region)
        return f"{what} ({', '.join(numbers)})" if numbers else what

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``target``: ``index``, ``name``, ``score`` (and the rest when set)."""
        found: dict[str, Any] = {"index": self.index, "name": self.name, "score": self.score}
        if self.probability is not None:
            found["probability"] = self.probability
        if self.output is not None:
            found["output"] = self.output
        if self.region is not None:
            found["region"] = self.region
        return found


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(n) for n in t.shape) + ")"


def chosen_output(output: Any, key: str | None, batch: int) -> tuple[torch.Tensor, str | None]:
    """The tensor the targets are read from: the model's return value or its part ``key``.

    Raises:
        OptionError: ``key`` is not there, the output has several parts and no ``key`` picks
            one, or the chosen tensor has no score per input (one line each).
    """
    per_image = _per_image_results(output)
    if per_image is not None:
        raise OptionError(
            f"the model returns {per_image}, one per image as a detector's results: no score per "
            "input to explain (a box's score is not a score of the whole input); class maps need "
            "(N, classes), (N, classes, H, W) or (N,) scores: explain a classifier or a "
            "segmentation model, or wrap the detector to return one score per input"
        )
    parts = list(walk(output, None))
    listing = ", ".join(f"'{k}' {_shape(t)}" for k, t in parts[:8] if k is not None)
    if key is not None:
        found = [t for k, t in parts if k == key]
        if not found:
            raise OptionError(
                f"output '{key}' is not part of the model's output; its parts are "
                f"{listing or 'none (it returns one tensor)'}"
                f"{suggest(key, [k for k, _ in parts if k is not None])}; choose one with "
                "--output KEY"
            )
        tensor = found[0]
    elif len(parts) == 1:
        tensor = parts[0][1]
    elif not parts:
        raise OptionError(
            f"the model returns {type(output).__name__} without tensors, so there is no score "
            "to explain; class maps need a model that returns class scores"
        )
    else:
        raise OptionError(
            f"the model returns {type(output).__name__} with several outputs ({listing}); "
            f"choose the scores to explain with --output KEY, e.g. --output {parts[0][0]}"
        )
    if tensor.dim() == 0 or tensor.shape[0] != batch or not tensor.is_floating_point():
        where = f"output '{key}'" if key is not None else "the model's output"
        raise OptionError(
            f"{where} has shape {_shape(tensor)} ({tensor.dtype}), not one row of scores per "
            f"input (batch {batch}), so it has no scalar target (a detector's raw boxes have "
            "none); class maps need (N, classes), (N, classes, H, W) or (N,) scores: choose "
            "such an output with --output KEY"
        )
    return tensor, key


def _per_image_results(output: Any) -> str | None:
    """``"a list of 2 dicts ('boxes' (5, 4), ...)"`` for a list or tuple of dicts, else None."""
    if not isinstance(output, (list, tuple)) or not output:
        return None
    if not all(isinstance(item, Mapping) for item in output):
        return None
    first = ", ".join(f"'{k}' {_shape(t)}" for k, t in list(walk(output[0], None))[:4])
    plural = "s" if len(output) != 1 else ""
    return f"a {type(output).__name__} of {len(output)} dict{plural} ({first or 'no tensors'})"


def _class_index(value: object, classes: int, names: Sequence[str] | None) -> int:
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 0:
        value = value.item()
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():  # labels kept as floats
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, str)):
        raise OptionError(
            f"target {value!r} ({type(value).__name__}) is not a class; give a class index "
            f"0..{classes - 1}, a class name or top1 (one for all inputs or one per input)"
        )
    if isinstance(value, str):
        if not names:
            raise OptionError(
                f"target '{value}' is a class name, but this model's weights name no classes; "
                f"give a class index 0..{classes - 1} or top1"
            )
        lowered = [n.lower() for n in names]
        if value.lower() not in lowered:
            raise OptionError(
                f"target '{value}' is not one of the model's {len(names)} class names"
                f"{suggest(value, list(names))}; give a name, an index 0..{classes - 1} or top1"
            )
        return lowered.index(value.lower())
    index = int(value)
    if not 0 <= index < classes:
        raise OptionError(
            f"target class {index} is out of range: the output has {classes} classes "
            f"(0..{classes - 1}); give an index in that range, a class name or top1"
        )
    return index


def _region_mask(region: Region, index: int, scores: torch.Tensor) -> tuple[torch.Tensor, str]:
    cells = tuple(scores.shape[1:])
    if region.mask is not None:
        given = np.asarray(region.mask).astype(bool)
        if given.shape != cells:
            raise OptionError(
                f"the region mask has shape {given.shape}, but the output's cells are {cells}; "
                "give a mask of the output's size"
            )
        return torch.from_numpy(given).to(scores.device), f"mask of {int(given.sum())} cells"
    if region.box is not None:
        if len(cells) != 2:
            raise OptionError(f"a box region needs a 2-D output; its cells are {cells}")
        x0, y0, x1, y1 = region.box
        if not (0 <= x0 < x1 <= cells[1] and 0 <= y0 < y1 <= cells[0]):
            raise OptionError(
                f"box {x0},{y0},{x1},{y1} is not inside the output's {cells[1]}x{cells[0]} "
                "cells; give X0,Y0,X1,Y1 with 0 <= X0 < X1 <= width and 0 <= Y0 < Y1 <= height"
            )
        mask = torch.zeros(cells, dtype=torch.bool, device=scores.device)
        mask[y0:y1, x0:x1] = True
        return mask, f"box {x0},{y0},{x1},{y1}"
    top = scores.argmax(0) == index
    if bool(top.any()):
        return top, f"{int(top.sum())} cells where it is the top class"
    return torch.ones(cells, dtype=torch.bool, device=scores.device), "all cells (never top)"


@dataclass(frozen=True)
class Resolved:
    """Targets resolved on one output: per input the class index (or None) and region mask."""

    indices: list[int | None]
    masks: list[torch.Tensor | None]
    targets: list[Target]


def resolve_targets(
    scores: torch.Tensor,
    spec: TargetSpec,
    names: Sequence[str] | None,
    key: str | None,
) -> Resolved:
    """One :class:`Target` per input of ``scores`` (the :func:`chosen_output`), from ``spec``."""
    batch = scores.shape[0]
    if isinstance(spec, (np.ndarray, torch.Tensor)):
        spec = spec.tolist()  # a scalar for a 0-D array, a list for a batch's labels
    many = isinstance(spec, Sequence) and not isinstance(spec, str)
    specs: list[int | str | Region] = (
        list(spec) if many else [spec] * batch  # type: ignore[arg-type, list-item]
    )
    if len(specs) != batch:
        raise OptionError(
            f"{len(specs)} targets for {batch} inputs; give one target for all, or one per input"
        )
    values = scores.detach().to(torch.float64)
    indices: list[int | None] = []
    masks: list[torch.Tensor | None] = []
    targets: list[Target] = []
    for n, one in enumerate(specs):
        row = values[n]
        if scores.dim() == 1:
            indices.append(None)
            masks.append(None)
            targets.append(Target(None, None, float(row), output=key))
            continue
        classes = row.shape[0]
        wanted: int | str = one.index if isinstance(one, Region) else one
        if scores.dim() == 2 and isinstance(one, Region):
            raise OptionError("a region target needs dense (N, classes, H, W) scores")
        if wanted == "top1":
            k = int(row.reshape(classes, -1).mean(1).argmax())
        else:
            k = _class_index(wanted, classes, names)
        name = names[k] if names and k < len(names) else None
        if scores.dim() == 2:
            p = torch.softmax(row, 0)[k]
            indices.append(k)
            masks.append(None)
            targets.append(Target(k, name, float(row[k]), float(p), output=key))
            continue
        region = one if isinstance(one, Region) else Region(k)
        mask, said = _region_mask(region, k, row)
        indices.append(k)
        masks.append(mask)
        targets.append(Target(k, name, float(row[k][mask].sum()), output=key, region=said))
    return Resolved(indices, masks, targets)


def target_scores(scores: torch.Tensor, resolved: Resolved) -> torch.Tensor:
    """The targets' scores, ``(N,)``, differentiable through ``scores``."""
    rows = []
    for n, (k, mask) in enumerate(zip(resolved.indices, resolved.masks, strict=True)):
        if k is None:
            rows.append(scores[n])
        elif mask is None:
            rows.append(scores[n, k])
        else:
            rows.append((scores[n, k] * mask).sum())
    return torch.stack(rows)


def target_metric(scores: torch.Tensor, resolved: Resolved) -> torch.Tensor:
    """What the deletion and insertion curves record: the target's softmax probability for
    class scores, else its score (:func:`target_scores`)."""
    if scores.dim() == 2 and all(k is not None for k in resolved.indices):
        probabilities = torch.softmax(scores.to(torch.float64), 1)
        return torch.stack([probabilities[n, k] for n, k in enumerate(resolved.indices)])
    return target_scores(scores, resolved).to(torch.float64)
