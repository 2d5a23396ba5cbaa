"""The ``report-timeline`` command: a watch folder's looks in, a timeline page out.

Reads what :class:`featuremaps.watch_writers.FolderWriter` wrote (``manifest.json`` listing the
looks, one ``look.json`` per step), gathers each layer's pictures and dead-channel fractions
across steps (:class:`featuremaps.report.timeline.TimelineLayer`), renders the page
(:func:`featuremaps.report.timeline.timeline_files`) and writes it into the folder through
:mod:`featuremaps.io`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO

from featuremaps._errors import OutputError
from featuremaps.commands.cli_common import Command
from featuremaps.io import update_run_folder
from featuremaps.manifest import MANIFEST, TOOL
from featuremaps.report.timeline import TimelineLayer, timeline_files

__all__ = ["COMMAND", "TIMELINE", "read_looks", "timeline_layers", "write_timeline"]

TIMELINE = "timeline.html"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutputError(f"cannot read '{path}': {exc}") from None


def read_looks(folder: str | Path) -> list[dict[str, Any]]:
    """Every look a folder writer wrote into ``folder``, in step order."""
    root = Path(folder)
    manifest = _read_json(root / MANIFEST) if (root / MANIFEST).is_file() else None
    if (
        not isinstance(manifest, dict)
        or manifest.get("tool") != TOOL
        or manifest.get("kind") != "watch"
        or not manifest.get("looks")
    ):
        raise OutputError(
            f"'{root}' is not a featuremaps watch folder with looks (no {MANIFEST} of kind "
            "'watch' listing steps); expected the folder of fm.watch(..., "
            "writer=FolderWriter(folder)) after at least one look"
        )
    looks = [_read_json(root / entry["look"]) for entry in manifest["looks"]]
    return sorted(looks, key=lambda look: int(look["step"]))


def timeline_layers(looks: list[dict[str, Any]]) -> list[TimelineLayer]:
    """Each layer across the looks, in the order of the first look that has it (pure)."""
    order: dict[str, str] = {}
    for look in looks:
        for layer in look["layers"]:
            order.setdefault(layer["name"], layer["module_type"])
    found = []
    for name, module_type in order.items():
        steps, images, dead = [], [], []
        for look in looks:
            for layer in look["layers"]:
                if layer["name"] == name:
                    steps.append(int(look["step"]))
                    images.append(layer["image"])
                    dead.append(float(layer["dead_fraction"]))
        found.append(TimelineLayer(name, module_type, tuple(steps), tuple(images), tuple(dead)))
    return found


def write_timeline(folder: str | Path) -> Path:
    """Write ``timeline.html`` (and its script) into a watch folder; return its path."""
    root = Path(folder)
    layers = timeline_layers(read_looks(root))
    files = timeline_files(root.resolve().name, layers)
    update_run_folder(root, files)
    return root / TIMELINE


# -- the command line ---------------------------------------------------------------------------


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("rundir", help="the folder fm.watch's FolderWriter wrote")


def _execute(args: argparse.Namespace, out: TextIO) -> int:
    page = write_timeline(args.rundir)
    print(f"wrote {page}", file=out)
    return 0


COMMAND = Command(
    "draw a watch folder's looks as a timeline page (a slider over steps per layer)",
    _add_options,
    _execute,
)
