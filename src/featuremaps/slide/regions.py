"""Regions: QuPath GeoJSON annotations in, per region x channel statistics out.

A statistics stage of a slide run, fed tile by tile (forward → stitching → **regions** → io).
Coordinates are QuPath's: level-0 pixels, origin at the top-left corner of the top-left pixel
(pixel ``(0, 0)`` covers ``[0, 1) x [0, 1)``), so the centre of read-level pixel ``i`` is at
``(i + 0.5)·d`` for a level of downsample ``d``, and cell ``j`` of a layer (stride ``S``,
first-cell centre ``O`` in read-level pixels) at ``(j·S + O + 0.5)·d``.

Two ways to count a cell in a polygon:

* ``centre`` (default): a cell belongs to a region when its centre lies inside the polygon
  (shapely's ``contains_xy``, boundary excluded); every cell counts once.
* ``area``: each cell counts with the fraction of its ``S x S`` box the polygon covers (exact
  polygon clipping with shapely), for small polygons where a few cells decide the result.

Statistics per region and channel: cells (the number with a non-zero weight), weight (their
summed coverage; equals cells for ``centre``), mean and std (weighted, population), min and max
(over cells with a non-zero weight) and the weighted fraction of values > 0. Batches merge with
the weighted form of Chan et al.'s formulas in float64.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featuremaps._errors import FeaturemapsWarning, InputError, OptionError

__all__ = [
    "COVERAGE_MODES",
    "MAX_AREA_CELLS",
    "WEIGHT_DECIMALS",
    "Region",
    "RegionStats",
    "cell_weights",
    "read_regions",
]

COVERAGE_MODES = ("centre", "area")
#: ``area`` coverage clips each cell box: limited to regions whose bounding box holds at most
#: this many cells of a layer.
MAX_AREA_CELLS = 250_000


@dataclass(frozen=True)
class Region:
    """One annotation: a name, its shapely geometry (level-0 pixels) and the feature it came
    from (kept to write the measurements back)."""

    name: str
    geometry: Any
    feature: dict[str, Any]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` in level-0 pixels."""
        b = self.geometry.bounds
        return float(b[0]), float(b[1]), float(b[2]), float(b[3])


def _name(feature: dict[str, Any], index: int) -> str:
    props = feature.get("properties") or {}
    name = props.get("name")
    if not name and isinstance(props.get("classification"), dict):
        name = props["classification"].get("name")
    return str(name or feature.get("id") or f"region {index}")


def read_regions(path: str | Path) -> list[Region]:
    """Polygons of a QuPath GeoJSON file: a FeatureCollection, a bare list of features or one
    feature. Features without an area (points, lines) are skipped, counted and named in a
    :class:`~featuremaps.FeaturemapsWarning`; a file with no polygon at all is refused."""
    import shapely
    from shapely.geometry import shape

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read regions from '{path}': {exc}") from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    else:
        features = data
    if not isinstance(features, list) or not all(isinstance(f, dict) for f in features):
        raise InputError(
            f"'{path}' holds no GeoJSON features; expected a FeatureCollection or a list of "
            "features (QuPath: File > Export objects as GeoJSON)"
        )
    regions = []
    flat = []
    for i, feature in enumerate(features):
        try:
            geometry = shape(feature.get("geometry") or {})
        except (ValueError, TypeError, AttributeError, shapely.errors.GEOSException) as exc:
            raise InputError(f"region {_name(feature, i)!r} in '{path}': {exc}") from None
        if geometry.area <= 0:
            flat.append(_name(feature, i))
            continue
        if not geometry.is_valid:
            geometry = shapely.make_valid(geometry)
        shapely.prepare(geometry)
        regions.append(Region(_name(feature, i), geometry, feature))
    if flat and not regions:
        raise InputError(
            f"region(s) {', '.join(repr(n) for n in flat[:5])} in '{path}' have no area (points "
            "or lines); statistics need polygons. Remove them or export only area annotations"
        )
    if flat:
        more = f" and {len(flat) - 5} more" if len(flat) > 5 else ""
        warnings.warn(
            FeaturemapsWarning(
                f"{len(flat)} of {len(features)} features in '{path}' have no area (points or "
                f"lines) and were skipped: {', '.join(repr(n) for n in flat[:5])}{more}; "
                f"statistics are for the {len(regions)} polygon(s)"
            ),
            stacklevel=2,
        )
    if not regions:
        raise InputError(f"'{path}' holds no polygon; expected at least one area annotation")
    return regions


def cell_weights(
    region: Region,
    xs: np.ndarray,
    ys: np.ndarray,
    half: tuple[float, float],
    mode: str,
) -> np.ndarray:
    """Weights of cells centred at level-0 ``(xs, ys)`` (same shape) in ``region``: 0/1 by the
    centre, or the covered fraction of each ``2·half`` box (``area``)."""
    import shapely

    inside: np.ndarray = np.asarray(shapely.contains_xy(region.geometry, xs, ys), dtype=np.float64)
    if mode == "centre":
        return inside
    if mode != "area":
        raise OptionError(f"coverage '{mode}' is unknown; use {' or '.join(COVERAGE_MODES)}")
    hx, hy = half
    boxes = shapely.box(xs - hx, ys - hy, xs + hx, ys + hy)
    near = shapely.intersects(region.geometry, boxes)
    weights = np.zeros(xs.shape, dtype=np.float64)
    if near.any():
        area = shapely.area(shapely.intersection(boxes[near], region.geometry))
        weights[near] = np.clip(area / (4 * hx * hy), 0.0, 1.0)
    return weights


# Decimals of the weights and fractions written per region: far below one cell's weight, far
# above the rounding of their sums.
WEIGHT_DECIMALS = 9


@dataclass
class RegionStats:
    """Weighted per-channel statistics of one region over one layer, merged batch by batch."""

    channels: int
    cells: int = 0
    weight: float = 0.0
    mean: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)
    minimum: np.ndarray = field(init=False)
    maximum: np.ndarray = field(init=False)
    positive: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        c = self.channels
        self.mean = np.zeros(c)
        self.m2 = np.zeros(c)
        self.minimum = np.full(c, np.inf)
        self.maximum = np.full(c, -np.inf)
        self.positive = np.zeros(c)

    def update(self, values: np.ndarray, weights: np.ndarray) -> None:
        """Add cells: ``values`` ``(C, n)``, ``weights`` ``(n,)`` (cells with weight 0 ignored)."""
        keep = weights > 0
        if not keep.any():
            return
        v = values[:, keep].astype(np.float64)
        w = weights[keep]
        wb = float(w.sum())
        mean_b = v @ w / wb
        m2_b = ((v - mean_b[:, None]) ** 2) @ w
        total = self.weight + wb
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (wb / total)
        self.m2 = self.m2 + m2_b + delta**2 * (self.weight * wb / total)
        self.weight = total
        self.cells += int(keep.sum())
        self.minimum = np.minimum(self.minimum, v.min(axis=1))
        self.maximum = np.maximum(self.maximum, v.max(axis=1))
        self.positive += (v > 0).astype(np.float64) @ w

    def rows(self, region: str, layer: str, channels: Sequence[int]) -> list[dict[str, Any]]:
        """One CSV row per channel (statistics are NaN for a region with no cell).

        ``weight`` (covered cells) and ``fraction_positive`` are sums of cell weights, whose
        rounding can leave a fraction a hair outside [0, 1]: the fraction is clipped to [0, 1]
        and both are written to :data:`WEIGHT_DECIMALS` decimals."""
        out = []
        empty = self.weight == 0
        fractions = np.clip(self.positive / max(self.weight, 1e-300), 0.0, 1.0)
        for c in channels:
            out.append(
                {
                    "region": region,
                    "layer": layer,
                    "channel": c,
                    "cells": self.cells,
                    "weight": round(self.weight, WEIGHT_DECIMALS),
                    "mean": float("nan") if empty else float(self.mean[c]),
                    "std": float("nan") if empty else float(np.sqrt(self.m2[c] / self.weight)),
                    "min": float("nan") if empty else float(self.minimum[c]),
                    "max": float("nan") if empty else float(self.maximum[c]),
                    "fraction_positive": float("nan")
                    if empty
                    else round(float(fractions[c]), WEIGHT_DECIMALS),
                }
            )
        return out

    def state(self, prefix: str) -> dict[str, np.ndarray]:
        """Arrays to save for a resumed run."""
        return {
            f"{prefix}cells": np.asarray(self.cells),
            f"{prefix}weight": np.asarray(self.weight),
            f"{prefix}mean": self.mean,
            f"{prefix}m2": self.m2,
            f"{prefix}min": self.minimum,
            f"{prefix}max": self.maximum,
            f"{prefix}positive": self.positive,
        }

    def restore(self, prefix: str, state: dict[str, np.ndarray]) -> None:
        self.cells = int(state[f"{prefix}cells"])
        self.weight = float(state[f"{prefix}weight"])
        self.mean = state[f"{prefix}mean"].copy()
        self.m2 = state[f"{prefix}m2"].copy()
        self.minimum = state[f"{prefix}min"].copy()
        self.maximum = state[f"{prefix}max"].copy()
        self.positive = state[f"{prefix}positive"].copy()
