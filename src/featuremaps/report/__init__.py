"""The HTML report: a page per run that opens from ``file://`` offline, built from the manifest.

Last-but-one stage of the flow (… → render → **report** → io): :mod:`.model` turns a run's
``manifest.json`` into plain data objects (:mod:`.cams` those of the class-map panel),
:mod:`.render` turns those into the page and its files (templates and static assets ship as
package data), and ``featuremaps.io`` writes them.
:func:`featuremaps.visualize` writes the report as part of a run; :func:`write_report` (re)writes
it for a run folder that already exists.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from featuremaps._errors import InputError
from featuremaps.io import update_run_folder
from featuremaps.manifest import MANIFEST
from featuremaps.report.model import DATA_DIR, STATS_FILE, ReportData, build_report
from featuremaps.report.render import (
    PRECISION,
    float16_copy,
    layer_data_script,
    render_files,
    runs_index_files,
    stats_script,
)

__all__ = [
    "DATA_DIR",
    "INDEX",
    "PRECISION",
    "STATS_FILE",
    "ReportData",
    "build_report",
    "float16_copy",
    "layer_data_script",
    "report_files",
    "runs_report_files",
    "stats_script",
    "write_report",
]

INDEX = "index.html"


def report_files(
    manifest: Mapping[str, Any], base: str = "", statistics: bool = True
) -> dict[str, bytes]:
    """Every file of one run's report (paths relative to the run folder); without the records'
    statistics script (:data:`STATS_FILE`) unless ``statistics``."""
    return render_files(build_report(manifest, base), statistics)


def runs_report_files(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, bytes]:
    """The top-level page of a run with several inputs: ``(sub-folder, manifest)`` pairs."""
    return runs_index_files([(sub, build_report(m, f"{sub}/")) for sub, m in runs])


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"no {MANIFEST} in '{folder}'; expected the --out folder of a featuremaps run"
        ) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read '{path}': {exc}; run featuremaps again") from None
    if not isinstance(data, dict):
        raise InputError(f"'{path}' does not hold a JSON object; run featuremaps again")
    return data


def _base_of(folder: Path) -> str:
    """The prefix of this run's paths: its sub-folder name when it is one of several inputs."""
    parent = folder.resolve().parent
    try:
        top = json.loads((parent / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    runs = top.get("runs") if isinstance(top, dict) else None
    name = folder.resolve().name
    return f"{name}/" if isinstance(runs, list) and f"{name}/{MANIFEST}" in runs else ""


def write_report(run_dir: str | Path) -> Path:
    """(Re)write the HTML report of a finished run folder from its ``manifest.json``.

    ``run_dir`` is a run's ``--out`` folder (for several inputs: the top folder, which gets one
    report per input plus a page linking them, or one input's sub-folder). The float16 layer data
    that the channel view and the in-browser colouring need are written during the run
    (``report=True``); for a run made without them the page shows the PNG pictures instead.
    Returns the path of ``index.html``.
    """
    root = Path(run_dir)
    manifest = _read_manifest(root)
    if isinstance(manifest.get("runs"), list):
        runs = []
        for entry in manifest["runs"]:
            sub = str(entry).split("/", 1)[0]
            sub_manifest = _read_manifest(root / sub)
            update_run_folder(root / sub, report_files(sub_manifest, f"{sub}/"))
            runs.append((sub, sub_manifest))
        update_run_folder(root, runs_report_files(runs))
    else:
        update_run_folder(root, report_files(manifest, _base_of(root)))
    return root / INDEX
