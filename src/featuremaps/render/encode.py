"""Encoding: the one place a rendered picture becomes bytes (PNG; JPEG for slide tiles).

End of the pure render stage (… → render → **encode** → io). Pictures are arrays; this module
turns them into file bytes in memory, and :mod:`featuremaps.io` writes them. A new format (TIFF,
SVG legends) is one more function here and one more entry in :data:`ENCODERS`. The Deep Zoom
tiles of a slide run are encoded here too (:func:`encode_tile`), one tile at a time.
"""

from __future__ import annotations

import io
import struct
import zlib
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

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
Z_RLE = 3  # zlib.Z_RLE, as Pillow's PNG writer takes it (compress_type)
RLE_FROM_PIXELS = 1 << 20


class Picture(Protocol):
    """Anything rendered: ``pixels`` as (H, W, 3) uint8 RGB, optionally also ``indices`` into a
    ``palette`` (an exact, smaller encoding of the same picture)."""

    @property
    def pixels(self) -> np.ndarray: ...


def _chunk(kind: bytes, data: bytes | memoryview) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return b"".join((struct.pack(">I", len(data)), kind, data, struct.pack(">I", crc)))


def encode_png(pixels: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 picture (fast compression by default).

    The file is put together here, not by Pillow: every row is stored with the PNG "Up" filter
    (its difference from the row above, one numpy subtraction) and deflated by zlib. Pillow
    tries all five filters on every row of an RGB picture, which made encoding two to three
    times slower at about the same size (a token picture of 815 x 768: 5 ms and 74 KB against
    13-19 ms and 69 KB; the bundled photo: 14 ms and 484 KB against 25 ms and 494 KB). Any PNG
    reader gives back exactly ``pixels``.
    """
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"pixels of {arr.dtype} {arr.shape}; expected (H, W, 3) uint8")
    height, width = arr.shape[:2]
    if not height or not width:  # no PNG of an empty picture: Pillow says so
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
        return buf.getvalue()
    rows = np.ascontiguousarray(arr).reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # the "Up" filter type, before each row
    filtered[0, 1:] = rows[0]  # the row above the first is zeros
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # modulo 256, as PNG defines it
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"".join(
        (
            _PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(filtered.data, compress_level)),
            _chunk(b"IEND", b""),
        )
    )


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
