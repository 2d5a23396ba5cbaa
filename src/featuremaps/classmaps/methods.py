"""Class activation map methods: pure functions of a layer's activations and gradients.

Each method turns ``A`` (the layer's output as the layer returned it) and ``G`` (the gradient of
the target's score with respect to that output), both shaped ``(N, C, *cells)`` with one or more
cell axes (a 1-D signal, a 2-D grid, a 3-D volume), into one map per sample, ``(N, *cells)``, at
the layer's own resolution, after the method's own ReLU and before any scaling or resizing:

========== =================================================================================
gradcam    ``relu(Σ_c w_c A_c)``, ``w_c`` = mean of ``G_c`` over the cells (Selvaraju et al.)
gradcam++  ``relu(Σ_c w_c A_c)``, ``w_c = Σ relu(G_c) α_c``,
           ``α = G² / (2G² + (Σ_cells A_c) G³ + 1e-6)`` where ``G ≠ 0`` (Chattopadhay et al.)
xgradcam   ``relu(Σ_c w_c A_c)``, ``w_c = Σ_cells(G_c A_c) / (Σ_cells A_c + 1e-7)`` (Fu et al.)
layercam   ``relu(Σ_c relu(G_c) A_c)``, cell by cell (Jiang et al.)
hirescam   ``relu(Σ_c G_c A_c)``, cell by cell (Draelos & Carin)
eigencam   ``relu(p)``, ``p`` = the cells' projection on the first principal component of the
           centred ``(cells, C)`` activations, its sign chosen so that ``p`` correlates
           positively with ``Σ_c A_c`` (Muhammad & Yeasin); needs no gradient and no target
scorecam   ``relu(Σ_c w_c A_c)``, ``w = softmax(s)``, ``s_c`` the target's score on the input
           masked by channel ``c`` (computed by :mod:`featuremaps.classmaps.passes`)
========== =================================================================================

The epsilons are those of the papers' reference code, so that the maps can be compared with
other implementations. Everything is computed in float64.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["GRADIENT_METHODS", "METHODS", "channel_weighted", "eigencam", "gradient_map"]

#: Every method, in the order the commands list them.
METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "scorecam", "eigencam")
#: The methods computed from activations and gradients alone.
GRADIENT_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")


def _cells(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.dim()))


def _expand(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return weights.reshape(weights.shape + (1,) * (like.dim() - 2))


def channel_weighted(activations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``relu(Σ_c w_c A_c)`` for ``weights`` of shape ``(N, C)``."""
    return torch.relu((_expand(weights, activations) * activations).sum(1))


def _gradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return channel_weighted(a, g.mean(_cells(g)))


def _gradcam_pp(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    g2 = g * g
    g3 = g2 * g
    total = _expand(a.sum(_cells(a)), a)
    alpha = g2 / (2 * g2 + total * g3 + 1e-6)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    return channel_weighted(a, (torch.relu(g) * alpha).sum(_cells(g)))


def _xgradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    total = _expand(a.sum(_cells(a)), a)
    return channel_weighted(a, (g * a / (total + 1e-7)).sum(_cells(g)))


def _layercam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.relu((torch.relu(g) * a).sum(1))


def _hirescam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.relu((g * a).sum(1))


_GRADIENT: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "gradcam": _gradcam,
    "gradcam++": _gradcam_pp,
    "xgradcam": _xgradcam,
    "layercam": _layercam,
    "hirescam": _hirescam,
}


def gradient_map(method: str, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """The map of a gradient method (see the module docstring), ``(N, *cells)`` float64."""
    a = activations.detach().to(torch.float64)
    g = gradients.detach().to(torch.float64)
    return _GRADIENT[method](a, g)


def eigencam(activations: torch.Tensor) -> torch.Tensor:
    """EigenCAM's map per sample, ``(N, *cells)`` float64 (see the module docstring)."""
    a = torch.nan_to_num(activations.detach().to(torch.float64))
    maps = []
    for sample in a:
        cells = sample.reshape(sample.shape[0], -1).T  # (cells, C)
        centred = cells - cells.mean(0)
        if centred.shape[0] < 2 or not bool(centred.abs().max() > 0):
            maps.append(torch.zeros(sample.shape[1:], dtype=torch.float64))
            continue
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        projection = centred @ vh[0]
        total = sample.sum(0).reshape(-1)
        if float(((projection - projection.mean()) * (total - total.mean())).sum()) < 0:
            projection = -projection
        maps.append(torch.relu(projection).reshape(sample.shape[1:]))
    return torch.stack(maps)
