"""Procedural shapes: a small data set, the ``ShapesNet`` CNN, and its deterministic training.

This is where the ``shapes_cnn`` model spec comes from. It is not part of the capture flow: it
makes a model with *trained* weights that needs no download, so statistics, ablations and docs
can show real learned features (its first layer learns oriented edge detectors) instead of random
ones. ``scripts/train_shapes.py`` calls :func:`train` with a fixed seed and writes the weights and
a JSON card next to this module; :mod:`featuremaps.zoo` loads them.

The images are drawn with numpy alone, so a seed gives the same pictures on every machine. Each
class has one known structure:

* ``hstripes`` / ``vstripes`` / ``dstripes``: a square-ish wave across the whole image whose
  bands run horizontally, vertically or diagonally (either diagonal), each within ±12°;
* ``disk`` / ``rectangle``: one filled, axis-aligned object on a background;
* ``checkerboard``: two colours alternating in axis-aligned cells.

Colours, periods, phases, edge softness, positions, sizes, a background gradient and Gaussian
noise are random; foreground and background always differ by at least 0.3 on average per channel.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

__all__ = [
    "CLASSES",
    "INPUT_SIZE",
    "ShapesNet",
    "TrainResult",
    "evaluate",
    "make_shapes",
    "train",
]

CLASSES = ("hstripes", "vstripes", "dstripes", "disk", "rectangle", "checkerboard")
INPUT_SIZE = 64

FloatArray = npt.NDArray[np.float32]
Seed = int | Sequence[int]

_JITTER = math.radians(12.0)  # orientation jitter of the stripe classes
_MIN_CONTRAST = 0.3  # mean absolute difference per channel between foreground and background
_MAX_NOISE = 0.12  # the largest standard deviation of the additive Gaussian noise
_CONV1_INIT_STD = 0.005


# -- data --------------------------------------------------------------------------------------


def _colour_pairs(rng: np.random.Generator, n: int) -> tuple[FloatArray, FloatArray]:
    """Random (foreground, background) RGB pairs, each (n, 3, 1, 1), that differ enough."""
    fg = rng.random((n, 3), dtype=np.float32)
    bg = rng.random((n, 3), dtype=np.float32)
    low = np.abs(fg - bg).mean(axis=1) < _MIN_CONTRAST
    while low.any():  # resample only the pairs that are too alike
        fg[low] = rng.random((int(low.sum()), 3), dtype=np.float32)
        low = np.abs(fg - bg).mean(axis=1) < _MIN_CONTRAST
    return fg[:, :, None, None], bg[:, :, None, None]


def _uniform(rng: np.random.Generator, low: float, high: float, n: int) -> FloatArray:
    # (n, 1, 1) so that parameters broadcast against the (size, size) pixel grid
    return rng.uniform(low, high, n).astype(np.float32)[:, None, None]


def _unit(values: npt.ArrayLike) -> FloatArray:
    """``values`` clipped to [0, 1] as float32: a pixel's coverage by the foreground."""
    return np.asarray(np.clip(values, 0.0, 1.0), dtype=np.float32)


def _stripes(rng: np.random.Generator, n: int, size: int, angle: FloatArray) -> FloatArray:
    """Bands whose *normal* points along ``angle`` (radians), as a coverage mask (n, size, size)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = angle[:, None, None]
    along = x * np.cos(theta) + y * np.sin(theta)  # distance along the normal, in pixels
    period = _uniform(rng, 5.0, 16.0, n)
    phase = _uniform(rng, 0.0, 2 * math.pi, n)
    wave = np.cos(2 * math.pi * along / period + phase)
    duty = _uniform(rng, -0.4, 0.4, n)  # threshold: bands thinner or thicker than the gaps
    softness = _uniform(rng, 0.1, 1.0, n)  # small: hard edges; large: closer to a sinusoid
    return _unit((wave - duty) / softness + 0.5)


def _mask(rng: np.random.Generator, kind: str, n: int, size: int) -> FloatArray:
    """Where the foreground colour goes, in [0, 1] with anti-aliased edges: (n, size, size)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    if kind in ("hstripes", "vstripes", "dstripes"):
        base = {"hstripes": math.pi / 2, "vstripes": 0.0}.get(kind)
        if base is None:  # dstripes: either diagonal
            base_angles = rng.choice([math.pi / 4, 3 * math.pi / 4], n)
        else:
            base_angles = np.full(n, base)
        angle = (base_angles + rng.uniform(-_JITTER, _JITTER, n)).astype(np.float32)
        return _stripes(rng, n, size, angle)
    if kind == "disk":
        radius = _uniform(rng, 0.11 * size, 0.37 * size, n)
        cy = rng.uniform(radius[:, 0, 0], size - radius[:, 0, 0]).astype(np.float32)[:, None, None]
        cx = rng.uniform(radius[:, 0, 0], size - radius[:, 0, 0]).astype(np.float32)[:, None, None]
        distance = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
        return _unit(radius - distance + 0.5)
    if kind == "rectangle":
        height = _uniform(rng, 0.22 * size, 0.75 * size, n)
        width = _uniform(rng, 0.22 * size, 0.75 * size, n)
        top = (rng.random(n).astype(np.float32)[:, None, None]) * (size - height)
        left = (rng.random(n).astype(np.float32)[:, None, None]) * (size - width)
        # Coverage of each pixel by the box, separable in y and x (exact for axis-aligned boxes).
        cover_y = np.clip(np.minimum(y + 0.5, top + height) - np.maximum(y - 0.5, top), 0, 1)
        cover_x = np.clip(np.minimum(x + 0.5, left + width) - np.maximum(x - 0.5, left), 0, 1)
        return _unit(cover_y * cover_x)
    if kind == "checkerboard":
        cell = _uniform(rng, 0.06 * size, 0.19 * size, n)
        oy = _uniform(rng, 0.0, 2.0, n) * cell
        ox = _uniform(rng, 0.0, 2.0, n) * cell
        parity = (np.floor((y + oy) / cell) + np.floor((x + ox) / cell)) % 2
        return _unit(parity)
    raise ValueError(f"unknown shape class {kind!r}; expected one of {', '.join(CLASSES)}")


def make_shapes(
    n: int, size: int = INPUT_SIZE, seed: Seed = 0
) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Draw ``n`` labelled images: ``(images (n, 3, size, size) float32 in [0, 1], labels)``.

    Classes are balanced (counts differ by at most one) and shuffled. The same ``seed`` (an int
    or a sequence of ints, as for ``numpy.random.default_rng``) gives the same arrays.
    """
    if n < 0 or size < 8:
        raise ValueError(f"need n >= 0 and size >= 8, got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n, dtype=np.int64) % len(CLASSES))
    images = np.empty((n, 3, size, size), dtype=np.float32)
    for index, kind in enumerate(CLASSES):
        chosen = np.flatnonzero(labels == index)
        k = len(chosen)
        if k == 0:
            continue
        mask = _mask(rng, kind, k, size)[:, None]  # (k, 1, size, size)
        fg, bg = _colour_pairs(rng, k)
        # A gentle linear gradient over the background, in a random direction.
        y, x = (np.mgrid[0:size, 0:size].astype(np.float32) / size) - 0.5
        direction = rng.uniform(0, 2 * math.pi, k).astype(np.float32)[:, None, None]
        ramp = x * np.cos(direction) + y * np.sin(direction)
        background = bg + _uniform(rng, 0.0, 0.15, k)[:, None] * ramp[:, None]
        picture = mask * fg + (1.0 - mask) * background
        noise = rng.standard_normal(picture.shape, dtype=np.float32)
        picture += _uniform(rng, 0.0, _MAX_NOISE, k)[:, None] * noise
        images[chosen] = np.clip(picture, 0.0, 1.0)
    return images, labels


# -- model -------------------------------------------------------------------------------------


class ShapesNet(nn.Module):
    """Three conv blocks and a linear classifier; about 25k parameters.

    Module names read like a diagram (``conv1``, ``bn1``, ``relu1``, ``pool1``, ..., ``gap``,
    ``fc``) so layer selections such as ``--layers conv1`` and ``relu*`` are easy to write.
    Input: ``(N, 3, 64, 64)`` in [0, 1] (any size works thanks to the global average pool).
    """

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        # No conv biases: each conv feeds a BatchNorm, whose shift makes a bias redundant.
        self.conv1 = nn.Conv2d(3, 16, kernel_size=5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 64, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.relu3 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu3(self.bn3(self.conv3(x)))
        out: torch.Tensor = self.fc(self.flatten(self.gap(x)))
        return out


# -- training ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` measured: per-epoch loss and accuracy, the settings, the time taken."""

    seed: int
    epochs: int
    n_train: int
    batch_size: int
    lr: float
    weight_decay: float
    threads: int
    losses: tuple[float, ...]
    accuracies: tuple[float, ...]
    seconds: float

    @property
    def train_accuracy(self) -> float:
        """Accuracy over the last epoch's images, measured while training (BN in train mode)."""
        return self.accuracies[-1] if self.accuracies else float("nan")


@torch.no_grad()
def evaluate(model: nn.Module, images: FloatArray | torch.Tensor, labels: npt.ArrayLike) -> float:
    """Fraction of ``images`` that ``model`` (put in eval mode) labels correctly."""
    model.eval()
    x = torch.as_tensor(images)
    y = torch.as_tensor(np.asarray(labels))
    correct = 0
    for start in range(0, len(x), 256):
        logits = model(x[start : start + 256])
        correct += int((logits.argmax(dim=1) == y[start : start + 256]).sum())
    return correct / max(len(x), 1)


def train(
    seed: int = 0,
    epochs: int = 8,
    n_train: int = 5000,
    *,
    batch_size: int = 50,
    lr: float = 3e-3,
    weight_decay: float = 0.05,
    threads: int = 2,
    log: Callable[[str], None] | None = None,
) -> tuple[ShapesNet, TrainResult]:
    """Train a :class:`ShapesNet` from scratch, deterministically for a given ``seed``.

    Every epoch draws ``n_train`` fresh images (seed ``[seed, epoch]``, which never collides with
    an int test seed), so the net never sees the same picture twice. Initialisation and batch
    order come from ``torch.manual_seed(seed)``; deterministic algorithms and a fixed thread count
    make the run repeatable on one machine (other CPUs may differ in the last float bits). Global
    torch settings are restored on return. Nothing is written to disk.
    """
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ShapesNet()
            # conv1 starts almost at zero, so the filters it ends with are what the data taught
            # it, not the default init's noise (which on this easy task otherwise dominates).
            # BatchNorm after conv1 makes its output independent of the weights' scale.
            nn.init.normal_(model.conv1.weight, std=_CONV1_INIT_STD)
            optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
            steps = epochs * math.ceil(n_train / batch_size)
            schedule = torch.optim.lr_scheduler.OneCycleLR(
                optimiser, max_lr=lr, total_steps=max(steps, 1), pct_start=0.2
            )
            loss_fn = nn.CrossEntropyLoss()
            losses: list[float] = []
            accuracies: list[float] = []
            for epoch in range(epochs):
                images, labels = make_shapes(n_train, seed=[seed, epoch])
                x, y = torch.from_numpy(images), torch.from_numpy(labels)
                order = torch.randperm(n_train)
                model.train()
                total_loss, correct = 0.0, 0
                for begin in range(0, n_train, batch_size):
                    batch = order[begin : begin + batch_size]
                    logits = model(x[batch])
                    loss = loss_fn(logits, y[batch])
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    schedule.step()
                    total_loss += float(loss.detach()) * len(batch)
                    correct += int((logits.argmax(dim=1) == y[batch]).sum())
                losses.append(total_loss / n_train)
                accuracies.append(correct / n_train)
                if log is not None:
                    log(
                        f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}, "
                        f"train accuracy {accuracies[-1]:.1%}, "
                        f"{time.perf_counter() - start:.0f} s"
                    )
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic, warn_only=previous_warn_only)
    model.eval()
    result = TrainResult(
        seed=seed,
        epochs=epochs,
        n_train=n_train,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        threads=threads,
        losses=tuple(losses),
        accuracies=tuple(accuracies),
        seconds=time.perf_counter() - start,
    )
    return model, result
