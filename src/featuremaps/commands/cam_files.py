"""Class maps in a run folder: the options that ask for them, and their arrays and pictures.

Between the pure class maps (:mod:`featuremaps.classmaps`, :mod:`featuremaps.render.classmap`)
and the run folder (:mod:`featuremaps.io`): each map's float32 array at the layer's own resolution
goes to ``cams/NNNN_<layer>-<method>-s<sample>.npy`` and its picture over the input beside it as
``.png``; the manifest's ``cams`` list has one entry per map (:meth:`ClassMap.to_json` plus
``picture`` and the picture's ``lines`` of text).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from torch import nn

from featuremaps.classmaps import ClassMap, Region, TargetSpec, class_maps
from featuremaps.commands.run_files import npy_bytes
from featuremaps.io import OutputFolder, safe_filename
from featuremaps.render.classmap import draw_class_map

__all__ = ["CAMS", "CamOptions", "cam_entries", "compute_cams", "region_target", "sanity_message"]

#: The folder of class maps inside a run folder.
CAMS = "cams/"


@dataclass(frozen=True)
class CamOptions:
    """What class maps a run adds (see :func:`featuremaps.classmaps.class_maps`).

    ``layers=None`` picks the last layer whose output has cells; ``smooth`` draws the maps
    interpolated between cell centres (and says so); ``trust``/``sanity`` compute the
    deletion/insertion curves and the randomisation check. ``per_input``: ``target`` is a list
    with one target for each input given to :func:`featuremaps.visualize` (see
    :meth:`for_input`); otherwise a list is one target per sample of an input's batch.
    """

    methods: Sequence[str] | str = "gradcam"
    layers: str | Sequence[str] | None = None
    target: TargetSpec = "top1"
    output: str | None = None
    trust: bool = True
    sanity: bool = True
    steps: int = 16
    smooth: bool = False
    per_input: bool = False

    def for_input(self, index: int) -> CamOptions:
        """The options of input ``index`` of a run: with ``per_input``, ``target`` holds one
        target per input (of the run's inputs, each its own batch) and this picks its own."""
        if not self.per_input or isinstance(self.target, (str, int, Region)):
            return self
        return replace(self, target=list(self.target)[index], per_input=False)


def compute_cams(
    model: nn.Module,
    tensor: Any,
    options: CamOptions,
    names: Sequence[str] | None,
    label: str | None,
) -> list[ClassMap]:
    """The class maps ``options`` ask for, on ``tensor``."""
    return class_maps(
        model,
        tensor,
        layers=options.layers,
        methods=options.methods,
        target=options.target,
        output=options.output,
        names=names,
        label=label,
        trust=options.trust,
        sanity=options.sanity,
        steps=options.steps,
    )


def cam_entries(
    folder: OutputFolder | None,
    prefix: str,
    cams: Sequence[ClassMap],
    picture: np.ndarray | None,
    options: CamOptions,
    stamp: str | None,
) -> list[dict[str, Any]]:
    """Write each map's array and picture (with ``folder``) and return the manifest entries.

    ``picture`` is the input as fed, (H, W, 3) uint8, or None when the input is not a picture;
    maps that are not 2-D get no picture, and their entry says why.
    """
    entries = []
    for i, cam in enumerate(cams):
        base = prefix + CAMS + safe_filename(i, f"{cam.layer}-{cam.method}-s{cam.sample}", "")
        array = base + ".npy" if folder is not None else None
        entry = cam.to_json(array)
        reason = None
        if picture is None:
            reason = "the input is not a picture to draw on"
        elif cam.array.ndim != 2:
            reason = f"a {cam.array.ndim}-D map; its values are in the array"
        if folder is not None and array is not None:
            folder.write_bytes(array, npy_bytes(cam.array.astype(np.float32)))
        if reason is None and picture is not None:
            drawn = draw_class_map(picture, cam, smooth=options.smooth, stamp=stamp)
            entry["lines"] = list(drawn.lines)
            entry["smooth"] = options.smooth
            entry["picture"] = (
                folder.write_bytes(base + ".png", drawn.to_png()) if folder is not None else None
            )
        else:
            entry["picture"] = None
            entry["reason"] = reason
        entries.append(entry)
    return entries


def sanity_message(cams: Sequence[ClassMap]) -> str | None:
    """One line naming the maps that fail the sanity check, or None."""
    failed = [f"{c.layer} {c.method}" for c in cams if c.sanity_failed]
    if not failed:
        return None
    return (
        f"{len(failed)} class map(s) fail the sanity check ({', '.join(dict.fromkeys(failed))}): "
        "they barely change when the layers above are re-initialised, so they do not show what "
        "the model learned"
    )


def region_target(target: int | str, box: tuple[int, int, int, int] | None) -> int | str | Region:
    """``target`` as given, or a :class:`Region` over ``box`` for a dense output."""
    return Region(target, box=box) if box is not None else target
