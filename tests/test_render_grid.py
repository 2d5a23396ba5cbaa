"""Tests for featuremaps.render.grid: geometry vs. its formula, selection vs. numpy, colours vs.
an independent recomputation, and the error messages a user can trigger."""

from __future__ import annotations

import io
import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from featuremaps._errors import InputError, OptionError
from featuremaps.render import (
    NAN_COLOR,
    GridLabel,
    GridOptions,
    colormap_lut,
    make_grid,
    select_channels,
)
from featuremaps.render.grid import BACKGROUND, GAP, MIN_CELL_WIDTH, MIN_CELL_WIDTH_CHANNEL
from featuremaps.render.legend import (
    BAR_HEIGHT,
    BAR_TOP_GAP,
    BAR_WIDTH,
    CAPTION_LINE_HEIGHT,
    CAPTION_PAD,
    LEGEND_HEIGHT,
    LEGEND_MIN_WIDTH,
    LEGEND_PAD,
    LINE_HEIGHT,
    text_width,
)
from featuremaps.render.palette import (
    BACKGROUND_INDEX,
    LEVELS,
    STAMP_FILL,
    STAMP_FILL_INDEX,
    STAMP_TEXT_INDEX,
    TEXT_INDEX,
)

RNG_SEED = 1234


def rng() -> np.random.Generator:
    return np.random.default_rng(RNG_SEED)


def layout(k: int, h: int, w: int, opts: GridOptions) -> dict[str, int]:
    """The geometry formula of the grid module's docstring, written out independently."""
    s = max(1, math.ceil(opts.min_tile / max(h, w, 1)))
    th, tw = h * s, w * s
    channel = opts.scale == "channel"
    cw = max(tw, MIN_CELL_WIDTH_CHANNEL if channel else MIN_CELL_WIDTH)
    cap = CAPTION_PAD + (2 if channel else 1) * CAPTION_LINE_HEIGHT
    ncols = min(opts.columns, k)
    nrows = math.ceil(k / ncols) if k else 0
    top = LEGEND_HEIGHT if opts.legend else 0
    return {
        "s": s,
        "th": th,
        "tw": tw,
        "cw": cw,
        "cap": cap,
        "ncols": ncols,
        "top": top,
        "height": top + nrows * (th + cap) + (nrows + 1) * GAP,
        "mosaic_w": ncols * cw + (ncols + 1) * GAP,
    }


def tile(pixels: np.ndarray, i: int, geo: dict[str, int]) -> np.ndarray:
    """Cut tile ``i`` out of a grid picture using the documented placement."""
    row, col = divmod(i, geo["ncols"])
    x = GAP + col * (geo["cw"] + GAP) + (geo["cw"] - geo["tw"]) // 2
    y = geo["top"] + GAP + row * (geo["th"] + geo["cap"] + GAP)
    return pixels[y : y + geo["th"], x : x + geo["tw"]]


def lut_colours(t: np.ndarray, name: str) -> np.ndarray:
    """Independent colouring oracle: level round(t * (LEVELS - 1)), drawn with entry
    round(level * 255 / (LEVELS - 1)) of the colormap's 256-entry table (both ends exact)."""
    top = LEVELS - 1
    level = np.rint(np.asarray(t, dtype=np.float64) * top)
    # level * 255 / 239 is never a rounding tie: 239 is odd.
    return colormap_lut(name)[np.rint(level * 255 / top).astype(int)]


# --- geometry -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("c", "h", "w", "opts"),
    [
        (5, 6, 4, GridOptions(legend=False)),
        (32, 112, 112, GridOptions(legend=False)),
        (3, 1, 1, GridOptions(legend=False, columns=2)),
        (10, 7, 7, GridOptions(legend=False, columns=4, min_tile=20)),
        (9, 7, 3, GridOptions(legend=False, scale="channel", columns=3)),
        (17, 50, 60, GridOptions(legend=False, columns=5, max_channels=13)),
        (64, 2, 130, GridOptions(legend=False, max_channels=64, columns=16, min_tile=1)),
        (4, 9, 9, GridOptions(columns=8)),
        (40, 56, 56, GridOptions(scale="channel")),
        (2, 3, 3, GridOptions(legend=False, channels=(1, 1, 0, 1))),
    ],
)
def test_grid_size_follows_the_formula(c: int, h: int, w: int, opts: GridOptions) -> None:
    maps = rng().standard_normal((c, h, w)).astype(np.float32)
    grid = make_grid(maps, opts)
    k = len(opts.channels) if opts.channels is not None else min(c, opts.max_channels)
    geo = layout(k, h, w, opts)
    assert grid.pixels.dtype == np.uint8
    assert grid.pixels.shape[0] == geo["height"]
    assert grid.pixels.shape[2] == 3
    if opts.legend:
        assert grid.pixels.shape[1] >= max(geo["mosaic_w"], LEGEND_MIN_WIDTH)
    else:
        assert grid.pixels.shape[1] == geo["mosaic_w"]


def test_a_wide_mosaic_sets_the_width_and_a_long_name_widens_the_legend() -> None:
    maps = np.zeros((16, 60, 60), dtype=np.float32)
    opts = GridOptions(columns=16)
    assert make_grid(maps, opts).pixels.shape[1] == layout(16, 60, 60, opts)["mosaic_w"]
    name = "features." + ".".join(["denseblock4.denselayer16"] * 8) + ".conv2#1"
    label = GridLabel(name, "Conv2d", (1, 1, 3, 3))
    narrow = make_grid(np.zeros((1, 3, 3)), label=label)
    assert narrow.pixels.shape[1] > text_width(name)


def test_tiles_sit_where_the_formula_says() -> None:
    # Each channel is constant with its own value, so every tile is one known colour.
    k, h, w = 11, 5, 9
    maps = np.broadcast_to(np.arange(k, dtype=np.float64)[:, None, None], (k, h, w)).copy()
    opts = GridOptions(columns=4, min_tile=20)
    grid = make_grid(maps, opts)
    geo = layout(k, h, w, opts)
    for i in range(k):
        expected = lut_colours(np.float64(i) / (k - 1), "viridis")
        t = tile(grid.pixels, i, geo)
        assert t.shape == (h * geo["s"], w * geo["s"], 3)
        assert np.all(t == expected), f"tile {i}"
    # The gap left of the first tile and above it is background.
    assert tuple(grid.pixels[geo["top"], 0]) == BACKGROUND


def test_zero_channels_give_a_legend_only_picture() -> None:
    grid = make_grid(np.zeros((0, 4, 4), dtype=np.float32))
    assert grid.channels == ()
    assert grid.total_channels == 0
    assert grid.pixels.shape == (LEGEND_HEIGHT + GAP, LEGEND_MIN_WIDTH, 3)
    assert "the layer has no channels" in grid.warnings
    bare = make_grid(np.zeros((0, 4, 4)), GridOptions(legend=False))
    assert bare.pixels.shape == (GAP, GAP, 3)


def test_empty_spatial_maps_do_not_crash() -> None:
    opts = GridOptions(legend=False)
    grid = make_grid(np.zeros((3, 0, 5)), opts)
    geo = layout(3, 0, 5, opts)
    assert grid.pixels.shape == (geo["height"], geo["mosaic_w"], 3)
    assert grid.constant_channels == ()


# --- enlargement ----------------------------------------------------------------------------


def test_one_by_one_maps_become_solid_tiles() -> None:
    maps = np.array([1.0, 3.0, 2.0]).reshape(3, 1, 1)
    opts = GridOptions()
    grid = make_grid(maps, opts)
    geo = layout(3, 1, 1, opts)
    assert geo["s"] == 48
    for i, v in enumerate([1.0, 3.0, 2.0]):
        t = tile(grid.pixels, i, geo)
        assert t.shape == (48, 48, 3)
        assert np.all(t == lut_colours((v - 1.0) / 2.0, "viridis"))


def test_seven_by_seven_maps_are_enlarged_by_an_integer_factor() -> None:
    maps = rng().random((2, 7, 7))
    opts = GridOptions()
    grid = make_grid(maps, opts)
    geo = layout(2, 7, 7, opts)
    assert geo["s"] == 7
    lo, hi = maps.min(), maps.max()
    for i in range(2):
        colours = lut_colours((maps[i] - lo) / (hi - lo), "viridis")
        expected = colours.repeat(7, axis=0).repeat(7, axis=1)
        np.testing.assert_array_equal(tile(grid.pixels, i, geo), expected)


# --- colours --------------------------------------------------------------------------------


def test_tile_pixels_are_the_lut_colour_of_the_normalised_value() -> None:
    # arange values: t * 239 = i * 239 / 59 is never within 0.008 of a rounding tie.
    maps = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    opts = GridOptions(min_tile=1)
    grid = make_grid(maps, opts)
    geo = layout(3, 4, 5, opts)
    assert geo["s"] == 1
    assert grid.value_range is not None
    assert (grid.value_range.vmin, grid.value_range.vmax) == (0.0, 59.0)
    for i in range(3):
        np.testing.assert_array_equal(
            tile(grid.pixels, i, geo), lut_colours(maps[i] / 59.0, "viridis")
        )


def test_signed_data_uses_a_diverging_map_centred_on_zero() -> None:
    maps = np.array([[[-2.0, 0.0], [1.0, 0.5]]])
    opts = GridOptions(min_tile=1)
    grid = make_grid(maps, opts)
    assert grid.cmap == "RdBu_r"
    assert grid.value_range is not None
    assert (grid.value_range.vmin, grid.value_range.vmax) == (-2.0, 2.0)
    t = tile(grid.pixels, 0, layout(1, 2, 2, opts))
    expected = lut_colours((maps[0] + 2.0) / 4.0, "RdBu_r")
    np.testing.assert_array_equal(t, expected)
    # Zero is drawn with the centre entry of the 256-entry table, as without quantisation.
    assert tuple(t[0, 1]) == tuple(colormap_lut("RdBu_r")[128])


def test_explicit_colormap_on_signed_data_keeps_the_symmetric_range() -> None:
    grid = make_grid(np.array([[[-1.0, 3.0]]]), GridOptions(cmap="magma"))
    assert grid.cmap == "magma"
    assert grid.value_range is not None
    assert (grid.value_range.vmin, grid.value_range.vmax) == (-3.0, 3.0)


def test_per_channel_and_per_layer_scales_colour_differently() -> None:
    base = np.linspace(0.0, 1.0, 16).reshape(4, 4)
    maps = np.stack([base, base * 100.0])
    layer = make_grid(maps, GridOptions(scale="layer"))
    channel = make_grid(maps, GridOptions(scale="channel"))
    geo_l = layout(2, 4, 4, GridOptions(scale="layer"))
    geo_c = layout(2, 4, 4, GridOptions(scale="channel"))
    lut = colormap_lut("viridis")
    # Per layer, the small channel only reaches 1/100 of the map; per channel it spans it all.
    assert not np.any(np.all(tile(layer.pixels, 0, geo_l) == lut[255], axis=-1))
    assert np.any(np.all(tile(channel.pixels, 0, geo_c) == lut[255], axis=-1))
    np.testing.assert_array_equal(tile(channel.pixels, 0, geo_c), tile(channel.pixels, 1, geo_c))
    assert channel.value_range is None
    assert [(r.vmin, r.vmax) for r in channel.tile_ranges] == [(0.0, 1.0), (0.0, 100.0)]


def test_per_channel_signed_tiles_are_symmetric_about_zero() -> None:
    maps = np.array([[[-1.0, 0.5]], [[2.0, 4.0]]])
    grid = make_grid(maps, GridOptions(scale="channel", min_tile=1))
    assert grid.cmap == "RdBu_r"
    assert [(r.vmin, r.vmax, r.symmetric) for r in grid.tile_ranges] == [
        (-1.0, 1.0, True),
        (-4.0, 4.0, True),
    ]
    geo = layout(2, 1, 2, GridOptions(scale="channel", min_tile=1))
    np.testing.assert_array_equal(tile(grid.pixels, 1, geo)[0], lut_colours([0.75, 1.0], "RdBu_r"))


def test_fixed_and_global_scales_use_the_given_range() -> None:
    maps = np.array([[[0.0, 2.0, 12.0]]])
    fixed = make_grid(maps, GridOptions(scale="fixed", value_range=(0.0, 10.0), min_tile=1))
    geo = layout(1, 1, 3, GridOptions(min_tile=1))
    np.testing.assert_array_equal(
        tile(fixed.pixels, 0, geo)[0], lut_colours([0.0, 0.2, 1.0], "viridis")
    )
    assert any("1 value outside the fixed range 0 … 10" in w for w in fixed.warnings)
    # A global range reaching below zero is re-centred so 0 keeps the centre colour.
    glob = make_grid(maps, GridOptions(scale="global", value_range=(-4.0, 10.0), min_tile=1))
    assert glob.value_range is not None
    assert (glob.value_range.vmin, glob.value_range.vmax) == (-10.0, 10.0)
    assert glob.cmap == "RdBu_r"


def test_nan_and_inf_are_magenta_counted_and_reported() -> None:
    maps = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    maps[0, 1, 2] = np.nan
    maps[1, 0, 0] = np.inf
    maps[1, 2, 3] = -np.inf
    opts = GridOptions(min_tile=1)
    grid = make_grid(maps, opts)
    geo = layout(2, 3, 4, opts)
    assert grid.nonfinite == 3
    assert "3 NaN/Inf values drawn in magenta" in grid.warnings
    for i, (y, x) in [(0, (1, 2)), (1, (0, 0)), (1, (2, 3))]:
        assert tuple(tile(grid.pixels, i, geo)[y, x]) == NAN_COLOR
    # The range ignores the non-finite values: 0 and 22 are the finite extremes.
    assert grid.value_range is not None
    assert (grid.value_range.vmin, grid.value_range.vmax) == (0.0, 22.0)
    # The legend shows a magenta swatch, and only when there is something to explain.
    legend = grid.pixels[: geo["top"]]
    assert np.any(np.all(legend == NAN_COLOR, axis=-1))
    clean = make_grid(np.nan_to_num(maps, posinf=0.0, neginf=0.0), opts)
    assert not np.any(np.all(clean.pixels == NAN_COLOR, axis=-1))


def test_constant_channels_are_reported() -> None:
    maps = np.stack([np.full((3, 3), 2.0), rng().random((3, 3)), np.zeros((3, 3))])
    maps[2, 0, 0] = np.nan  # finite values still all equal
    grid = make_grid(maps)
    assert grid.constant_channels == (0, 2)
    assert "2 of 3 shown channels are constant" in grid.warnings


def test_misleading_colormaps_are_warned_about() -> None:
    grid = make_grid(np.zeros((1, 2, 2)), GridOptions(cmap="jet"))
    assert any("'jet' is a rainbow or cyclic map" in w for w in grid.warnings)


def test_stamp_is_drawn_in_red() -> None:
    maps = np.zeros((1, 2, 2))
    with_stamp = make_grid(maps, label=GridLabel("fc", "Linear", (1, 1), stamp="RANDOM WEIGHTS"))
    without = make_grid(maps, label=GridLabel("fc", "Linear", (1, 1)))
    assert np.count_nonzero(np.all(with_stamp.pixels == STAMP_FILL, axis=-1)) > 100
    assert np.count_nonzero(np.all(without.pixels == STAMP_FILL, axis=-1)) == 0
    # White text on the red box: the stamp ramp fills exactly one rectangle, and white is in it.
    ys, xs = np.nonzero(with_stamp.indices >= STAMP_FILL_INDEX)
    box = with_stamp.indices[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    assert box.size == ys.size
    assert np.all(box <= STAMP_TEXT_INDEX)
    assert np.count_nonzero(box == STAMP_TEXT_INDEX) > 20
    assert not np.any(without.indices >= STAMP_FILL_INDEX)


@pytest.mark.parametrize("scale", ["channel", "layer", "global", "fixed"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_make_grid_never_modifies_its_input(scale: str, dtype: type[np.floating]) -> None:
    maps = rng().standard_normal((6, 5, 5)).astype(dtype)
    maps[0, 0, 0] = np.nan
    maps[1, 1, 1] = np.inf
    before = maps.copy()
    rng_ = (-1.0, 1.0) if scale in ("global", "fixed") else None
    opts = GridOptions(scale=scale, value_range=rng_, order="std")  # type: ignore[arg-type]
    make_grid(maps, opts)
    np.testing.assert_array_equal(maps, before)


def test_png_bytes_decode_to_the_same_pixels() -> None:
    maps = rng().standard_normal((3, 4, 4))
    maps[1, 2, 2] = np.nan
    grid = make_grid(maps, label=GridLabel("c", "Conv2d", (1, 3, 4, 4), stamp="RANDOM WEIGHTS"))
    data = grid._repr_png_()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert data == grid.to_png()
    with Image.open(io.BytesIO(data)) as im:
        # A palette PNG carrying the grid's own palette: nothing quantised while encoding.
        assert im.mode == "P"
        np.testing.assert_array_equal(np.asarray(im), grid.indices)
        pal = np.frombuffer(bytes(im.getpalette() or []), dtype=np.uint8).reshape(-1, 3)
        np.testing.assert_array_equal(pal[: len(grid.palette)], grid.palette)
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), grid.pixels)


def test_pixels_are_the_palette_looked_up_and_read_only() -> None:
    grid = make_grid(rng().standard_normal((5, 6, 6)))
    assert grid.indices.dtype == np.uint8
    assert grid.indices.shape == grid.pixels.shape[:2]
    assert grid.palette.dtype == np.uint8
    assert grid.palette.ndim == 2
    assert grid.palette.shape[1] == 3
    assert len(grid.palette) <= 256
    assert int(grid.indices.max()) < len(grid.palette)
    expected = np.array([[grid.palette[i] for i in row] for row in grid.indices.tolist()])
    np.testing.assert_array_equal(grid.pixels, expected)
    assert grid.pixels is grid.pixels  # computed once
    for arr in (grid.pixels, grid.indices, grid.palette):
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 0


def test_grid_survives_pickling() -> None:
    grid = make_grid(rng().standard_normal((2, 3, 3)))
    grid.pixels  # noqa: B018 - cached before pickling, and rebuilt after
    back = pickle.loads(pickle.dumps(grid))
    np.testing.assert_array_equal(back.indices, grid.indices)
    np.testing.assert_array_equal(back.pixels, grid.pixels)
    assert back.to_png() == grid.to_png()


def test_colour_bar_shows_every_level_with_exact_ends() -> None:
    grid = make_grid(np.linspace(0.0, 1.0, 8).reshape(2, 2, 2))
    # The legend layout of the legend module's docstring: three text rows, a gap, the bar.
    y0 = LEGEND_PAD + 3 * LINE_HEIGHT + BAR_TOP_GAP
    bar = grid.pixels[y0 : y0 + BAR_HEIGHT, LEGEND_PAD : LEGEND_PAD + BAR_WIDTH]
    expected = lut_colours(np.linspace(0.0, 1.0, BAR_WIDTH), "viridis")
    np.testing.assert_array_equal(bar, np.broadcast_to(expected, bar.shape))
    lut = colormap_lut("viridis")
    assert tuple(bar[0, 0]) == tuple(lut[0])
    assert tuple(bar[0, -1]) == tuple(lut[255])
    # Evenly spaced levels, no two pixels alike (the bar is narrower than the number of levels).
    assert BAR_WIDTH < LEVELS
    assert len(np.unique(bar[0], axis=0)) == BAR_WIDTH


def test_text_is_drawn_with_the_text_ramp_only() -> None:
    # Everything outside the tiles, the colour bar and the swatch is background or anti-aliased
    # text, i.e. an index of the ramp from background to text colour.
    k, h, w = 5, 3, 4
    opts = GridOptions(columns=3, scale="channel")
    grid = make_grid(rng().standard_normal((k, h, w)), opts)
    geo = layout(k, h, w, opts)
    outside = np.ones(grid.indices.shape, dtype=bool)
    for i in range(k):
        row, col = divmod(i, geo["ncols"])
        x = GAP + col * (geo["cw"] + GAP) + (geo["cw"] - geo["tw"]) // 2
        y = geo["top"] + GAP + row * (geo["th"] + geo["cap"] + GAP)
        outside[y : y + geo["th"], x : x + geo["tw"]] = False
    mosaic = grid.indices[geo["top"] :][outside[geo["top"] :]]
    assert mosaic.min() >= BACKGROUND_INDEX
    assert mosaic.max() <= TEXT_INDEX
    # Captions are there, with full-ink pixels and some in-between ones.
    assert np.count_nonzero(mosaic == TEXT_INDEX) > 50
    assert np.count_nonzero((mosaic > BACKGROUND_INDEX) & (mosaic < TEXT_INDEX)) > 50
    assert tuple(grid.palette[BACKGROUND_INDEX]) == BACKGROUND


# --- channel selection -----------------------------------------------------------------------


def test_index_order_shows_the_first_channels() -> None:
    maps = np.zeros((50, 2, 2))
    assert select_channels(maps, GridOptions()) == tuple(range(32))
    assert select_channels(maps, GridOptions(max_channels=5)) == (0, 1, 2, 3, 4)
    assert select_channels(maps[:3], GridOptions()) == (0, 1, 2)


def _oracle_statistic(maps: np.ndarray, order: str) -> np.ndarray:
    out = []
    for ch in maps.astype(np.float64):
        v = ch[np.isfinite(ch)]
        if v.size == 0:
            out.append(-np.inf)
        elif order == "mean":
            out.append(np.mean(v))
        elif order == "max":
            out.append(np.max(v))
        elif order == "std":
            out.append(np.std(v))
        else:
            out.append(np.mean(np.abs(v)))
    return np.array(out)


@pytest.mark.parametrize("order", ["mean", "max", "std", "absmean"])
def test_top_k_matches_a_numpy_argsort_oracle(order: str) -> None:
    r = rng()
    maps = r.standard_normal((40, 6, 6)) * r.random((40, 1, 1)) * 10 + r.standard_normal((40, 1, 1))
    maps[3, 2, 2] = np.nan
    maps[7] = np.nan  # no finite values: ranks last
    maps[11, 0, :] = np.inf
    stat = _oracle_statistic(maps, order)
    expected = tuple(int(i) for i in np.argsort(-stat, kind="stable")[:9])
    got = select_channels(maps, GridOptions(order=order, max_channels=9))  # type: ignore[arg-type]
    assert got == expected
    grid = make_grid(maps, GridOptions(order=order, max_channels=9))  # type: ignore[arg-type]
    assert grid.channels == expected
    everything = GridOptions(order=order, max_channels=40)  # type: ignore[arg-type]
    all_ = select_channels(maps, everything)
    assert all_[-1] == 7


def test_ties_go_to_the_lower_index() -> None:
    maps = np.stack([np.full((2, 2), v) for v in [1.0, 5.0, 5.0, 3.0, 5.0]])
    assert select_channels(maps, GridOptions(order="mean", max_channels=4)) == (1, 2, 4, 3)
    # Many ties in a long list, where an unstable sort would shuffle them.
    values = (np.arange(300) * 7919) % 5
    many = np.broadcast_to(values[:, None, None].astype(np.float64), (300, 2, 2))
    got = select_channels(many, GridOptions(order="max", max_channels=300))
    assert got == tuple(sorted(range(300), key=lambda i: (-values[i], i)))


@pytest.mark.parametrize(
    ("order", "first", "second"),
    [
        # Counting NaN as 0 would drop the mean of [10, NaN, NaN, NaN] to 2.5, below 5.
        ("mean", [10.0, np.nan, np.nan, np.nan], [5.0] * 4),
        ("absmean", [-10.0, np.nan, np.nan, np.nan], [5.0] * 4),
        # Counting +Inf would make it the maximum.
        ("max", [-1.0, np.inf, np.inf, -1.0], [0.0] * 4),
        # [5, 5] has no spread; NaN counted as anything would give it one.
        ("std", [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0]),
        ("std", [5.0, 5.0, np.nan, np.nan], [0.0, 1.0, 0.0, 1.0]),
    ],
)
def test_statistics_ignore_non_finite_values(
    order: str, first: list[float], second: list[float]
) -> None:
    maps = np.array([first, second]).reshape(2, 2, 2)
    expected = tuple(int(i) for i in np.argsort(-_oracle_statistic(maps, order), kind="stable"))
    got = select_channels(maps, GridOptions(order=order, max_channels=2))  # type: ignore[arg-type]
    assert got == expected


def test_explicit_channels_override_order_and_count() -> None:
    maps = rng().random((10, 3, 3))
    opts = GridOptions(channels=(9, 0, 4), order="max", max_channels=1)
    assert select_channels(maps, opts) == (9, 0, 4)
    assert make_grid(maps, opts).channels == (9, 0, 4)


def test_explicit_channel_out_of_range_is_an_option_error() -> None:
    with pytest.raises(
        OptionError, match=r"channel index 10 is out of range for a layer with 10 channels"
    ):
        make_grid(np.zeros((10, 2, 2)), GridOptions(channels=(1, 10)))


def test_negative_channel_index_is_an_option_error() -> None:
    with pytest.raises(OptionError, match=r"channel index -1 is out of range.*expected 0\.\.2"):
        select_channels(np.zeros((3, 2, 2)), GridOptions(channels=(-1,)))


# --- option and input errors ------------------------------------------------------------------


def test_unknown_colormap_is_an_option_error_with_a_suggestion() -> None:
    with pytest.raises(OptionError, match=r"unknown colormap 'virdis'; did you mean 'viridis'\?"):
        make_grid(np.zeros((1, 2, 2)), GridOptions(cmap="virdis"))


def test_fixed_scale_needs_a_range() -> None:
    with pytest.raises(
        OptionError,
        match=r"scale 'fixed' needs a value range \(its low and high values\); got none",
    ):
        GridOptions(scale="fixed")


def test_global_scale_needs_the_range_across_layers() -> None:
    opts = GridOptions(scale="global")  # the range may be filled in later
    with pytest.raises(OptionError, match=r"caller must pass the range across all layers"):
        make_grid(np.zeros((1, 2, 2)), opts)


def test_a_range_with_a_per_layer_scale_is_rejected() -> None:
    with pytest.raises(OptionError, match=r"only used with scale 'fixed' or 'global'"):
        GridOptions(value_range=(0.0, 1.0))


def test_reversed_fixed_range_is_rejected() -> None:
    with pytest.raises(OptionError, match=r"has low > high"):
        GridOptions(scale="fixed", value_range=(1.0, 0.0))


def test_unknown_scale_mode_suggests_a_close_one() -> None:
    with pytest.raises(OptionError, match=r"unknown scale mode 'layers'; did you mean 'layer'\?"):
        GridOptions(scale="layers")  # type: ignore[arg-type]


def test_unknown_order_suggests_a_close_one() -> None:
    with pytest.raises(OptionError, match=r"unknown channel order 'maxx'; did you mean 'max'\?"):
        GridOptions(order="maxx")  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["max_channels", "columns", "min_tile"])
def test_sizes_must_be_positive(field: str) -> None:
    with pytest.raises(OptionError, match=rf"{field} 0 is not valid; expected a whole number >= 1"):
        GridOptions(**{field: 0})  # type: ignore[arg-type]


def test_maps_must_be_three_dimensional() -> None:
    with pytest.raises(InputError, match=r"maps of shape \(4, 4\); expected \(C, H, W\)"):
        make_grid(np.zeros((4, 4)))


def test_maps_must_be_real() -> None:
    with pytest.raises(InputError, match=r"maps of dtype complex128; expected real numbers"):
        make_grid(np.zeros((1, 2, 2), dtype=complex))


# --- any input ------------------------------------------------------------------------------

map_dtypes = st.sampled_from(
    [np.float16, np.float32, np.float64, np.int8, np.int64, np.uint8, np.bool_]
)


@settings(deadline=None, max_examples=60)
@given(
    map_dtypes.flatmap(
        lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=3, max_dims=3, min_side=0, max_side=5))
    ),
    st.sampled_from(["channel", "layer", "global", "fixed"]),
    st.booleans(),
)
def test_any_real_array_renders_truthfully(maps: np.ndarray, scale: str, legend: bool) -> None:
    before = maps.copy()
    value_range = (-2.0, 3.0) if scale in ("global", "fixed") else None
    opts = GridOptions(
        scale=scale,  # type: ignore[arg-type]
        value_range=value_range,
        legend=legend,
        min_tile=4,
    )
    grid = make_grid(maps, opts)
    np.testing.assert_array_equal(maps, before)
    shown = maps[: len(grid.channels)]
    assert grid.nonfinite == int(np.count_nonzero(~np.isfinite(shown)))
    geo = layout(len(grid.channels), maps.shape[1], maps.shape[2], opts)
    assert grid.pixels.shape[0] == geo["height"]
    assert len(grid.tile_ranges) == len(grid.channels)
    # Every non-finite cell, and nothing else in a tile, is magenta.
    for i in range(len(grid.channels)):
        magenta = np.all(tile(grid.pixels, i, geo) == NAN_COLOR, axis=-1)
        bad = ~np.isfinite(shown[i].astype(np.float64))
        np.testing.assert_array_equal(magenta, bad.repeat(geo["s"], 0).repeat(geo["s"], 1))


def _awkward_layers() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    signed = rng.standard_normal((6, 5, 7)).astype(np.float32)
    holes = signed.copy()
    holes[1, 2, 3] = np.nan
    holes[4] = np.inf  # a channel without one finite value
    holes[2, 0, 0] = -np.inf
    constant = np.ones((3, 4, 4), dtype=np.float32)
    constant[1] = 0.0
    return {
        "signed": signed,
        "relu": np.maximum(signed, 0),
        "holes": holes,
        "no finite value": np.full((2, 3, 3), np.nan, dtype=np.float32),
        "constant": constant,
        "integers": rng.integers(-5, 9, (4, 3, 5)).astype(np.int16),
        "float64": rng.standard_normal((3, 4, 4)) * 1e6,
    }


@pytest.mark.parametrize("name", list(_awkward_layers()))
@pytest.mark.parametrize(
    "options",
    [
        GridOptions(),
        GridOptions(scale="layer"),
        GridOptions(scale="global", value_range=(-0.5, 2.0)),
        GridOptions(scale="fixed", value_range=(-1.0, 1.0)),
        GridOptions(max_channels=3, order="max"),
        GridOptions(channels=(1, 0)),
    ],
    ids=["channel", "layer", "global", "fixed", "top-max", "explicit"],
)
def test_statistics_given_draw_the_same_picture(name: str, options: GridOptions) -> None:
    # The oracle is make_grid measuring the maps itself.
    from featuremaps.stats import channel_stats

    maps = _awkward_layers()[name]
    alone = make_grid(maps, options)
    given_stats = make_grid(maps, options, stats=channel_stats(maps))
    assert np.array_equal(given_stats.indices, alone.indices)
    assert given_stats.tile_ranges == alone.tile_ranges
    assert given_stats.value_range == alone.value_range
    assert given_stats.warnings == alone.warnings
    assert (given_stats.nonfinite, given_stats.constant_channels, given_stats.clipped) == (
        alone.nonfinite,
        alone.constant_channels,
        alone.clipped,
    )


def test_statistics_of_other_maps_are_refused() -> None:
    from featuremaps.stats import channel_stats

    maps = np.zeros((4, 3, 3), dtype=np.float32)
    with pytest.raises(InputError, match="statistics of 2 channels for maps of 4"):
        make_grid(maps, stats=channel_stats(maps[:2]))
