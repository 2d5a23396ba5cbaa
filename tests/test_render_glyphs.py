"""Strings set from cached glyphs put the same ink on every pixel as Pillow drawing them whole."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featuremaps.render import glyphs
from featuremaps.render.legend import CAPTION_FONT_SIZE, LEGEND_FONT_SIZE

_CHARS = st.sampled_from(
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    + list(" .,:;·…|+-−×()[]{}_#%/=<>'\"μ≤≥~^*!?@&$€°²é")
)


def _ink(cov: np.ndarray, x: int, y: int, size: int = 64) -> np.ndarray:
    """``cov`` placed at its offset on a fixed canvas, so boxes with empty margins compare."""
    canvas = np.zeros((size, 1200), dtype=np.uint8)
    canvas[y + 20 : y + 20 + cov.shape[0], x + 600 : x + 600 + cov.shape[1]] = cov
    return canvas


@pytest.mark.parametrize("size", [CAPTION_FONT_SIZE, LEGEND_FONT_SIZE])
def test_the_bundled_font_is_set_from_glyphs(size: int) -> None:
    # Pillow and FreeType are pinned: the fast path must be the one taken, not silently lost.
    assert glyphs.glyphs_agree(size)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_CHARS, min_size=1, max_size=70).map("".join),
    st.sampled_from([CAPTION_FONT_SIZE, LEGEND_FONT_SIZE]),
    st.sampled_from(["la", "ma", "ra"]),
)
def test_strings_from_glyphs_equal_pillow(text: str, size: int, anchor: str) -> None:
    ours = glyphs.coverage(text, size, anchor)
    theirs = glyphs.pillow_coverage(text, size, anchor)
    np.testing.assert_array_equal(_ink(*ours), _ink(*theirs))
    assert glyphs.advance(text, size) == glyphs.font(size).getlength(text)


@pytest.mark.parametrize("text", ["two\nlines", "tab\there", ""])
def test_what_glyphs_cannot_set_goes_to_pillow(text: str) -> None:
    ours = glyphs.coverage(text, LEGEND_FONT_SIZE, "la")
    theirs = glyphs.pillow_coverage(text, LEGEND_FONT_SIZE, "la")
    np.testing.assert_array_equal(_ink(*ours), _ink(*theirs))


def test_an_anchor_other_than_the_three_goes_to_pillow() -> None:
    ours = glyphs.coverage("y-axis", LEGEND_FONT_SIZE, "ls")
    theirs = glyphs.pillow_coverage("y-axis", LEGEND_FONT_SIZE, "ls")
    assert ours[1:] == theirs[1:]
    np.testing.assert_array_equal(ours[0], theirs[0])


def test_a_disagreeing_font_sends_every_string_to_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = glyphs.pillow_coverage

    def counted(text: str, size: int, anchor: str) -> tuple[np.ndarray, int, int]:
        calls.append(text)
        return real(text, size, anchor)

    monkeypatch.setattr(glyphs, "glyphs_agree", lambda size: False)
    monkeypatch.setattr(glyphs, "pillow_coverage", counted)
    glyphs.coverage("layer4.1.conv2 · Conv2d", LEGEND_FONT_SIZE, "la")
    assert calls == ["layer4.1.conv2 · Conv2d"]


@pytest.mark.parametrize("size", [CAPTION_FONT_SIZE, LEGEND_FONT_SIZE])
@pytest.mark.parametrize("anchor", ["la", "ma", "ra"])
def test_glyphs_whose_ink_meets_the_ink_before_them_are_set_over_it(size: int, anchor: str) -> None:
    # "f)" and "f;" overlap in ink at both sizes, and "4." in boxes at the legend's size: the
    # glyph after is set "over" what is there. Compared with Pillow directly, not through
    # coverage(), which would hand every string to Pillow if glyphs were set wrong (glyphs_agree
    # checks them too).
    text = "features.leaf (leaf) · f; 14.4 · Conv2d · (1, 64, 18, 16)"
    ours = glyphs._set(text, size, anchor)
    theirs = glyphs.pillow_coverage(text, size, anchor)
    np.testing.assert_array_equal(_ink(*ours), _ink(*theirs))
