"""Tissue mask: which tiles hold tissue, so that background is never fed to the model.

Between the reader and the forward passes. ``auto`` thresholds a thumbnail with Otsu's method on
a "tissue score" (the larger of darkness, 255 − grey, and saturation, max − min of RGB): glass is
bright and grey, stained tissue darker or coloured. A score floor keeps the noise of a blank
background (JPEG ringing, dust) from being split into two classes. A mask picture (any size,
non-zero = tissue) can be given instead; ``none`` keeps every tile. A tile is computed when any
mask pixel under its core is tissue; its halo still reads the real pixels around it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featuremaps._errors import InputError, OptionError

__all__ = ["MIN_SCORE", "TissueMask", "otsu_threshold", "tissue_score"]

#: Tissue scores below this are background whatever Otsu says (a blank slide is all background).
MIN_SCORE = 20


def tissue_score(rgb: np.ndarray) -> np.ndarray:
    """Per pixel ``max(255 − grey, max(RGB) − min(RGB))`` as uint8 (grey: the channel mean)."""
    a = rgb.astype(np.int16)
    grey = a.mean(axis=2)
    saturation = a.max(axis=2) - a.min(axis=2)
    score: np.ndarray = np.maximum(255 - grey, saturation).clip(0, 255).astype(np.uint8)
    return score


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold of uint8 values: the ``t`` maximising the between-class variance of
    ``values <= t`` and ``values > t``."""
    hist = np.bincount(np.asarray(values, dtype=np.uint8).ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    w1 = total - w0
    m0 = np.cumsum(hist * levels)
    mean_all = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_all * w0 / total - m0) ** 2 / (w0 * w1 / total)
    between[(w0 == 0) | (w1 == 0)] = -1.0
    return int(np.argmax(between))


@dataclass(frozen=True)
class TissueMask:
    """A boolean mask over a level, ``downsample`` level pixels per mask pixel."""

    mask: np.ndarray
    downsample: float
    source: str
    threshold: int | None = None

    @classmethod
    def everywhere(cls, size: tuple[int, int]) -> TissueMask:
        return cls(np.ones((1, 1), dtype=bool), float(max(size)), "none (every tile)")

    @classmethod
    def from_thumbnail(cls, thumbnail: np.ndarray, downsample: float) -> TissueMask:
        score = tissue_score(thumbnail)
        threshold = max(otsu_threshold(score), MIN_SCORE)
        mask = score > threshold
        # One mask pixel of margin: a tile that barely touches tissue is computed.
        grown = mask.copy()
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        return cls(grown, downsample, "auto (Otsu on a thumbnail)", threshold)

    @classmethod
    def from_file(cls, path: str | Path, size: tuple[int, int]) -> TissueMask:
        from PIL import Image

        try:
            with Image.open(path) as image:
                mask = np.asarray(image.convert("L")) > 0
        except OSError as exc:
            raise InputError(f"cannot read the tissue mask '{path}': {exc}") from None
        h, w = size
        dy, dx = h / mask.shape[0], w / mask.shape[1]
        if abs(dy - dx) > 0.02 * max(dy, dx) + 1 / min(mask.shape):
            raise OptionError(
                f"tissue mask '{path}' is {mask.shape[1]}x{mask.shape[0]} but the slide level is "
                f"{w}x{h}: the aspect ratios differ; give a mask of the whole slide"
            )
        return cls(mask, max(dy, dx), f"file {Path(path).name}")

    def covers(self, rows: tuple[int, int], cols: tuple[int, int]) -> bool:
        """Whether any tissue lies under the level pixels ``[rows) x [cols)``."""
        d = self.downsample
        y0, y1 = int(rows[0] // d), max(int(rows[0] // d) + 1, math.ceil(rows[1] / d))
        x0, x1 = int(cols[0] // d), max(int(cols[0] // d) + 1, math.ceil(cols[1] / d))
        return bool(self.mask[y0:y1, x0:x1].any())

    def fraction(self) -> float:
        """The fraction of the mask that is tissue."""
        return float(self.mask.mean())
