"""Trust numbers for a class map: deletion and insertion curves, and the model-randomisation
sanity check.

Deletion and insertion (Petsiuk et al. 2018): the map's cells are taken in order of their value,
highest first, and the input region of each cell (the input positions whose
nearest cell centre it is, :mod:`featuremaps.cells`; without a geometry the map is stretched over
the input) is set to the baseline (deletion, starting from the input) or copied from the input
(insertion, starting from the baseline), in ``steps`` equal steps of cells. Cells of equal value
carry no ranking, so they are taken in the order of the first random order of the control, not
row by row (which would favour whatever sits in the first rows). At each step the
target's probability (its score for outputs without classes) is recorded; the area under the
curve over the fraction of cells, 0 to 1 (trapezoids), summarises it. A map that finds what the
target depends on makes deletion fall fast (a small area) and insertion rise fast (a large one).
The same curves for random cell orders (seeded, averaged over :data:`RANDOM_ORDERS` orders) are
the control. The baseline is zero in the values fed to the model (for a normalised image, the
data set's mean colour).

The sanity check (Adebayo et al. 2018, cascading randomisation): the map is recomputed on a copy
of the model whose modules above the map's layer are re-initialised (their own
``reset_parameters``, under a fixed seed, the caller's random state untouched, on the CPU and on
every CUDA device the copy lives on), for the same target class. A module is above the layer when
none of its calls starts before the layer's call has returned: a module that also ran before it
(a shared block) or encloses it (a container) shapes the layer's own values and is kept.
The Spearman rank correlation between the two maps says how much the map depends on
what the model learned above the layer; at :data:`SANITY_THRESHOLD` or above it barely depends
on it, and the map is flagged as failing the check.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from featuremaps.cells import nearest_cells
from featuremaps.geometry import MapGeometry

__all__ = [
    "RANDOM_ORDERS",
    "SANITY_THRESHOLD",
    "Curves",
    "area",
    "cell_regions",
    "curves",
    "random_orders",
    "rank_correlation",
    "reinitialised",
    "resettable",
    "value_order",
]

#: The rank correlation at or above which a map fails the sanity check.
SANITY_THRESHOLD = 0.5
#: How many random cell orders the control averages.
RANDOM_ORDERS = 3


@dataclass(frozen=True)
class Curves:
    """Deletion and insertion curves of one map: the metric at each fraction of cells."""

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray

    @property
    def deletion_auc(self) -> float:
        return area(self.fractions, self.deletion)

    @property
    def insertion_auc(self) -> float:
        return area(self.fractions, self.insertion)


def area(fractions: np.ndarray, values: np.ndarray) -> float:
    """The area under ``values`` over ``fractions`` (trapezoids)."""
    return float(np.trapezoid(values, fractions))


def _axis_cells(pixels: int, cells: int, stride: float | None, offset: float | None) -> np.ndarray:
    if stride is None or offset is None:  # stretched over the input
        stride = pixels / cells
        offset = (stride - 1) / 2
    found = nearest_cells(np.arange(pixels), stride, offset)
    clipped: np.ndarray = np.clip(found, 0, cells - 1)
    return clipped


def cell_regions(
    cells: Sequence[int], size: Sequence[int], geometry: MapGeometry | None
) -> np.ndarray:
    """For each input position (``size``), the flat index of the cell it belongs to."""
    if len(cells) != len(size):
        raise ValueError(f"cells {tuple(cells)} and input size {tuple(size)} differ in rank")
    axes = []
    for i, (n, pixels) in enumerate(zip(cells, size, strict=True)):
        along = None
        if geometry is not None and len(cells) == 2 and tuple(geometry.shape) == tuple(cells):
            along = geometry.y if i == 0 else geometry.x
        axes.append(
            _axis_cells(
                pixels,
                n,
                None if along is None else along.stride,
                None if along is None else along.offset,
            )
        )
    grids = np.meshgrid(*axes, indexing="ij")
    flat: np.ndarray = np.ravel_multi_index(tuple(grids), tuple(cells))
    return flat


def value_order(values: np.ndarray, ties: np.ndarray | None = None) -> np.ndarray:
    """The flat cell indices of a map by value, highest first; NaN last.

    Cells of equal value follow their places in the cell order ``ties`` (default: by cell
    index); :func:`featuremaps.classmaps.class_maps` passes the control's first random order.
    """
    flat = np.nan_to_num(values.reshape(-1).astype(np.float64), nan=-np.inf)
    place = np.arange(flat.size)
    if ties is not None:
        if sorted(ties.tolist()) != list(range(flat.size)):
            raise ValueError(f"ties is not an order of the map's {flat.size} cells")
        place = np.empty(flat.size, dtype=np.int64)
        place[ties] = np.arange(flat.size)
    order: np.ndarray = np.lexsort((place, -flat))
    return order


def curves(
    metric: Callable[[torch.Tensor], torch.Tensor],
    sample: torch.Tensor,
    regions: np.ndarray,
    order: np.ndarray,
    steps: int,
    batch: int = 16,
) -> Curves:
    """Deletion and insertion curves of one input ``(1, C, *size)`` for a cell ``order``.

    ``metric`` maps a batch of inputs to the target's metric per input, ``(B,)``; ``regions``
    is :func:`cell_regions`. Step ``s`` of ``steps`` has the first ``round(s · cells / steps)``
    cells of ``order`` deleted (or inserted).
    """
    total = int(order.size)
    steps = max(1, min(steps, total))
    counts = [round(s * total / steps) for s in range(steps + 1)]
    rank = np.empty(total, dtype=np.int64)
    rank[order] = np.arange(total)
    position_rank = torch.from_numpy(rank[regions]).to(sample.device)  # (*size)
    baseline = torch.zeros_like(sample)
    # (taken cells, deleted?) for every point of both curves; the inputs are made one batch at a
    # time, so a large input never has all its 2 (steps + 1) variants in memory at once.
    points = [(k, True) for k in counts] + [(k, False) for k in counts]
    values = []
    with torch.no_grad():
        for start in range(0, len(points), batch):
            variants = []
            for k, deleting in points[start : start + batch]:
                keep = (position_rank >= k).to(sample.dtype)  # 1 where the cell is not yet taken
                if deleting:
                    variants.append(sample * keep + baseline * (1 - keep))
                else:
                    variants.append(baseline * keep + sample * (1 - keep))
            found_part = metric(torch.cat(variants)).detach().to(torch.float64).cpu()
            values.append(found_part)
    found = torch.cat(values).numpy()
    fractions = np.asarray(counts, dtype=np.float64) / total
    return Curves(fractions, found[: len(counts)], found[len(counts) :])


def random_orders(cells: int, seed: int = 0) -> list[np.ndarray]:
    """The control's :data:`RANDOM_ORDERS` random cell orders (seeded)."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(cells) for _ in range(RANDOM_ORDERS)]


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.arange(x.size, dtype=np.float64)
    sorted_x = x[order]
    # average the ranks of ties
    start = 0
    while start < x.size:
        end = start
        while end + 1 < x.size and sorted_x[end + 1] == sorted_x[start]:
            end += 1
        if end > start:
            ranks[order[start : end + 1]] = (start + end) / 2
        start = end + 1
    return ranks


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps (ties get their average rank); NaN when either
    map is constant."""
    x = _ranks(np.asarray(a, dtype=np.float64).reshape(-1))
    y = _ranks(np.asarray(b, dtype=np.float64).reshape(-1))
    x -= x.mean()
    y -= y.mean()
    denominator = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denominator) if denominator > 0 else float("nan")


def reinitialised(model: nn.Module, paths: Sequence[str], seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose modules at ``paths`` are re-initialised by their own
    ``reset_parameters``, in that order, under ``seed``.

    The CPU generator and that of each CUDA device holding the copy's parameters or buffers are
    seeded and then restored, so the caller's random state (``torch.get_rng_state``,
    ``torch.cuda.get_rng_state``) is as it was; no other device's generator is touched.
    """
    twin = copy.deepcopy(model)
    tensors = [*twin.parameters(), *twin.buffers()]
    cuda = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        # torch.manual_seed would also seed every CUDA device (or queue that seeding until
        # CUDA starts), which fork_rng does not restore: seed only the generators forked here.
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        for name in paths:
            module = twin.get_submodule(name) if name else twin
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return twin


def resettable(module: nn.Module) -> bool:
    """Whether :func:`reinitialised` changes ``module`` itself: it has ``reset_parameters`` and
    parameters or buffers of its own."""
    own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    return callable(getattr(module, "reset_parameters", None)) and bool(own)
