"""The seams of the restructure: the one picture encoder, the optional Parquet extra and the one
nearest-cell rule.

Guards that ``encode`` gives the bytes the pictures gave before and decodes to their exact
pixels; that without pyarrow ``parquet=True`` fails before writing anything, ``parquet=None``
writes the CSV only and says so, and reading a Parquet file names the extra; and that the cell
rule shared by the geometry and the overlay is "nearest centre, ties to the later cell, clamped",
checked against a brute force in exact arithmetic.
"""

from __future__ import annotations

import io
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch import nn

import featuremaps as fm
from featuremaps import cells
from featuremaps.geometry import AxisGeometry, MapGeometry
from featuremaps.render import overlay
from featuremaps.render.encode import ENCODERS, encode
from featuremaps.render.overlay import _axis_cells


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


# --- encoder -----------------------------------------------------------------------------------


def test_encode_gives_the_grid_png_and_its_exact_pixels() -> None:
    maps = np.random.default_rng(0).standard_normal((5, 6, 7)).astype(np.float32)
    grid = fm.make_grid(maps)
    data = encode(grid)
    assert data == grid.to_png() == encode(grid, "png")
    assert np.array_equal(_decode(data), grid.pixels)


def test_encode_gives_the_overlay_exact_pixels() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    picture = overlay(image, rng.standard_normal((3, 4)), None, alpha=0.7)
    data = encode(picture)
    assert data == picture.to_png()
    decoded = _decode(data)
    assert decoded.shape == (12, 16, 3)
    assert np.array_equal(decoded, picture.pixels)
    assert not np.array_equal(decoded, image)  # the map was blended in


def test_an_unknown_picture_format_is_refused() -> None:
    grid = fm.make_grid(np.zeros((1, 2, 2), dtype=np.float32))
    assert set(ENCODERS) == {"png"}
    with pytest.raises(fm.OptionError, match=r"unknown picture format 'tiff'; expected one of png"):
        encode(grid, "tiff")


# --- the parquet extra -------------------------------------------------------------------------


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for i in range(3):
        pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    return folder


def _stats(images: Path, out: Path, parquet: bool | None) -> dict[str, object]:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    return fm.collect_stats(
        model, [str(images)], out=out, parquet=parquet, workers=0, plots=False,
        preprocessing=fm.Preprocessing(resize=(16, 16), source="test"),
    )  # fmt: skip


@pytest.fixture
def no_pyarrow(monkeypatch: pytest.MonkeyPatch) -> None:
    # stats.py and dataset.py import the function by name: patch every place it is looked up.
    for where in ("featuremaps.io", "featuremaps.commands.stats", "featuremaps.dataset"):
        monkeypatch.setattr(f"{where}.parquet_available", lambda: False)


@pytest.mark.usefixtures("no_pyarrow")
def test_parquet_required_without_pyarrow_fails_before_writing(
    images: Path, tmp_path: Path
) -> None:
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(fm.OptionError, match=r"featuremaps\[parquet\]"):
        _stats(images, tmp_path / "out", parquet=True)
    assert not (tmp_path / "out").exists()
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.usefixtures("no_pyarrow")
def test_parquet_by_default_without_pyarrow_writes_the_csv_only(
    images: Path, tmp_path: Path
) -> None:
    summary = _stats(images, tmp_path / "out", parquet=None)
    assert summary["files"] == ["stats.csv"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["stats.csv", "summary.json"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["files"] == ["stats.csv"]
    saved = fm.read_stats(tmp_path / "out" / "stats.csv")
    assert set(saved.layers) == {"0", "1"} and len(saved.layers["1"]["mean"]) == 4


def test_parquet_by_default_with_pyarrow_writes_both_the_same(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    summary = _stats(images, out, parquet=None)
    assert summary["files"] == ["stats.csv", "stats.parquet"]
    assert json.loads((out / "summary.json").read_text())["files"] == summary["files"]
    csv, parquet = fm.read_stats(out / "stats.csv"), fm.read_stats(out / "stats.parquet")
    assert set(csv.layers) == set(parquet.layers) == {"0", "1"}
    for layer, stats in csv.layers.items():
        assert set(stats) == set(parquet.layers[layer])
        for name, values in stats.items():
            np.testing.assert_array_equal(values, parquet.layers[layer][name], err_msg=name)
    assert np.all(csv.layers["1"]["min"] >= 0)  # after the ReLU

    # The same file without pyarrow: the error names the extra, the CSV still reads.
    for where in ("featuremaps.io", "featuremaps.commands.stats", "featuremaps.dataset"):
        monkeypatch.setattr(f"{where}.parquet_available", lambda: False)
    with pytest.raises(fm.InputError, match=r"featuremaps\[parquet\]"):
        fm.read_stats(out / "stats.parquet")
    assert set(fm.read_stats(out / "stats.csv").layers) == {"0", "1"}


def test_parquet_false_skips_it_even_with_pyarrow(images: Path, tmp_path: Path) -> None:
    summary = _stats(images, tmp_path / "out", parquet=False)
    assert summary["files"] == ["stats.csv"]
    assert not (tmp_path / "out" / "stats.parquet").exists()


# --- the nearest-cell rule ---------------------------------------------------------------------


def _brute_nearest(
    p: Fraction, stride: Fraction, offset: Fraction, count: int, first: int = 0
) -> int:
    """The cell (``first`` to ``first + count - 1``) with the nearest centre, ties to the later
    one, in exact arithmetic."""
    candidates = range(first, first + count)
    distance = {j: abs(offset + j * stride - p) for j in candidates}
    best = min(distance.values())
    return max(j for j in candidates if distance[j] == best)


def _cases(n: int, seed: int) -> list[tuple[Fraction, Fraction, Fraction, int]]:
    # Multiples of 1/8 and 1/16: every float below is exact, so ties really are ties.
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        stride = Fraction(int(rng.integers(2, 65)), 8)
        offset = Fraction(int(rng.integers(-64, 65)), 8)
        count = int(rng.integers(1, 13))
        if rng.random() < 0.3:  # exactly halfway between two centres (or past the ends)
            p = offset + (int(rng.integers(-2, count + 2)) + Fraction(1, 2)) * stride
        else:
            p = Fraction(int(rng.integers(-320, 1600)), 16)
        out.append((p, stride, offset, count))
    return out


def test_nearest_cell_matches_the_brute_force() -> None:
    ties = 0
    for p, stride, offset, count in _cases(3000, seed=11):
        expected = _brute_nearest(p, stride, offset, count)
        got = cells.nearest_cell(float(p), float(stride), float(offset), count)
        assert got == expected, (p, stride, offset, count)
        distance = [abs(offset + j * stride - p) for j in range(count)]
        ties += distance.count(min(distance)) > 1
    assert ties > 100  # the sample really exercises the tie rule


@pytest.mark.parametrize(
    ("stride", "offset", "count"), [(1.0, 0.0, 4), (3.0, 1.0, 5), (0.5, -0.25, 9), (8.0, 3.5, 7)]
)
def test_a_pixel_exactly_halfway_goes_to_the_later_cell(
    stride: float, offset: float, count: int
) -> None:
    for j in range(count - 1):
        halfway = offset + (j + 0.5) * stride
        assert cells.nearest_cell(halfway, stride, offset, count) == j + 1
        # Just below halfway (by more than the rounding tolerance): the earlier cell.
        assert cells.nearest_cell(halfway - stride / 1024, stride, offset, count) == j
    assert cells.nearest_cell(offset - 100 * stride, stride, offset, count) == 0
    assert cells.nearest_cell(offset + 100 * stride, stride, offset, count) == count - 1


def test_map_geometry_nearest_cell_uses_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = _cases(400, seed=12)
    for (py, sy, oy, h), (px, sx, ox, w) in zip(cases[::2], cases[1::2], strict=True):
        geometry = MapGeometry(
            "g", AxisGeometry(float(sy), float(oy), 3.0), AxisGeometry(float(sx), float(ox), 3.0),
            (h, w), "analytic",
        )  # fmt: skip
        assert geometry.nearest_cell(float(py), float(px)) == (
            _brute_nearest(py, sy, oy, h), _brute_nearest(px, sx, ox, w)
        )  # fmt: skip

    calls: list[tuple[float, float, float, int]] = []

    def spy(coordinate: float, stride: float, offset: float, count: int) -> int:
        calls.append((coordinate, stride, offset, count))
        return cells.nearest_cell(coordinate, stride, offset, count)

    monkeypatch.setattr("featuremaps.geometry.nearest_cell", spy)
    g = MapGeometry("g", AxisGeometry(4.0, 1.5, 9.0), AxisGeometry(2.0, 0.5, 5.0), (3, 6), "x")
    assert g.nearest_cell(3.5, 1.5) == (1, 1)  # both halfway: the later cell on each axis
    assert calls == [(3.5, 4.0, 1.5, 3), (1.5, 2.0, 0.5, 6)]


def test_the_overlay_paints_each_pixel_with_the_same_cell() -> None:
    for _, stride, offset, count in _cases(150, seed=13):
        pixels = 40
        got = _axis_cells(float(stride), float(offset), pixels, count)
        for p in range(pixels):
            # The unclamped nearest cell (among those around the pixel), then none off the map.
            near = int((p - offset) / stride)
            wide = _brute_nearest(Fraction(p), stride, offset, 7, first=near - 3)
            assert got[p] == (wide if 0 <= wide < count else -1), (p, stride, offset, count)
