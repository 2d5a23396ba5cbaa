"""The ``locate`` command: where a layer's cells sit in the input, and a channel drawn there.

Wires geometry and the overlay together (inputs → model → geometry → capture → overlay →
encode → manifest → io); the arithmetic is :mod:`featuremaps.geometry`, the drawing
:func:`featuremaps.render.overlay`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TextIO

from torch import nn

from featuremaps._errors import GeometryError, OptionError
from featuremaps.capture import capture
from featuremaps.commands.cli_common import (
    Command,
    add_model_options,
    add_out_option,
    load_model_and_inputs,
    parse_pair,
    print_closing,
    print_weights_note,
)
from featuremaps.commands.common import resolve_input, resolve_model
from featuremaps.geometry import MapGeometry
from featuremaps.inputs import fed_picture
from featuremaps.io import OutputFolder
from featuremaps.manifest import LOCATE, header
from featuremaps.models import LoadedModel
from featuremaps.render.encode import encode, encode_png
from featuremaps.render.legend import stamp_band
from featuremaps.render.overlay import Overlay
from featuremaps.selection import select_modules

__all__ = ["COMMAND", "OVERLAY_PNG", "draw_overlay", "locate"]

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

    A container whose output is exactly the tensor of a leaf call (``layer4`` of a ResNet, the
    tensor of ``layer4.1.relu#2``) gets that call's geometry (``same_as``); a layer the analytic
    chain does not reach is measured from input gradients, and refused where the measurement
    cannot be trusted.

    Raises:
        LayerError: ``layer`` is unknown.
        GeometryError: its cells cannot be placed on the input (no 2-D grid, uneven spacing
            after upsampling, a field cut off by the input border); the message says which.
    """
    from featuremaps.geometry import compute_geometry, measure_geometry

    loaded = resolve_model(model)
    tensor = resolve_input(inputs, loaded).tensor[:1]
    module = layer.rpartition("#")[0] if "#" in layer else layer
    selected = select_modules(loaded.model, (module,), None, True, loaded.cli_spec)
    found: dict[str, MapGeometry] = {}
    if method != "empirical":  # the analytic chain needs every layer on the way, not just this
        leaves = select_modules(loaded.model, None, None, False, loaded.cli_spec)
        every = {**leaves, **selected}
        found = compute_geometry(loaded.model, tensor, layers=every, method="analytic")
    if layer in found:
        return found[layer]
    if method == "analytic":
        raise GeometryError(
            f"'{layer}' has no analytic geometry (an operation on the way that is not a "
            "convolution, pooling or element-wise layer); use method='auto' to measure it"
        )
    return measure_geometry(loaded.model, tensor, selected, layer, spec=loaded.cli_spec)


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
    A model with random weights gets ``overlay.png`` with a band under the picture holding the
    ``RANDOM WEIGHTS`` stamp (the returned :class:`Overlay` is the picture itself).
    """
    from featuremaps.render import overlay

    loaded = resolve_model(model)
    item = resolve_input(inputs, loaded)
    tensor = item.tensor[:1]
    geometry = geometry or locate(loaded, tensor, layer)
    record = capture(
        loaded.model, tensor, layers=layer.partition("#")[0], model_label=loaded.cli_spec
    )
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
        with OutputFolder(out, loaded.mark) as folder:
            folder.write_bytes(
                OVERLAY_PNG,
                encode_png(stamp_band(picture.pixels, loaded.stamp))
                if loaded.stamp
                else encode(picture),
            )
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


# -- the command line ---------------------------------------------------------------------------


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", nargs="?", help="image (default: the bundled sample photo)")
    add_model_options(p)
    p.add_argument("--layer", "-l", required=True, help="one record name, e.g. layer3.1.conv2")
    p.add_argument(
        "--cell", action="append", default=[], metavar="R,C", help="a cell of the map (repeatable)"
    )
    p.add_argument(
        "--pixel", action="append", default=[], metavar="Y,X",
        help="a pixel of the input as fed (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--overlay", type=int, metavar="CH",
        help="also draw channel CH over the input, each cell at its receptive-field centre",
    )  # fmt: skip
    p.add_argument("--alpha", type=float, default=0.6, help="overlay opacity (0.6)")
    p.add_argument(
        "--threshold", type=float,
        help="hide cells below this fraction of the colour range (0..1; default: show all)",
    )  # fmt: skip
    add_out_option(p, "featuremaps-locate", "folder for the --overlay picture")


def _span(values: range) -> str:
    if not values:
        return "none"
    return f"{values[0]}..{values[-1]}" if len(values) > 1 else str(values[0])


def _execute(args: argparse.Namespace, out: TextIO) -> int:
    loaded, [item] = load_model_and_inputs(
        args, args.model, [args.image] if args.image else [], out
    )
    geo = locate(loaded, item, args.layer)
    height, width = item.tensor.shape[-2:]
    h, w = geo.shape
    print(
        f"{args.layer}: {h}x{w} cells over the input as fed ({height}x{width}, "
        f"{item.path.name}); stride {geo.y.stride:g}x{geo.x.stride:g}, first cell centred at "
        f"({geo.y.offset:g}, {geo.x.offset:g}), receptive field {geo.y.size:g}x{geo.x.size:g} "
        f"({geo.method}{f', the same tensor as {geo.same_as}' if geo.same_as else ''})",
        file=out,
    )
    for text in args.cell:
        r, c = parse_pair(text, "--cell", "R,C")
        if not (r.is_integer() and c.is_integer() and 0 <= r < h and 0 <= c < w):
            raise OptionError(f"--cell {text} is not a cell of the {h}x{w} map of {args.layer}")
        y0, x0, y1, x1 = geo.cell_region(int(r), int(c))
        cy, cx = geo.cell_center(int(r), int(c))
        inside = geo.clipped_region(int(r), int(c), height, width)
        print(
            f"cell ({int(r)}, {int(c)}) is centred on input ({cy:g}, {cx:g}) and sees rows "
            f"{y0:g}..{y1:g}, columns {x0:g}..{x1:g} (inside the image: rows {inside[0]:g}.."
            f"{inside[2]:g}, columns {inside[1]:g}..{inside[3]:g})",
            file=out,
        )
    for text in args.pixel:
        y, x = parse_pair(text, "--pixel", "Y,X")
        if not (0 <= y < height and 0 <= x < width):
            raise OptionError(f"--pixel {text} is outside the {height}x{width} input as fed")
        rows, cols = geo.cells_seeing(y, x)
        near = geo.nearest_cell(y, x)
        print(
            f"pixel ({y:g}, {x:g}) lies in the receptive field of cells in rows {_span(rows)}, "
            f"columns {_span(cols)} ({len(rows) * len(cols)} cells); the nearest centre is cell "
            f"{near}",
            file=out,
        )
    if args.overlay is not None:
        picture = draw_overlay(
            loaded, item, args.layer, args.overlay, alpha=args.alpha, threshold=args.threshold,
            geometry=geo, out=args.out,
        )  # fmt: skip
        print(f"overlay: {picture.caption}", file=out)
        print_closing(loaded, args.out, args.out, out)
    else:
        print_weights_note(loaded, out)
    return 0


COMMAND = Command(
    "which input region a cell of a layer sees, and which cells see an input pixel",
    _add_options,
    _execute,
)
