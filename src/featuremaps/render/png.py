"""PNG encoding of rendered pixels (bytes in memory; writing them is ``featuremaps.io``'s job)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from featuremaps._errors import InputError

__all__ = ["encode_png"]


def encode_png(pixels: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 picture (fast compression by default)."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"pixels of {arr.dtype} {arr.shape}; expected (H, W, 3) uint8")
    buf = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(arr))
    image.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
