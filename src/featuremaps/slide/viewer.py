"""The slide viewer page: the slide and its feature maps in OpenSeadragon, offline.

Part of the writers stage: data in, ``relative path -> bytes`` out (:mod:`featuremaps.io`
writes them). The page opens from ``file://`` with no server and no network: OpenSeadragon
(vendored from its npm package, with its BSD-3-Clause licence beside it) and the page script are
files in the same folder, the Deep Zoom descriptors are inline (browsers refuse to ``fetch`` a
``file://`` ``.dzi``), and the page's data is a JSON block escaped as in the HTML report. The
Content-Security-Policy runs script files only; inline styles are allowed because OpenSeadragon
adds a ``<style>`` element of its own.
Each overlay is placed in level-0 slide pixels at its cells' receptive-field centres: map pixel
``j`` spans ``[(j·S + O + 0.5 − S/2)·d, (j·S + O + 0.5 + S/2)·d)``.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

__all__ = ["OSD_FILES", "osd_version", "render_viewer"]

#: Files copied next to the page, from this package's ``static`` folder.
OSD_FILES = ("openseadragon.min.js", "openseadragon-LICENSE.txt", "viewer.js", "viewer.css")


def _static(name: str) -> bytes:
    return resources.files("featuremaps.slide").joinpath("static").joinpath(name).read_bytes()


def osd_version() -> str:
    """The vendored OpenSeadragon version (from the first line of the minified file)."""
    head = _static("openseadragon.min.js")[:200].decode("utf-8", "replace")
    found = re.search(r"openseadragon (\d+\.\d+\.\d+)", head)
    return found.group(1) if found else "unknown"


def render_viewer(
    data: dict[str, Any], *, title: str, footer: str, stamp: str | None
) -> dict[str, bytes]:
    """``index.html`` and its assets for ``data`` (``slide`` and ``overlays`` images)."""
    import jinja2
    from markupsafe import Markup

    from featuremaps.report.render import script_json

    template = (
        resources.files("featuremaps.slide")
        .joinpath("templates")
        .joinpath("viewer.html")
        .read_text("utf-8")
    )
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html = env.from_string(template).render(
        title=title,
        footer=footer,
        stamp=stamp,
        overlays=data["overlays"],
        opacity=60,
        osd_version=osd_version(),
        data_json=Markup(script_json(data)),
    )
    files = {"index.html": html.encode("utf-8")}
    for name in OSD_FILES:
        files[name] = _static(name)
    return files
