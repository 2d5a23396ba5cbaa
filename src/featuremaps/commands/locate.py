"""The ``locate`` command: where a layer's cells sit in the input, and a channel drawn there.

Wires geometry and the overlay together (inputs → model → geometry → capture → overlay →
encode → manifest → io); the arithmetic is :mod:`featuremaps.geometry`, the drawing
:func:`featuremaps.render.overlay`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from featuremaps._errors import LayerError, OptionError
from featuremaps.capture import capture
from featuremaps.commands.common import resolve_input, resolve_model
from featuremaps.geometry import MapGeometry
from featuremaps.inputs import fed_picture
from featuremaps.io import OutputFolder
from featuremaps.manifest import LOCATE, header
from featuremaps.models import LoadedModel
from featuremaps.render.encode import encode
from featuremaps.render.overlay import Overlay
from featuremaps.selection import select_modules

__all__ = ["OVERLAY_PNG", "draw_overlay", "locate"]

OVERLAY_PNG = "overlay.png"


def locate(
    model: nn.Module | LoadedModel | str,
    inputs: Any,
    layer: str,
    *,
    method: str = "auto",
) -> MapGeometry:
    """Where the cells of record ``layer`` sit in ``inputs`` (the input as fed to the model).

    The returned :class:`~featuremaps.geometry.MapGeometry` answers both questions of region
    analysis: ``cell_region(r, c)`` is the input region cell (r, c) sees and ``cells_seeing(y, x)``
    the cells whose receptive field holds input pixel (y, x), in the coordinates of the input as
    fed (after resizing and cropping). ``method`` is as in
    :func:`featuremaps.geometry.compute_geometry`; the result says which one was used.

    Raises:
        LayerError: ``layer`` is unknown, or is not a 2-D map (its geometry is undefined).
    """
    from featuremaps.geometry import compute_geometry

    loaded = resolve_model(model)
    tensor = resolve_input(inputs, loaded).tensor[:1]
    module = layer.rpartition("#")[0] if "#" in layer else layer
    selected = select_modules(loaded.model, (module,), None, True, loaded.spec)
    found: dict[str, MapGeometry] = {}
    if method != "empirical":  # the analytic chain needs every layer on the way, not just this
        found = compute_geometry(loaded.model, tensor, method="analytic")
    if layer not in found and method != "analytic":
        found = compute_geometry(loaded.model, tensor, layers=selected, method="empirical")
    if layer not in found:
        maps = ", ".join(list(found)[:5]) or "none"
        raise LayerError(
            f"'{layer}' has no 2-D map whose cells can be placed on the input (maps selected by "
            f"that name: {maps}); pick a convolution or pooling layer from 'featuremaps layers "
            f"{loaded.spec}'"
        )
    return found[layer]


def draw_overlay(
    model: nn.Module | LoadedModel | str,
    inputs: Any,
    layer: str,
    channel: int,
    *,
    out: str | Path | None = None,
    alpha: float = 0.6,
    threshold: float | None = None,
    cmap: str | None = None,
    geometry: MapGeometry | None = None,
) -> Overlay:
    """Draw channel ``channel`` of record ``layer`` over the input as fed, each cell at its
    receptive-field centre (:func:`locate`; pass ``geometry`` to reuse one), blended with
    ``alpha``; cells below ``threshold`` (a fraction of the colour range) stay transparent.

    With ``out``, also writes that folder (replacing an earlier one): ``overlay.png`` and
    ``locate.json`` (model, input, layer, channel, geometry and the caption of the picture).
    """
    from featuremaps.render import overlay

    loaded = resolve_model(model)
    item = resolve_input(inputs, loaded)
    tensor = item.tensor[:1]
    geometry = geometry or locate(loaded, tensor, layer)
    record = capture(loaded.model, tensor, layers=layer.partition("#")[0], model_label=loaded.spec)
    maps = record.get(layer).maps(0)
    if not 0 <= channel < maps.shape[0]:
        raise OptionError(
            f"channel {channel} does not exist in '{layer}', which has {maps.shape[0]} channels"
        )
    fed = fed_picture(tensor, item.preprocessing)
    if fed is None:
        raise OptionError(f"the input of shape {tuple(tensor.shape)} is not a picture to draw on")
    picture = overlay(fed[0], maps[channel], geometry, alpha=alpha, threshold=threshold, cmap=cmap)
    if out is not None:
        with OutputFolder(out) as folder:
            folder.write_bytes(OVERLAY_PNG, encode(picture))
            folder.write_json(
                LOCATE,
                {
                    **header(loaded.describe()),
                    "input": item.info,
                    "layer": layer,
                    "channel": channel,
                    "geometry": geometry.to_json(),
                    "picture": OVERLAY_PNG,
                    "caption": picture.caption,
                    "warnings": list(picture.warnings),
                },
            )
    return picture
