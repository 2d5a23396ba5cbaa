"""One rule for "constant": a range no wider than rounding noise of the values' dtype.

Every picture that builds a colour scale draws such a map in one colour and says so, in the same
words; a map without one finite value says "n/a". The near-constant maps here are LayerNorm-like:
tokens normalised in float32, whose L2 norms are sqrt(C) up to rounding (a float64 recomputation
of the same normalisation is the oracle that their spread is rounding, not structure).
"""

from __future__ import annotations

import numpy as np
import pytest

from featuremaps.render import GridLabel, GridOptions, make_grid
from featuremaps.render.bars import _values_text, make_bars
from featuremaps.render.colormap import colormap_levels
from featuremaps.render.legend import _BAR_Y as BAR_Y
from featuremaps.render.legend import BAR_WIDTH, LEGEND_PAD, LINE_HEIGHT, SIDE_GAP, paint_text
from featuremaps.render.overlay import overlay
from featuremaps.render.palette import BACKGROUND_INDEX, LEVELS, grid_palette, palette_pixels
from featuremaps.render.panels import text_block
from featuremaps.render.rows import rows_legend
from featuremaps.render.scaling import (
    NO_FINITE_TEXT,
    RESOLUTION_ULPS,
    ValueRange,
    constant_text,
    format_ends,
    is_constant_range,
    normalize,
)
from featuremaps.render.signal import make_signal_picture
from featuremaps.render.tokens import make_token_picture, token_pca
from featuremaps.render.volume import make_volume_picture

F32 = float(np.finfo(np.float32).eps)
CONSTANT = constant_text("float32")


def layernorm_tokens(n: int = 196, c: int = 768, seed: int = 0) -> np.ndarray:
    """(n, c) float32 tokens, each normalised to mean 0 and variance 1 in float32 (a LayerNorm
    with unit weight, zero bias and no epsilon): every norm is sqrt(c) up to rounding."""
    x = np.random.default_rng(seed).standard_normal((n, c)).astype(np.float32) * 3 + 1
    centred = x - x.mean(axis=1, keepdims=True)
    return centred / np.sqrt((centred * centred).mean(axis=1, keepdims=True))


def token_norms(tokens: np.ndarray) -> np.ndarray:
    return np.sqrt((tokens.astype(np.float64) ** 2).sum(axis=1))


def test_layernorm_token_norms_are_rounding_noise_by_the_oracle() -> None:
    tokens = layernorm_tokens()
    norms = token_norms(tokens)
    # The same normalisation in float64 gives sqrt(C) to float64 precision: the float32 spread
    # is rounding, yet wide enough that a min-max scale would fill the colormap with it.
    x = np.random.default_rng(0).standard_normal((196, 768)).astype(np.float32) * 3 + 1
    c64 = x.astype(np.float64) - x.astype(np.float64).mean(axis=1, keepdims=True)
    exact = token_norms(c64 / np.sqrt((c64 * c64).mean(axis=1, keepdims=True)))
    assert np.ptp(exact) < 1e-12
    assert np.ptp(norms) > 0
    assert is_constant_range(float(norms.min()), float(norms.max()), "float32")
    assert is_constant_range(float(norms.min()), float(norms.max()), np.dtype(np.float32))


def test_the_rule_is_a_few_units_of_the_dtype_resolution() -> None:
    v = float(np.sqrt(768))
    assert is_constant_range(v, v, "float32")  # exactly constant: the special case
    assert is_constant_range(0.0, 0.0, "float32")
    assert is_constant_range(v, v + RESOLUTION_ULPS * F32 * v, "float32")
    assert not is_constant_range(v, v + 2 * RESOLUTION_ULPS * F32 * v, "float32")
    assert not is_constant_range(v, v + 1e-4, "float32")  # a real spread, however narrow
    assert is_constant_range(v, v + 1e-4, "bfloat16")  # the same spread is noise there
    assert not is_constant_range(v, v + 1e-4, "float64")
    assert not is_constant_range(1.0, 1.0 + 1e-9, "int64")  # exact types: only equal ends
    assert is_constant_range(3.0, 3.0, "int64")
    assert not is_constant_range(float("nan"), float("nan"), "float32")
    assert not is_constant_range(0.0, float("inf"), "float32")
    assert CONSTANT == "constant (spread below float32 resolution)"
    assert constant_text("bfloat16") == "constant (spread below bfloat16 resolution)"


def test_format_ends_adds_digits_only_where_the_ends_would_read_alike() -> None:
    assert format_ends(-3.827, 3.827) == ("-3.827", "3.827")
    assert format_ends(27.7127, 27.7127) == ("27.71", "27.71")
    assert format_ends(27.71269, 27.71279) == ("27.7127", "27.7128")


def test_normalize_draws_a_near_constant_range_in_the_constant_colour() -> None:
    norms = token_norms(layernorm_tokens()).astype(np.float32)
    r = ValueRange(float(norms.min()), float(norms.max()), False)
    # The values were computed in float32, though the norms are handed over in float64 too.
    assert (normalize(norms, r) == 0.0).all()
    assert (normalize(norms.astype(np.float64), r, dtype="float32") == 0.0).all()
    # In float64 the same spread is far above rounding: stretched as before.
    assert np.ptp(normalize(norms.astype(np.float64), r)) == 1.0


def _side_note(indices: np.ndarray, note: str) -> bool:
    """Whether the legend at the top of ``indices`` prints ``note`` beside its colour bar."""
    x = LEGEND_PAD + BAR_WIDTH + SIDE_GAP
    y0, y1 = BAR_Y - 4, BAR_Y - 1 + LINE_HEIGHT
    expected = np.full((y1 - y0, indices.shape[1] - x), BACKGROUND_INDEX, dtype=np.uint8)
    paint_text(expected, (0, BAR_Y - 1 - y0), note, 11)
    got = indices[y0:y1, x:]
    return bool((got == expected).all())


def test_grid_of_a_near_constant_layer_is_one_colour_and_says_constant() -> None:
    norms = token_norms(layernorm_tokens()).astype(np.float32).reshape(1, 14, 14)
    grid = make_grid(norms, GridOptions(), label=GridLabel("ln_2", "LayerNorm", (1, 14, 14)))
    # Below the legend (whose bar has every level) every colour cell is the low end.
    cells = grid.indices[BAR_Y + 32 :]
    assert set(np.unique(cells[cells < LEVELS]).tolist()) == {0}
    assert _side_note(grid.indices, CONSTANT)


def test_grid_per_channel_captions_a_near_constant_channel_const() -> None:
    tokens = layernorm_tokens(n=16, c=64)
    norms = token_norms(tokens).astype(np.float32).reshape(4, 4)
    maps = np.stack([norms, np.arange(16, dtype=np.float32).reshape(4, 4)])
    grid = make_grid(maps, GridOptions(scale="channel"))
    assert grid.constant_channels == (0,)
    assert grid.warnings[0] == "1 of 2 shown channels are constant"


def test_bfloat16_values_are_judged_at_bfloat16_resolution() -> None:
    # Under autocast the maps arrive as float32 holding bfloat16 values; the options say so.
    maps = np.array([1.0, 1.0078125, 1.015625], dtype=np.float32).reshape(1, 1, 3)
    coarse = make_grid(maps, GridOptions(dtype="bfloat16"))
    fine = make_grid(maps, GridOptions())
    assert _side_note(coarse.indices, constant_text("bfloat16"))
    assert not _side_note(fine.indices, CONSTANT)


def test_token_norm_map_of_layernorm_tokens_is_one_colour() -> None:
    tokens = layernorm_tokens()
    patches = np.ascontiguousarray(tokens.T.reshape(768, 14, 14))
    label = GridLabel("encoder_layer_0.ln_2", "LayerNorm", (1, 197, 768))
    made = make_token_picture(patches, np.zeros((0, 768), np.float32), GridOptions(), label)
    # The norm map is drawn as its own one-tile grid under the mosaic.
    norm = np.sqrt((patches.astype(np.float64) ** 2).sum(axis=0))[None]
    expected = make_grid(
        norm,
        GridOptions(max_channels=1, min_tile=96, dtype="float32"),
        label=GridLabel("token L2 norm over 768 dims", "LayerNorm", (14, 14)),
    )
    y = made.grid.pixels.shape[0] + 12
    h, w = expected.pixels.shape[:2]
    np.testing.assert_array_equal(made.picture.pixels[y : y + h, :w], expected.pixels)
    cells = expected.indices[BAR_Y + 32 :]
    assert set(np.unique(cells[cells < LEVELS]).tolist()) == {0}
    assert _side_note(expected.indices, CONSTANT)


def test_pca_component_of_rounding_noise_is_not_stretched() -> None:
    # Tokens that differ along one direction only: the second and third components are noise.
    base = np.random.default_rng(3).standard_normal(32).astype(np.float32)
    step = np.random.default_rng(4).standard_normal(32).astype(np.float32)
    tokens = base[None] + np.linspace(0, 1, 16, dtype=np.float32)[:, None] * step[None]
    pca = token_pca(np.ascontiguousarray(tokens.T.reshape(32, 4, 4)))
    assert pca.constant == (False, True, True)
    assert (pca.rgb[..., 1:] == 0.5).all()
    assert np.ptp(pca.rgb[..., 0]) == 1.0


def _legend_of(picture: np.ndarray, legend: np.ndarray, cmap: str) -> bool:
    expected = palette_pixels(legend, grid_palette(cmap))
    h, w = expected.shape[:2]
    return bool((picture[:h, :w] == expected).all())


def test_signal_of_a_near_constant_layer_is_one_colour_and_says_constant() -> None:
    norms = token_norms(layernorm_tokens(n=120, c=256)).astype(np.float32)
    maps = np.stack([norms, norms[::-1]])
    label = GridLabel("ln", "LayerNorm", (1, 2, 120))
    made = make_signal_picture(maps, GridOptions(), label)
    legend = rows_legend(
        label, GridOptions(), (0, 1), 2,
        (made.value_range, False, "scale: one range for the layer (all 2 channels)"),
        "viridis", 0, "; time on x", CONSTANT,
    )  # fmt: skip
    assert _legend_of(made.picture.pixels, legend, "viridis")
    low = colormap_levels("viridis", LEVELS)[0]
    high = colormap_levels("viridis", LEVELS)[-1]
    top = legend.shape[0]
    body = made.picture.pixels[top:].reshape(-1, 3)
    assert (body == low).all(axis=1).any()
    assert not (body == high).all(axis=1).any()  # nothing stretched to the top end


def test_signal_of_a_layer_without_finite_values_says_n_a() -> None:
    maps = np.full((2, 30), np.nan, dtype=np.float32)
    label = GridLabel("head", "Conv1d", (1, 2, 30))
    made = make_signal_picture(maps, GridOptions(), label)
    legend = rows_legend(
        label, GridOptions(), (0, 1), 2,
        (ValueRange(0.0, 0.0, False), False, "scale: one range for the layer (all 2 channels)"),
        "viridis", 60, "; time on x", NO_FINITE_TEXT,
    )  # fmt: skip
    assert _legend_of(made.picture.pixels, legend, "viridis")


def test_volume_of_a_near_constant_layer_is_one_colour_and_says_constant() -> None:
    norms = token_norms(layernorm_tokens(n=64, c=256)).astype(np.float32)
    maps = norms.reshape(1, 4, 4, 4)
    label = GridLabel("ln", "LayerNorm", (1, 1, 4, 4, 4))
    made = make_volume_picture(maps, GridOptions(), label)
    legend = rows_legend(
        label, GridOptions(), (0,), 1,
        (made.value_range, False, "scale: one range for every slice of all 1 channels"),
        "viridis", 0, note=CONSTANT,
    )  # fmt: skip
    assert _legend_of(made.picture.pixels, legend, "viridis")
    high = colormap_levels("viridis", LEVELS)[-1]
    body = made.picture.pixels[legend.shape[0] :].reshape(-1, 3)
    assert not (body == high).all(axis=1).any()


def test_overlay_of_a_near_constant_map_is_one_colour_and_says_constant() -> None:
    norms = token_norms(layernorm_tokens()).astype(np.float32).reshape(14, 14)
    image = np.zeros((28, 28), dtype=np.uint8)
    made = overlay(image, norms, None, alpha=1.0)
    low = colormap_levels("viridis", 256)[0]
    assert (made.pixels == low).all()
    assert f"the map is {CONSTANT}: one colour" in made.warnings


def test_bars_say_constant_instead_of_a_range() -> None:
    values = token_norms(layernorm_tokens(n=20, c=64)).astype(np.float32)
    picture = make_bars(values[None], ["norms"], title="t")
    lines = [f"norms: 20 values, {float(values.min()):.4g}, {CONSTANT}", *_values_text(values)]
    caption = text_block(lines)
    h, w = caption.shape[:2]
    np.testing.assert_array_equal(picture.pixels[-h:, :w], caption)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_exactly_constant_maps_keep_their_colour(dtype: str) -> None:
    maps = np.full((2, 3, 3), 0.5, dtype=dtype)
    grid = make_grid(maps, GridOptions())
    cells = grid.indices[BAR_Y + 32 :]
    assert set(np.unique(cells[cells < LEVELS]).tolist()) == {0}
    assert _side_note(grid.indices, constant_text(dtype))


@pytest.mark.parametrize(
    ("note", "ends"),
    [
        (NO_FINITE_TEXT, ("n/a", "n/a")),
        (CONSTANT, ("27.71", "27.71")),
        (None, ("27.7127", "27.7128")),
    ],
)
def test_slide_legend_says_n_a_and_constant_as_the_grids(
    note: str | None, ends: tuple[str, str]
) -> None:
    from featuremaps.render.legend import LEGEND_HEIGHT, LegendContent, legend_width, paint_legend
    from featuremaps.slide.writers import legend_pixels

    r = ValueRange(27.71269, 27.71279, False)
    got = legend_pixels("t", "n", r, "viridis", range_note=note)
    background = "white: not computed (background)"
    content = LegendContent(
        title="t",
        stamp=None,
        selection="n",
        scale="scale: this channel over the whole slide · colormap viridis",
        bar_low=ends[0],
        bar_mid=None,
        bar_high=ends[1],
        bar_note=background if note is None else f"{note}; {background}",
        nonfinite=0,
    )
    canvas = np.full((LEGEND_HEIGHT, legend_width(content)), BACKGROUND_INDEX, dtype=np.uint8)
    paint_legend(canvas, content)
    np.testing.assert_array_equal(got, palette_pixels(canvas, grid_palette("viridis")))
