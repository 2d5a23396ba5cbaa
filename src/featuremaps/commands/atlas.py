"""The ``atlas`` command: what each channel responds to over a data set, to files.

Wires the atlas together (inputs → model → capture → heaps → receptive-field crops → sheets →
io): :mod:`featuremaps.atlas_pass` makes the one pass, :mod:`featuremaps.atlas` keeps the cells
and crops them, :mod:`featuremaps.render.atlas_sheet` draws, and this module writes
``atlas.json``, ``patches/``, ``sheets/`` and ``atlas.html``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from featuremaps.commands.cli_common import (
    Command,
    add_device_options,
    add_engine_options,
    add_layer_options,
    add_loader_options,
    add_model_options,
    add_out_option,
    add_quiet_option,
    check_data_options,
    engine_from_args,
    engine_line,
    load_model_with_preprocessing,
    print_closing,
    show_progress,
)
from featuremaps.commands.common import place_model
from featuremaps.engine import EngineOptions, ModelSpec
from featuremaps.geometry import AxisGeometry, MapGeometry
from featuremaps.inputs import Preprocessing, expected_channels
from featuremaps.io import OutputFolder, safe_filename
from featuremaps.manifest import header
from featuremaps.models import LoadedModel

__all__ = ["ATLAS_HTML", "ATLAS_JSON", "COMMAND", "build_atlas"]

ATLAS_JSON = "atlas.json"
ATLAS_HTML = "atlas.html"


def build_atlas(
    model: nn.Module | LoadedModel | str,
    data: Sequence[str],
    *,
    out: str | Path,
    layers: str | Sequence[str] | None = None,
    types: str | Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    k: int = 9,
    controls: int = 3,
    seed: int = 0,
    stats: str | Path | None = None,
    run: str | Path | None = None,
    batch_size: int = 16,
    workers: int = 2,
    progress: bool = False,
    device: str | torch.device | None = None,
    dtype: str | None = None,
    engine: EngineOptions | str | None = None,
) -> dict[str, Any]:
    """For every channel of the selected layers, its ``k`` most active cells over ``data`` and
    ``controls`` random cells with a positive value, cropped from the inputs, written to ``out``.

    One pass over ``data`` (files, folders or globs, read as ``featuremaps stats`` reads them)
    keeps O(layers × channels × k) numbers whatever the number of inputs; ties go to the input
    listed first, then to the cell first in row-major order; ``seed`` picks the controls (the
    same for every batching and engine). Then each kept cell's receptive field is cut from its
    input *as fed to the model* (after preprocessing); the part beyond the input is magenta and
    fully transparent in the patch PNGs (so it cannot be mistaken for magenta in the data), and
    magenta on the sheets.
    Writes:

    - ``atlas.json``: ``layers`` → name → ``channels`` → ``"<c>"`` → kept cells best first, each
      ``{"value", "input", "cell", "box", "patch"}`` (``cell``: indices in the layer's grid;
      ``box``: ``[top, left, bottom, right]`` of the receptive field in pixels of the input as
      fed, bottom and right exclusive, possibly beyond its edges; ``patch``: the PNG's path),
      and ``controls`` → ``"<c>"`` → the same for the controls;
    - ``patches/NNNN_<layer>/`` the PNG crops, ``filters/NNNN_<layer>/c<C>.png`` each channel's
      filter where the layer has one (``filters`` in the layer's entry; drawn as
      :func:`featuremaps.filters` reads them, on the layer's one scale),
      ``sheets/NNNN_<layer>.png`` one sheet per layer
      (a row per channel: top patches, then controls), and ``atlas.html``, a page per layer
      with the values, the controls and, with ``stats`` (a ``stats.csv`` written by
      ``featuremaps stats``), each channel's statistics.

    ``run`` (the ``--out`` folder of a ``featuremaps run`` of one input) gets a link from each
    layer's view in its report to that layer's section of ``atlas.html``.

    Token layers are cropped by their patch grid (the token's patch, prefix tokens left out;
    :func:`patch_geometry`); layers without a 2-D geometry (1-D maps, a grid after upsampling)
    keep their cells in ``atlas.json`` without crops. ``engine`` is as for
    :func:`featuremaps.commands.stats.collect_stats`. Returns the contents of ``atlas.json``.
    """
    from tqdm import tqdm

    from featuremaps.atlas_pass import compute_atlas_pass
    from featuremaps.dataset import check_image_model, read_stats, scan_inputs

    options = engine if isinstance(engine, EngineOptions) else EngineOptions(engine or "local")
    loaded, placement = place_model(model, device, dtype)
    spec = (
        None
        if options.name == "local"
        else ModelSpec.from_loaded(loaded, "auto" if device is None else str(device), dtype)
    )
    check_image_model(loaded.model, "atlas")
    saved = None if stats is None else read_stats(stats)
    scanned = scan_inputs(data)
    if preprocessing is None:
        preprocessing = loaded.input_preprocessing()
    first = expected_channels(loaded.model)
    channels = first[0] if first else None
    folder = OutputFolder(out, loaded.mark)
    with folder, tqdm(total=len(scanned.paths), unit=" img", disable=not progress) as bar:
        result = compute_atlas_pass(
            loaded.model, scanned.paths, channels=channels, preprocessing=preprocessing,
            k=k, controls=controls, seed=seed, layers=layers, types=types,
            batch_size=batch_size, workers=workers, progress=bar.update,
            model_label=loaded.cli_spec, placement=placement, engine=options, spec=spec,
            status=lambda line: bar.set_postfix_str(line, refresh=False),
        )  # fmt: skip
        described = _crops(loaded.model, result, channels, preprocessing, folder)
        summary: dict[str, Any] = {
            **header(loaded.describe()),
            "preprocessing": preprocessing.describe(),
            "inputs": {
                "found": len(scanned.paths),
                "read": result.images,
                "not_read": [{"path": p, "reason": why} for p, why in result.failed],
                "skipped": scanned.skipped,
            },
            "images_per_second": result.images_per_second,
            "k": k,
            "controls": controls,
            "seed": seed,
            "tie_rule": "larger value first; equal values: the input listed first, then the "
            "cell first in row-major order",
            "layers": described,
        }
        for name, layer in described.items():
            numbers = None if saved is None else saved.layers.get(name)
            layer["stats"] = (
                None if numbers is None else {s: v.tolist() for s, v in numbers.items()}
            )
        if result.engine is not None:
            summary["engine"] = result.engine.describe()
        from featuremaps.report.atlas_page import atlas_html

        folder.write_bytes(ATLAS_HTML, atlas_html(summary).encode("utf-8"))
        folder.write_json(ATLAS_JSON, summary)
    if run is not None:
        _link_run(Path(run), Path(out), list(described))
    return summary


def _link_run(run: Path, out: Path, names: list[str]) -> None:
    """Add the atlas to the run folder's manifest and rewrite its report, whose layer views then
    link to their atlas sections."""
    import json
    import os

    from featuremaps._errors import InputError
    from featuremaps.io import dump_json, update_run_folder
    from featuremaps.manifest import MANIFEST
    from featuremaps.report import write_report
    from featuremaps.report.atlas_page import atlas_anchor

    try:
        manifest = json.loads((run / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot read the run's {MANIFEST} in '{run}': {exc}; expected the --out folder of "
            "a 'featuremaps run' of one input"
        ) from None
    if not isinstance(manifest, dict) or "records" not in manifest:
        raise InputError(
            f"'{run}' is not the folder of a run of one input; pass one input's sub-folder"
        )
    page = Path(os.path.relpath(out.resolve() / ATLAS_HTML, run.resolve())).as_posix()
    manifest["atlas"] = {"page": page, "layers": {n: atlas_anchor(n) for n in names}}
    update_run_folder(run, {MANIFEST: dump_json(manifest).encode("utf-8")})
    write_report(run)


def _crops(
    model: nn.Module,
    result: Any,
    channels: int | None,
    preprocessing: Preprocessing,
    folder: OutputFolder,
) -> dict[str, Any]:
    """Crop every kept cell from its input as fed, write patches and sheets; the JSON layers."""
    from featuremaps.geometry import compute_geometry
    from featuremaps.inputs import fed_picture, load_input
    from featuremaps.render.atlas_sheet import make_sheet
    from featuremaps.render.encode import encode_png

    needed = sorted(
        {i for top, ctl in result.layers.values() for h in (top, ctl) for i in h.inputs.ravel()}
        - {-1}
    )
    fed: dict[int, np.ndarray] = {}
    geometry: dict[str, Any] = {}
    for i in needed:  # at most layers x channels x (k + controls) inputs, each read once
        item = load_input(result.paths[i], channels=channels, preprocessing=preprocessing)
        if not geometry and item.tensor.dim() == 4:
            geometry = compute_geometry(model, item.tensor)
        picture = fed_picture(item.tensor, preprocessing)
        if picture is not None:
            fed[i] = picture[0]
    layers: dict[str, Any] = {}
    for index, (name, (top, ctl)) in enumerate(result.layers.items()):
        geo = geometry.get(name)
        geo_used = geo if geo is not None and len(top.grid) == 2 else None
        prefix = result.tokens.get(name)
        if prefix is not None and len(top.grid) == 2 and fed:
            geo_used = patch_geometry(name, top.grid, next(iter(fed.values())).shape[:2])
        stem = safe_filename(index, name, "")
        rows = []

        best: dict[str, Any] = {}
        controls: dict[str, Any] = {}
        for c in range(top.channels):
            shown_top: list[np.ndarray] = []
            shown_ctl: list[np.ndarray] = []
            best[str(c)] = _entries(
                top, c, "top", result.paths, fed, geo_used, stem, folder, shown_top
            )
            controls[str(c)] = _entries(
                ctl, c, "control", result.paths, fed, geo_used, stem, folder, shown_ctl
            )
            rows.append((shown_top, shown_ctl))
        sheet = None
        if geo_used is not None and any(t or s for t, s in rows):
            sheet = folder.write_bytes(f"sheets/{stem}.png", encode_png(make_sheet(rows)))
        layers[name] = {
            "type": result.types[name],
            **({} if prefix is None else {"cells": _token_cells(top.grid, prefix)}),
            "filters": _filters(model, name, top.channels, stem, folder),
            "grid": list(top.grid),
            "geometry": None if geo_used is None else geo_used.to_json(),
            "sheet": sheet,
            "channels": best,
            "controls": controls,
        }
    return layers


def patch_geometry(name: str, grid: Sequence[int], size: Sequence[int]) -> MapGeometry:
    """Where the tokens of a ``grid`` of patches sit in an input of ``size`` (H, W): token
    ``(r, c)`` is the patch of rows ``[r·S, (r+1)·S)``, ``S = H / h`` (the patch grid tiles the
    input; the stretched rule of :mod:`featuremaps.cells` with the patch as the field)."""
    sy, sx = size[0] / grid[0], size[1] / grid[1]
    return MapGeometry(
        name,
        AxisGeometry(sy, (sy - 1) / 2, sy),
        AxisGeometry(sx, (sx - 1) / 2, sx),
        (int(grid[0]), int(grid[1])),
        "patch grid",
    )


def _token_cells(grid: Sequence[int], prefix: int) -> str:
    excluded = f"; {prefix} prefix token{'s' if prefix != 1 else ''} excluded" if prefix else ""
    return f"tokens on their {grid[0]}x{grid[1]} patch grid{excluded}"


def _filters(
    model: nn.Module, name: str, channels: int, stem: str, folder: OutputFolder
) -> dict[str, str] | None:
    """Each channel's filter as a PNG cut from the layer's filter sheet (see
    :mod:`featuremaps.filters`) where the layer is a module with weights per output channel;
    else None."""
    from featuremaps.filters import filters, has_filters
    from featuremaps.render.encode import encode_png
    from featuremaps.render.filters import make_filter_sheet

    module = dict(model.named_modules()).get(name)
    if module is None or not has_filters(module):
        return None
    sheet = make_filter_sheet(filters(model, name), max_filters=max(channels, 1))
    written: dict[str, str] = {}
    for c in range(channels):
        box = sheet.box(c)
        if box is None:
            continue
        y, x, h, w = box
        tile = np.ascontiguousarray(sheet.rgb[y : y + h, x : x + w])
        written[str(c)] = folder.write_bytes(f"filters/{stem}/c{c}.png", encode_png(tile))
    return written or None


def _entries(
    heap: Any,
    c: int,
    what: str,
    paths: Sequence[Path],
    fed: dict[int, np.ndarray],
    geo: Any,
    stem: str,
    folder: OutputFolder,
    kept: list[np.ndarray],
) -> list[dict[str, Any]]:
    """The JSON entries of channel ``c`` of ``heap``; crops go to ``folder`` and to ``kept``."""
    from featuremaps.atlas import cell_box, crop_box
    from featuremaps.render.atlas_sheet import OUTSIDE
    from featuremaps.render.encode import encode_masked_png

    listed = []
    for rank, (value, i, cell) in enumerate(heap.entries(c)):
        entry: dict[str, Any] = {
            "value": value, "input": str(paths[i]), "cell": list(cell), "box": None, "patch": None,
        }  # fmt: skip
        if geo is not None and i in fed:
            box = cell_box(geo.cell_region(*cell))
            crop, inside = crop_box(fed[i], box, fill=OUTSIDE)
            entry["box"] = list(box)
            entry["patch"] = folder.write_bytes(
                f"patches/{stem}/c{c}_{what}{rank}.png", encode_masked_png(crop, inside)
            )
            kept.append(crop)
        listed.append(entry)
    return listed


# -- the command line ---------------------------------------------------------------------------


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="+", metavar="DATA", help="files, folders or globs")
    add_model_options(p)
    add_device_options(p)
    add_out_option(p, "featuremaps-atlas")
    add_layer_options(p)
    add_loader_options(p)
    add_engine_options(p)
    p.add_argument("--top", type=int, default=9, metavar="K", help="cells kept per channel")
    p.add_argument(
        "--controls", type=int, default=3, metavar="M",
        help="random cells with a positive value kept per channel, as a control (default 3)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the controls' sample")
    p.add_argument(
        "--stats", metavar="CSV", help="a stats.csv from 'featuremaps stats' to show per channel"
    )
    p.add_argument(
        "--run", metavar="DIR",
        help="the --out folder of a 'featuremaps run' whose report should link each layer to "
        "its atlas section",
    )  # fmt: skip
    add_quiet_option(p)


def _execute(args: argparse.Namespace, out: TextIO) -> int:
    check_data_options(args)
    loaded, pre = load_model_with_preprocessing(args, args.model, out)
    summary = build_atlas(
        loaded, args.data, out=args.out, layers=args.layers, types=args.types,
        preprocessing=pre, k=args.top, controls=args.controls, seed=args.seed,
        stats=args.stats, run=args.run, batch_size=args.batch_size, workers=args.workers,
        progress=show_progress(args), device=args.device, dtype=args.dtype,
        engine=engine_from_args(args),
    )  # fmt: skip
    inputs = summary["inputs"]
    for item in inputs["not_read"]:
        print(f"not read: {item['path']}: {item['reason']}", file=out)
    for reason, count in inputs["skipped"].items():
        print(f"skipped: {count} file{'s' if count != 1 else ''}: {reason}", file=out)
    print(
        f"{inputs['read']} of {inputs['found']} inputs read at "
        f"{summary['images_per_second']:.1f} images/s; {len(summary['layers'])} layers, top "
        f"{summary['k']} and {summary['controls']} controls per channel",
        file=out,
    )
    print(engine_line(summary["engine"]), file=out)
    print_closing(loaded, args.out, Path(args.out) / ATLAS_HTML, out)
    return 0


COMMAND = Command(
    "what each channel responds to over a data set: its top patches, controls and sheets",
    _add_options,
    _execute,
)
