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
from typing import Any, Protocol

import numpy as np
from PIL import Image

from featuremaps._errors import InputError, OptionError

_fast_zlib: Any
try:  # ISA-L's deflate: the same zlib stream, four to five times faster than zlib at level 1
    from isal import isal_zlib as _fast_zlib
except ImportError:  # pragma: no cover - a platform without its wheels: zlib, same pixels
    _fast_zlib = None

__all__ = [
    "ENCODERS",
    "Picture",
    "deflate",
    "encode",
    "encode_indexed_png",
    "encode_masked_png",
    "encode_png",
    "encode_tile",
]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Picture(Protocol):
    """Anything rendered: ``pixels`` as (H, W, 3) uint8 RGB, optionally also ``indices`` into a
    ``palette`` (an exact, smaller encoding of the same picture)."""

    @property
    def pixels(self) -> np.ndarray: ...


def _chunk(kind: bytes, data: bytes | memoryview) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return b"".join((struct.pack(">I", len(data)), kind, data, struct.pack(">I", crc)))


def deflate(data: bytes | memoryview, level: int = 1) -> bytes:
    """A zlib stream of ``data`` (what a PNG's IDAT holds), by ISA-L where it is installed.

    ISA-L (``isal``) writes the same format as zlib four to five times faster at about the same
    size (a densenet121 run's 365 mosaics, 111 megapixels: 0.31 s and 32.9 MB against 1.48 s and
    33.2 MB through Pillow's zlib), and lets other threads run meanwhile. Its levels are 0-3;
    a higher ``level`` is zlib's.
    """
    if _fast_zlib is not None and level <= 3:
        return bytes(_fast_zlib.compress(data, level))
    return zlib.compress(data, level)


def _png_file(header: bytes, rows: np.ndarray, compress_level: int, *extra: bytes) -> bytes:
    """A PNG file: ``header`` (IHDR's data), ``extra`` chunks, then ``rows`` (each row's
    filter byte and its bytes, (H, 1 + row bytes) uint8) deflated into one IDAT."""
    return b"".join(
        (
            _PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            *extra,
            _chunk(b"IDAT", deflate(rows.data, compress_level)),
            _chunk(b"IEND", b""),
        )
    )


def encode_png(pixels: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 picture (fast compression by default).

    The file is put together here, not by Pillow: every row is stored with the PNG "Up" filter
    (its difference from the row above, one numpy subtraction) and deflated (:func:`deflate`).
    Pillow
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
    return _png_file(header, filtered, compress_level)


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

    A palette PNG with exactly these entries: nothing is quantised, and it decodes to
    ``palette[indices]``. Rows are stored unfiltered (as libpng and Pillow store palette
    pictures: differences of indices mean nothing) and deflated in one piece (:func:`deflate`).
    """
    arr = np.asarray(indices)
    colours = np.ascontiguousarray(palette, dtype=np.uint8).reshape(-1, 3)
    if arr.dtype != np.uint8 or arr.ndim != 2 or not 1 <= len(colours) <= 256:
        raise InputError(
            f"indices of {arr.dtype} {arr.shape} into a palette of {len(colours)} colours; "
            "expected (H, W) uint8 into 1 to 256 colours"
        )
    height, width = arr.shape
    if not height or not width:  # no PNG of an empty picture: Pillow says so
        image = Image.fromarray(np.ascontiguousarray(arr))
        image.putpalette(colours.tobytes())
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    rows = np.empty((height, width + 1), dtype=np.uint8)
    rows[:, 0] = 0  # filter type "None" before each row
    rows[:, 1:] = arr
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)  # 8-bit palette
    return _png_file(header, rows, compress_level, _chunk(b"PLTE", colours.tobytes()))


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
