"""Encoding: the one place a rendered picture becomes bytes (PNG; JPEG for slide tiles).

End of the pure render stage (… → render → **encode** → io). Pictures are arrays; this module
turns them into file bytes in memory, and :mod:`featuremaps.io` writes them. A new format (TIFF,
SVG legends) is one more function here and one more entry in :data:`ENCODERS`. The Deep Zoom
tiles of a slide run are encoded here too (:func:`encode_tile`), one tile at a time.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Protocol

import numpy as np
from PIL import Image

from featuremaps._errors import InputError, OptionError

__all__ = [
    "ENCODERS",
    "Picture",
    "encode",
    "encode_indexed_png",
    "encode_masked_png",
    "encode_png",
    "encode_tile",
]

Z_RLE = 3  # zlib.Z_RLE, as Pillow's PNG writer takes it (compress_type)
RLE_FROM_PIXELS = 1 << 20


class Picture(Protocol):
    """Anything rendered: ``pixels`` as (H, W, 3) uint8 RGB, optionally also ``indices`` into a
    ``palette`` (an exact, smaller encoding of the same picture)."""

    @property
    def pixels(self) -> np.ndarray: ...


def encode_png(pixels: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 picture (fast compression by default)."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"pixels of {arr.dtype} {arr.shape}; expected (H, W, 3) uint8")
    buf = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(arr))
    image.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_masked_png(pixels: np.ndarray, inside: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 picture with an alpha channel: opaque where ``inside``
    (an (H, W) bool mask) holds, fully transparent elsewhere (the colour there is kept)."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"pixels of {arr.dtype} {arr.shape}; expected (H, W, 3) uint8")
    alpha = np.where(np.asarray(inside, dtype=bool), np.uint8(255), np.uint8(0))[..., None]
    buf = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(np.concatenate([arr, alpha], axis=2)), "RGBA")
    image.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_indexed_png(indices: np.ndarray, palette: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of a palette picture: (H, W) uint8 ``indices`` into an (n <= 256, 3) ``palette``.

    Saved as a palette ("P") image with exactly these entries: nothing is quantised, it decodes
    to ``palette[indices]``, and Pillow skips the per-row filter search it does for RGB, which
    dominated encoding time.
    """
    image = Image.fromarray(np.ascontiguousarray(indices))
    # An "L" image given a palette becomes a "P" image with exactly these entries.
    image.putpalette(np.ascontiguousarray(palette, dtype=np.uint8).tobytes())
    buf = io.BytesIO()
    # Large mosaics (full-size maps, where encoding time goes) use zlib's run-length strategy:
    # about twice as fast as the default at the same size. Small ones, mostly enlarged cells
    # that repeat row after row, compress far better with the default strategy.
    strategy = Z_RLE if indices.size >= RLE_FROM_PIXELS else -1
    image.save(buf, format="PNG", compress_level=compress_level, compress_type=strategy)
    return buf.getvalue()


def encode_tile(pixels: np.ndarray, fmt: str) -> bytes:
    """PNG (RGB or RGBA) or JPEG bytes of one Deep Zoom tile."""
    buf = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(pixels))
    if fmt == "png":
        image.save(buf, format="PNG", compress_level=1)
    else:
        image.convert("RGB").save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _png(picture: Picture) -> bytes:
    indices = getattr(picture, "indices", None)
    palette = getattr(picture, "palette", None)
    if indices is not None and palette is not None:
        return encode_indexed_png(indices, palette)
    return encode_png(picture.pixels)


#: Encoders by format name.
ENCODERS: dict[str, Callable[[Picture], bytes]] = {"png": _png}


def encode(picture: Picture, fmt: str = "png") -> bytes:
    """The bytes of ``picture`` in format ``fmt`` (one of :data:`ENCODERS`)."""
    encoder = ENCODERS.get(fmt)
    if encoder is None:
        raise OptionError(f"unknown picture format {fmt!r}; expected one of {', '.join(ENCODERS)}")
    return encoder(picture)
