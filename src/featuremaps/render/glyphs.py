"""Text set from cached glyphs: the same coverage mask as Pillow draws for a whole string.

Part of the pure ``render`` stage, under :mod:`featuremaps.render.legend`. Every picture has a
title, range labels and notes that no other picture has, and Pillow lays out and rasterises each
string anew (about 1.3 ms for a title with its size and width: 0.9 s of a densenet121 run's
366 mosaics; set from glyphs here, 0.2 s). The bundled font is set with Pillow's basic layout:
whole-pixel advances, no kerning, and a string's coverage is its glyphs' coverages composed with
"over" (``a + b - a * b / 255``), each glyph at its pen position. So each glyph is rasterised
once (by Pillow) and a string is put together from them here.

That equality is a property of the font and of the Pillow and FreeType in use, not a promise of
theirs: :func:`glyphs_agree` checks it once per size against Pillow on a string of every kind of
character the pictures use, and where it fails every string goes to Pillow, as before.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["Font", "advance", "coverage", "font", "glyphs_agree", "pillow_coverage"]

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

# A string with every kind of character the pictures print: names, shapes, numbers, units.
_CHECK_TEXT = (
    "features.denseblock1.denselayer1.conv1 · Conv2d · (1, 128, 150, 128) [#0] AVTwTo fi "
    "−1.5e+03 … 4.56e-05 ×2 μ≤≥ 32 of 128 channels shown (first 32 by index) %/=<>'\"_|~^*;:,!?"
)


def _shift(anchor: str, width: int) -> int:
    """How far a string of advance ``width`` moves from anchor "l" to ``anchor``'s (Pillow's
    "m" rounds half a pixel to the left)."""
    return {"l": 0, "m": -((width + 1) // 2), "r": -width}[anchor[0]]


@functools.lru_cache(maxsize=8)
def font(size: int) -> Font:
    """The bundled Pillow font at ``size`` pixels (cached: loading it costs ~1 ms)."""
    return ImageFont.load_default(size=size)


def pillow_coverage(text: str, size: int, anchor: str) -> tuple[np.ndarray, int, int]:
    """Pillow's anti-aliased coverage (0..255) of ``text`` and its offset from the anchor point.

    Drawn exactly as ``ImageDraw.text(xy, text, anchor=anchor)`` would draw it at an integer
    ``xy``, only into a mask of its own bounding box.
    """
    f = font(size)
    left, top, right, bottom = (int(v) for v in f.getbbox(text, mode="L", anchor=anchor))
    mask = Image.new("L", (max(right - left, 0), max(bottom - top, 0)))
    if mask.width and mask.height:
        ImageDraw.Draw(mask).text((-left, -top), text, font=f, fill=255, anchor=anchor)
    return np.array(mask), left, top


@functools.lru_cache(maxsize=4096)
def _glyph(char: str, size: int) -> tuple[np.ndarray, int, int, float]:
    cov, left, top = pillow_coverage(char, size, "la")
    return cov.astype(np.int32), left, top, font(size).getlength(char)


def _settable(text: str) -> bool:
    # One line of printable characters: no line breaks (multi-line text) or control codes.
    return text.isprintable()


def advance(text: str, size: int) -> float:
    """The advance width of ``text``: Pillow's ``getlength``, from the glyphs where they agree."""
    if not (_settable(text) and glyphs_agree(size)):
        return font(size).getlength(text)
    return float(sum(_glyph(char, size)[3] for char in text))


def _set(text: str, size: int, anchor: str) -> tuple[np.ndarray, int, int]:
    placed = []
    pen = 0
    for char in text:
        cov, left, top, step = _glyph(char, size)
        if cov.size:
            placed.append((cov, pen + left, top))
        pen += int(step)
    if not placed:
        return np.zeros((0, 0), dtype=np.uint8), 0, 0
    x0 = min(x for _, x, _ in placed)
    y0 = min(y for _, _, y in placed)
    x1 = max(x + c.shape[1] for c, x, _ in placed)
    y1 = max(y + c.shape[0] for c, _, y in placed)
    out = np.zeros((y1 - y0, x1 - x0), dtype=np.int32)
    inked = x0  # right edge of the glyphs placed so far: a glyph right of it overlaps none
    for cov, x, y in placed:
        h, w = cov.shape
        region = out[y - y0 : y - y0 + h, x - x0 : x - x0 + w]
        if x >= inked:
            region[...] = cov
        else:  # "over": a + b - round(a * b / 255)
            over = region * cov
            over += 127
            over //= 255
            region += cov
            region -= over
        inked = max(inked, x + w)
    return out.astype(np.uint8), x0 + _shift(anchor, pen), y0


@functools.lru_cache(maxsize=8)
def glyphs_agree(size: int) -> bool:
    """Whether strings set from glyphs equal Pillow's at ``size`` (checked once per size)."""
    f = font(size)
    if getattr(f, "layout_engine", None) != ImageFont.Layout.BASIC:
        return False
    for char in _CHECK_TEXT:
        if not float(f.getlength(char)).is_integer():
            return False
    if float(sum(_glyph(char, size)[3] for char in _CHECK_TEXT)) != f.getlength(_CHECK_TEXT):
        return False
    for anchor in ("la", "ma", "ra"):
        for text in (_CHECK_TEXT, _CHECK_TEXT[:-1]):  # an even and an odd width, for "m"
            ours, theirs = _set(text, size, anchor), pillow_coverage(text, size, anchor)
            if not _same_ink(ours, theirs):
                return False
    return True


def _same_ink(a: tuple[np.ndarray, int, int], b: tuple[np.ndarray, int, int]) -> bool:
    """Whether two coverages put the same value on every pixel (boxes may differ by empty
    margins, which paint nothing)."""
    (ca, xa, ya), (cb, xb, yb) = a, b
    x0, y0 = min(xa, xb), min(ya, yb)
    x1 = max(xa + ca.shape[1], xb + cb.shape[1])
    y1 = max(ya + ca.shape[0], yb + cb.shape[0])
    canvases = []
    for cov, x, y in ((ca, xa, ya), (cb, xb, yb)):
        canvas = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
        canvas[y - y0 : y - y0 + cov.shape[0], x - x0 : x - x0 + cov.shape[1]] = cov
        canvases.append(canvas)
    return bool(np.array_equal(canvases[0], canvases[1]))


def coverage(text: str, size: int, anchor: str) -> tuple[np.ndarray, int, int]:
    """The coverage of ``text`` and its offset from the anchor point, as
    :func:`pillow_coverage` draws it: set from cached glyphs where they agree with Pillow (one
    line, anchors "la", "ma" and "ra"), else drawn by Pillow. Margins without ink may differ."""
    if anchor in ("la", "ma", "ra") and _settable(text) and glyphs_agree(size):
        return _set(text, size, anchor)
    return pillow_coverage(text, size, anchor)
