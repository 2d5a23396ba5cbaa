"""The ``slide`` command: feature maps of a whole-slide image, tiled, exactly stitched, pyramidal.

Wires the slide stages together (reader → tissue mask → model geometry and locality probes →
tile plan → stitching to disk → pyramids → OME-TIFF, RGB TIFFs, Deep Zoom viewer, statistics →
io). Each stage lives in :mod:`featuremaps.slide`; this module decides options, names files
and writes the manifest ``slide.json``.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from featuremaps._errors import FeaturemapsWarning, InputError, OptionError
from featuremaps.commands.common import resolve_model
from featuremaps.devices import Placement, model_device, resolve_placement
from featuremaps.inputs import Preprocessing
from featuremaps.io import OutputFolder, WorkFolder, safe_filename
from featuremaps.manifest import SLIDE, header
from featuremaps.models import LoadedModel
from featuremaps.render.colormap import (
    DEFAULT_CMAP,
    DEFAULT_DIVERGING_CMAP,
    colorize,
    colormap_lut,
)
from featuremaps.render.scaling import ValueRange, centred, normalize
from featuremaps.slide.forward import (
    Locality,
    TileForward,
    check_locality,
    resolve_layers,
    whole_cells,
)
from featuremaps.slide.plan import TilePlan, make_plan, placement
from featuremaps.slide.pyramid import PyramidLevel, build_pyramid
from featuremaps.slide.readers import SlideReader, open_slide, read_thumbnail
from featuremaps.slide.regions import COVERAGE_MODES, MAX_AREA_CELLS, Region, read_regions
from featuremaps.slide.stitching import LayerMaps, SlideMaps, compute_maps
from featuremaps.slide.tissue import TissueMask

__all__ = ["SlideResult", "slide_maps"]

#: Thumbnail size for the tissue mask (long side, pixels).
THUMBNAIL = 2048
#: Long side of the slide picture under the maps in the viewer, at most.
VIEWER_MAX_SIDE = 16384
#: PCA components are drawn over mean ± this many standard deviations.
PCA_SPREAD = 2.5


@dataclass(frozen=True)
class SlideResult:
    """What a slide run did: where the results are and the numbers worth printing."""

    out: Path
    exact: bool
    locality: dict[str, Any]
    tiles: int
    tissue_tiles: int
    computed: int
    resumed: int
    failed: list[dict[str, Any]]
    seconds: float
    mpp: tuple[float, float]
    level: int
    layers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tiles_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


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


def _channel_range(maps: LayerMaps, channel: int) -> tuple[ValueRange, str]:
    stats = maps.stats.result()
    lo, hi = float(stats["min"][channel]), float(stats["max"][channel])
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return ValueRange(0.0, 1.0, False), DEFAULT_CMAP
    if lo < 0:
        return centred(ValueRange(lo, hi, False)), DEFAULT_DIVERGING_CMAP
    return ValueRange(lo, hi, False), DEFAULT_CMAP


def _colour_channel(
    index: int, value_range: ValueRange, cmap: str
) -> Callable[[np.ndarray], np.ndarray]:
    lut = colormap_lut(cmap)

    def colour(block: np.ndarray) -> np.ndarray:
        values = block[:, :, index]
        rgb = colorize(normalize(values, value_range), lut, nan_color=(255, 255, 255))
        alpha = np.where(np.isnan(values), 0, 255).astype(np.uint8)
        return np.concatenate([rgb, alpha[:, :, None]], axis=2)

    return colour


def _colour_pca(maps: LayerMaps) -> tuple[Callable[[np.ndarray], np.ndarray], list[list[float]]]:
    stats = maps.pca_stats.result()
    mean, std = stats["mean"], stats["std"]
    lo = np.nan_to_num(mean - PCA_SPREAD * std)
    hi = np.nan_to_num(mean + PCA_SPREAD * std)
    span = np.where(hi > lo, hi - lo, 1.0)

    def colour(block: np.ndarray) -> np.ndarray:
        t = np.clip((block - lo) / span, 0.0, 1.0)
        nan = np.isnan(block).any(axis=2)
        rgb = np.rint(np.nan_to_num(t) * 255).astype(np.uint8)
        rgb[nan] = 255
        alpha = np.where(nan, 0, 255).astype(np.uint8)
        return np.concatenate([rgb, alpha[:, :, None]], axis=2)

    return colour, [[float(a), float(b)] for a, b in zip(lo, hi, strict=True)]


def _legend_png(title: str, note: str, value_range: ValueRange, cmap: str) -> bytes:
    from featuremaps.render.encode import encode_png
    from featuremaps.slide.writers import legend_pixels

    return encode_png(legend_pixels(title, note, value_range, cmap))


def _background_levels(
    reader: SlideReader, level: int, factor: int, work: WorkFolder
) -> list[PyramidLevel]:
    """The slide itself at ``1/factor`` of ``level``, as a pyramid for the viewer."""
    from PIL import Image

    base = reader.levels[level]
    h, w = math.ceil(base.height / factor), math.ceil(base.width / factor)
    # The coarsest level that is still at least as fine as the picture.
    source = max(
        (
            k
            for k, lv in enumerate(reader.levels)
            if k >= level and lv.downsample <= base.downsample * factor + 1e-6
        ),
        key=lambda k: reader.levels[k].downsample,
    )
    src = reader.levels[source]
    ratio = factor * base.downsample / src.downsample
    array = work.disk_array("background.level0", (h, w, 3), np.float32)
    band = 256
    for y0 in range(0, h, band):
        y1 = min(y0 + band, h)
        r0 = math.floor(y0 * ratio)
        r1 = min(src.height, math.ceil(y1 * ratio))
        strip = reader.read(source, (r0, r1), (0, src.width))
        image = Image.fromarray(strip).resize(
            (w, y1 - y0), Image.Resampling.BOX, box=(0, y0 * ratio - r0, src.width, y1 * ratio - r0)
        )
        array.write((y0, 0), np.asarray(image, dtype=np.float32))
    base_level = PyramidLevel((h, w, 3), 1, array.read)
    return build_pyramid(base_level, work, "background")


def _write_deep_zoom(
    folder: OutputFolder,
    name: str,
    levels: list[PyramidLevel],
    colour: Callable[[np.ndarray], np.ndarray],
    fmt: str,
) -> dict[str, Any]:
    from featuremaps.slide.writers import DZI_TILE, deep_zoom_tiles, dzi_xml, encode_tile

    h, w, _ = levels[0].shape
    ext = "png" if fmt == "png" else "jpeg"
    for dz, col, row, pixels in deep_zoom_tiles(levels, colour):
        folder.write_bytes(f"viewer/{name}_files/{dz}/{col}_{row}.{ext}", encode_tile(pixels, fmt))
    folder.write_bytes(f"viewer/{name}.dzi", dzi_xml(w, h, ext).encode())
    return {"url": f"{name}_files/", "format": ext, "tile": DZI_TILE, "width": w, "height": h}


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
    """
    from featuremaps.selection import as_patterns

    names = as_patterns(layers) or ()
    if not names:
        raise OptionError("--layers is required for a slide: name one or more layers, e.g. layer2")
    if coverage not in COVERAGE_MODES:
        raise OptionError(f"--coverage '{coverage}' is unknown; use {' or '.join(COVERAGE_MODES)}")
    if tile < 1:
        raise OptionError(f"--tile {tile}; expected a positive core size such as 1024")
    loaded = resolve_model(model)
    compute = resolve_placement(loaded.model, device, dtype)
    pre = preprocessing or loaded.input_preprocessing()
    if preprocessing is not None and (pre.resize is not None or pre.crop is not None):
        raise OptionError(
            "a slide is read as it is: give preprocessing with mean/std only (no resize or crop)"
        )
    normalization = (pre.mean, pre.std)
    source = open_slide(slide, reader)
    try:
        return _run(
            loaded, source, names, out, level, mpp, channels, draw, tissue, regions, coverage,
            tile, pca_tiles, viewer, progress, on_tile, normalization, compute,
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
    normalization: tuple[Any, Any],
    compute: Placement,
) -> SlideResult:
    level, mpp, mpp_note = _choose_level(reader, level_arg, mpp_arg)
    lv = reader.levels[level]
    size = (lv.height, lv.width)
    region_list: list[Region] = read_regions(regions_arg) if regions_arg is not None else []
    model = loaded.model
    label = loaded.spec
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
            f"{label}: {locality.reason}; the maps are written and labelled approximate",
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
    with OutputFolder(out) as folder:
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
        )
        result = _write_outputs(
            folder, loaded, reader, maps, plan, level, mpp, mpp_note, locality, mask,
            region_list, coverage, draw, viewer, work, compute,
        )  # fmt: skip
        for maps_layer in maps.layers:
            maps_layer.values.close()
            maps_layer.pca.close()
    work.remove()
    return result


def _stored(
    maps: SlideMaps, lm: LayerMaps, kind: str
) -> Callable[[tuple[int, int], tuple[int, int]], np.ndarray]:
    def read(rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        return maps.read(lm, kind, rows, cols)

    return read


def _write_outputs(
    folder: OutputFolder,
    loaded: LoadedModel,
    reader: SlideReader,
    maps: SlideMaps,
    plan: TilePlan,
    level: int,
    mpp: tuple[float, float],
    mpp_note: str,
    locality: Locality,
    mask: TissueMask,
    regions: list[Region],
    coverage: str,
    draw: Sequence[int] | None,
    viewer: bool,
    work: WorkFolder,
    compute: Placement,
) -> SlideResult:
    from featuremaps.slide.writers import ome_xml_extra, write_ome_tiff, write_rgb_tiff

    downsample = maps.downsample
    stamp = "RANDOM WEIGHTS" if loaded.random_weights else None
    mode = "exact" if locality.exact else "APPROXIMATE"
    precision = f" · {compute.label}" if compute.label else ""
    layer_entries = []
    overlays = []
    stats_rows: list[dict[str, Any]] = []
    for i, lm in enumerate(maps.layers):
        place = lm.place
        sy, sx = place.stride
        oy, ox = place.offset
        stem = safe_filename(i, lm.layer.name, "")
        cell_mpp = (mpp[0] * sy, mpp[1] * sx)
        # The top-left corner of map pixel (0, 0) (level pixel (0, 0) spans [0, 1)): a viewer that
        # honours the OME plane position puts every cell on its receptive-field centre.
        origin_um = ((oy + 0.5 - sy / 2) * mpp[0], (ox + 0.5 - sx / 2) * mpp[1])
        rows, cols = place.cells
        base = PyramidLevel((rows, cols, len(lm.selected)), 1, _stored(maps, lm, "values"))
        levels = build_pyramid(base, work, f"layer{i}.values")
        placement_text = ome_xml_extra((oy, ox))
        names = [f"{lm.layer.name} #{c}" for c in lm.selected]
        ome = f"maps/{stem}.ome.tif"
        write_ome_tiff(
            folder.path(ome), levels, names, cell_mpp, origin_um,
            f"featuremaps {lm.layer.name} ({mode}); {placement_text}",
        )  # fmt: skip
        pca_base = PyramidLevel((rows, cols, 3), 1, _stored(maps, lm, "pca"))
        pca_levels = build_pyramid(pca_base, work, f"layer{i}.pca")
        pca_colour, pca_ranges = _colour_pca(lm)
        pca_file = f"maps/{stem}.pca.tif"
        write_rgb_tiff(
            folder.path(pca_file), pca_levels, pca_colour, cell_mpp,
            f"featuremaps {lm.layer.name} PCA-3 (global basis) as RGB ({mode}); {placement_text}",
        )  # fmt: skip
        x0 = (ox + 0.5 - sx / 2) * downsample
        y0 = (oy + 0.5 - sy / 2) * downsample
        caption_base = (
            f"{lm.layer.name}: stride {sy}x{sx} px, cell {cell_mpp[1]:.3g} µm, first cell centred "
            f"at ({oy:g}, {ox:g}) px, {mode}"
        )
        files: dict[str, Any] = {"ome_tiff": ome, "pca_tiff": pca_file, "channel_tiffs": {}}
        placed = {"x": x0, "y": y0, "world_width": cols * sx * downsample}
        if viewer:
            image = _write_deep_zoom(folder, f"{stem}.pca", pca_levels, pca_colour, "png")
            overlays.append(
                {
                    **image,
                    **placed,
                    "label": f"{lm.layer.name} PCA-3",
                    "caption": f"{caption_base}; PCA-3 on one global basis as R, G, B",
                }
            )
        chosen = list(draw) if draw is not None else [lm.selected[0]]
        for channel in chosen:
            index = lm.selected.index(channel)
            value_range, cmap = _channel_range(lm, channel)
            colour = _colour_channel(index, value_range, cmap)
            name = f"maps/{stem}.c{channel}.tif"
            write_rgb_tiff(
                folder.path(name), levels, colour, cell_mpp,
                f"featuremaps {lm.layer.name} channel {channel}, {cmap} over "
                f"[{value_range.vmin:.6g}, {value_range.vmax:.6g}] ({mode}); {placement_text}",
            )  # fmt: skip
            legend = f"maps/{stem}.c{channel}.legend.png"
            folder.write_bytes(
                legend,
                _legend_png(
                    f"{lm.layer.name} · channel #{channel} · {rows}x{cols} cells of "
                    f"{cell_mpp[1]:.3g} µm{precision}",
                    f"whole slide, {mode} stitching; first cell centred at ({oy:g}, {ox:g}) px",
                    value_range,
                    cmap,
                ),
            )
            files["channel_tiffs"][str(channel)] = {"tiff": name, "legend": legend, "cmap": cmap}
            if viewer:
                image = _write_deep_zoom(folder, f"{stem}.c{channel}", levels, colour, "png")
                overlays.append(
                    {
                        **image,
                        **placed,
                        "label": f"{lm.layer.name} #{channel}",
                        "caption": f"{caption_base}; channel {channel}, {cmap} "
                        f"[{value_range.vmin:.4g}, {value_range.vmax:.4g}]",
                    }
                )
        stats = lm.stats.result()
        for c in range(lm.layer.channels):
            count = int(stats["count"][c])
            stats_rows.append(
                {
                    "layer": lm.layer.name,
                    "channel": c,
                    "count": count,
                    "mean": float(stats["mean"][c]),
                    "std": float(stats["std"][c]),
                    "min": float(stats["min"][c]),
                    "max": float(stats["max"][c]),
                    "fraction_positive": float(lm.positive[c] / count) if count else float("nan"),
                }
            )
        layer_entries.append(
            {
                "name": lm.layer.name,
                "channels": lm.layer.channels,
                "stored_channels": list(lm.selected),
                "cells": [rows, cols],
                "stride": [sy, sx],
                "offset": [oy, ox],
                "receptive_field": list(place.receptive_field),
                "geometry_method": lm.layer.geometry.method,
                "halo": {
                    "before": [lm.layer.halo[0].before, lm.layer.halo[1].before],
                    "after": [lm.layer.halo[0].after, lm.layer.halo[1].after],
                },
                "cell_mpp": list(cell_mpp),
                "first_cell_centre_level0": [(oy + 0.5) * downsample, (ox + 0.5) * downsample],
                "placement": "cell (r, c) is centred on level-0 pixel coordinates "
                "((r*S + O_y + 0.5)*d, (c*S + O_x + 0.5)*d), origin at the top-left corner",
                "pca": {
                    "explained_variance": [float(v) for v in lm.explained],
                    "drawn_ranges": pca_ranges,
                    "drawn_as": f"mean ± {PCA_SPREAD} std of each component -> 0..255",
                },
                "pyramid_levels": len(levels),
                "files": files,
            }
        )
    folder.write_csv("stats.csv", stats_rows)
    region_files = _write_regions(folder, maps, regions, coverage) if regions else None
    if viewer:
        factor = max(1, min(p.stride[1] for p in plan.layers) // 2)
        lv = reader.levels[level]
        factor = max(factor, math.ceil(max(lv.width, lv.height) / VIEWER_MAX_SIDE))
        bg_levels = _background_levels(reader, level, factor, work)

        def bg_colour(block: np.ndarray) -> np.ndarray:
            pixels: np.ndarray = np.rint(np.nan_to_num(block, nan=255.0)).clip(0, 255)
            return pixels.astype(np.uint8)

        slide_image = _write_deep_zoom(folder, "slide", bg_levels, bg_colour, "jpeg")
        slide_image.update(
            {"x": 0.0, "y": 0.0, "world_width": slide_image["width"] * factor * downsample}
        )
        from featuremaps.slide.viewer import render_viewer

        for name, data in render_viewer(
            {"slide": slide_image, "overlays": overlays},
            title=f"{reader.path.name} · {loaded.spec}",
            footer=(
                f"{mode} stitching ({locality.reason}); slide level {level}, {mpp[1]:.3g} µm/px; "
                f"slide picture at 1/{factor} of that level"
                + (f"; computed in {compute.label}" if compute.label else "")
            ),
            stamp=stamp,
        ).items():
            folder.write_bytes(f"viewer/{name}", data)
    tiles_total = plan.grid[0] * plan.grid[1]
    manifest = {
        **header(loaded.describe()),
        "kind": "slide",
        "slide": {
            "path": str(reader.path),
            "reader": reader.kind,
            "levels": [[lv.width, lv.height, lv.downsample] for lv in reader.levels],
            "level": level,
            "level_size": [reader.levels[level].height, reader.levels[level].width],
            "downsample": maps.downsample,
            "mpp": list(mpp),
            "mpp_source": mpp_note,
        },
        "compute": compute.describe(),
        "stitching": {"mode": mode.lower(), **locality.to_json()},
        "plan": plan.to_json(),
        "tissue": {
            "source": mask.source,
            "threshold": mask.threshold,
            "tiles": int(maps.tissue.sum()),
            "of": tiles_total,
        },
        "tiles": {
            "computed": maps.computed,
            "resumed": maps.resumed,
            "failed": maps.failed,
            "done": [[int(r), int(c)] for r, c in zip(*np.nonzero(maps.done), strict=True)],
            "seconds": maps.seconds,
            "pca_fit_tiles": [list(rc) for rc in maps.fit_tiles],
        },
        "layers": layer_entries,
        "stats": "stats.csv",
        "regions": region_files,
        "viewer": "viewer/index.html" if viewer else None,
    }
    folder.write_json(SLIDE, manifest)
    return SlideResult(
        out=folder.target,
        exact=locality.exact,
        locality=locality.to_json(),
        tiles=tiles_total,
        tissue_tiles=int(maps.tissue.sum()),
        computed=maps.computed,
        resumed=maps.resumed,
        failed=maps.failed,
        seconds=maps.seconds,
        mpp=mpp,
        level=level,
        layers=layer_entries,
    )


def _write_regions(
    folder: OutputFolder, maps: SlideMaps, regions: list[Region], coverage: str
) -> dict[str, str]:
    import copy

    rows: list[dict[str, Any]] = []
    features = []
    for k, region in enumerate(regions):
        feature = copy.deepcopy(region.feature)
        props = feature.setdefault("properties", {}) or {}
        feature["properties"] = props
        measurements = dict(props.get("measurements") or {})
        for lm in maps.layers:
            acc = lm.regions[k]
            rows.extend(acc.rows(region.name, lm.layer.name, range(lm.layer.channels)))
            for row in acc.rows(region.name, lm.layer.name, lm.selected):
                for stat in ("mean", "std", "min", "max", "fraction_positive"):
                    measurements[f"{lm.layer.name} #{row['channel']} {stat}"] = row[stat]
            measurements[f"{lm.layer.name} cells"] = acc.cells
        props["measurements"] = measurements
        features.append(feature)
    folder.write_csv("regions.csv", rows)
    folder.write_json("regions.geojson", {"type": "FeatureCollection", "features": features})
    return {"csv": "regions.csv", "geojson": "regions.geojson", "coverage": coverage}
