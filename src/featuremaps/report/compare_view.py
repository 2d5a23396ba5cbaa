"""The compare page as bytes: per layer A, B and B−A side by side, one hover read-out for all three.

The report stage for ``featuremaps compare``: plain data in (:class:`CompareView`, one channel of
one layer with A's, B's and B−A's values), a mapping ``relative path -> bytes`` out, from a
packaged template; nothing here writes files. The pictures are the maps themselves, each cell an
exact block of pixels (nearest-neighbour upscaling), so the script turns a pointer position into
a cell by the picture's size alone and reads the three values of that cell from escaped JSON. As
for the run report, the page opens from ``file://`` under the same Content-Security-Policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featuremaps.report.render import ASSETS_DIR, CSP, asset, script_json, template_environment

__all__ = [
    "COMPARE_PAGE",
    "MAX_HOVER_CELLS",
    "CompareView",
    "compare_page_files",
    "view_pictures",
    "view_scales",
]

COMPARE_PAGE = "compare.html"
#: Layers with more cells than this per channel are drawn without the hover read-out.
MAX_HOVER_CELLS = 128 * 128
#: The longer side of each picture on the page, in pixels (at least one pixel per cell).
VIEW_SIDE = 192


@dataclass(frozen=True)
class CompareView:
    """One layer's channel on the compare page: A's and B's (H, W) values and the cosine and
    relative change of the layer, and where its three pictures are."""

    layer: str
    channel: int
    a: np.ndarray
    b: np.ndarray
    pictures: tuple[str, str, str]
    cosine: float
    relative_l2: float

    @property
    def scales(self) -> tuple[float, float, float]:
        """``(lo, hi, reach)`` of its pictures (:func:`view_scales`)."""
        return view_scales(self.a, self.b)


def view_scales(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """The pictures' scales: A and B share ``lo … hi`` (their finite values), B−A spans
    ``−reach … reach`` (its largest finite size; 1 when there is no change)."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    both = np.concatenate([x.ravel(), y.ravel()])
    finite = both[np.isfinite(both)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    d = np.abs(y - x)
    d = d[np.isfinite(d)]
    reach = float(d.max()) if d.size else 0.0
    return lo, hi, reach if reach > 0 else 1.0


def view_pictures(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB pictures of A, B (one shared scale, viridis) and B−A (RdBu_r, centred on 0), each
    cell a square block of pixels; the scales are :func:`view_scales`."""
    from featuremaps.render.colormap import (
        DEFAULT_CMAP,
        DEFAULT_DIVERGING_CMAP,
        colorize,
        colormap_lut,
    )

    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lo, hi, reach = view_scales(x, y)
    span = hi - lo if hi > lo else 1.0
    d = y - x
    scale = max(1, VIEW_SIDE // max(x.shape))
    sequential, diverging = colormap_lut(DEFAULT_CMAP), colormap_lut(DEFAULT_DIVERGING_CMAP)

    def blocks(rgb: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)

    return (
        blocks(colorize((x - lo) / span, sequential)),
        blocks(colorize((y - lo) / span, sequential)),
        blocks(colorize((d + reach) / (2 * reach), diverging)),
    )


def compare_page_files(
    title: str, views: list[CompareView], mark: str | None = None
) -> dict[str, bytes]:
    """``compare.html`` and its assets: A | B | B−A per layer and one hover read-out; ``mark``
    (random weights) is shown at the top of the page, since its pictures stay unstamped so that
    every pixel block is exactly one cell."""
    import markupsafe

    environment = template_environment()
    data = [
        {
            "shape": list(view.a.shape),
            "a": view.a.tolist() if view.a.size <= MAX_HOVER_CELLS else None,
            "b": view.b.tolist() if view.b.size <= MAX_HOVER_CELLS else None,
        }
        for view in views
    ]
    page = environment.get_template(COMPARE_PAGE).render(
        title=title,
        views=views,
        mark=mark,
        csp=CSP,
        assets=ASSETS_DIR,
        data=markupsafe.Markup(script_json(data)),
    )
    return {
        COMPARE_PAGE: page.encode("utf-8"),
        f"{ASSETS_DIR}/compare.js": asset("compare.js"),
        f"{ASSETS_DIR}/compare.css": asset("compare.css"),
        f"{ASSETS_DIR}/report.css": asset("report.css"),
    }
