"""Colormap lookup tables and colouring of normalised values.

Part of the pure ``render`` stage. matplotlib is used only as a source of lookup tables (no
figures, no backend): a name becomes a (256, 3) uint8 table once, and colouring is then a single
integer index lookup over the whole block of maps. The tables of the maps a default run and its
report use ship with the package (``colormaps.json``, checked against matplotlib by the tests),
so drawing with them does not import matplotlib.

Grids are drawn as palette pictures (see ``featuremaps.render.palette``), so they use
:func:`colormap_levels`, the table resampled to 240 evenly spaced entries with both ends exact, and
:func:`level_indices`: colours are quantised to 240 levels (the legend prints the exact range).
:func:`colorize` colours with whatever table it is given.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import numpy as np

from featuremaps._errors import OptionError
from featuremaps.naming import close_names

__all__ = [
    "DEFAULT_CMAP",
    "DEFAULT_DIVERGING_CMAP",
    "NAN_COLOR",
    "colorize",
    "colormap_levels",
    "colormap_lut",
    "colormap_warning",
    "level_indices",
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


def colormap_warning(name: str) -> str | None:
    """The warning a picture drawn with colormap ``name`` carries, or None when it reads well."""
    if not misleading_colormap(name):
        return None
    return (
        f"colormap {name!r} is a rainbow or cyclic map, so equal steps in value do not look "
        f"equal; prefer {DEFAULT_CMAP!r} or {DEFAULT_DIVERGING_CMAP!r}"
    )


@functools.lru_cache(maxsize=1)
def _bundled_tables() -> dict[str, str]:
    """The lookup tables shipped with the package: colormap name -> 256 RGB triples in hex."""
    text = resources.files("featuremaps.render").joinpath("colormaps.json").read_text("utf-8")
    tables: dict[str, str] = json.loads(text)["tables"]
    return tables


@functools.lru_cache(maxsize=64)
def colormap_lut(name: str) -> np.ndarray:
    """Return the (256, 3) uint8 lookup table of the matplotlib colormap ``name`` (read-only).

    Raises :class:`OptionError` with the closest names when ``name`` is not a colormap.
    """
    bundled = _bundled_tables().get(name)
    if bundled is not None:
        table: np.ndarray = np.frombuffer(bytes.fromhex(bundled), dtype=np.uint8)
        table = table.reshape(256, 3).copy()
        table.setflags(write=False)
        return table
    # Imported here: matplotlib is slow to import, and only other maps need it.
    import matplotlib

    registry = matplotlib.colormaps
    try:
        cmap = registry[name]
    except KeyError:
        names = sorted(registry)
        # Compare case-insensitively so 'Viridis' still finds 'viridis'.
        lowered = {n.lower(): n for n in names}
        close = close_names(name.lower(), list(lowered), 1, 0.6)
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


@functools.lru_cache(maxsize=64)
def colormap_levels(name: str, levels: int) -> np.ndarray:
    """``levels`` evenly spaced entries of :func:`colormap_lut` (read-only (levels, 3) uint8).

    Entry ``j`` is table entry ``round(j * 255 / (levels - 1))``, so the first and last colours
    are exactly the colormap's ends. Each entry is a colour of the 256-entry table; nothing is
    interpolated.
    """
    if levels < 2 or levels > 256:
        raise OptionError(f"{levels} colour levels; expected 2 to 256. Pass for example 240.")
    lut = colormap_lut(name)
    pos = np.rint(np.arange(levels) * ((len(lut) - 1) / (levels - 1))).astype(np.intp)
    table: np.ndarray = lut[pos]
    table.setflags(write=False)
    return table


def _scaled_indices(t: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``round(clip(t, 0, 1) * top)`` as float32, and the NaN mask (None when there is none).

    NaN positions hold 0 in the result so that the integer cast never sees a NaN.
    """
    tf = np.asarray(t, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        scaled = np.clip(tf, 0.0, 1.0)
    scaled *= np.float32(top)
    np.rint(scaled, out=scaled)
    nan = np.isnan(scaled)
    if not nan.any():
        return scaled, None
    scaled[nan] = 0.0
    return scaled, nan


def level_indices(
    t: np.ndarray, levels: int, nan_index: int, *, in_unit: bool = False
) -> np.ndarray:
    """Quantise normalised values to uint8 level indices: ``round(t * (levels - 1))``.

    ``t`` of shape (...) in [0, 1]; values outside are clipped; NaN becomes ``nan_index``. The
    caller owns the result (a fresh array). Index ``j`` is drawn with entry ``j`` of
    :func:`colormap_levels` (``name``, ``levels``).

    ``in_unit=True``: ``t`` is float32 with every value within [0, 1] and no NaN (what
    :func:`~featuremaps.render.scaling.normalize` returns for finite values) and used by nobody
    else: it is scaled in place, without clipping or looking for NaN. The indices are the same.
    """
    if not 1 <= levels <= 256 or not 0 <= nan_index <= 255:
        raise OptionError(
            f"{levels} levels with NaN index {nan_index}; expected 1 to 256 levels and an index "
            "in 0..255 (uint8 pictures)."
        )
    if in_unit and isinstance(t, np.ndarray) and t.dtype == np.float32:
        t *= np.float32(levels - 1)
        np.rint(t, out=t)
        return t.astype(np.uint8)
    scaled, nan = _scaled_indices(t, levels - 1)
    idx = scaled.astype(np.uint8)
    if nan is not None:
        idx[nan] = nan_index
    return idx


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
    top = table.shape[0] - 1
    # NaN becomes index 0 here and is painted over below.
    scaled, nan = _scaled_indices(t, top)
    idx = scaled.astype(np.uint8 if top <= 255 else np.intp)
    # Look up one 4-byte word per pixel instead of three bytes: np.take on a uint32 table with
    # uint8 indices is ~5x faster than fancy indexing the (N, 3) table. The byte order of the
    # words does not matter: they are only viewed back as the same bytes.
    rgbx = np.zeros((table.shape[0], 4), dtype=np.uint8)
    rgbx[:, :3] = table
    words = np.take(rgbx.view(np.uint32).reshape(-1), idx)
    out: np.ndarray = words.view(np.uint8).reshape(*idx.shape, 4)[..., :3]
    if nan is not None:
        out[nan] = np.asarray(nan_color, dtype=np.uint8)
    return out
