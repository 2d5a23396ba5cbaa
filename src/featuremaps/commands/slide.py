"""The ``slide`` command: feature maps of a whole-slide image, tiled, exactly stitched, pyramidal.

Wires the slide stages together (reader → tissue mask → model geometry and locality probes →
tile plan → stitching to disk → pyramids → OME-TIFF, RGB TIFFs, Deep Zoom viewer, statistics →
io). Each stage lives in :mod:`featuremaps.slide`; this module decides options and runs the
stages up to the stitched maps, :mod:`featuremaps.commands.slide_outputs` names files and writes
them with the manifest ``slide.json``. Also the command line's ``featuremaps slide``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from featuremaps._errors import FeaturemapsWarning, InputError, OptionError
from featuremaps.commands.cli_common import (
    Command,
    add_device_options,
    add_engine_options,
    add_model_options,
    add_out_option,
    add_quiet_option,
    check_layers,
    engine_from_args,
    engine_line,
    load_model_from_args,
    preprocessing_from_args,
    print_closing,
    show_progress,
)
from featuremaps.commands.common import resolve_model
from featuremaps.commands.slide_outputs import SlideResult, write_outputs
from featuremaps.devices import Placement, model_device, resolve_placement
from featuremaps.engine import EngineOptions, EngineReport, ModelSpec, run_job, session
from featuremaps.inputs import Preprocessing
from featuremaps.io import OutputFolder, WorkFolder
from featuremaps.models import LoadedModel
from featuremaps.slide.forward import (
    TileForward,
    check_locality,
    resolve_layers,
    whole_cells,
)
from featuremaps.slide.plan import Tile, TilePlan, make_plan, placement
from featuremaps.slide.readers import SlideReader, open_slide, read_thumbnail
from featuremaps.slide.regions import COVERAGE_MODES, MAX_AREA_CELLS, Region, read_regions
from featuremaps.slide.stitching import RemoteTiles, SlideTileJob, TileCores, compute_maps
from featuremaps.slide.tissue import TissueMask

__all__ = ["COMMAND", "SlideResult", "slide_maps", "slide_preprocessing"]

#: Thumbnail size for the tissue mask (long side, pixels).
THUMBNAIL = 2048


def _parse_channels(spec: str | int | Sequence[int], total: int, layer: str) -> tuple[int, ...]:
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            return tuple(range(total))
        if text.isdigit():
            spec = int(text)
        else:
            try:
                spec = [int(v) for v in text.split(",") if v.strip()]
            except ValueError:
                raise OptionError(
                    f"--channels '{spec}' is not understood; expected N (the first N), all, or a "
                    "list like 0,5,7"
                ) from None
    if isinstance(spec, int):
        chosen = tuple(range(min(spec, total)))
    else:
        chosen = tuple(dict.fromkeys(int(v) for v in spec))
    bad = [c for c in chosen if not 0 <= c < total]
    if bad:
        raise OptionError(f"channel(s) {bad} do not exist in '{layer}', which has {total} channels")
    if len(chosen) < 2:
        raise OptionError(
            f"--channels selects {len(chosen)} channel of '{layer}'; the float OME-TIFF needs at "
            "least 2 (single-channel float OME files are refused by some readers): give 2 or more"
        )
    return chosen


def _choose_level(
    reader: SlideReader, level: int | None, mpp: float | None
) -> tuple[int, tuple[float, float], str]:
    """The level to read and its µm per pixel (y, x), with a sentence on where it came from."""
    if level is not None and not 0 <= level < len(reader.levels):
        raise OptionError(
            f"--level {level} does not exist; '{reader.path.name}' has levels 0.."
            f"{len(reader.levels) - 1}"
        )
    if reader.mpp is None:
        if mpp is None:
            raise InputError(
                f"'{reader.path.name}' does not say its pixel size (no mpp in its metadata); pass "
                "--mpp with the micrometres per pixel of its full resolution, e.g. --mpp 0.25"
            )
        if mpp <= 0 or not math.isfinite(mpp):
            raise OptionError(f"--mpp {mpp} is not a positive number of micrometres per pixel")
        base = (mpp, mpp)
        k = level or 0
        d = reader.levels[k].downsample
        return k, (base[0] * d, base[1] * d), "given with --mpp (the slide has none)"
    base_y, base_x = reader.mpp[1], reader.mpp[0]
    if mpp is not None:
        if level is not None:
            raise OptionError(
                "give --level or --mpp, not both: --mpp picks the level whose pixel size it is"
            )
        options = [(k, base_x * lv.downsample) for k, lv in enumerate(reader.levels)]
        k, found = min(options, key=lambda kv: abs(math.log(kv[1] / mpp)))
        if abs(found / mpp - 1) > 0.1:
            listed = ", ".join(f"level {k}: {v:.3g}" for k, v in options)
            raise OptionError(
                f"no level of '{reader.path.name}' has {mpp:g} µm per pixel (within 10%); it has "
                f"{listed}. Pick one with --level"
            )
        level = k
    k = level or 0
    d = reader.levels[k].downsample
    return k, (base_y * d, base_x * d), f"from the slide ({reader.mpp_source})"


def _check_area_regions(regions: Sequence[Region], plan: TilePlan, downsample: float) -> None:
    """``area`` coverage clips every cell box: refuse regions too large for it."""
    step = min(min(p.stride) for p in plan.layers) * downsample
    for region in regions:
        x0, y0, x1, y1 = region.bounds
        cells = math.ceil((x1 - x0) / step + 1) * math.ceil((y1 - y0) / step + 1)
        if cells > MAX_AREA_CELLS:
            raise OptionError(
                f"region {region.name!r} spans about {cells} cells, too many for --coverage area "
                f"(at most {MAX_AREA_CELLS}); use --coverage centre for large regions"
            )


def _fingerprint(
    reader: SlideReader,
    loaded: LoadedModel,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one."""
    stat = os.stat(reader.path)
    digest = hashlib.sha1()
    for name, tensor in loaded.model.state_dict().items():
        digest.update(name.encode())
        flat = tensor.detach().reshape(-1)
        digest.update(str(tuple(tensor.shape)).encode())
        if flat.numel():
            digest.update(flat[:: max(1, flat.numel() // 64)].float().cpu().numpy().tobytes())
    return {
        "slide": str(reader.path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "model": loaded.describe(),
        "weights_digest": digest.hexdigest(),
        **settings,
    }


def slide_preprocessing(
    loaded: LoadedModel, preprocessing: Preprocessing | None = None
) -> Preprocessing:
    """What a slide's tiles get: the normalisation of ``preprocessing`` (default: the model's).
    A slide is read as it is, so the model's resize and crop are left out (and said so in the
    source); given ones are refused."""
    pre = preprocessing or loaded.input_preprocessing()
    if preprocessing is not None and (pre.resize is not None or pre.crop is not None):
        raise OptionError(
            "a slide is read as it is: give preprocessing with mean/std only (no resize or crop)"
        )
    left_out = [
        step
        for step, value in (
            ("resize", pre.resize),
            ("crop", pre.crop),
            ("transform", pre.transform),
        )
        if value is not None
    ]
    source = pre.source
    if left_out:
        source += f"; its {' and '.join(left_out)} not applied: a slide is read as it is"
    return Preprocessing(mean=pre.mean, std=pre.std, source=source, from_model=pre.from_model)


def slide_maps(
    model: nn.Module | LoadedModel | str,
    slide: str | Path,
    *,
    layers: str | Sequence[str],
    out: str | Path,
    level: int | None = None,
    mpp: float | None = None,
    channels: str | int | Sequence[int] = 8,
    draw: Sequence[int] | None = None,
    tissue: str | Path = "auto",
    regions: str | Path | None = None,
    coverage: str = "centre",
    tile: int = 1024,
    reader: str = "auto",
    preprocessing: Preprocessing | None = None,
    pca_tiles: int = 8,
    viewer: bool = True,
    progress: bool = False,
    on_tile: Callable[[int, int], None] | None = None,
    device: str | torch.device | None = None,
    dtype: str | None = None,
    engine: EngineOptions | str | None = None,
) -> SlideResult:
    """Feature maps of ``layers`` over a whole slide, stitched exactly from tiles.

    Args:
        model: a spec string, a :class:`LoadedModel` or a module. Its weights' normalisation is
            applied (no resizing: the slide is read at ``level``/``mpp`` as it is).
        slide: a whole-slide image (OpenSlide formats, pyramidal/OME TIFF) or a large picture.
        layers: record names (``layer2``, ``layer3.1.conv2``); see ``featuremaps layers``.
        out: the output folder (replaced on success; an interrupted run leaves ``.NAME.work``
            beside it and the same call resumes from there).
        level, mpp: the level to read, or the µm per pixel to read at (picks the level). A
            slide without a pixel size needs ``mpp`` (then: its level-0 pixel size).
        channels: channels stored in the OME-TIFF and the viewer: the first N, ``"all"`` or a
            list (at least 2). Statistics always cover every channel.
        draw: stored channels (their layer channel numbers) drawn as RGB pyramids, default the
            first stored channel; the PCA-3 summary is always drawn.
        tissue: ``auto`` (Otsu on a thumbnail), ``none`` (every tile) or a mask picture.
        regions: a QuPath GeoJSON file (level-0 pixels); ``coverage`` is ``centre`` or ``area``.
        tile: the tile core in read-level pixels (rounded up to the layers' stride).
        reader: ``auto``, ``openslide``, ``tifffile`` or ``pillow``.
        preprocessing: its normalisation replaces the model's (resizing and cropping do not
            apply to slides).
        pca_tiles: tissue tiles sampled to fit the global PCA basis.
        viewer: also write the Deep Zoom tiles and the OpenSeadragon page (``viewer/``).
        progress: show a progress bar (tiles done / total, rate and ETA).
        on_tile: called with ``(tiles done, tissue tiles)`` after each tile.
        device, dtype: where the tiles run and in which precision, as for
            :func:`featuremaps.visualize` (``None`` keeps the model where it is). The stored
            maps are float32 either way; the manifest's ``compute`` says what ran.
        engine: ``"local"`` (default), ``"ray"`` or :class:`featuremaps.engine.EngineOptions`:
            where the tiles run. Ray workers open the slide and load the model (from its spec)
            themselves and send back each tile's core cells; this process writes everything,
            in the local engine's order, so the files are the same. The manifest's ``engine``
            says how many workers ran and how many tiles were retried.
    """
    from featuremaps.selection import as_patterns

    names = as_patterns(layers) or ()
    if not names:
        raise OptionError("--layers is required for a slide: name one or more layers, e.g. layer2")
    if coverage not in COVERAGE_MODES:
        raise OptionError(f"--coverage '{coverage}' is unknown; use {' or '.join(COVERAGE_MODES)}")
    if tile < 1:
        raise OptionError(f"--tile {tile}; expected a positive core size such as 1024")
    options = engine if isinstance(engine, EngineOptions) else EngineOptions(engine or "local")
    loaded = resolve_model(model)
    compute = resolve_placement(loaded.model, device, dtype)
    remote = None
    if options.name != "local":
        spec = ModelSpec.from_loaded(loaded, "auto" if device is None else str(device), dtype)
        remote = (options, spec, str(Path(slide).resolve()), reader)
    pre = slide_preprocessing(loaded, preprocessing)
    source = open_slide(slide, reader)
    try:
        return _run(
            loaded, source, names, out, level, mpp, channels, draw, tissue, regions, coverage,
            tile, pca_tiles, viewer, progress, on_tile, pre, compute, remote,
        )  # fmt: skip
    finally:
        source.close()


def _run(
    loaded: LoadedModel,
    reader: SlideReader,
    names: Sequence[str],
    out: str | Path,
    level_arg: int | None,
    mpp_arg: float | None,
    channels: str | int | Sequence[int],
    draw: Sequence[int] | None,
    tissue_arg: str | Path,
    regions_arg: str | Path | None,
    coverage: str,
    tile: int,
    pca_tiles: int,
    viewer: bool,
    progress: bool,
    on_tile: Callable[[int, int], None] | None,
    preprocessing: Preprocessing,
    compute: Placement,
    remote: tuple[EngineOptions, ModelSpec, str, str] | None = None,
) -> SlideResult:
    normalization = (preprocessing.mean, preprocessing.std)
    level, mpp, mpp_note = _choose_level(reader, level_arg, mpp_arg)
    lv = reader.levels[level]
    size = (lv.height, lv.width)
    region_list: list[Region] = read_regions(regions_arg) if regions_arg is not None else []
    model = loaded.model
    label = loaded.cli_spec
    # The model is measured (layers, geometry, locality probes) in float32 where it is (the
    # CPU for a model the program loaded), before it is placed. Geometry and locality are
    # properties of the architecture, not of the arithmetic: the empirical geometry reads which
    # input gradients are exactly non-zero, which a lower precision can flush to zero, and the
    # far-corner probe asks for cells that do not move *at all*, which autocast or another
    # device's kernels (Winograd, TF32) can break by a rounding and so label a local model
    # approximate. The tiles then run on ``compute``; each cell still sees the same pixels.
    here = Placement(model_device(model))
    probe = torch.zeros((1, 3, 256, 256), device=here.device)
    slide_layers = resolve_layers(model, names, label, probe)
    measure = TileForward(model, [layer.name for layer in slide_layers], label, here)
    cells = whole_cells(model, measure.layers, size, 3, label)
    placements = [placement(layer.geometry, cells[layer.name]) for layer in slide_layers]
    plan = make_plan(size, placements, [layer.halo for layer in slide_layers], tile)
    if coverage == "area":
        _check_area_regions(region_list, plan, reader.levels[level].downsample)
    locality = check_locality(measure, slide_layers, 3, plan.step)
    if not locality.exact:
        warnings.warn(
            f"{loaded.spec}: {locality.reason}; the maps are written and labelled approximate",
            FeaturemapsWarning,
            stacklevel=3,
        )
    compute.place(model)
    forward = TileForward(model, measure.layers, label, compute)
    selected = {
        layer.name: _parse_channels(channels, layer.channels, layer.name) for layer in slide_layers
    }
    if draw is not None:
        for layer in slide_layers:
            missing = [c for c in draw if c not in selected[layer.name]]
            if missing:
                raise OptionError(
                    f"--draw {missing}: only stored channels can be drawn; add them to --channels"
                )
    tissue_text = str(tissue_arg)
    settings = {
        "layers": list(forward.layers),
        "level": level,
        "mpp": list(mpp),
        "channels": {k: list(v) for k, v in selected.items()},
        "tile": plan.to_json(),
        "tissue": tissue_text
        if tissue_text in ("auto", "none")
        else str(Path(tissue_text).resolve()),
        "regions": None
        if regions_arg is None
        else hashlib.sha1(Path(regions_arg).read_bytes()).hexdigest(),
        "coverage": coverage,
        "pca_tiles": pca_tiles,
        "normalization": [list(v) if v else None for v in normalization],
        # Tiles computed in another precision or on another kind of device are not mixed in.
        "compute": {"device": compute.device.type, "dtype": compute.dtype},
    }
    if tissue_text == "none":
        mask = TissueMask.everywhere(size)
    elif tissue_text == "auto":
        thumbnail, factor = read_thumbnail(reader, level, THUMBNAIL)
        mask = TissueMask.from_thumbnail(thumbnail, factor)
    else:
        mask = TissueMask.from_file(tissue_arg, size)
    with OutputFolder(out, loaded.mark) as folder:
        # Created once the output folder is known to be writable: a refused --out leaves nothing.
        work = WorkFolder(out, _fingerprint(reader, loaded, settings))
        maps = compute_maps(
            reader=reader,
            level=level,
            plan=plan,
            layers=slide_layers,
            selected=selected,
            forward=forward,
            normalize=normalization,
            tissue=mask,
            work=work,
            regions=region_list,
            coverage=coverage,
            pca_tiles=pca_tiles,
            progress=progress,
            on_tile=on_tile,
            remote=None if remote is None else _remote_tiles(remote, level, plan, normalization),
        )
        result = write_outputs(
            folder, loaded, reader, maps, plan, level, mpp, mpp_note, locality, mask,
            region_list, coverage, draw, viewer, work, compute, preprocessing,
        )  # fmt: skip
        for maps_layer in maps.layers:
            maps_layer.values.close()
            maps_layer.pca.close()
    work.remove()
    return result


def _remote_tiles(
    remote: tuple[EngineOptions, ModelSpec, str, str],
    level: int,
    plan: TilePlan,
    normalization: tuple[Sequence[float] | None, Sequence[float] | None],
) -> RemoteTiles:
    """Tiles computed by the engine's workers (see :class:`SlideTileJob`)."""
    options, spec, path, reader_name = remote
    places = {p.name: p for p in plan.layers}

    def run(
        tiles: list[Tile], fold: Callable[[int, TileCores], None], status: Callable[[str], None]
    ) -> EngineReport:
        job = SlideTileJob(spec, path, reader_name, level, plan, places, normalization, spec.spec)
        return run_job(job, tiles, fold, options, progress=lambda _n, line: status(line))

    return run


# -- the command line ---------------------------------------------------------------------------


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "slides", nargs="+", metavar="SLIDE",
        help="whole-slide image (SVS, NDPI, MRXS, TIFF, ...); several (a cohort) go to "
        "OUT/<slide name>/ each",
    )  # fmt: skip
    add_model_options(p)
    p.add_argument(
        "--layers", "-l", action="append", required=True,
        help="record names to map, e.g. layer2 (repeat or use commas)",
    )  # fmt: skip
    add_out_option(p, "featuremaps-slide")
    p.add_argument("--level", type=int, help="pyramid level to read (default: 0)")
    p.add_argument(
        "--mpp", type=float,
        help="micrometres per pixel to read at (picks the level); for a slide without a pixel "
        "size, the pixel size of its full resolution",
    )  # fmt: skip
    p.add_argument(
        "--channels", default="8",
        help="channels stored in the OME-TIFF and viewer: N (first N), all, or 0,5,7 (default 8)",
    )  # fmt: skip
    p.add_argument(
        "--draw", help="stored channels drawn as RGB pyramids, e.g. 0,5 (default: the first)"
    )
    p.add_argument(
        "--tissue", default="auto",
        help="auto (Otsu on a thumbnail), none (every tile), or a mask picture (non-zero = tissue)",
    )  # fmt: skip
    p.add_argument("--regions", metavar="GEOJSON", help="QuPath GeoJSON annotations (level-0 px)")
    p.add_argument(
        "--coverage", choices=("centre", "area"), default="centre",
        help="a cell is in a region by its centre (default) or by its covered fraction",
    )  # fmt: skip
    p.add_argument("--tile", type=int, default=1024, help="tile core in pixels (default 1024)")
    p.add_argument(
        "--reader", choices=("auto", "openslide", "tifffile", "pillow"), default="auto",
        help="slide reader (default: OpenSlide for vendor formats, tifffile for other TIFFs)",
    )  # fmt: skip
    add_device_options(p)
    add_engine_options(p, workers=True)
    p.add_argument(
        "--no-viewer", dest="viewer", action="store_false",
        help="do not write the Deep Zoom tiles and the OpenSeadragon page",
    )  # fmt: skip
    add_quiet_option(p)


def _execute(args: argparse.Namespace, out: TextIO) -> int:
    check_layers(args.layers)
    draw = None
    if args.draw:
        try:
            draw = [int(v) for v in args.draw.split(",") if v.strip()]
        except ValueError:
            raise OptionError(f"--draw '{args.draw}' is not a list of channels like 0,5") from None
    if args.size:
        raise OptionError(
            f"--size {args.size} does not apply to slides, which are read as they are; pick the "
            "resolution with --mpp or --level"
        )
    loaded = load_model_from_args(args, args.model)
    given = preprocessing_from_args(args, loaded) if args.normalize else None
    applied = slide_preprocessing(loaded, given)
    print(
        f"preprocessing: {applied.summary()}; change the normalisation with --normalize", file=out
    )
    outs = cohort_folders(args.slides, args.out)
    if len(outs) > 1:
        for option in ("regions", "tissue"):
            value = getattr(args, option)
            if value is not None and value not in ("auto", "none"):
                raise OptionError(
                    f"--{option} {value} belongs to one slide, and {len(outs)} slides were given; "
                    f"run each slide with its own --{option}"
                )
    engine = engine_from_args(args)
    with session(engine):
        for slide, target in outs.items():
            if len(outs) > 1:
                print(f"slide: {slide} -> {target}", file=out)
            try:
                result = slide_maps(
                    loaded, slide, layers=args.layers, out=target, level=args.level,
                    preprocessing=given,
                    mpp=args.mpp, channels=args.channels, draw=draw, tissue=args.tissue,
                    regions=args.regions, coverage=args.coverage, tile=args.tile,
                    reader=args.reader, viewer=args.viewer, progress=show_progress(args),
                    device=args.device, dtype=args.dtype, engine=engine,
                )  # fmt: skip
            except KeyboardInterrupt:
                print(
                    f"featuremaps: interrupted; finished tiles are kept, run the same command "
                    f"again to resume ({Path(target).name} is written at the end)",
                    file=sys.stderr,
                )
                return 130
            _print_result(result, loaded, target, args.viewer, out)
    return 0


def cohort_folders(slides: Sequence[str], out: str | Path) -> dict[str, Path]:
    """Where each slide's results go: ``out`` for one slide, ``out/<slide name>`` for several
    (names must then differ)."""
    if len(slides) == 1:
        return {slides[0]: Path(out)}
    folders: dict[str, Path] = {}
    for slide in slides:
        target = Path(out) / Path(slide).stem
        if target in folders.values() or slide in folders:
            raise OptionError(
                f"two slides would write to {target} (same name '{Path(slide).stem}'); give "
                "slides with different file names, or run them one at a time with their own --out"
            )
        folders[slide] = target
    return folders


def _print_result(
    result: SlideResult, loaded: LoadedModel, target: Path, viewer: bool, out: TextIO
) -> None:
    mode = "exact stitching" if result.exact else "APPROXIMATE stitching"
    print(f"{mode}: {result.locality['reason']}", file=out)
    print(
        f"{result.tissue_tiles} of {result.tiles} tiles with tissue; {result.computed} computed "
        f"({result.tiles_per_second:.2f} tiles/s), {result.resumed} resumed, "
        f"{len(result.failed)} failed",
        file=out,
    )
    for item in result.failed:
        print(f"tile ({item['row']}, {item['col']}) not read: {item['error']}", file=out)
    for layer in result.layers:
        rows, cols = layer["cells"]
        halo = layer["halo"]
        print(
            f"{layer['name']}: {rows}x{cols} cells of {layer['cell_mpp'][1]:.3g} µm, stride "
            f"{layer['stride'][1]}, halo {halo['before'][1]}/{halo['after'][1]} px",
            file=out,
        )
    if result.engine is not None:
        print(engine_line(result.engine), file=out)
    print_closing(loaded, target, target, out)
    if viewer:
        print(f"viewer: {(target / 'viewer' / 'index.html').resolve()}", file=out)


COMMAND = Command(
    "feature maps over a whole-slide image: tiled, exactly stitched, pyramidal files, "
    "region statistics",
    _add_options,
    _execute,
)
