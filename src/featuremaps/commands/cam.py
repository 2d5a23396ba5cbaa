"""The ``cam`` command and :func:`cam`: which activations of a layer mattered for the answer.

Wires the class maps into a run (inputs → model → capture → **class maps** → render → io): the
maps are computed by :mod:`featuremaps.classmaps` on the values each layer call returned, drawn by
:mod:`featuremaps.render.classmap`, and written with a run of the same layers
(:func:`featuremaps.visualize`), so the folder holds the layers' feature maps, the class maps
(``cams/``, the manifest's ``cams``) and the report that shows both.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, TextIO

from torch import nn

from featuremaps._errors import OptionError
from featuremaps.classmaps import METHODS, ClassMap, TargetSpec
from featuremaps.commands.cam_files import CamOptions, compute_cams, region_target
from featuremaps.commands.cli_common import (
    Command,
    add_cam_options,
    add_device_options,
    add_model_options,
    add_out_option,
    add_quiet_option,
    check_layers,
    load_model_and_inputs,
    parse_box,
    print_closing,
    show_progress,
)
from featuremaps.commands.common import place_model, resolve_input
from featuremaps.commands.run import visualize
from featuremaps.manifest import MANIFEST
from featuremaps.models import LoadedModel
from featuremaps.predictions import categories

__all__ = ["COMMAND", "cam"]


def cam(
    model: nn.Module | LoadedModel | str,
    inputs: Any,
    *,
    layers: str | Sequence[str] | None = None,
    methods: str | Sequence[str] = "gradcam",
    target: TargetSpec = "top1",
    output: str | None = None,
    trust: bool = True,
    sanity: bool = True,
    steps: int = 16,
    device: str | None = None,
) -> list[ClassMap]:
    """Class activation maps of layer calls for every input of a batch.

    Args:
        model: an ``nn.Module``, a :class:`~featuremaps.LoadedModel` or a model spec; it is
            left as it was (modes, hooks, ``.grad``, ``requires_grad``).
        inputs: a tensor ``(N, ...)``, an image/array path or a loaded input.
        layers: record names or patterns (``layer4``, ``blocks.11``, ``features.3#2``);
            default: the last layer whose output has cells.
        methods: any of ``gradcam, gradcam++, xgradcam, layercam, hirescam, scorecam,
            eigencam`` (a list or comma-separated; ``all``).
        target: ``"top1"``, a class index, a class name (from the weights' metadata), a
            :class:`~featuremaps.classmaps.Region` for dense outputs, or one per input.
        output: the part of a dict/tuple output whose scores are explained (``"out"``).
        trust: measure deletion/insertion curves against random cell orders.
        sanity: measure the rank correlation with the map after re-initialising the layers
            above the layer (a map that barely changes is flagged).
        steps: steps of the deletion/insertion curves.
        device: where the model runs (as :func:`featuremaps.visualize`).

    Returns:
        One :class:`~featuremaps.classmaps.ClassMap` per layer call, method and input; each
        holds the map at the layer's own resolution (float32, after the method's ReLU), its
        target (index, name, score) and its trust numbers.

    Write the maps with their pictures and a report with ``featuremaps cam`` or
    ``fm.visualize(..., cams=CamOptions(...))``.
    """
    loaded, placement = place_model(model, device, None)
    item = resolve_input(inputs, loaded)
    tensor = placement.inputs(item.tensor)
    named = categories(loaded)
    options = CamOptions(methods, layers, target, output, trust, sanity, steps)
    return compute_cams(loaded.model, tensor, options, named[0] if named else None, loaded.cli_spec)


# -- the command line ---------------------------------------------------------------------------


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help="image files or .npy arrays (default: the bundled sample photo)",
    )
    add_model_options(p)
    add_device_options(p)
    add_out_option(p, "featuremaps-cam")
    p.add_argument(
        "--layers",
        "-l",
        action="append",
        help="layer calls to explain: name, glob, re:REGEX or NAME#k (default: the last layer "
        "whose output has cells)",
    )
    p.add_argument(
        "--method",
        default="gradcam",
        help=f"one or more of {', '.join(METHODS)}, comma-separated, or all (default: gradcam)",
    )
    add_cam_options(p)
    add_quiet_option(p)


def _targets(text: str, count: int) -> int | str | list[int | str]:
    """--target: one value for all inputs, or one per input."""
    parts = [t.strip() for t in text.split(",")]
    values: list[int | str] = [int(t) if t.lstrip("-").isdigit() else t for t in parts]
    if len(values) == 1:
        return values[0]
    if len(values) != count:
        raise OptionError(
            f"--target gives {len(values)} targets for {count} input(s); give one for all, or "
            "one per input"
        )
    return values


def _execute(args: argparse.Namespace, out: TextIO) -> int:
    check_layers(args.layers)
    loaded, inputs = load_model_and_inputs(args, args.model, args.images, out)
    box = parse_box(args.region)
    wanted = _targets(args.target, len(inputs))
    target = (
        [region_target(one, box) for one in wanted]
        if isinstance(wanted, list)
        else region_target(wanted, box)
    )
    options = CamOptions(
        methods=args.method,
        layers=args.layers,
        target=target,
        output=args.output,
        trust=args.trust,
        sanity=args.sanity,
        steps=args.steps,
        smooth=args.smooth,
        per_input=isinstance(wanted, list),
    )
    results = visualize(
        loaded,
        list(inputs),
        out=args.out,
        layers=args.layers if args.layers else None,
        cams=options,
        progress=show_progress(args),
        device=args.device,
        dtype=args.dtype,
    )
    for result in results:
        for entry in result.manifest.get("cams", []):
            lines = entry.get("lines") or [f"{entry['layer']} · {entry['method']}"]
            print(
                f"{entry.get('picture') or entry.get('array')}: {' · '.join(lines[:1])}", file=out
            )
            for line in lines[1:]:
                print(f"    {line}", file=out)
        for warning in result.warnings:
            if "sanity check" in warning:
                print(f"note: {warning}", file=out)
    print(f"class maps and the layers' feature maps are in {MANIFEST} ('cams')", file=out)
    print_closing(loaded, args.out, args.out, out)
    return 0


COMMAND = Command(
    "class activation maps: which activations of a layer mattered for the model's answer",
    _add_options,
    _execute,
)
