"""Pure comparison of two captures: per-layer and per-channel change, and streaming linear CKA.

Between capture and rendering in the flow (… → capture → **compare** → render → report/io).
Nothing here reads or writes files or draws.

* :func:`compare_arrays` compares one layer's output for input/checkpoint A with B, both
  channels first ``(N, C, ...)``: cosine similarity, relative L2 change ``|B−A| / |A|`` and,
  per channel, the same two numbers plus the rank of the channel's change (1 = the largest
  ``|B−A|``).
* :class:`CKASums` accumulates the minibatch linear CKA of Nguyen, Raghu & Kornblith (2021,
  "Do wide and deep networks learn the same things?"): per minibatch the unbiased HSIC estimator
  of Song et al. (2012) on the two Gram matrices, summed over minibatches, so memory is the
  number of layer pairs, never the data. Sums of two runs over different batches merge exactly
  (:meth:`CKASums.merge`); the estimate depends on how the data is cut into minibatches (the
  estimator's own definition), not on which worker computed which batch.
* :func:`unbiased_cka` is the closed form on full matrices (one minibatch), for checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featuremaps._errors import InputError

__all__ = [
    "MIN_CKA_BATCH",
    "CKASums",
    "ChannelChange",
    "LayerChange",
    "compare_arrays",
    "gram",
    "unbiased_cka",
    "unbiased_hsic",
]

#: The unbiased HSIC estimator divides by ``n (n - 3)``: a minibatch needs at least 4 samples.
MIN_CKA_BATCH = 4


@dataclass(frozen=True)
class ChannelChange:
    """One channel's change from A to B (channels counted from 0)."""

    channel: int
    cosine: float
    relative_l2: float
    rank: int
    l2: float

    def describe(self) -> dict[str, Any]:
        """The ``compare.json`` entry of this channel."""
        return {
            "channel": self.channel,
            "cosine": self.cosine,
            "relative_l2": self.relative_l2,
            "rank": self.rank,
        }


@dataclass(frozen=True)
class LayerChange:
    """One layer's change from A to B, with its channels in channel order."""

    layer: str
    shape: tuple[int, ...]
    cosine: float
    relative_l2: float
    channels: list[ChannelChange] = field(default_factory=list)

    def largest(self, count: int) -> list[int]:
        """The ``count`` channels with the largest change, largest first."""
        ranked = sorted(self.channels, key=lambda c: c.rank)
        return [c.channel for c in ranked[:count]]

    def describe(self) -> dict[str, Any]:
        """The ``compare.json`` entry of this layer."""
        return {
            "layer": self.layer,
            "shape": list(self.shape),
            "cosine": self.cosine,
            "relative_l2": self.relative_l2,
            "channels": [c.describe() for c in self.channels],
        }


def _cosine(dot: float, norm_a: float, norm_b: float, same: bool) -> float:
    # Two identical vectors are as similar as can be, zero ones included.
    if same:
        return 1.0
    if norm_a == 0.0 or norm_b == 0.0:
        return 0.0
    return float(np.clip(dot / (norm_a * norm_b), -1.0, 1.0))


def _relative(change: float, norm_a: float) -> float:
    if change == 0.0:
        return 0.0
    return change / norm_a if norm_a > 0 else float("inf")


def compare_arrays(a: np.ndarray, b: np.ndarray, layer: str = "") -> LayerChange:
    """Compare one layer's outputs ``a`` (A) and ``b`` (B), both ``(N, C, ...)`` channels first.

    Sums run in float64 over every value (per channel: over the batch and every non-channel
    axis). Identical arrays give cosine 1 and change 0, zeros included; a cosine against an
    all-zero side is 0, and a relative change of a non-zero B against an all-zero A is ``inf``.
    Ranks: 1 is the channel with the largest ``|B−A|``; ties go to the lower channel.

    Raises:
        InputError: the two shapes differ, or there is no channel axis.
    """
    if a.shape != b.shape:
        raise InputError(
            f"layer '{layer}' has shape {tuple(a.shape)} for A and {tuple(b.shape)} for B; "
            "expected the same shape: compare inputs of the same size and checkpoints of the "
            "same architecture"
        )
    if a.ndim < 2:
        raise InputError(
            f"layer '{layer}' has shape {tuple(a.shape)}; expected (N, C, ...) with a channel axis"
        )
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    channels = x.shape[1]
    xc = np.moveaxis(x, 1, 0).reshape(channels, -1)
    yc = np.moveaxis(y, 1, 0).reshape(channels, -1)
    d = yc - xc
    dot = np.einsum("ij,ij->i", xc, yc)
    na = np.sqrt(np.einsum("ij,ij->i", xc, xc))
    nb = np.sqrt(np.einsum("ij,ij->i", yc, yc))
    nd = np.sqrt(np.einsum("ij,ij->i", d, d))
    same = ~np.any(d != 0, axis=1)
    order = sorted(range(channels), key=lambda c: (-nd[c], c))
    ranks = np.empty(channels, dtype=np.int64)
    ranks[order] = np.arange(1, channels + 1)
    per_channel = [
        ChannelChange(
            channel=c,
            cosine=_cosine(float(dot[c]), float(na[c]), float(nb[c]), bool(same[c])),
            relative_l2=_relative(float(nd[c]), float(na[c])),
            rank=int(ranks[c]),
            l2=float(nd[c]),
        )
        for c in range(channels)
    ]
    total_a = float(np.sqrt(np.sum(na**2)))
    total_b = float(np.sqrt(np.sum(nb**2)))
    return LayerChange(
        layer=layer,
        shape=tuple(int(s) for s in a.shape),
        cosine=_cosine(float(dot.sum()), total_a, total_b, bool(same.all())),
        relative_l2=_relative(float(np.sqrt(np.sum(nd**2))), total_a),
        channels=per_channel,
    )


def gram(features: np.ndarray) -> np.ndarray:
    """The linear-kernel Gram matrix ``X Xᵀ`` (float64) of ``(n, ...)`` features, each sample's
    non-batch axes flattened in one fixed order (the same for every layout)."""
    x = np.asarray(features, dtype=np.float64).reshape(features.shape[0], -1)
    result: np.ndarray = x @ x.T
    return result


def unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741 - the paper's name
    """The unbiased HSIC estimator (Song et al. 2012) of two ``n × n`` Gram matrices, n ≥ 4."""
    n = k.shape[0]
    if n < MIN_CKA_BATCH:
        raise InputError(
            f"a minibatch of {n} samples for unbiased HSIC; expected at least {MIN_CKA_BATCH}"
        )
    kt = k.copy()
    lt = l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    trace = float(np.sum(kt * lt))  # tr(K̃ L̃) for symmetric matrices
    sums = float(kt.sum()) * float(lt.sum()) / ((n - 1) * (n - 2))
    cross = float(kt.sum(axis=0) @ lt.sum(axis=1)) * 2.0 / (n - 2)
    return float((trace + sums - cross) / (n * (n - 3)))


def unbiased_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two feature sets ``(n, ...)`` from unbiased HSIC on the full matrices."""
    k, l = gram(x), gram(y)  # noqa: E741
    return _ratio(unbiased_hsic(k, l), unbiased_hsic(k, k), unbiased_hsic(l, l))


def _ratio(cross: float, self_a: float, self_b: float) -> float:
    scale = self_a * self_b
    return float(cross / np.sqrt(scale)) if scale > 0 else float("nan")


@dataclass
class CKASums:
    """Running sums of minibatch unbiased HSIC between every layer of A and every layer of B.

    ``cross[i, j]`` sums HSIC(K_Ai, K_Bj), ``self_a[i]`` HSIC(K_Ai, K_Ai), ``self_b[j]``
    HSIC(K_Bj, K_Bj) over the minibatches; ``batches`` counts them and ``samples`` their
    samples; ``left_out`` counts samples of minibatches too small for the estimator (under
    :data:`MIN_CKA_BATCH`). The CKA is ``cross / sqrt(self_a ⊗ self_b)`` (the 1/k factors
    cancel). Memory: layers_A × layers_B numbers.
    """

    layers_a: list[str]
    layers_b: list[str]
    cross: np.ndarray = field(init=False)
    self_a: np.ndarray = field(init=False)
    self_b: np.ndarray = field(init=False)
    batches: int = 0
    samples: int = 0
    left_out: int = 0

    def __post_init__(self) -> None:
        self.cross = np.zeros((len(self.layers_a), len(self.layers_b)))
        self.self_a = np.zeros(len(self.layers_a))
        self.self_b = np.zeros(len(self.layers_b))

    def update(self, grams_a: Sequence[np.ndarray], grams_b: Sequence[np.ndarray]) -> None:
        """Add one minibatch: the Gram matrices of every layer of A and of B (in layer order)."""
        if len(grams_a) != len(self.layers_a) or len(grams_b) != len(self.layers_b):
            raise InputError(
                f"{len(grams_a)} and {len(grams_b)} Gram matrices for one minibatch; expected "
                f"{len(self.layers_a)} and {len(self.layers_b)} (one per layer)"
            )
        n = grams_a[0].shape[0] if grams_a else 0
        if n < MIN_CKA_BATCH:
            self.left_out += n
            return
        for i, k in enumerate(grams_a):
            self.self_a[i] += unbiased_hsic(k, k)
            for j, l in enumerate(grams_b):  # noqa: E741
                self.cross[i, j] += unbiased_hsic(k, l)
        for j, l in enumerate(grams_b):  # noqa: E741
            self.self_b[j] += unbiased_hsic(l, l)
        self.batches += 1
        self.samples += n

    def merge(self, other: CKASums) -> None:
        """Add another run's sums (other minibatches of the same layers)."""
        if other.layers_a != self.layers_a or other.layers_b != self.layers_b:
            raise InputError("CKA sums of different layers cannot be merged; expected the same")
        self.cross += other.cross
        self.self_a += other.self_a
        self.self_b += other.self_b
        self.batches += other.batches
        self.samples += other.samples
        self.left_out += other.left_out

    def matrix(self) -> np.ndarray:
        """The layer × layer CKA (rows: layers of A, columns: layers of B); NaN where a
        layer's HSIC with itself is not positive (a constant layer)."""
        scale = np.outer(self.self_a, self.self_b)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(scale > 0, self.cross / np.sqrt(np.where(scale > 0, scale, 1)), np.nan)

    def paired(self) -> dict[str, float]:
        """Per layer present in both A and B, the CKA between its A and B outputs."""
        matrix = self.matrix()
        index_b = {name: j for j, name in enumerate(self.layers_b)}
        return {
            name: float(matrix[i, index_b[name]])
            for i, name in enumerate(self.layers_a)
            if name in index_b
        }
