"""The report's class-map panel as plain data: the manifest's ``cams`` grouped by layer.

Part of the report's first half (… → render → **report** → io), beside :mod:`.model`, which
calls :func:`cam_layers` while it builds the page model. Everything here is read from the
manifest's ``cams`` entries as the run wrote them (the numbers are never recomputed), with paths
made relative to the report like the records' (``base`` stripped). A run without class maps has
no ``cams`` key and gets an empty tuple: its page does not change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["CamLayer", "CamMap", "CamTarget", "cam_layers"]


@dataclass(frozen=True)
class CamTarget:
    """What a map explains (the entry's ``target``): all None for a class-agnostic map."""

    index: int | None
    name: str | None
    score: float | None
    probability: float | None = None
    output: str | None = None
    region: str | None = None

    @property
    def agnostic(self) -> bool:
        return self.index is None and self.name is None and self.score is None


@dataclass(frozen=True)
class CamMap:
    """One manifest ``cams`` entry as the panel shows it (paths relative to the report)."""

    layer: str
    method: str
    sample: int
    target: CamTarget
    array: str | None
    shape: tuple[int, ...]
    low: float | None
    high: float | None
    layout: str | None
    cells: str | None
    deletion_auc: float | None
    insertion_auc: float | None
    random_auc: float | None
    random_insertion_auc: float | None
    sanity_rank_correlation: float | None
    sanity_failed: bool | None
    notes: tuple[str, ...]
    picture: str | None
    reason: str | None
    lines: tuple[str, ...]

    @property
    def shape_text(self) -> str:
        return "×".join(str(n) for n in self.shape)

    @property
    def trusted(self) -> bool:
        """Whether the run measured the deletion/insertion curves for this map."""
        return self.deletion_auc is not None or self.insertion_auc is not None

    @property
    def other_notes(self) -> tuple[str, ...]:
        """The entry's notes less the one on the sanity check, which the panel says itself."""
        return tuple(n for n in self.notes if not n.startswith("sanity check:"))

    @property
    def sanity_text(self) -> str:
        """What the panel says of the sanity check besides the number and the badge."""
        if self.sanity_rank_correlation is not None:
            if self.sanity_failed:
                return (
                    "the map barely changes when the layers above are re-initialised: it does "
                    "not show what the model learned"
                )
            return "the map changes when the layers above are re-initialised"
        if self.sanity_failed is False:
            return (
                "undefined: the map after re-initialising the layers above is constant (no rank "
                "order left), so it changed entirely"
            )
        return (
            "no rank correlation: not measured, or undefined because a map is constant "
            "(no rank order)"
        )


@dataclass(frozen=True)
class CamLayer:
    """The maps of one layer (a record name; ``name#2`` for a second call), in the run's order.

    ``key`` is the record's position in the manifest when the run drew that layer too (the panel
    links to its section and the layer list to the panel), else None. ``anchor`` is the id of
    the layer's part of the panel.
    """

    layer: str
    key: int | None
    anchor: str
    maps: tuple[CamMap, ...]

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.method for m in self.maps))

    @property
    def failing(self) -> int:
        return sum(1 for m in self.maps if m.sanity_failed)


def _finite(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _region_text(region: object) -> str | None:
    """A segmentation target's region in words: a box ``(x0, y0, x1, y1)`` or what it is."""
    if region is None:
        return None
    if isinstance(region, Mapping):
        return ", ".join(f"{k} {v}" for k, v in region.items())
    if isinstance(region, (list, tuple)):
        return "(" + ", ".join(str(v) for v in region) + ")"
    return str(region)


def _relative(path: object, base: str) -> str | None:
    if not isinstance(path, str) or not path:
        return None
    return path[len(base) :] if base and path.startswith(base) else path


def _target(raw: object) -> CamTarget:
    t = raw if isinstance(raw, Mapping) else {}
    return CamTarget(
        index=_integer(t.get("index")),
        name=_text(t.get("name")),
        score=_finite(t.get("score")),
        probability=_finite(t.get("probability")),
        output=_text(t.get("output")),
        region=_region_text(t.get("region")),
    )


def _map(entry: Mapping[str, Any], base: str) -> CamMap:
    span = entry.get("range")
    low, high = (
        (_finite(span[0]), _finite(span[1])) if isinstance(span, list) and span else (None, None)
    )
    failed = entry.get("sanity_failed")
    return CamMap(
        layer=str(entry.get("layer", "")),
        method=str(entry.get("method", "")),
        sample=_integer(entry.get("sample")) or 0,
        target=_target(entry.get("target")),
        array=_relative(entry.get("array"), base),
        shape=tuple(int(n) for n in entry.get("shape") or ()),
        low=low,
        high=high,
        layout=_text(entry.get("layout")),
        cells=_text(entry.get("cells")),
        deletion_auc=_finite(entry.get("deletion_auc")),
        insertion_auc=_finite(entry.get("insertion_auc")),
        random_auc=_finite(entry.get("random_auc")),
        random_insertion_auc=_finite(entry.get("random_insertion_auc")),
        sanity_rank_correlation=_finite(entry.get("sanity_rank_correlation")),
        sanity_failed=failed if isinstance(failed, bool) else None,
        notes=tuple(str(n) for n in entry.get("notes") or ()),
        picture=_relative(entry.get("picture"), base),
        reason=_text(entry.get("reason")),
        lines=tuple(str(line) for line in entry.get("lines") or ()),
    )


def cam_layers(entries: object, keys: Mapping[str, int], base: str = "") -> tuple[CamLayer, ...]:
    """The manifest's ``cams`` grouped by layer, layers in the order of their first map.

    ``keys`` maps record names to their positions in the manifest (the layers the run drew);
    ``base`` is the sub-folder prefix of the paths, as for the records.
    """
    if not isinstance(entries, Sequence) or isinstance(entries, str):
        return ()
    grouped: dict[str, list[CamMap]] = {}
    for entry in entries:
        if isinstance(entry, Mapping):
            found = _map(entry, base)
            grouped.setdefault(found.layer, []).append(found)
    return tuple(
        CamLayer(layer=name, key=keys.get(name), anchor=f"cams-{i}", maps=tuple(maps))
        for i, (name, maps) in enumerate(grouped.items())
    )
