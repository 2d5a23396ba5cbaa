"""A class activation map laid over the input, with the text that says what it is.

Part of the pure ``render`` stage (a :class:`~featuremaps.classmaps.ClassMap` and the input as fed
in, uint8 pixels out; nothing is written). The map is placed by :func:`featuremaps.render.overlay`:
each cell over the stride-sized box around its receptive-field centre, so the map's own resolution
stays visible; without a geometry it is stretched over the input, and the text says so. With
``smooth`` the map is first interpolated linearly between the cells' centres (clamped at the outer
centres) to one value per input pixel, and the text says that too. Colours run from 0 (the
methods' maps are never negative) to the map's maximum.

Under the picture, in a band (:func:`featuremaps.render.legend.text_band`): the layer, the method
and the target (index, name, score, probability); the cells, the placement, the real range; the
deletion/insertion areas against the random control; the sanity check's rank correlation, and
``FAILS THE SANITY CHECK`` when the map barely changes after re-initialising the layers above.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featuremaps.classmaps import ClassMap
from featuremaps.geometry import MapGeometry
from featuremaps.render.encode import encode_png
from featuremaps.render.legend import text_band
from featuremaps.render.overlay import PLACED_BY_GEOMETRY, STRETCHED, Overlay, overlay
from featuremaps.render.scaling import format_ends

__all__ = [
    "CAM_CMAP",
    "MIN_SIDE",
    "ClassMapPicture",
    "class_map_lines",
    "draw_class_map",
    "smoothed",
]

#: The colormap of class maps (sequential: the maps are not negative).
CAM_CMAP = "inferno"
#: Inputs whose longer side is shorter than this are drawn enlarged by a whole factor (and the
#: text says so), so that the map is not lost beside its text.
MIN_SIDE = 256


@dataclass(frozen=True, eq=False)
class ClassMapPicture:
    """A class map over the input: ``pixels`` (H', W', 3) uint8 holds the picture at the top
    left (its pixels keep the input's coordinates, or are whole ``k x k`` blocks for a small
    input enlarged ``k`` times, which the last line says) and the text band under it;
    ``lines`` is that text; ``overlay`` is the picture at the input's own size."""

    pixels: np.ndarray
    overlay: Overlay
    lines: tuple[str, ...]

    def to_png(self) -> bytes:
        """PNG bytes of :attr:`pixels`."""
        return encode_png(self.pixels)

    def _repr_png_(self) -> bytes:
        return self.to_png()


def _axis(
    pixels: int, cells: int, geometry: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    stride, offset = (
        geometry if geometry is not None else (pixels / cells, (pixels / cells - 1) / 2)
    )
    u = np.clip((np.arange(pixels, dtype=np.float64) - offset) / stride, 0, cells - 1)
    low = np.floor(u).astype(np.int64)
    high = np.minimum(low + 1, cells - 1)
    return low, high, u - low


def smoothed(array: np.ndarray, size: tuple[int, int], geometry: MapGeometry | None) -> np.ndarray:
    """A 2-D map interpolated linearly between its cells' centres to ``size`` (H, W) pixels."""
    h, w = array.shape
    gy = (geometry.y.stride, geometry.y.offset) if geometry is not None else None
    gx = (geometry.x.stride, geometry.x.offset) if geometry is not None else None
    y0, y1, ty = _axis(size[0], h, gy)
    x0, x1, tx = _axis(size[1], w, gx)
    values = np.asarray(array, dtype=np.float64)
    rows = values[y0] * (1 - ty)[:, None] + values[y1] * ty[:, None]
    result: np.ndarray = rows[:, x0] * (1 - tx)[None, :] + rows[:, x1] * tx[None, :]
    return result


def class_map_lines(cam: ClassMap, placement: str, smooth: bool) -> list[str]:
    """The text under a class map picture (see the module docstring)."""
    lines = [f"{cam.layer} · {cam.method} · {cam.target.label()}"]
    shape = "x".join(str(n) for n in cam.array.shape)
    lo, hi = format_ends(float(cam.array.min()), float(cam.array.max()))
    where = f"{shape} cells" + (f" ({cam.cells})" if cam.cells else "")
    how = f"placed by {placement}"
    if smooth:
        how += ", smoothed: linear between cell centres"
    lines.append(f"{where} · {how} · range {lo} … {hi} · colormap {CAM_CMAP} from 0")
    if cam.deletion_auc is not None and cam.random_auc is not None:
        lines.append(
            f"deletion AUC {cam.deletion_auc:.3g} (random {cam.random_auc:.3g}) · insertion AUC "
            f"{cam.insertion_auc:.3g} (random {cam.random_insertion_auc:.3g})"
        )
    if cam.sanity_rank_correlation is not None and not np.isfinite(cam.sanity_rank_correlation):
        changed = "changed entirely" if cam.sanity_failed is False else "undefined"
        lines.append(
            "rank correlation undefined: the map after re-initialising the layers above is "
            f"constant ({changed})"
        )
    elif cam.sanity_rank_correlation is not None:
        verdict = "FAILS THE SANITY CHECK" if cam.sanity_failed else "passes the sanity check"
        lines.append(
            f"rank correlation {cam.sanity_rank_correlation:.2f} with the map after "
            f"re-initialising the layers above: {verdict}"
        )
    if float(cam.array.max()) <= 0:
        lines.append("the map is 0 everywhere: no cell speaks for the target")
    return lines


def draw_class_map(
    image: np.ndarray,
    cam: ClassMap,
    *,
    smooth: bool = False,
    alpha: float = 0.5,
    stamp: str | None = None,
) -> ClassMapPicture:
    """Draw a 2-D class map over ``image`` (the input as fed, (H, W, 3) uint8 or (H, W)).

    Raises:
        ValueError: the map is not 2-D.
    """
    if cam.array.ndim != 2:
        raise ValueError(f"a {cam.array.ndim}-D class map is not drawn over a picture")
    high = float(np.nanmax(cam.array)) if cam.array.size else 0.0
    value_range = (0.0, high) if high > 0 else (0.0, 1.0)
    geometry = cam.geometry
    if smooth:
        values = smoothed(cam.array, image.shape[:2], geometry)
        picture = overlay(image, values, None, alpha=alpha, cmap=CAM_CMAP, value_range=value_range)
    else:
        picture = overlay(
            image, cam.array, geometry, alpha=alpha, cmap=CAM_CMAP, value_range=value_range
        )
    placement = f"{PLACED_BY_GEOMETRY} ({geometry.method})" if geometry is not None else STRETCHED
    lines = class_map_lines(cam, placement, smooth)
    pixels = picture.pixels
    zoom = max(1, MIN_SIDE // max(pixels.shape[:2]))
    if zoom > 1:  # a small input would be lost beside its text: whole pixels, enlarged
        pixels = np.repeat(np.repeat(pixels, zoom, axis=0), zoom, axis=1)
        lines.append(f"picture enlarged {zoom}x (each input pixel as a {zoom}x{zoom} block)")
    return ClassMapPicture(text_band(pixels, lines, stamp), picture, tuple(lines))
