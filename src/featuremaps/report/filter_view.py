"""The filters a report shows beside a channel's map, read from the manifest's ``filters``.

Part of the report's data stage (manifest → **report data** → HTML). A run made with
``--filters`` lists one sheet per Conv/Linear module (``featuremaps.commands.run_filters``); the
channel view cuts channel ``c``'s filter out of its module's sheet PNG by the sheet's ``layout``
(the same rule as :meth:`featuremaps.render.filters.FilterSheet.box`), so the page carries no
weights of its own: a few numbers per layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["FILTER_LAYOUT_KEYS", "filter_views"]

#: The integer fields a sheet's layout needs, by layout type.
FILTER_LAYOUT_KEYS = {
    "tiles": ("top", "left", "width", "height", "step_x", "step_y", "columns"),
    "rows": ("top", "left", "width", "row_height", "per_row"),
}


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _layout(value: object) -> dict[str, Any] | None:
    if not isinstance(value, Mapping) or value.get("type") not in FILTER_LAYOUT_KEYS:
        return None
    kind = str(value["type"])
    numbers = {key: _count(value.get(key)) for key in FILTER_LAYOUT_KEYS[kind]}
    if any(n is None for n in numbers.values()):
        return None
    return {"type": kind, **numbers}


def filter_views(value: object, base: str = "") -> dict[str, dict[str, Any]]:
    """``{module path: what the channel view needs}`` from the manifest's ``filters`` list (its
    sheet's path relative to the report, kind, layout, counts and words); entries that cannot be
    read (an old or hand-edited manifest) are left out, so their channels show no filter."""
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for item in value:
        if not isinstance(item, Mapping) or not isinstance(item.get("layer"), str):
            continue
        image = item.get("image")
        layout = _layout(item.get("layout"))
        shown, total = _count(item.get("shown")), _count(item.get("filters"))
        if not isinstance(image, str) or not image or layout is None or None in (shown, total):
            continue
        out[item["layer"]] = {
            "image": image[len(base) :] if base and image.startswith(base) else image,
            "kind": str(item.get("kind", "")),
            "layout": layout,
            "shown": shown,
            "filters": total,
            "note": str(item.get("note", "")),
            "scale": str(item.get("scale", "")),
        }
    return out
