"""Tests for featuremaps.render.legend: cached text masks vs. Pillow drawing directly."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from featuremaps.render.glyphs import font
from featuremaps.render.legend import LEGEND_FONT_SIZE, paint_text
from featuremaps.render.palette import (
    BACKGROUND_INDEX,
    STAMP_FILL_INDEX,
    STAMP_LEVELS,
    TEXT_LEVELS,
    coverage_table,
)


def pillow_coverage(
    shape: tuple[int, int], xy: tuple[int, int], text: str, anchor: str
) -> np.ndarray:
    """The oracle: Pillow's own anti-aliased text on a blank "L" canvas of ``shape``."""
    image = Image.new("L", (shape[1], shape[0]))
    ImageDraw.Draw(image).text(xy, text, font=font(LEGEND_FONT_SIZE), fill=255, anchor=anchor)
    return np.asarray(image)


@pytest.mark.parametrize(
    ("xy", "text", "anchor"),
    [
        ((6, 6), "layer1.0.conv1 · Conv2d · (1, 64, 56, 56)", "la"),
        ((206, 70), "-1.234e+05", "ra"),
        ((106, 70), "0", "ma"),
        ((150, 2), "cut at the right edge and the top", "la"),
        ((-7, 80), "cut at the left edge and the bottom", "la"),
    ],
)
@pytest.mark.parametrize("on_stamp", [False, True])
def test_text_is_pillows_coverage_in_ramp_steps(
    xy: tuple[int, int], text: str, anchor: str, on_stamp: bool
) -> None:
    first, levels = (
        (STAMP_FILL_INDEX, STAMP_LEVELS) if on_stamp else (BACKGROUND_INDEX, TEXT_LEVELS)
    )
    shape = (90, 240)
    canvas = np.full(shape, first, dtype=np.uint8)
    paint_text(canvas, xy, text, LEGEND_FONT_SIZE, anchor=anchor, on_stamp=on_stamp)
    coverage = pillow_coverage(shape, xy, text, anchor)
    assert np.count_nonzero(coverage) > 0
    # Same pixels as Pillow, each coverage rounded to the nearest of the ramp's steps.
    steps = np.rint(coverage.astype(np.float64) * (levels - 1) / 255).astype(np.int64)
    np.testing.assert_array_equal(canvas.astype(np.int64), first + steps)
    np.testing.assert_array_equal(canvas, coverage_table(first, levels)[coverage])


def test_text_leaves_untouched_pixels_alone() -> None:
    # A canvas that is not background everywhere: only the glyphs' pixels change.
    canvas = np.arange(40 * 120, dtype=np.int64).reshape(40, 120).astype(np.uint8) % 200
    before = canvas.copy()
    paint_text(canvas, (3, 5), "#17", LEGEND_FONT_SIZE)
    ink = coverage_table(BACKGROUND_INDEX, TEXT_LEVELS)[
        pillow_coverage((40, 120), (3, 5), "#17", "la")
    ]
    changed = canvas != before
    assert changed.any()
    np.testing.assert_array_equal(changed, ink != BACKGROUND_INDEX)


def test_clipped_ends_are_pointed_and_counted() -> None:
    from featuremaps.render import GridOptions, make_grid
    from featuremaps.render.legend import _BAR_Y, BAR_HEIGHT, BAR_WIDTH, LEGEND_PAD, POINT_WIDTH
    from featuremaps.render.palette import BACKGROUND_INDEX

    maps = np.linspace(-3, 3, 2 * 5 * 5, dtype=np.float32).reshape(2, 5, 5)
    for low, high, pointed in [(-1.0, 1.0, (True, True)), (-5.0, 1.0, (False, True)),
                               (-5.0, 5.0, (False, False))]:  # fmt: skip
        grid = make_grid(maps, GridOptions(scale="fixed", value_range=(low, high)))
        assert grid.clipped == (int((maps < low).sum()), int((maps > high).sum()))
        bar = grid.indices[_BAR_Y : _BAR_Y + BAR_HEIGHT, LEGEND_PAD : LEGEND_PAD + BAR_WIDTH]
        corners = (bar[0, 0] == BACKGROUND_INDEX, bar[0, -1] == BACKGROUND_INDEX)
        assert corners == pointed
        middle = bar[BAR_HEIGHT // 2]
        assert (middle != BACKGROUND_INDEX).all()  # the point's tip stays coloured
        assert (bar[0, POINT_WIDTH:-POINT_WIDTH] != BACKGROUND_INDEX).all()
