"""The ``slide`` command end to end on synthetic slides written with tifffile.

Oracles: the stored maps against one whole-image forward of the same pixels; region statistics
against numpy on that full map with the polygon rasterised by matplotlib (not shapely); pixel
sizes and level counts against what was written; a resumed run against an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import featuremaps as fm
from featuremaps.cli import main
from featuremaps.commands.slide import slide_preprocessing
from featuremaps.slide.forward import TileForward, to_input
from featuremaps.slide.readers import open_slide, read_thumbnail
from featuremaps.slide.tissue import TissueMask, otsu_threshold
from slide_data import (
    tissue_picture,
    write_flat_tiff,
    write_page_pyramid,
    write_subifd_pyramid,
    write_svs,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class SmallNet(nn.Module):
    """A local CNN: stride 4 at ``stage2``, receptive field 19 px."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU())
        self.stage2 = nn.Sequential(
            nn.Conv2d(6, 5, 3, stride=2, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
            nn.Conv2d(5, 5, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage2(self.stage1(x))


def small_model() -> fm.LoadedModel:
    torch.manual_seed(0)
    model = SmallNet().eval()
    pre = fm.Preprocessing(mean=MEAN, std=STD, source="test")
    return fm.LoadedModel(model, "SmallNet", "factory", "as given", "test weights", False,
                          preprocessing=pre)  # fmt: skip


def full_map(model: nn.Module, picture: np.ndarray, layer: str) -> np.ndarray:
    x = to_input(picture, MEAN, STD)
    return TileForward(model, [layer], "m")(x)[layer].numpy()


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    return tissue_picture(300, 352)


def read_ome(path: Path) -> tuple[np.ndarray, int, str]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        return series.levels[0].asarray(), len(series.levels), tif.ome_metadata or ""


def test_stored_maps_equal_a_whole_image_forward(tmp_path: Path, picture: np.ndarray) -> None:
    slide = write_page_pyramid(tmp_path / "s.tif", picture, mpp=0.5, jpeg=False)
    loaded = small_model()
    result = fm.slide_maps(
        loaded, slide, layers="stage2", out=tmp_path / "out", tile=96, tissue="none",
        channels="all", viewer=False,
    )  # fmt: skip
    assert result.exact and result.computed == result.tiles == 16  # 4 x 4 tiles
    stored, levels, xml = read_ome(tmp_path / "out" / result.layers[0]["files"]["ome_tiff"])
    full = full_map(loaded.model, picture, "stage2")
    assert stored.shape == full.shape == (5, 75, 88)
    assert np.abs(stored - full).max() <= 1e-4 * np.abs(full).max()
    assert levels == 1  # 75 x 88 cells: no reduced level needed
    assert 'PhysicalSizeX="2.0"' in xml  # 0.5 µm/px x stride 4
    # map pixel 0 spans level pixels [O + 0.5 - S/2, ...) = [-1.5, 2.5): its corner at -0.75 µm
    assert 'PositionX="-0.75"' in xml and 'PositionY="-0.75"' in xml
    stats = (tmp_path / "out" / "stats.csv").read_text().splitlines()
    assert len(stats) == 1 + 5
    first = stats[1].split(",")
    assert first[:3] == ["stage2", "0", str(75 * 88)]
    assert float(first[3]) == pytest.approx(float(full[0].mean()), rel=1e-5)


@pytest.mark.slow
def test_background_tiles_are_skipped_and_left_empty(tmp_path: Path, picture: np.ndarray) -> None:
    slide = write_page_pyramid(tmp_path / "s.tif", picture, mpp=0.5)
    result = fm.slide_maps(
        small_model(), slide, layers="stage2", out=tmp_path / "out", tile=64, viewer=False
    )
    manifest = json.loads((tmp_path / "out" / "slide.json").read_text())
    assert 0 < result.tissue_tiles < result.tiles
    assert manifest["tissue"]["tiles"] == result.tissue_tiles == result.computed
    stored, _, _ = read_ome(tmp_path / "out" / result.layers[0]["files"]["ome_tiff"])
    # The top-right corner is glass: never computed, stored as NaN.
    assert np.isnan(stored[:, :8, -8:]).all()
    assert np.isfinite(stored[:, 20, 24]).all()  # inside the first blob


@pytest.mark.parametrize(
    ("kind", "levels", "mpp_source"),
    [
        ("page", 3, "TIFF resolution tags"),
        ("subifd", 3, "OME-XML PhysicalSizeX/Y"),
        ("svs", 2, "OpenSlide (aperio)"),
    ],
)
def test_readers_give_the_pixels_levels_and_mpp(
    tmp_path: Path, picture: np.ndarray, kind: str, levels: int, mpp_source: str
) -> None:
    writers = {
        "page": lambda p: write_page_pyramid(p / "a.tif", picture, mpp=0.5, jpeg=False),
        "subifd": lambda p: write_subifd_pyramid(p / "a.ome.tif", picture, mpp=0.5),
        "svs": lambda p: write_svs(p / "a.svs", picture, mpp=0.5),
    }
    reader = open_slide(writers[kind](tmp_path))
    try:
        assert len(reader.levels) == levels
        assert reader.mpp == pytest.approx((0.5, 0.5))
        assert reader.mpp_source == mpp_source
        window = reader.read(0, (37, 141), (50, 301))
        tolerance = 3 if kind == "svs" else 0  # JPEG tiles
        assert np.abs(window.astype(int) - picture[37:141, 50:301]).mean() <= tolerance
        assert (reader.levels[1].width, reader.levels[1].height) == (176, 150)
    finally:
        reader.close()


def test_jpeg_tiles_through_tifffile_and_openslide_agree(
    tmp_path: Path, picture: np.ndarray
) -> None:
    path = write_page_pyramid(tmp_path / "j.tif", picture, mpp=None, jpeg=True)
    a = open_slide(path, "tifffile")
    b = open_slide(path, "openslide")
    try:
        assert a.mpp is None and b.mpp is None
        wa, wb = a.read(1, (10, 120), (20, 170)), b.read(1, (10, 120), (20, 170))
        assert np.abs(wa.astype(int) - wb).max() <= 2
        assert np.abs(a.read(0, (0, 300), (0, 352)).astype(int) - picture).mean() < 1.5
    finally:
        a.close()
        b.close()


@pytest.mark.slow
def test_a_slide_without_mpp_needs_the_option(tmp_path: Path, picture: np.ndarray) -> None:
    slide = write_flat_tiff(tmp_path / "flat.tif", picture, mpp=None)
    with pytest.raises(fm.InputError, match=r"does not say its pixel size .* pass --mpp"):
        fm.slide_maps(small_model(), slide, layers="stage2", out=tmp_path / "out")
    result = fm.slide_maps(
        small_model(), slide, layers="stage2", out=tmp_path / "out", mpp=0.25, tile=128,
        viewer=False,
    )  # fmt: skip
    assert result.mpp == (0.25, 0.25)
    assert json.loads((tmp_path / "out" / "slide.json").read_text())["slide"]["mpp_source"] == (
        "given with --mpp (the slide has none)"
    )


@pytest.mark.slow
def test_plain_png_goes_through_the_same_tiled_path(tmp_path: Path, picture: np.ndarray) -> None:
    from PIL import Image

    path = tmp_path / "big.png"
    Image.fromarray(picture).save(path)
    loaded = small_model()
    result = fm.slide_maps(
        loaded, path, layers="stage2", out=tmp_path / "out", mpp=0.5, tile=96, tissue="none",
        viewer=False, channels="0,3",
    )  # fmt: skip
    stored, _, _ = read_ome(tmp_path / "out" / result.layers[0]["files"]["ome_tiff"])
    full = full_map(loaded.model, picture, "stage2")[[0, 3]]
    assert np.abs(stored - full).max() <= 1e-4 * np.abs(full).max()


@pytest.mark.slow
def test_mpp_picks_the_level_and_a_missing_level_is_named(
    tmp_path: Path, picture: np.ndarray
) -> None:
    slide = write_page_pyramid(tmp_path / "s.tif", picture, mpp=0.5, jpeg=False)
    result = fm.slide_maps(
        small_model(), slide, layers="stage2", out=tmp_path / "out", mpp=1.0, tile=64,
        tissue="none", viewer=False,
    )  # fmt: skip
    assert result.level == 1 and result.mpp == pytest.approx((1.0, 1.0))
    with pytest.raises(fm.OptionError, match=r"no level of 's.tif' has 0.7 µm per pixel"):
        fm.slide_maps(small_model(), slide, layers="stage2", out=tmp_path / "o2", mpp=0.7)


@pytest.mark.slow
def test_written_files_open_with_the_right_levels_and_mpp(tmp_path: Path) -> None:
    import openslide
    import tifffile

    picture = tissue_picture(1200, 1100)
    slide = write_page_pyramid(tmp_path / "s.tif", picture, mpp=0.25)
    result = fm.slide_maps(
        small_model(), slide, layers="stage1", out=tmp_path / "out", tile=512, tissue="none",
        viewer=False, draw=[1],
    )  # fmt: skip
    files = result.layers[0]["files"]
    cells = result.layers[0]["cells"]
    assert cells == [600, 550]  # stride 2: 600 x 550 cells -> levels 600, 300 (>256), 150
    cell_mpp = 0.25 * 2
    for name in (files["pca_tiff"], files["channel_tiffs"]["1"]["tiff"]):
        path = tmp_path / "out" / name
        with openslide.OpenSlide(str(path)) as slide_file:
            assert slide_file.level_count == 3
            assert slide_file.level_dimensions[0] == (550, 600)
            assert float(slide_file.properties["openslide.mpp-x"]) == pytest.approx(cell_mpp)
        with tifffile.TiffFile(path) as tif:
            assert len(tif.series[0].levels) == 3
    ome = tmp_path / "out" / files["ome_tiff"]
    with tifffile.TiffFile(ome) as tif:
        assert tif.series[0].axes == "CYX" and len(tif.series[0].levels) == 3
        assert tif.series[0].shape == (6, 600, 550)  # the first 8 channels of 6
        assert tif.pages[0].tags["XResolution"].value == (int(1e4 / cell_mpp), 1)
        assert f'PhysicalSizeX="{cell_mpp}"' in (tif.ome_metadata or "")
    with openslide.OpenSlide(str(ome)) as slide_file:
        # the measured matrix: OpenSlide reads level 0 of a SubIFD OME pyramid, with its mpp
        assert slide_file.level_count == 1
        assert float(slide_file.properties["openslide.mpp-x"]) == pytest.approx(cell_mpp)
    legend = tmp_path / "out" / files["channel_tiffs"]["1"]["legend"]
    assert legend.stat().st_size > 0


@pytest.mark.slow
def test_interrupted_run_resumes_without_recomputing(tmp_path: Path, picture: np.ndarray) -> None:
    slide = write_page_pyramid(tmp_path / "s.tif", picture, mpp=0.5, jpeg=False)
    kwargs = dict(layers="stage2", tile=64, tissue="none", viewer=False, channels="all")
    reference = fm.slide_maps(small_model(), slide, out=tmp_path / "ref", **kwargs)

    def stop(done: int, total: int) -> None:
        if done == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fm.slide_maps(small_model(), slide, out=tmp_path / "out", on_tile=stop, **kwargs)
    assert not (tmp_path / "out").exists()
    assert (tmp_path / ".out.work").is_dir()
    resumed = fm.slide_maps(small_model(), slide, out=tmp_path / "out", **kwargs)
    assert resumed.resumed == 7 and resumed.computed == reference.computed - 7
    assert not (tmp_path / ".out.work").exists()
    a, _, _ = read_ome(tmp_path / "ref" / reference.layers[0]["files"]["ome_tiff"])
    b, _, _ = read_ome(tmp_path / "out" / resumed.layers[0]["files"]["ome_tiff"])
    assert np.array_equal(a, b)
    assert (tmp_path / "ref" / "stats.csv").read_text() == (
        tmp_path / "out" / "stats.csv"
    ).read_text()


@pytest.mark.slow
def test_a_corrupt_tile_is_retried_named_and_skipped(tmp_path: Path, picture: np.ndarray) -> None:
    import tifffile

    slide = write_page_pyramid(tmp_path / "s.tif", picture, mpp=0.5, jpeg=True, tile=128)
    with tifffile.TiffFile(slide) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[4], page.databytecounts[4]  # tile row 1, col 1
    with open(slide, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\x00" * count)
    result = fm.slide_maps(
        small_model(), slide, layers="stage2", out=tmp_path / "out", tile=64, tissue="none",
        viewer=False,
    )  # fmt: skip
    assert result.failed and all("error" in f for f in result.failed)
    named = {(f["row"], f["col"]) for f in result.failed}
    # tile (1, 1) of 128 px holds pixels 128..255: the 64-px tiles reading it fail, no others
    assert (2, 2) in named and (0, 0) not in named
    assert result.computed + len(result.failed) == result.tiles
    manifest = json.loads((tmp_path / "out" / "slide.json").read_text())
    assert manifest["tiles"]["failed"] == result.failed


def test_region_statistics_equal_numpy_on_the_full_map(tmp_path: Path) -> None:
    from matplotlib.path import Path as Polygon

    picture = tissue_picture(300, 352)
    slide = write_page_pyramid(tmp_path / "s.tif", picture, mpp=0.5, jpeg=False)
    loaded = small_model()
    triangle = [[30.5, 20.0], [300.0, 60.0], [120.0, 280.0], [30.5, 20.0]]
    square = [[200.0, 150.0], [260.0, 150.0], [260.0, 210.0], [200.0, 210.0], [200.0, 150.0]]
    features = [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [triangle]},
         "properties": {"objectType": "annotation", "name": "tumour"}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]},
         "properties": {"classification": {"name": "stroma"}}},
    ]  # fmt: skip
    regions = tmp_path / "regions.geojson"
    regions.write_text(json.dumps(features))  # a bare list, as QuPath can export
    result = fm.slide_maps(
        loaded, slide, layers="stage2", out=tmp_path / "out", tile=64, tissue="none",
        regions=regions, level=1, viewer=False,
    )  # fmt: skip
    full = full_map(loaded.model, _level1(picture), "stage2")
    stride, d = 4, 2.0
    rows = (np.arange(full.shape[1]) * stride + 0.5) * d
    cols = (np.arange(full.shape[2]) * stride + 0.5) * d
    gx, gy = np.meshgrid(cols, rows)
    table = _read_csv(tmp_path / "out" / "regions.csv")
    for name, polygon in (("tumour", triangle), ("stroma", square)):
        inside = Polygon(polygon).contains_points(np.c_[gx.ravel(), gy.ravel()]).reshape(gx.shape)
        values = full[:, inside]
        assert values.shape[1] > 10
        for c in range(full.shape[0]):
            row = table[(name, "stage2", c)]
            assert int(row["cells"]) == values.shape[1]
            assert float(row["mean"]) == pytest.approx(values[c].mean(), rel=1e-5, abs=1e-6)
            assert float(row["std"]) == pytest.approx(values[c].std(), rel=1e-4, abs=1e-6)
            assert float(row["min"]) == pytest.approx(values[c].min(), abs=1e-6)
            assert float(row["max"]) == pytest.approx(values[c].max(), abs=1e-6)
            assert float(row["fraction_positive"]) == pytest.approx((values[c] > 0).mean())
    geo = json.loads((tmp_path / "out" / "regions.geojson").read_text())
    measured = geo["features"][0]["properties"]["measurements"]
    assert measured["stage2 #0 mean"] == pytest.approx(
        float(table[("tumour", "stage2", 0)]["mean"])
    )
    assert geo["features"][1]["properties"]["classification"] == {"name": "stroma"}
    assert result.layers[0]["first_cell_centre_level0"] == [1.0, 1.0]


def test_region_fractions_stay_in_0_1_and_are_written_with_few_digits(tmp_path: Path) -> None:
    from featuremaps.io import OutputFolder
    from featuremaps.slide.regions import RegionStats

    # Covered fractions of cells, in four batches, all positive: the sums of the weights round
    # differently in the fraction's numerator and denominator (1.0000000000000002 unclipped).
    batches = [[0.5, 1.0, 0.7, 0.5, 0.5, 0.5, 0.7, 0.2], [0.5, 0.7, 0.9],
               [0.2, 0.4, 0.3, 0.1, 0.6, 0.6], [0.6, 0.4, 0.9, 0.5, 0.3]]  # fmt: skip
    stats = RegionStats(1)
    for weights in batches:
        stats.update(np.ones((1, len(weights))), np.array(weights))
    [row] = stats.rows("r", "l", [0])
    assert row["fraction_positive"] == 1.0 and row["weight"] == 11.6
    with OutputFolder(tmp_path / "out") as folder:
        folder.write_csv("regions.csv", [row])
    written = (tmp_path / "out" / "regions.csv").read_text().splitlines()[1].split(",")
    assert written[4] == "11.6" and written[-1] == "1.0"  # weight, fraction_positive


@pytest.mark.slow
def test_area_coverage_weights_cells_by_the_covered_fraction(tmp_path: Path) -> None:
    picture = tissue_picture(128, 128)
    slide = write_page_pyramid(tmp_path / "s.tif", picture, mpp=0.5, jpeg=False, tile=64)
    loaded = small_model()
    # A rectangle cutting cells: cell boxes are [4j - 1.5, 4j + 2.5) (centre 4j + 0.5, S = 4)
    x0, x1, y0, y1 = 21.0, 47.0, 9.0, 30.0
    box = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    regions = tmp_path / "r.geojson"
    regions.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [box]},
         "properties": {"name": "cut"}}]}))  # fmt: skip
    fm.slide_maps(
        loaded, slide, layers="stage2", out=tmp_path / "out", tile=64, tissue="none",
        regions=regions, coverage="area", viewer=False,
    )  # fmt: skip
    full = full_map(loaded.model, picture, "stage2")
    lo = np.arange(full.shape[1]) * 4 - 1.5

    def overlap(a0: float, a1: float) -> np.ndarray:
        return np.clip(np.minimum(lo + 4, a1) - np.maximum(lo, a0), 0, None) / 4

    weights = np.outer(overlap(y0, y1), overlap(x0, x1)[: full.shape[2]])
    table = _read_csv(tmp_path / "out" / "regions.csv")
    for c in range(full.shape[0]):
        mean = (full[c] * weights).sum() / weights.sum()
        row = table[("cut", "stage2", c)]
        assert float(row["weight"]) == pytest.approx(weights.sum())
        assert int(row["cells"]) == int((weights > 0).sum())
        assert float(row["mean"]) == pytest.approx(mean, rel=1e-6)
        var = (weights * (full[c] - mean) ** 2).sum() / weights.sum()
        assert float(row["std"]) == pytest.approx(math.sqrt(var), rel=1e-5)


def test_area_coverage_refuses_large_regions(tmp_path: Path, picture: np.ndarray) -> None:
    slide = write_page_pyramid(tmp_path / "s.tif", picture, mpp=0.5, jpeg=False)
    big = [[0, 0], [4000, 0], [4000, 4000], [0, 4000], [0, 0]]
    regions = tmp_path / "r.geojson"
    feature = {"type": "Feature", "properties": {"name": "all"},
               "geometry": {"type": "Polygon", "coordinates": [big]}}  # fmt: skip
    regions.write_text(json.dumps([feature]))
    with pytest.raises(fm.OptionError, match=r"region 'all' spans about .* cells, too many"):
        fm.slide_maps(
            small_model(), slide, layers="stage2", out=tmp_path / "o", regions=regions,
            coverage="area",
        )  # fmt: skip


def test_regions_without_area_are_refused(tmp_path: Path, picture: np.ndarray) -> None:
    slide = write_page_pyramid(tmp_path / "s.tif", picture, mpp=0.5, jpeg=False)
    regions = tmp_path / "r.geojson"
    regions.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "dot"},
         "geometry": {"type": "Point", "coordinates": [5, 5]}}]}))  # fmt: skip
    with pytest.raises(fm.InputError, match=r"region\(s\) 'dot' .* have no area"):
        fm.slide_maps(small_model(), slide, layers="stage2", out=tmp_path / "o", regions=regions)


def test_points_and_lines_among_polygons_are_skipped_with_a_count(tmp_path: Path) -> None:
    from featuremaps.slide.regions import read_regions

    square = [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0], [0.0, 0.0]]
    regions = tmp_path / "r.geojson"
    regions.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "dot"},
         "geometry": {"type": "Point", "coordinates": [5, 5]}},
        {"type": "Feature", "properties": {"name": "tumour"},
         "geometry": {"type": "Polygon", "coordinates": [square]}},
        {"type": "Feature", "properties": {"name": "edge"},
         "geometry": {"type": "LineString", "coordinates": [[0, 0], [3, 4]]}}]}))  # fmt: skip
    with pytest.warns(
        fm.FeaturemapsWarning,
        match=r"^2 of 3 features in '.*r\.geojson' have no area \(points or lines\) and were "
        r"skipped: 'dot', 'edge'; statistics are for the 1 polygon\(s\)$",
    ):
        found = read_regions(regions)
    assert [r.name for r in found] == ["tumour"]
    assert found[0].geometry.area == pytest.approx(100.0)


def test_golden_slide_legend() -> None:
    from featuremaps.render.scaling import ValueRange
    from featuremaps.slide.writers import legend_pixels
    from goldtest import assert_matches_golden

    pixels = legend_pixels(
        "layer2 · channel #5 · 5000x5000 cells of 2 µm",
        "whole slide, exact stitching; first cell centred at (0, 0) px",
        ValueRange(-1.5, 1.5, True),
        "RdBu_r",
    )
    assert_matches_golden("slide_legend_signed", pixels)


def _level1(picture: np.ndarray) -> np.ndarray:
    from slide_data import _halve

    return _halve(picture)


def _read_csv(path: Path) -> dict[tuple[str, str, int], dict[str, str]]:
    import csv

    with path.open() as handle:
        return {(r["region"], r["layer"], int(r["channel"])): r for r in csv.DictReader(handle)}


def test_otsu_threshold_matches_scikit_image() -> None:
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(40, 10, 5000), rng.normal(170, 25, 3000)])
    values = values.clip(0, 255).astype(np.uint8)
    # scikit-image's threshold t splits values <= t from > t, as ours does
    assert otsu_threshold(values) == int(threshold_otsu(values))


def test_tissue_mask_finds_the_blobs(tmp_path: Path) -> None:
    picture = tissue_picture(600, 704)
    reader = open_slide(write_page_pyramid(tmp_path / "s.tif", picture, mpp=0.5))
    try:
        thumbnail, factor = read_thumbnail(reader, 0, 200)
    finally:
        reader.close()
    assert factor == 4 and thumbnail.shape == (150, 176, 3)
    mask = TissueMask.from_thumbnail(thumbnail, factor)
    assert mask.covers((170, 190), (200, 220))  # the centre of the first blob
    assert not mask.covers((0, 40), (600, 704 - 1)) or not mask.covers((0, 40), (660, 700))
    assert 0.1 < mask.fraction() < 0.5


def _two_conv_factory(folder: Path) -> Path:
    """A ``path/file.py`` model factory: two stride-2 convolutions (layer ``2`` has stride 4)."""
    factory = folder / "net.py"
    factory.write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),\n"
        "                         nn.Conv2d(4, 4, 3, stride=2, padding=1))\n"
    )
    return factory


def test_cli_slide_runs_and_reports(
    tmp_path: Path, picture: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    factory = _two_conv_factory(tmp_path)
    slide = write_page_pyramid(tmp_path / "s.tif", picture, mpp=0.5)
    code = main(["slide", str(slide), "--model", f"{factory}:build", "--layers", "2",
                 "--tile", "128", "--out", str(tmp_path / "out"), "--channels", "all",
                 "--no-viewer"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "exact stitching" in out and "tiles with tissue" in out
    assert (tmp_path / "out" / "slide.json").exists()
    code = main(["slide", str(slide), "--model", f"{factory}:build", "--layers", "9",
                 "--out", str(tmp_path / "o2")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("featuremaps: error:") and err.count("\n") == 1
    code = main(["slide", str(slide), "--model", f"{factory}:build", "--layers", "2",
                 "--size", "224", "--out", str(tmp_path / "o3")])  # fmt: skip
    assert code == 2 and "does not apply to slides" in capsys.readouterr().err


def test_slide_prints_and_records_the_normalisation_its_tiles_get(
    tmp_path: Path, picture: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    factory = _two_conv_factory(tmp_path)
    slide = write_page_pyramid(tmp_path / "s.tif", picture, mpp=0.5)
    code = main(["slide", str(slide), "--model", f"{factory}:build", "--layers", "2",
                 "--tile", "128", "--out", str(tmp_path / "out"), "--no-viewer",
                 "--normalize", "0.5,0.5,0.5/0.25,0.25,0.25"])  # fmt: skip
    assert code == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (
        "preprocessing: normalise mean (0.5, 0.5, 0.5) std (0.25, 0.25, 0.25) (--normalize "
        "0.5,0.5,0.5/0.25,0.25,0.25); change the normalisation with --normalize"
    )
    recorded = json.loads((tmp_path / "out" / "slide.json").read_text())["preprocessing"]
    assert recorded["mean"] == [0.5] * 3 and recorded["std"] == [0.25] * 3
    assert recorded["resize"] is None and recorded["crop"] is None
    # A model's resize and crop are left out, and the record says so.
    own = fm.Preprocessing(resize=256, crop=224, source="its own")
    model = fm.LoadedModel(nn.Conv2d(3, 2, 3), "m", "factory", "-", "-", False, preprocessing=own)
    applied = slide_preprocessing(model)
    assert applied.steps() == [] and applied.source == (
        "its own; its resize and crop not applied: a slide is read as it is"
    )


# -- device and precision ----------------------------------------------------------------------

FLOAT32_ON_CPU = {"device": "cpu", "requested": "cpu", "dtype": "float32", "autocast": False}


def _stored_maps(out: Path, result: fm.SlideResult) -> np.ndarray:
    stored, _, _ = read_ome(out / result.layers[0]["files"]["ome_tiff"])
    return stored


def test_slide_on_the_cpu_stores_the_same_maps_and_says_where(
    tmp_path: Path, picture: np.ndarray
) -> None:
    slide = write_page_pyramid(tmp_path / "s.tif", picture, mpp=0.5, jpeg=False)
    kwargs = dict(layers="stage2", tile=96, tissue="none", channels="all", viewer=False)
    default = fm.slide_maps(small_model(), slide, out=tmp_path / "a", **kwargs)
    on_cpu = fm.slide_maps(small_model(), slide, out=tmp_path / "b", device="cpu", **kwargs)
    a, b = _stored_maps(tmp_path / "a", default), _stored_maps(tmp_path / "b", on_cpu)
    assert np.array_equal(a, b)
    for name, requested in (("a", "the model's own"), ("b", "cpu")):
        manifest = json.loads((tmp_path / name / "slide.json").read_text())
        assert manifest["compute"] == {**FLOAT32_ON_CPU, "requested": requested}


def test_bfloat16_slide_is_close_to_a_float32_forward_and_says_so(
    tmp_path: Path, picture: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    import featuremaps.commands.slide_outputs as slide_outputs
    from featuremaps.render.scaling import ValueRange

    titles: list[str] = []
    legend = slide_outputs._legend_png

    def spy(
        title: str,
        note: str,
        value_range: ValueRange,
        cmap: str,
        stamp: str | None = None,
        *,
        range_note: str | None = None,
    ) -> bytes:
        titles.append(title)
        return legend(title, note, value_range, cmap, stamp, range_note=range_note)

    monkeypatch.setattr(slide_outputs, "_legend_png", spy)
    slide = write_page_pyramid(tmp_path / "s.tif", picture, mpp=0.5, jpeg=False)
    loaded = small_model()
    full = full_map(loaded.model, picture, "stage2")  # the oracle: float32, whole image
    result = fm.slide_maps(
        loaded, slide, layers="stage2", out=tmp_path / "out", tile=96, tissue="none",
        channels="all", viewer=False, device="cpu", dtype="bfloat16",
    )  # fmt: skip
    manifest = json.loads((tmp_path / "out" / "slide.json").read_text())
    assert manifest["compute"] == {**FLOAT32_ON_CPU, "dtype": "bfloat16", "autocast": True}
    # Locality is measured in float32 before the run: a rounding does not make it approximate.
    assert result.exact and manifest["stitching"]["mode"] == "exact"
    stored = _stored_maps(tmp_path / "out", result)
    assert stored.dtype == np.float32 and stored.shape == full.shape
    error = np.abs(stored - full).max() / np.abs(full).max()
    # bfloat16 rounding (8 bits of mantissa), well above float32's (stitched float32 maps agree
    # to 1e-4 of the maximum, in fact about 2e-7 here): autocast did run.
    assert 1e-4 < error <= 5e-2
    assert titles and all(t.endswith(" · bfloat16 autocast") for t in titles)


@pytest.mark.slow
def test_a_float32_work_folder_is_not_resumed_in_bfloat16(
    tmp_path: Path, picture: np.ndarray
) -> None:
    slide = write_page_pyramid(tmp_path / "s.tif", picture, mpp=0.5, jpeg=False)
    kwargs = dict(layers="stage2", tile=64, tissue="none", viewer=False, channels="all")

    def stop(done: int, total: int) -> None:
        if done == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fm.slide_maps(small_model(), slide, out=tmp_path / "out", on_tile=stop, **kwargs)
    assert (tmp_path / ".out.work").is_dir()
    low = fm.slide_maps(small_model(), slide, out=tmp_path / "out", dtype="bfloat16", **kwargs)
    assert low.resumed == 0 and low.computed == low.tiles
    manifest = json.loads((tmp_path / "out" / "slide.json").read_text())
    assert manifest["tiles"]["resumed"] == 0 and manifest["compute"]["dtype"] == "bfloat16"


def test_cli_slide_device_and_dtype(
    tmp_path: Path,
    picture: np.ndarray,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    factory = _two_conv_factory(tmp_path)
    slide = write_page_pyramid(tmp_path / "s.tif", picture, mpp=0.5)
    command = ["slide", str(slide), "--model", f"{factory}:build", "--layers", "2", "--tile",
               "128", "--channels", "all", "--no-viewer"]  # fmt: skip
    assert main([*command, "--out", str(tmp_path / "out"), "--device", "cpu", "--dtype",
                 "bfloat16"]) == 0  # fmt: skip
    manifest = json.loads((tmp_path / "out" / "slide.json").read_text())
    assert manifest["compute"] == {**FLOAT32_ON_CPU, "dtype": "bfloat16", "autocast": True}
    capsys.readouterr()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([*command, "--out", str(tmp_path / "o2"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("featuremaps: error: --device cuda asked for")
    assert not (tmp_path / "o2").exists() and not (tmp_path / ".o2.work").exists()


@pytest.mark.gpu
def test_gpu_slide_matches_the_cpu_slide(
    tmp_path: Path, picture: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    # TF32 convolutions (on by default on Ampere and later) round their inputs to 10 bits of
    # mantissa; off, a CUDA float32 run must agree with the CPU's to float32 rounding.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    slide = write_page_pyramid(tmp_path / "s.tif", picture, mpp=0.5, jpeg=False)
    kwargs = dict(layers="stage2", tile=96, tissue="none", channels="all", viewer=False)
    cpu = fm.slide_maps(small_model(), slide, out=tmp_path / "c", device="cpu", **kwargs)
    loaded = small_model()
    gpu = fm.slide_maps(loaded, slide, out=tmp_path / "g", device="cuda", **kwargs)
    assert next(loaded.model.parameters()).is_cuda  # moved, as asked
    manifest = json.loads((tmp_path / "g" / "slide.json").read_text())
    assert manifest["compute"]["device"].startswith("cuda") and gpu.exact
    a, b = _stored_maps(tmp_path / "c", cpu), _stored_maps(tmp_path / "g", gpu)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
