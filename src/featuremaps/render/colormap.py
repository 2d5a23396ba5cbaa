"""Colormap lookup tables and colouring of normalised values.

Part of the pure ``render`` stage. matplotlib is used only as a source of lookup tables (no
figures, no backend): a name becomes a (256, 3) uint8 table once, and colouring is then a single
integer index lookup over the whole block of maps.
"""

from __future__ import annotations

import difflib
import functools

import numpy as np

from featuremaps._errors import OptionError

__all__ = [
    "DEFAULT_CMAP",
    "DEFAULT_DIVERGING_CMAP",
    "NAN_COLOR",
    "colorize",
    "colormap_lut",
    "misleading_colormap",
]

DEFAULT_CMAP = "viridis"
DEFAULT_DIVERGING_CMAP = "RdBu_r"
# Magenta appears in none of the usual sequential or diverging maps, so it cannot be mistaken
# for a value.
NAN_COLOR: tuple[int, int, int] = (255, 0, 255)

# Rainbow and cyclic maps: equal steps in value do not look like equal steps in colour, and the
# cyclic ones draw the minimum and the maximum in nearly the same colour.
_MISLEADING = frozenset(
    {
        "jet",
        "hsv",
        "rainbow",
        "gist_rainbow",
        "nipy_spectral",
        "gist_ncar",
        "flag",
        "prism",
        "twilight",
        "twilight_shifted",
    }
)


def misleading_colormap(name: str) -> bool:
    """True for rainbow or cyclic maps whose colours do not read as ordered values."""
    base = name[:-2] if name.endswith("_r") else name
    return base in _MISLEADING


@functools.lru_cache(maxsize=64)
def colormap_lut(name: str) -> np.ndarray:
    """Return the (256, 3) uint8 lookup table of the matplotlib colormap ``name`` (read-only).

    Raises :class:`OptionError` with the closest names when ``name`` is not a colormap.
    """
    # Imported here: matplotlib is slow to import and only this function needs it.
    import matplotlib

    registry = matplotlib.colormaps
    try:
        cmap = registry[name]
    except KeyError:
        names = sorted(registry)
        # Compare case-insensitively so 'Viridis' still finds 'viridis'.
        lowered = {n.lower(): n for n in names}
        close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
        if close:
            raise OptionError(
                f"unknown colormap {name!r}; did you mean {lowered[close[0]]!r}? Any "
                "matplotlib colormap name works."
            ) from None
        raise OptionError(
            f"unknown colormap {name!r}; expected a matplotlib colormap name such as "
            f"{DEFAULT_CMAP!r} or {DEFAULT_DIVERGING_CMAP!r}. Any matplotlib colormap name works."
        ) from None
    rgba = np.asarray(cmap(np.linspace(0.0, 1.0, 256)), dtype=np.float64)
    lut = np.rint(rgba[:, :3] * 255.0).astype(np.uint8)
    # The table is shared through the cache; a caller writing into it would recolour every
    # later picture.
    lut.setflags(write=False)
    return lut


def colorize(
    t: np.ndarray,
    lut: np.ndarray,
    nan_color: tuple[int, int, int] = NAN_COLOR,
) -> np.ndarray:
    """Colour normalised values: ``t`` of shape (...) in [0, 1] (NaN allowed) -> (..., 3) uint8.

    Each value picks table entry ``round(t * (len(lut) - 1))``; values outside [0, 1] are
    clipped; NaN picks ``nan_color``.
    """
    table = np.asarray(lut)
    if table.ndim != 2 or table.shape[1] != 3 or table.shape[0] < 1:
        raise OptionError(
            f"colour table of shape {table.shape}; expected (N, 3) uint8. Build one with "
            "colormap_lut(name)."
        )
    tf = np.asarray(t, dtype=np.float32)
    nan = np.isnan(tf)
    top = table.shape[0] - 1
    with np.errstate(invalid="ignore"):
        scaled = np.clip(tf, 0.0, 1.0) * np.float32(top)
    np.rint(scaled, out=scaled)
    has_nan = bool(nan.any())
    if has_nan:
        # NaN becomes index 0 here and is painted over below.
        scaled[nan] = 0.0
    idx = scaled.astype(np.uint8 if top <= 255 else np.intp)
    # Look up one 4-byte word per pixel instead of three bytes: np.take on a uint32 table with
    # uint8 indices is ~5x faster than fancy indexing the (N, 3) table. The byte order of the
    # words does not matter: they are only viewed back as the same bytes.
    rgbx = np.zeros((table.shape[0], 4), dtype=np.uint8)
    rgbx[:, :3] = table
    words = np.take(rgbx.view(np.uint32).reshape(-1), idx)
    out: np.ndarray = words.view(np.uint8).reshape(*idx.shape, 4)[..., :3]
    if has_nan:
        out[nan] = np.asarray(nan_color, dtype=np.uint8)
    return out
