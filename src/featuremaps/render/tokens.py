"""Token pictures: a transformer layer's patch tokens on their grid, and its prefix tokens.

Part of the pure ``render`` stage. Patch tokens ``(D, h, w)`` (see
:func:`featuremaps.layouts.token_parts`) are drawn as the same channel mosaic as a convolution's
maps (one tile per feature dimension, same scales and legend). Under it, two summaries of the
whole layer: the L2 norm of each token as one map, and a PCA of the D-dimensional tokens to RGB
(the first three principal components, each stretched from its minimum to its maximum, with the
variance each explains). Both follow the one rule of
:func:`featuremaps.render.scaling.is_constant_range`: a norm map or a component whose spread is
rounding noise of the dtype the tokens were computed in is drawn in one colour and said
constant. Prefix tokens (class, distillation, register tokens) are not patches: they are kept and
drawn apart, as bar strips (:mod:`featuremaps.render.bars`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from featuremaps.render.bars import make_bars
from featuremaps.render.grid import Grid, GridLabel, GridOptions, make_grid
from featuremaps.render.panels import Composite, side_by_side, stacked, text_block
from featuremaps.render.scaling import RESOLUTION_ULPS, DTypeLike, constant_text, resolution

__all__ = [
    "PcaMemo",
    "PcaSummary",
    "TokenPicture",
    "TokenPlan",
    "finish_token_picture",
    "make_token_picture",
    "plan_token_picture",
    "token_pca",
]


@dataclass(frozen=True)
class PcaSummary:
    """The PCA of one layer's patch tokens: ``mean`` (D,), ``basis`` (k, D) rows = components
    (sign fixed so each component's largest loading is positive), ``explained`` (k,) fraction of
    the total variance per component, ``rgb`` (h, w, 3) in [0, 1]; ``constant`` (k,) marks the
    components whose scores spread no wider than rounding noise: drawn 0.5, not stretched."""

    mean: np.ndarray
    basis: np.ndarray
    explained: tuple[float, ...]
    rgb: np.ndarray
    constant: tuple[bool, ...] = ()


def token_pca(patches: np.ndarray, k: int = 3, *, dtype: DTypeLike | None = None) -> PcaSummary:
    """PCA of ``patches`` (D, h, w) over its h*w tokens, in float64, to RGB (non-finite tokens
    are left out of the fit and drawn black).

    A component is constant when its scores spread no wider than the rounding noise of the
    tokens, computed in ``dtype`` (default: the patches' own): a token's rounding error is at
    most a few units of resolution times its norm, and so is its projection on a unit vector.
    """
    d, h, w = patches.shape
    x = patches.reshape(d, h * w).T.astype(np.float64)
    good = np.isfinite(x).all(axis=1)
    kept = x[good]
    mean = kept.mean(axis=0) if good.any() else np.zeros(d)
    centred = x - mean  # the non-finite tokens then zeroed: 8x faster than np.where here
    if not good.all():
        centred[~good] = 0.0
    # Eigenvectors of the smaller Gram matrix (tokens x tokens or dims x dims), not a full SVD:
    # a (196, 3072) layer costs a 196 x 196 eigen-decomposition.
    n = centred.shape[0]
    k = min(k, n, d)
    if n <= d:
        values, vectors = np.linalg.eigh(centred @ centred.T)
        order = np.argsort(values)[::-1]
        values = np.clip(values[order], 0.0, None)
        # Only the k components drawn are turned into directions in feature space.
        vt = (centred.T @ vectors[:, order[:k]]).T
        norms = np.linalg.norm(vt, axis=1, keepdims=True)
        vt = np.divide(vt, norms, out=np.zeros_like(vt), where=norms > 0)
    else:
        values, vectors = np.linalg.eigh(centred.T @ centred)
        order = np.argsort(values)[::-1]
        values = np.clip(values[order], 0.0, None)
        vt = vectors[:, order[:k]].T
    s = np.sqrt(values)
    total = float(values.sum())
    basis = vt[:k].copy()
    for i in range(k):  # a deterministic sign: the largest loading is positive
        if basis[i, np.argmax(np.abs(basis[i]))] < 0:
            basis[i] = -basis[i]
    explained = tuple(float(v) / total if total > 0 else 0.0 for v in s[:k] ** 2)
    scores = centred @ basis.T  # (h*w, k)
    norms = np.sqrt((kept**2).sum(axis=1))
    noise = RESOLUTION_ULPS * resolution(patches.dtype if dtype is None else dtype)
    noise *= float(norms.max()) if norms.size else 0.0
    rgb = np.zeros((h * w, 3))
    flat = []
    for i in range(k):
        col = scores[good, i]
        lo, hi = (float(col.min()), float(col.max())) if col.size else (0.0, 0.0)
        flat.append(bool(col.size) and hi - lo <= noise)
        rgb[good, i] = (col - lo) / (hi - lo) if hi > lo and not flat[i] else 0.5
    return PcaSummary(mean, basis, explained, rgb.reshape(h, w, 3), tuple(flat))


@dataclass(frozen=True)
class TokenPicture:
    """A token layer's picture, the mosaic it contains (shown channels, ranges) and its PCA."""

    picture: Composite
    grid: Grid
    pca: PcaSummary


def _enlarge(rgb: np.ndarray, min_tile: int) -> np.ndarray:
    s = max(1, math.ceil(min_tile / max(rgb.shape[0], rgb.shape[1], 1)))
    return rgb.repeat(s, axis=0).repeat(s, axis=1)


@dataclass(frozen=True, eq=False)
class TokenPlan:
    """A token picture before its PCA (:func:`plan_token_picture`): the mosaic, the norm map and
    the prefix strips drawn, and a copy of the patch tokens for :func:`finish_token_picture`.

    It holds no view of the caller's arrays, so they may change once it exists, and the PCA (a
    Gram matrix and an eigen-decomposition, most of a token picture's cost) can be taken on
    another thread.
    """

    grid: Grid
    norm: np.ndarray  # the norm map's pixels
    tail: np.ndarray  # the prefix tokens' bar strips, or the "no prefix tokens" note
    patches: np.ndarray  # (D, h, w), a copy
    dtype: DTypeLike
    summary_tile: int


def plan_token_picture(
    patches: np.ndarray,
    prefix: np.ndarray,
    options: GridOptions,
    label: GridLabel,
    prefix_names: Sequence[str] | None = None,
) -> TokenPlan:
    """Everything of :func:`make_token_picture` but the PCA."""
    d, h, w = patches.shape
    dtype = options.dtype or patches.dtype.name  # the norms' noise is the tokens' rounding
    grid = make_grid(patches, options, label=label)
    norm = np.sqrt((patches.astype(np.float64) ** 2).sum(axis=0))[None]
    summary_tile = max(2 * options.min_tile, 96)
    norm_grid = make_grid(
        norm,
        GridOptions(max_channels=1, min_tile=summary_tile, dtype=dtype),
        label=GridLabel(f"token L2 norm over {d} dims", label.module_type, (h, w), label.stamp),
    )
    if len(prefix):
        names = list(prefix_names or [f"prefix token {i}" for i in range(len(prefix))])
        title = f"{len(prefix)} prefix token(s), not patches · one shared scale"
        tail = make_bars(prefix, names, title=title, stamp=label.stamp, dtype=dtype).pixels
    else:
        tail = text_block(["no prefix tokens"])
    return TokenPlan(grid, norm_grid.pixels, tail, np.array(patches), dtype, summary_tile)


class PcaMemo:
    """:func:`token_pca` that remembers its last answer, for a run's token layers in order.

    A layer that passes its input on unchanged (``Dropout`` in eval mode, ``nn.Identity``: a
    ViT's MLP has two) has the tokens of the layer before it, and the same PCA; the tokens are
    compared byte for byte (0.2 ms for a (3072, 14, 14) layer, whose PCA takes 10-20 ms). The
    answer is the one :func:`token_pca` gives those tokens, computed once.
    """

    def __init__(self) -> None:
        self._last: tuple[np.ndarray, str, PcaSummary] | None = None

    def pca(self, patches: np.ndarray, dtype: DTypeLike) -> PcaSummary:
        """``token_pca(patches, dtype=dtype)``."""
        tokens = np.ascontiguousarray(patches)
        last = self._last
        if (
            last is not None
            and last[1] == repr(dtype)
            and last[0].dtype == tokens.dtype
            and last[0].shape == tokens.shape
            and np.array_equal(_bytes_of(last[0]), _bytes_of(tokens))
        ):
            return last[2]
        summary = token_pca(tokens, dtype=dtype)
        # A copy (0.3 ms for 2.4 MB): the caller may change its array once this returns.
        self._last = (tokens.copy(), repr(dtype), summary)
        return summary


def _bytes_of(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1).view(np.uint8)  # a contiguous array's bytes: NaN equals itself


def finish_token_picture(plan: TokenPlan, memo: PcaMemo | None = None) -> TokenPicture:
    """The PCA of a planned token picture, and the picture: the mosaic, the norm map beside the
    PCA-to-RGB map, and the prefix strips. ``memo``: reuse the PCA of the same tokens drawn
    just before."""
    d, h, w = plan.patches.shape
    if memo is not None:
        pca = memo.pca(plan.patches, plan.dtype)
    else:
        pca = token_pca(plan.patches, dtype=plan.dtype)
    shares = " · ".join(f"{c} {100 * v:.1f}%" for c, v in zip("RGB", pca.explained, strict=False))
    lines = [
        f"PCA of the {h * w} patch tokens ({d} dims) to RGB",
        f"explained variance: {shares}",
        "each component stretched from its min to its max",
    ]
    flat = [c for c, f in zip("RGB", pca.constant, strict=False) if f]
    if flat:
        lines.append(f"{', '.join(flat)}: {constant_text(plan.dtype)}, drawn 0.5")
    pca_panel = stacked(
        [
            text_block(lines),
            (_enlarge(pca.rgb, plan.summary_tile) * 255 + 0.5).astype(np.uint8),
        ],
        gap=0,
    )
    panels = [plan.grid.pixels, side_by_side([plan.norm, pca_panel]), plan.tail]
    return TokenPicture(Composite(stacked(panels, gap=12), plan.grid.warnings), plan.grid, pca)


def make_token_picture(
    patches: np.ndarray,
    prefix: np.ndarray,
    options: GridOptions,
    label: GridLabel,
    prefix_names: Sequence[str] | None = None,
) -> TokenPicture:
    """The mosaic of ``patches`` (D, h, w), the token-norm map, the PCA-to-RGB map and the
    ``prefix`` (k, D) tokens as bar strips, in one picture (:func:`finish_token_picture` of
    :func:`plan_token_picture`)."""
    return finish_token_picture(plan_token_picture(patches, prefix, options, label, prefix_names))
