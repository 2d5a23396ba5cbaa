"""The ``slide`` command's writing stage: stitched maps in, the files a slide run leaves out.

The end of the slide flow (stitching to disk -> pyramids -> OME-TIFF, RGB TIFFs and legends,
Deep Zoom viewer, statistics, regions -> manifest ``slide.json`` -> io): :func:`write_outputs`
takes the maps :mod:`featuremaps.slide.stitching` computed and writes them through the encoders
of :mod:`featuremaps.slide.writers`; :mod:`featuremaps.commands.slide` runs the stages before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featuremaps.devices import Placement
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
from featuremaps.render.scaling import (
    NO_FINITE_TEXT,
    ValueRange,
    centred,
    constant_text,
    is_constant_range,
    normalize,
)
from featuremaps.slide.forward import Locality
from featuremaps.slide.plan import TilePlan
from featuremaps.slide.pyramid import PyramidLevel, build_pyramid
from featuremaps.slide.readers import SlideReader
from featuremaps.slide.regions import Region
from featuremaps.slide.stitching import LayerMaps, SlideMaps
from featuremaps.slide.tissue import TissueMask

__all__ = ["PCA_SPREAD", "VIEWER_MAX_SIDE", "SlideResult", "write_outputs"]

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
    engine: dict[str, Any] | None = None  # the summary of another engine's run, when one ran

    @property
    def tiles_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def _channel_range(maps: LayerMaps, channel: int, dtype: str) -> tuple[ValueRange, str, str | None]:
    """A channel's colour range over the whole slide, its colormap and what the legend says of
    the range: :data:`NO_FINITE_TEXT` (none), constant for ``dtype`` (one colour), or None."""
    stats = maps.stats.result()
    lo, hi = float(stats["min"][channel]), float(stats["max"][channel])
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return ValueRange(0.0, 1.0, False), DEFAULT_CMAP, NO_FINITE_TEXT
    note = constant_text(dtype) if is_constant_range(lo, hi, dtype) else None
    if lo < 0:
        return centred(ValueRange(lo, hi, False)), DEFAULT_DIVERGING_CMAP, note
    return ValueRange(lo, hi, False), DEFAULT_CMAP, note


def _colour_channel(
    index: int, value_range: ValueRange, cmap: str, dtype: str
) -> Callable[[np.ndarray], np.ndarray]:
    lut = colormap_lut(cmap)

    def colour(block: np.ndarray) -> np.ndarray:
        values = block[:, :, index]
        t = normalize(values, value_range, dtype=dtype)
        rgb = colorize(t, lut, nan_color=(255, 255, 255))
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


def _legend_png(
    title: str,
    note: str,
    value_range: ValueRange,
    cmap: str,
    stamp: str | None = None,
    *,
    range_note: str | None = None,
) -> bytes:
    from featuremaps.render.encode import encode_png
    from featuremaps.slide.writers import legend_pixels

    return encode_png(legend_pixels(title, note, value_range, cmap, stamp, range_note=range_note))


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
    mark: str | None,
) -> dict[str, Any]:
    from featuremaps.render.encode import encode_tile
    from featuremaps.slide.writers import DZI_TILE, deep_zoom_tiles, dzi_xml

    h, w, _ = levels[0].shape
    ext = "png" if fmt == "png" else "jpeg"
    for dz, col, row, pixels in deep_zoom_tiles(levels, colour):
        folder.write_bytes(f"viewer/{name}_files/{dz}/{col}_{row}.{ext}", encode_tile(pixels, fmt))
    folder.write_bytes(f"viewer/{name}.dzi", dzi_xml(w, h, ext, mark).encode())
    return {"url": f"{name}_files/", "format": ext, "tile": DZI_TILE, "width": w, "height": h}


def _stored(
    maps: SlideMaps, lm: LayerMaps, kind: str
) -> Callable[[tuple[int, int], tuple[int, int]], np.ndarray]:
    def read(rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        return maps.read(lm, kind, rows, cols)

    return read


def write_outputs(
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
    preprocessing: Preprocessing,
) -> SlideResult:
    """Write the maps of every layer (OME-TIFF, PCA and channel RGB TIFFs with legends, and
    with ``viewer`` their Deep Zoom tiles), ``stats.csv``, the regions' statistics, the viewer
    page over the slide and the manifest ``slide.json``; return what the run did."""
    from featuremaps.slide.writers import ome_xml_extra, write_ome_tiff, write_rgb_tiff

    downsample = maps.downsample
    stamp, mark = loaded.stamp, loaded.mark
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
            f"featuremaps {lm.layer.name} ({mode}); {placement_text}", mark,
        )  # fmt: skip
        pca_base = PyramidLevel((rows, cols, 3), 1, _stored(maps, lm, "pca"))
        pca_levels = build_pyramid(pca_base, work, f"layer{i}.pca")
        pca_colour, pca_ranges = _colour_pca(lm)
        pca_file = f"maps/{stem}.pca.tif"
        write_rgb_tiff(
            folder.path(pca_file), pca_levels, pca_colour, cell_mpp,
            f"featuremaps {lm.layer.name} PCA-3 (global basis) as RGB ({mode}); {placement_text}",
            mark,
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
            image = _write_deep_zoom(folder, f"{stem}.pca", pca_levels, pca_colour, "png", mark)
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
            # Judged in float32, the maps' stored dtype: an autocast layer's coarser values may
            # be drawn where they are noise, but no real spread is ever called constant.
            value_range, cmap, range_note = _channel_range(lm, channel, "float32")
            colour = _colour_channel(index, value_range, cmap, "float32")
            name = f"maps/{stem}.c{channel}.tif"
            write_rgb_tiff(
                folder.path(name), levels, colour, cell_mpp,
                f"featuremaps {lm.layer.name} channel {channel}, {cmap} over "
                f"[{value_range.vmin:.6g}, {value_range.vmax:.6g}] ({mode}); {placement_text}",
                mark,
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
                    stamp,
                    range_note=range_note,
                ),
            )
            files["channel_tiffs"][str(channel)] = {"tiff": name, "legend": legend, "cmap": cmap}
            if viewer:
                image = _write_deep_zoom(folder, f"{stem}.c{channel}", levels, colour, "png", mark)
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
    region_files = (
        _write_regions(folder, maps, regions, coverage, loaded.describe()) if regions else None
    )
    if viewer:
        factor = max(1, min(p.stride[1] for p in plan.layers) // 2)
        lv = reader.levels[level]
        factor = max(factor, math.ceil(max(lv.width, lv.height) / VIEWER_MAX_SIDE))
        bg_levels = _background_levels(reader, level, factor, work)

        def bg_colour(block: np.ndarray) -> np.ndarray:
            pixels: np.ndarray = np.rint(np.nan_to_num(block, nan=255.0)).clip(0, 255)
            return pixels.astype(np.uint8)

        slide_image = _write_deep_zoom(folder, "slide", bg_levels, bg_colour, "jpeg", mark)
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
        "preprocessing": preprocessing.describe(),
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
    if maps.engine is not None:
        manifest["engine"] = maps.engine.describe()
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
        engine=None if maps.engine is None else maps.engine.describe(),
    )


def _write_regions(
    folder: OutputFolder,
    maps: SlideMaps,
    regions: list[Region],
    coverage: str,
    model: dict[str, object],
) -> dict[str, str]:
    """``regions.csv`` and ``regions.geojson`` (the regions with their measurements; the
    collection's foreign member ``featuremaps`` says which model made them, random weights
    included, where QuPath ignores it)."""
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
    collection = {"type": "FeatureCollection", "features": features, "featuremaps": header(model)}
    folder.write_json("regions.geojson", collection)
    return {"csv": "regions.csv", "geojson": "regions.geojson", "coverage": coverage}
