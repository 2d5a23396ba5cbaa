"""The atlas page: the contents of ``atlas.json`` as HTML, from a packaged template.

Report stage only: takes the plain data :func:`featuremaps.commands.atlas.build_atlas` writes
and returns text; writing is :mod:`featuremaps.io`'s. No script, under the report's CSP.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from featuremaps.report.render import CSP, template_environment

__all__ = ["atlas_anchor", "atlas_html"]


def atlas_anchor(layer: str) -> str:
    """The page anchor of ``layer``'s section (link ``atlas.html#<anchor>`` to it)."""
    return "layer-" + re.sub(r"[^A-Za-z0-9_-]", "-", layer)


def atlas_html(atlas: Mapping[str, Any]) -> str:
    """The atlas page of ``atlas`` (the dictionary ``atlas.json`` holds)."""
    environment = template_environment()
    anchors = {name: atlas_anchor(name) for name in atlas["layers"]}
    page: str = environment.get_template("atlas.html").render(atlas=atlas, anchors=anchors, csp=CSP)
    return page
