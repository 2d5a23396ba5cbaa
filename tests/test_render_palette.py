"""Tests for featuremaps.render.palette: the documented index layout, ramps, coverage steps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featuremaps.render import NAN_COLOR, colormap_lut
from featuremaps.render.palette import (
    BACKGROUND,
    BACKGROUND_INDEX,
    LEVELS,
    NAN_INDEX,
    PALETTE_SIZE,
    STAMP_FILL,
    STAMP_FILL_INDEX,
    STAMP_LEVELS,
    STAMP_TEXT,
    STAMP_TEXT_INDEX,
    TEXT_COLOR,
    TEXT_INDEX,
    TEXT_LEVELS,
    coverage_table,
    grid_palette,
    palette_pixels,
)


def test_layout_is_the_documented_one() -> None:
    # The module docstring, the grid docstring and the README name these numbers.
    assert LEVELS == 240
    assert (NAN_INDEX, BACKGROUND_INDEX, TEXT_INDEX) == (240, 241, 248)
    assert (STAMP_FILL_INDEX, STAMP_TEXT_INDEX) == (249, 255)
    assert TEXT_INDEX - BACKGROUND_INDEX + 1 == TEXT_LEVELS
    assert STAMP_TEXT_INDEX - STAMP_FILL_INDEX + 1 == STAMP_LEVELS
    assert PALETTE_SIZE == 256


@pytest.mark.parametrize("name", ["viridis", "RdBu_r"])
def test_palette_entries(name: str) -> None:
    pal = grid_palette(name)
    assert pal.shape == (PALETTE_SIZE, 3)
    assert pal.dtype == np.uint8
    lut = colormap_lut(name)
    # Colour levels: evenly spaced table entries, ends exact (integer rounding; 239 is odd).
    expected = lut[[(2 * j * 255 + LEVELS - 1) // (2 * (LEVELS - 1)) for j in range(LEVELS)]]
    np.testing.assert_array_equal(pal[:LEVELS], expected)
    assert tuple(pal[NAN_INDEX]) == NAN_COLOR
    assert tuple(pal[BACKGROUND_INDEX]) == BACKGROUND
    assert tuple(pal[TEXT_INDEX]) == TEXT_COLOR
    assert tuple(pal[STAMP_FILL_INDEX]) == STAMP_FILL
    assert tuple(pal[STAMP_TEXT_INDEX]) == STAMP_TEXT


def test_ramps_step_evenly_from_surface_to_ink() -> None:
    pal = grid_palette("viridis").astype(np.int64)
    for first, last, start, end in [
        (BACKGROUND_INDEX, TEXT_INDEX, BACKGROUND, TEXT_COLOR),
        (STAMP_FILL_INDEX, STAMP_TEXT_INDEX, STAMP_FILL, STAMP_TEXT),
    ]:
        n = last - first
        for i in range(n + 1):
            want = [s + (e - s) * i / n for s, e in zip(start, end, strict=True)]
            assert np.all(np.abs(pal[first + i] - want) <= 0.5), (first, i)


def test_palette_is_cached_and_read_only() -> None:
    assert grid_palette("magma") is grid_palette("magma")
    with pytest.raises(ValueError, match="read-only"):
        grid_palette("magma")[0, 0] = 1


@pytest.mark.parametrize(("first", "levels"), [(BACKGROUND_INDEX, 8), (STAMP_FILL_INDEX, 7)])
def test_coverage_steps_round_to_the_nearest_ramp_entry(first: int, levels: int) -> None:
    table = coverage_table(first, levels)
    assert table.dtype == np.uint8
    assert table[0] == first
    assert table[255] == first + levels - 1
    assert np.all(np.diff(table.astype(int)) >= 0)
    for c in range(256):
        # Nearest step, halves rounded up.
        assert table[c] == first + int(c * (levels - 1) / 255 + 0.5), c


def test_palette_pixels_are_the_looked_up_rows() -> None:
    rng = np.random.default_rng(7)
    idx = rng.integers(0, PALETTE_SIZE, size=(9, 13), dtype=np.uint8)
    before = idx.copy()
    pal = grid_palette("viridis")
    rgb = palette_pixels(idx, pal)
    assert rgb.shape == (9, 13, 3)
    assert rgb.dtype == np.uint8
    for y in range(9):
        for x in range(13):
            assert rgb[y, x].tolist() == pal[idx[y, x]].tolist()
    np.testing.assert_array_equal(idx, before)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 40),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["noise", "flat", "rows"]),
)
def test_png_writer_round_trips_through_pillow(
    height: int, width: int, seed: int, kind: str
) -> None:
    import io

    from PIL import Image

    from featuremaps.render.encode import encode_png

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    if kind == "flat":
        pixels[:] = pixels[0, 0]
    elif kind == "rows":
        pixels[:] = pixels[:, :1]  # each row one colour: the Up filter's differences wrap
    data = encode_png(pixels)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGB" and image.size == (width, height)
        np.testing.assert_array_equal(np.asarray(image), pixels)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 40),
    st.integers(1, 256),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
def test_palette_png_writer_round_trips_through_pillow(
    height: int, width: int, colours: int, seed: int, plain_zlib: bool
) -> None:
    import io
    from unittest import mock

    from PIL import Image

    from featuremaps.render import encode as encoding

    rng = np.random.default_rng(seed)
    indices = rng.integers(0, colours, size=(height, width), dtype=np.uint8)
    palette = rng.integers(0, 256, size=(colours, 3), dtype=np.uint8)
    # Both deflaters: ISA-L's, and zlib's where ISA-L is not installed.
    with mock.patch.object(encoding, "_fast_zlib", None if plain_zlib else encoding._fast_zlib):
        data = encoding.encode_indexed_png(indices, palette)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "P" and image.size == (width, height)
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), palette[indices])


def test_palette_png_writer_refuses_what_is_not_a_palette_picture() -> None:
    from featuremaps._errors import InputError
    from featuremaps.render.encode import encode_indexed_png

    palette = np.zeros((4, 3), dtype=np.uint8)
    with pytest.raises(InputError, match="expected \\(H, W\\) uint8"):
        encode_indexed_png(np.zeros((2, 2), dtype=np.int64), palette)
    with pytest.raises(InputError, match="1 to 256 colours"):
        encode_indexed_png(np.zeros((2, 2), dtype=np.uint8), np.zeros((300, 3), dtype=np.uint8))


def test_deflate_is_a_zlib_stream() -> None:
    import zlib

    from featuremaps.render.encode import deflate

    data = np.random.default_rng(1).integers(0, 4, 100_000, dtype=np.uint8).tobytes()
    for level in (0, 1, 3, 6):
        assert zlib.decompress(deflate(data, level)) == data
