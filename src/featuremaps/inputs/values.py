"""The one rule for the values an input is fed with (stage: input): numbers read from a file
become float32, and ``conversions`` says how.

Pictures hold integers at a full scale, 255 for 8 bits and 65535 for 16, and are divided by it
so that every picture is fed in [0, 1], whether it came as an image file (:func:`unit_scaled`)
or as an array (:func:`float32_values` with ``picture``). Arrays that are not pictures, signals,
keep their values and are only cast.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "EIGHT_BIT",
    "PICTURE_DTYPES",
    "SIXTEEN_BIT",
    "FloatArray",
    "float32_values",
    "unit_scaled",
]

FloatArray = npt.NDArray[np.float32]

EIGHT_BIT = 255
SIXTEEN_BIT = 65535
# Unsigned integer arrays hold pictures at these full scales, as 8- and 16-bit image files do.
PICTURE_DTYPES = {"u1": EIGHT_BIT, "u2": SIXTEEN_BIT}


def unit_scaled(pixels: FloatArray, full_scale: int) -> FloatArray:
    """Integer pixels, already held as float32, divided by their full scale (:data:`EIGHT_BIT`
    or :data:`SIXTEEN_BIT`): a picture in [0, 1]. A new array."""
    scaled: FloatArray = pixels / np.float32(full_scale)
    return scaled


def float32_values(
    array: np.ndarray,
    conversions: list[str],
    *,
    noun: str,
    picture: bool,
    as_is: bool = False,
) -> FloatArray:
    """``array`` as float32 by the rule for values read from arrays; ``conversions`` gets what
    was done, and how many NaN/Inf values the result holds (they are fed as they are; ``noun``
    names the input in that line: "array", "signal", "volume").

    With ``picture`` (images and volumes saved as arrays), integers of a picture dtype are divided
    by their full scale (as an image file's would be; not with ``as_is``, ``--as-is``), bools
    become 0 and 1, anything else is cast, and the float64 values too large for float32 (they
    become Inf) are counted. Without it (signals), every dtype is cast with no scaling and only
    the cast is reported.
    """
    wide = picture and array.dtype.kind == "f" and array.dtype.itemsize > 4
    was_finite = np.isfinite(array) if wide else None
    with np.errstate(over="ignore"):
        values = array.astype(np.float32)
    full_scale = None if as_is or not picture else PICTURE_DTYPES.get(array.dtype.str[1:])
    if picture and array.dtype == np.bool_:
        conversions.append("bool values cast to float32 (False -> 0, True -> 1)")
    elif full_scale is not None:
        values /= np.float32(full_scale)
        conversions.append(
            f"{array.dtype} values divided by {full_scale} (read as a {array.dtype.itemsize * 8}"
            f"-bit picture, like an image file; --as-is keeps 0..{full_scale})"
        )
    elif array.dtype != np.float32:
        conversions.append(f"{array.dtype} values cast to float32 (no scaling)")
    if was_finite is not None:
        overflowed = int(np.count_nonzero(was_finite & ~np.isfinite(values)))
        if overflowed:
            conversions.append(f"{overflowed:,} values too large for float32 became Inf")
    not_finite = int(np.count_nonzero(~np.isfinite(values)))
    if not_finite:
        conversions.append(f"{noun} holds {not_finite:,} NaN/Inf values (fed as they are)")
    return values
