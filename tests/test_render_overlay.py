"""Overlays of one channel on the input, placed by receptive-field geometry.

Oracles: an impulse through a strided, padded, dilated model must light cells drawn over the lit
pixel; placement matches ``MapGeometry.cell_center`` by brute force; colours are the project's
colormap lookup of the project's normalisation; blending follows its formula.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from featuremaps import InputError, OptionError
from featuremaps.geometry import AxisGeometry, MapGeometry, compute_geometry
from featuremaps.render import (
    NAN_COLOR,
    Overlay,
    ValueRange,
    colorize,
    colormap_lut,
    normalize,
    overlay,
)
from featuremaps.render.overlay import PLACED_BY_GEOMETRY, STRETCHED

# A hand-made geometry with no pixel on a border between two cells (see the placement test).
HAND = MapGeometry(
    "hand", AxisGeometry(4.0, 5.5, 9.0), AxisGeometry(3.0, 2.0, 5.0), (3, 4), "analytic"
)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _expected_colours(cell_map: np.ndarray, r: ValueRange, cmap: str) -> np.ndarray:
    return colorize(normalize(cell_map, r), colormap_lut(cmap))


def _nearest_cell(geometry: MapGeometry, y: int, x: int) -> tuple[int, int] | None:
    """Brute force: the cell whose centre is nearest, if the pixel is in its stride box."""
    h, w = geometry.shape
    best = None
    for r in range(h):
        for c in range(w):
            cy, cx = geometry.cell_center(r, c)
            in_box = (
                cy - geometry.y.stride / 2 <= y < cy + geometry.y.stride / 2
                and cx - geometry.x.stride / 2 <= x < cx + geometry.x.stride / 2
            )
            if in_box:
                assert best is None, "stride boxes must not overlap"
                best = (r, c)
    return best


# ---------------------------------------------------------------- impulse through a real model


def _impulse_model(dilation: int, padding: int) -> nn.Module:
    """Conv(3, stride 2, padding, dilation) then a strided conv, weights all one (the response of
    a cell to an impulse counts the paths from the lit pixel to it)."""
    model = nn.Sequential(
        nn.Conv2d(1, 1, 3, stride=2, padding=padding, dilation=dilation),
        nn.Conv2d(1, 1, 3, stride=2, padding=1),
    )
    with torch.no_grad():
        for conv in model:
            assert isinstance(conv, nn.Conv2d)
            conv.weight.fill_(1.0)
            assert conv.bias is not None
            conv.bias.zero_()
    return model.eval()


@pytest.mark.parametrize(("dilation", "padding"), [(2, 1), (3, 2)])
def test_an_impulse_lights_cells_drawn_over_it(dilation: int, padding: int) -> None:
    H, W = 37, 53  # non-square, odd: the maps are 9 x 13 with cells every 4 px from pixel 1
    model = _impulse_model(dilation, padding)
    geometry = compute_geometry(model, torch.zeros(1, 1, H, W))["1"]
    assert geometry.shape == (9, 13)
    assert (geometry.y.stride, geometry.y.offset) == (4.0, 1.0)
    assert geometry.y.size == geometry.x.size == 2 * dilation + 5  # 1 + 2d, then + 2 * 2
    rng = np.random.default_rng(20240611 + dilation)
    image = np.full((H, W), 40, dtype=np.uint8)
    for _ in range(60):
        py, px = int(rng.integers(H)), int(rng.integers(W))
        if dilation == 2:
            # Stride 2 with dilation 2 reads only odd pixels (taps 2i - 1 + 2k): an
            # impulse on an even row or column never reaches the output.
            py, px = py | 1, px | 1
            py, px = min(py, H - 2), min(px, W - 2)
        x = torch.zeros(1, 1, H, W)
        x[0, 0, py, px] = 1.0
        with torch.no_grad():
            cell_map = model(x)[0, 0].numpy()
        assert cell_map.max() > 0, (py, px)
        result = overlay(image, cell_map, geometry, alpha=1.0, threshold=0.9)
        coloured = np.any(result.pixels != 40, axis=2)
        ys, xs = np.nonzero(coloured)
        assert ys.size > 0
        # Within one stride of the lit pixel, on both axes at once.
        far = np.maximum(np.abs(ys - py) / geometry.y.stride, np.abs(xs - px) / geometry.x.stride)
        assert far.min() <= 1.0, (py, px, far.min())
        # And only cells whose receptive field holds the lit pixel are drawn.
        for r, c in zip(*np.nonzero(normalize(cell_map, result.value_range) >= 0.9), strict=True):
            y0, x0, y1, x1 = geometry.cell_region(int(r), int(c))
            assert y0 <= py <= y1 and x0 <= px <= x1
        assert result.cells_shown < result.cells_total


# ---------------------------------------------------------------- placement


def test_placement_follows_cell_centres_by_hand() -> None:
    # Rows: centres 5.5, 9.5, 13.5 (stride 4) cover pixels 4..15; columns: centres 2, 5, 8, 11
    # (stride 3) cover pixels 1..12.
    assert [HAND.cell_center(r, 0)[0] for r in range(3)] == [5.5, 9.5, 13.5]
    assert [HAND.cell_center(0, c)[1] for c in range(4)] == [2.0, 5.0, 8.0, 11.0]
    cell_map = np.arange(12, dtype=np.float32).reshape(3, 4)
    image = np.zeros((20, 20, 3), dtype=np.uint8)
    result = overlay(image, cell_map, HAND, alpha=1.0)
    assert result.extent == (4, 1, 16, 13)
    assert (
        result.placement
        == f"{PLACED_BY_GEOMETRY} (analytic)"
        == "receptive-field geometry (analytic)"
    )
    colours = _expected_colours(cell_map, result.value_range, "viridis")
    assert len({tuple(c) for c in colours.reshape(-1, 3)}) == 12  # every cell tells itself apart
    expected_rows = {3: None, 4: 0, 7: 0, 8: 1, 11: 1, 12: 2, 15: 2, 16: None}
    expected_cols = {0: None, 1: 0, 3: 0, 4: 1, 6: 1, 7: 2, 9: 2, 10: 3, 12: 3, 13: None}
    for y, r in expected_rows.items():
        for x, c in expected_cols.items():
            want = (0, 0, 0) if r is None or c is None else tuple(colours[r, c])
            assert tuple(result.pixels[y, x]) == want, (y, x)
    # Every pixel against the brute-force nearest centre.
    for y in range(20):
        for x in range(20):
            cell = _nearest_cell(HAND, y, x)
            want = (0, 0, 0) if cell is None else tuple(colours[cell])
            assert tuple(result.pixels[y, x]) == want, (y, x)


def test_a_pixel_on_a_border_belongs_to_the_later_cell() -> None:
    # Stride 2, first centre 0: pixel 1 is half a stride from cells 0 and 1. Like the report's
    # canvas, a cell covers [centre - S/2, centre + S/2).
    g = MapGeometry(
        "b", AxisGeometry(2.0, 0.0, 3.0), AxisGeometry(2.0, 0.0, 3.0), (2, 2), "analytic"
    )
    cell_map = np.array([[0.0, 1.0], [2.0, 3.0]])
    result = overlay(np.zeros((5, 5), np.uint8), cell_map, g, alpha=1.0)
    colours = _expected_colours(cell_map, result.value_range, "viridis")
    assert tuple(result.pixels[0, 1]) == tuple(colours[0, 1])
    assert tuple(result.pixels[1, 0]) == tuple(colours[1, 0])
    assert tuple(result.pixels[2, 2]) == tuple(colours[1, 1])
    assert result.extent == (0, 0, 3, 3)  # pixel 3 is past cell 1's box [1, 3)


@settings(max_examples=60, deadline=None)
@given(
    stride=st.floats(0.5, 9.0),
    offset=st.floats(-12.0, 12.0),
    cells=st.integers(1, 12),
    width=st.integers(1, 40),
)
def test_each_pixel_takes_the_cell_whose_stride_box_holds_it(
    stride: float, offset: float, cells: int, width: int
) -> None:
    g = MapGeometry(
        "p", AxisGeometry(1.0, 0.0, 1.0), AxisGeometry(stride, offset, 1.0), (1, cells), "analytic"
    )
    cell_map = np.arange(cells, dtype=np.float64)[None, :]
    result = overlay(np.zeros((1, width), np.uint8), cell_map, g, alpha=1.0, cmap="gray")
    colours = _expected_colours(cell_map, result.value_range, "gray")[0]
    for x in range(width):
        pos = (x - offset) / stride + 0.5
        if abs(pos - round(pos)) < 1e-6:
            continue  # on a border between two boxes: see the test above
        centres = [g.x.center(c) for c in range(cells)]
        inside = [c for c, m in enumerate(centres) if m - stride / 2 <= x < m + stride / 2]
        got = tuple(result.pixels[0, x])
        if inside:
            assert len(inside) == 1 and got == tuple(colours[inside[0]]), (x, inside)
        else:
            assert got == (0, 0, 0), (x, got)


def test_without_geometry_the_map_is_stretched_and_says_so() -> None:
    cell_map = np.arange(6, dtype=np.float32).reshape(2, 3)
    result = overlay(np.zeros((8, 9), np.uint8), cell_map, None, alpha=1.0)
    colours = _expected_colours(cell_map, result.value_range, "viridis")
    want = np.repeat(np.repeat(colours, 4, axis=0), 3, axis=1)  # 4 x 3 pixels per cell
    np.testing.assert_array_equal(result.pixels, want)
    assert result.placement == STRETCHED == "stretched (no geometry)"
    assert result.extent == (0, 0, 8, 9)
    assert "stretched" in result.caption and any("stretched" in w for w in result.warnings)


# ---------------------------------------------------------------- blending and threshold


def test_alpha_zero_returns_the_image_unchanged() -> None:
    image = _image(20, 20)
    result = overlay(image, np.random.default_rng(1).normal(size=(3, 4)), HAND, alpha=0.0)
    np.testing.assert_array_equal(result.pixels, image)
    gray = image[:, :, 0]
    result = overlay(gray, np.ones((3, 4)), HAND, alpha=0.0)
    np.testing.assert_array_equal(result.pixels, np.repeat(gray[:, :, None], 3, axis=2))


def test_alpha_one_threshold_zero_leaves_no_image_inside_the_map() -> None:
    image = np.full((20, 20, 3), (1, 2, 3), dtype=np.uint8)  # a colour no colormap ends on
    cell_map = np.random.default_rng(2).normal(size=(3, 4))
    result = overlay(image, cell_map, HAND, alpha=1.0, threshold=0.0)
    y0, x0, y1, x1 = result.extent or (0, 0, 0, 0)
    inside = result.pixels[y0:y1, x0:x1]
    assert not np.any(np.all(inside == (1, 2, 3), axis=2))
    colours = _expected_colours(cell_map, result.value_range, "RdBu_r")
    np.testing.assert_array_equal(inside[::4, ::3], colours)  # one pixel per cell
    assert result.cells_shown == result.cells_total == 12


def test_pixels_outside_the_map_are_untouched_and_inside_are_blended() -> None:
    image = _image(20, 20, seed=3)
    cell_map = np.random.default_rng(4).random((3, 4))
    result = overlay(image, cell_map, HAND, alpha=0.35)
    y0, x0, y1, x1 = result.extent or (0, 0, 0, 0)
    outside = np.ones((20, 20), dtype=bool)
    outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(result.pixels[outside], image[outside])
    colours = _expected_colours(cell_map, result.value_range, "viridis")
    # Pixel (4, 1) lies in cell (0, 0): (1 - a) * image + a * colour, rounded.
    want = np.rint(0.65 * image[4, 1].astype(np.float64) + 0.35 * colours[0, 0])
    np.testing.assert_allclose(result.pixels[4, 1], want, atol=1)


def test_threshold_hides_cells_below_that_fraction_of_the_range() -> None:
    image = np.zeros((20, 20, 3), dtype=np.uint8)
    cell_map = np.arange(12, dtype=np.float64).reshape(3, 4)  # t = j / 11
    result = overlay(image, cell_map, HAND, alpha=1.0, threshold=0.5)
    colours = _expected_colours(cell_map, result.value_range, "viridis")
    assert result.cells_shown == 6 and "6 of 12 cells shown" in result.caption
    for r in range(3):
        for c in range(4):
            cy, cx = (int(v) for v in HAND.cell_center(r, c))
            shown = cell_map[r, c] / 11 >= 0.5
            want = tuple(colours[r, c]) if shown else (0, 0, 0)
            assert tuple(result.pixels[cy, cx]) == want
    # Threshold 1 keeps only the maximum.
    assert overlay(image, cell_map, HAND, threshold=1.0).cells_shown == 1


def test_signed_maps_are_centred_on_zero_and_nan_stays_magenta() -> None:
    cell_map = np.array([[-2.0, 0.0, 1.0, np.nan], [2.0, -1.0, 0.5, 0.0], [0, 0, 0, np.inf]])
    result = overlay(np.zeros((20, 20), np.uint8), cell_map, HAND, alpha=1.0, threshold=0.75)
    assert result.cmap == "RdBu_r" and result.value_range == ValueRange(-2.0, 2.0, True)
    assert result.nonfinite == 2 and any("magenta" in w for w in result.warnings)
    lut = colormap_lut("RdBu_r")
    cx = [int(HAND.cell_center(0, c)[1]) for c in range(4)]
    cy = [int(HAND.cell_center(r, 0)[0]) for r in range(3)]
    # t = (x + 2) / 4: only 1.0 (t 0.75) and 2.0 (t 1) pass, and the non-finite cells.
    assert tuple(result.pixels[cy[0], cx[2]]) == tuple(lut[round(0.75 * 255)])
    assert tuple(result.pixels[cy[1], cx[0]]) == tuple(lut[255])
    assert tuple(result.pixels[cy[0], cx[3]]) == NAN_COLOR
    assert tuple(result.pixels[cy[2], cx[3]]) == NAN_COLOR
    for r, c in ((0, 0), (0, 1), (1, 1), (1, 2), (1, 3), (2, 0)):
        assert tuple(result.pixels[cy[r], cx[c]]) == (0, 0, 0)
    assert result.cells_shown == 4


def test_value_range_and_colormap_are_used_as_given() -> None:
    cell_map = np.array([[0.0, 5.0, 10.0, 20.0]] * 3)
    result = overlay(
        np.zeros((20, 20), np.uint8), cell_map, HAND, alpha=1.0, cmap="magma", value_range=(0, 10)
    )
    assert result.cmap == "magma" and result.value_range == ValueRange(0.0, 10.0, False)
    lut = colormap_lut("magma")
    y = int(HAND.cell_center(0, 0)[0])
    got = [tuple(result.pixels[y, int(HAND.cell_center(0, c)[1])]) for c in range(4)]
    assert got == [tuple(lut[0]), tuple(lut[128]), tuple(lut[255]), tuple(lut[255])]


def test_float_images_in_unit_range_are_accepted() -> None:
    image = np.linspace(0.0, 1.0, 400).reshape(20, 20)
    result = overlay(image, np.ones((3, 4)), HAND, alpha=0.0)
    np.testing.assert_array_equal(result.pixels[:, :, 1], np.rint(image * 255).astype(np.uint8))


def test_inputs_are_not_modified() -> None:
    image = _image(20, 20, seed=5)
    cell_map = np.random.default_rng(6).normal(size=(3, 4)).astype(np.float32)
    cell_map[1, 1] = np.nan
    image_copy, map_copy = image.copy(), cell_map.copy()
    image.setflags(write=False)
    cell_map.setflags(write=False)
    result = overlay(image, cell_map, HAND, alpha=0.8, threshold=0.3)
    np.testing.assert_array_equal(image, image_copy)
    np.testing.assert_array_equal(cell_map, map_copy)
    assert isinstance(result, Overlay) and result.pixels.dtype == np.uint8
    assert result.pixels.shape == (20, 20, 3) and not result.pixels.flags.writeable
    assert not np.shares_memory(result.pixels, image)
    assert result.to_png().startswith(b"\x89PNG")


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (-0.1, r"alpha -0\.1 is outside 0 … 1; expected a number from 0 to 1"),
        (1.5, r"alpha 1\.5 is outside 0 … 1"),
        (math.nan, r"alpha nan is outside 0 … 1"),
        ("0.5", r"alpha '0\.5' is not a number; expected a number from 0 to 1"),
        (True, r"alpha True is not a number; expected a number from 0 to 1"),
    ],
)
def test_bad_alpha_is_an_option_error(value: object, match: str) -> None:
    with pytest.raises(OptionError, match=match):
        overlay(np.zeros((20, 20), np.uint8), np.ones((3, 4)), HAND, alpha=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (2.0, r"threshold 2 is outside 0 … 1; expected a number from 0 to 1\. It is a fraction"),
        (-1, r"threshold -1 is outside 0 … 1"),
        ([0.5], r"threshold \[0\.5\] is not a number; expected a number from 0 to 1"),
    ],
)
def test_bad_threshold_is_an_option_error(value: object, match: str) -> None:
    with pytest.raises(OptionError, match=match):
        overlay(np.zeros((20, 20), np.uint8), np.ones((3, 4)), HAND, threshold=value)  # type: ignore[arg-type]


def test_a_geometry_of_another_shape_is_refused() -> None:
    with pytest.raises(
        InputError, match=r"describes a 3×4 map; cell_map is 5×5\. Pass the geometry"
    ):
        overlay(np.zeros((20, 20), np.uint8), np.ones((5, 5)), HAND)


def test_a_broken_geometry_is_refused() -> None:
    bad = MapGeometry(
        "z", AxisGeometry(0.0, 0.0, 1.0), AxisGeometry(1.0, 0.0, 1.0), (3, 4), "empirical"
    )
    with pytest.raises(
        OptionError, match=r"y stride 0\.0 and offset 0\.0; expected a finite stride > 0"
    ):
        overlay(np.zeros((20, 20), np.uint8), np.ones((3, 4)), bad)
    with pytest.raises(OptionError, match=r"geometry of type dict; expected a MapGeometry"):
        overlay(np.zeros((20, 20), np.uint8), np.ones((3, 4)), {"stride": 2})  # type: ignore[arg-type]


def test_bad_images_and_maps_are_input_errors() -> None:
    with pytest.raises(
        InputError, match=r"image of shape \(3, 20, 20\); expected \(H, W\) or \(H, W, 3\)"
    ):
        overlay(np.zeros((3, 20, 20), np.uint8), np.ones((3, 4)), HAND)
    with pytest.raises(
        InputError, match=r"float image with values -2 … 3; expected values in \[0, 1\]"
    ):
        overlay(np.linspace(-2, 3, 400).reshape(20, 20), np.ones((3, 4)), HAND)
    with pytest.raises(InputError, match=r"image of dtype int64; expected uint8"):
        overlay(np.zeros((20, 20), np.int64), np.ones((3, 4)), HAND)
    with pytest.raises(InputError, match=r"cell_map of shape \(1, 3, 4\); expected one channel"):
        overlay(np.zeros((20, 20), np.uint8), np.ones((1, 3, 4)), HAND)


def test_bad_colormap_and_range_are_option_errors() -> None:
    with pytest.raises(OptionError, match=r"unknown colormap 'viridi'; did you mean 'viridis'"):
        overlay(np.zeros((20, 20), np.uint8), np.ones((3, 4)), HAND, cmap="viridi")
    with pytest.raises(OptionError, match=r"value range \(1\.0, 0\.0\) has low > high"):
        overlay(np.zeros((20, 20), np.uint8), np.ones((3, 4)), HAND, value_range=(1.0, 0.0))
