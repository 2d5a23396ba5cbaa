"""Tests for featuremaps.render.colormap: lookup tables vs. matplotlib, colouring by index,
resampled colour levels vs. an integer formula."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from featuremaps._errors import OptionError
from featuremaps.render import NAN_COLOR, colorize, colormap_lut
from featuremaps.render.colormap import colormap_levels, level_indices


@pytest.mark.parametrize("name", ["viridis", "RdBu_r", "gray", "magma"])
def test_lut_matches_matplotlib(name: str) -> None:
    lut = colormap_lut(name)
    assert lut.shape == (256, 3)
    assert lut.dtype == np.uint8
    cmap = matplotlib.colormaps[name]
    for i in (0, 1, 100, 128, 254, 255):
        expected = [round(c * 255) for c in cmap(i / 255)[:3]]
        assert lut[i].tolist() == expected


def test_bundled_tables_equal_matplotlib_for_every_entry() -> None:
    # The shipped tables spare a run the matplotlib import; a matplotlib that changes one of
    # these maps fails here (then run scripts/make_colormaps.py again).
    from featuremaps.render.colormap import _bundled_tables

    names = set(_bundled_tables())
    assert names >= {"viridis", "RdBu_r", "magma", "cividis", "gray", "coolwarm"}
    for name in sorted(names):
        rgba = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))
        expected = np.rint(np.asarray(rgba, dtype=np.float64)[:, :3] * 255.0).astype(np.uint8)
        np.testing.assert_array_equal(colormap_lut(name), expected, err_msg=name)


def test_viridis_ends_are_the_known_colours() -> None:
    lut = colormap_lut("viridis")
    assert lut[0].tolist() == [68, 1, 84]
    assert lut[255].tolist() == [253, 231, 37]


def test_lut_is_cached_and_read_only() -> None:
    assert colormap_lut("viridis") is colormap_lut("viridis")
    with pytest.raises(ValueError, match="read-only"):
        colormap_lut("viridis")[0, 0] = 0


def test_unknown_colormap_suggests_the_closest_name() -> None:
    with pytest.raises(
        OptionError,
        match=r"^unknown colormap 'virdis'; did you mean 'viridis'\? Any matplotlib colormap",
    ):
        colormap_lut("virdis")


def test_unknown_colormap_without_close_name_lists_examples() -> None:
    with pytest.raises(OptionError, match=r"unknown colormap 'zzzzqqq'; expected a matplotlib"):
        colormap_lut("zzzzqqq")


def test_colorize_picks_rounded_index_and_paints_nan() -> None:
    lut = colormap_lut("viridis")
    # 0.2 * 255 = 51, 0.7 * 255 = 178.5 -> 178 (round half to even), 1.2 clips to 255.
    t = np.array([[0.0, 0.2, np.nan], [0.7, 1.0, 1.2]], dtype=np.float32)
    out = colorize(t, lut)
    assert out.shape == (2, 3, 3)
    assert out.dtype == np.uint8
    expected_idx = [[0, 51, None], [int(np.rint(np.float32(0.7) * 255)), 255, 255]]
    for r, row in enumerate(expected_idx):
        for c, idx in enumerate(row):
            want = NAN_COLOR if idx is None else tuple(lut[idx])
            assert tuple(out[r, c]) == tuple(int(v) for v in want)


def test_colorize_custom_nan_color_and_input_untouched() -> None:
    t = np.array([np.nan, 0.5])
    before = t.copy()
    out = colorize(t, colormap_lut("gray"), nan_color=(1, 2, 3))
    assert out[0].tolist() == [1, 2, 3]
    assert out[1].tolist() == [128, 128, 128]
    np.testing.assert_array_equal(t, before)


def test_colorize_rejects_a_bad_table() -> None:
    with pytest.raises(OptionError, match=r"colour table of shape \(4,\); expected \(N, 3\)"):
        colorize(np.zeros(3), np.zeros(4, dtype=np.uint8))


@pytest.mark.parametrize("name", ["viridis", "RdBu_r", "gray"])
def test_levels_are_evenly_spaced_table_entries_with_exact_ends(name: str) -> None:
    lut = colormap_lut(name)
    levels = colormap_levels(name, 240)
    assert levels.shape == (240, 3)
    assert levels.dtype == np.uint8
    # Entry j is table entry round(j * 255 / 239), computed here in integers (no ties: 239 odd).
    for j in (0, 1, 2, 100, 119, 120, 238, 239):
        assert levels[j].tolist() == lut[(2 * j * 255 + 239) // (2 * 239)].tolist()
    assert levels[0].tolist() == lut[0].tolist()
    assert levels[-1].tolist() == lut[255].tolist()


def test_levels_are_cached_read_only_and_checked() -> None:
    assert colormap_levels("viridis", 240) is colormap_levels("viridis", 240)
    with pytest.raises(ValueError, match="read-only"):
        colormap_levels("viridis", 240)[0, 0] = 0
    with pytest.raises(OptionError, match=r"1 colour levels; expected 2 to 256"):
        colormap_levels("viridis", 1)


def test_level_indices_round_clip_and_mark_nan() -> None:
    # 0.2 * 239 = 47.8 -> 48; 0.7 * 239 = 167.3 -> 167; 1.2 clips to 239; -3 clips to 0.
    t = np.array([[0.0, 0.2, np.nan], [0.7, 1.0, 1.2], [-3.0, np.inf, -np.inf]])
    before = t.copy()
    idx = level_indices(t, 240, 240)
    assert idx.dtype == np.uint8
    assert idx.tolist() == [[0, 48, 240], [167, 239, 239], [0, 239, 0]]
    np.testing.assert_array_equal(t, before)


def test_level_indices_and_colorize_agree() -> None:
    # Colouring the indices with the level table is colorize with that table.
    t = np.linspace(-0.1, 1.1, 1001, dtype=np.float32).reshape(7, 11, 13)
    t[3, 4, 5] = np.nan
    levels = colormap_levels("magma", 240)
    idx = level_indices(t, 240, 255)
    rgb = colorize(t, levels)
    finite = idx != 255
    np.testing.assert_array_equal(levels[idx[finite]], rgb[finite])
    assert tuple(rgb[3, 4, 5]) == NAN_COLOR


def test_level_indices_reject_a_count_beyond_a_byte() -> None:
    with pytest.raises(OptionError, match=r"300 levels with NaN index 0; expected 1 to 256"):
        level_indices(np.zeros(3), 300, 0)
