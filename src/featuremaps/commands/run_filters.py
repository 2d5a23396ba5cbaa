"""The filters of a run (``featuremaps run --filters``): one sheet per selected Conv/Linear layer.

Part of the ``run`` command (… → capture → stats → **filters** → render → manifest → io). After
the forward pass, every selected module that ran and has filters (:func:`featuremaps.filters.
has_filters`) is read once by :func:`featuremaps.filters.filters` (a module called twice has one
set of filters) and drawn by :func:`featuremaps.render.filters.make_filter_sheet`. The sheet is
written to ``filters/NNNN_<module>.png`` through :class:`featuremaps.io.OutputFolder`, listed in
the manifest's ``filters``, and each filter's L1 and L2 norm joins its output channel's
statistics (``channel_stats``' ``filter_l1`` and ``filter_l2``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from featuremaps.checkpoints import LoadedModel
from featuremaps.filters import Filters, filters, has_filters
from featuremaps.io import OutputFolder, safe_filename
from featuremaps.manifest import RecordSummary
from featuremaps.render.filters import FilterSheet, make_filter_sheet
from featuremaps.selection import as_patterns, select_modules

__all__ = [
    "FILTERS_DIR",
    "NORM_KEYS",
    "LayerFilters",
    "add_filters_option",
    "check_filters",
    "draw_filters",
    "join_norms",
    "run_filters",
    "write_filters",
]

FILTERS_DIR = "filters"
#: The columns the norms add to a record's ``channel_stats`` (null for a layer without filters).
NORM_KEYS = ("filter_l1", "filter_l2")


@dataclass(frozen=True)
class LayerFilters:
    """One module's filters and their sheet."""

    filters: Filters
    sheet: FilterSheet


def add_filters_option(p: argparse.ArgumentParser) -> None:
    """``run --filters``."""
    p.add_argument(
        "--filters",
        action="store_true",
        help="also draw the filters (weights) of each selected Conv/Linear layer into filters/, "
        "with each filter's L1/L2 norm beside its channel's statistics",
    )


def check_filters(
    loaded: LoadedModel,
    layers: str | Sequence[str] | None,
    types: str | Sequence[str] | None,
    containers: bool,
    wanted: bool = True,
) -> None:
    """Before the forward pass of a run that draws filters (``wanted``): the selection must
    hold a layer with filters, or there is nothing to draw. Raises the selection's own error
    for a name that matches nothing, and :func:`featuremaps.filters`' error (what the layer is,
    what was expected, how to list the names) when no selected layer is a Conv or Linear layer.
    """
    if not wanted:
        return
    spec = loaded.cli_spec
    chosen = select_modules(loaded.model, as_patterns(layers), as_patterns(types), containers, spec)
    if chosen and not any(has_filters(m) for m in chosen.values()):
        filters(loaded, next(iter(chosen)))  # raises: says what the first selected layer is


def draw_filters(
    loaded: LoadedModel, records: Sequence[RecordSummary], stamp: str | None
) -> dict[str, LayerFilters]:
    """``{module path: LayerFilters}`` for every module of ``records`` that ran and has filters,
    in the order the records list them."""
    model = loaded.model
    modules = dict(model.named_modules())
    found: dict[str, LayerFilters] = {}
    for record in records:
        path = record.module
        module = modules.get(path)
        if record.shape is None or path in found or module is None or not has_filters(module):
            continue
        read = filters(loaded, path)
        found[path] = LayerFilters(read, make_filter_sheet(read, stamp=stamp))
    return found


def join_norms(
    records: Sequence[RecordSummary], drawn: dict[str, LayerFilters]
) -> list[RecordSummary]:
    """``records`` with ``filter_l1`` and ``filter_l2`` in every ``channel_stats``: each output
    channel's filter norms for a layer with filters (the same for every call of the module),
    ``None`` for every channel otherwise (and where the record's channels are not the filters'
    output channels). The other statistics are left as they are."""
    out = []
    for record in records:
        stats = record.channel_stats
        if stats is None:
            out.append(record)
            continue
        count = len(next(iter(stats.values()), []))
        layer = drawn.get(record.module)
        columns: dict[str, list[Any]] = {}
        if layer is not None and layer.filters.out_channels == count:
            columns = {
                NORM_KEYS[0]: layer.filters.l1.tolist(),
                NORM_KEYS[1]: layer.filters.l2.tolist(),
            }
        else:
            columns = {key: [None] * count for key in NORM_KEYS}
        out.append(replace(record, channel_stats={**stats, **columns}))
    return out


def write_filters(
    folder: OutputFolder | None, prefix: str, drawn: dict[str, LayerFilters]
) -> list[dict[str, Any]]:
    """Write each sheet (with a folder) and return the manifest's ``filters`` entries."""
    entries = []
    for i, (path, layer) in enumerate(drawn.items()):
        f, sheet = layer.filters, layer.sheet
        image = None
        if folder is not None:
            image = prefix + f"{FILTERS_DIR}/" + safe_filename(i, path or "model")
            folder.write_bytes(image, sheet.to_png())
        r = sheet.value_range
        entries.append(
            {
                "layer": path,
                "type": f.module_type,
                "kind": f.kind,
                "image": image,
                "shape": list(f.weight_shape),
                "groups": f.groups,
                "filters": f.out_channels,
                "shown": len(sheet.shown),
                "note": f.note,
                "scale": sheet.legend,
                "cmap": sheet.cmap,
                "value_range": [r.vmin, r.vmax],
                "weight_range": list(f.weight_range) if f.weight_range is not None else None,
                "nonfinite": f.nonfinite,
                "layout": sheet.layout,
            }
        )
    return entries


def run_filters(
    loaded: LoadedModel,
    records: Sequence[RecordSummary],
    folder: OutputFolder | None,
    prefix: str,
    stamp: str | None,
    wanted: bool = True,
) -> tuple[list[RecordSummary], list[dict[str, Any]] | None]:
    """A run's filters (``wanted``; else ``records`` as they are and ``None``): draw a sheet for
    every module of ``records`` that ran and has filters, write it (with a folder) to
    ``filters/``, and return the records with the norm columns joined (:func:`join_norms`) and
    the manifest's ``filters`` entries (:func:`write_filters`)."""
    if not wanted:
        return list(records), None
    drawn = draw_filters(loaded, records, stamp)
    return join_norms(records, drawn), write_filters(folder, prefix, drawn)
