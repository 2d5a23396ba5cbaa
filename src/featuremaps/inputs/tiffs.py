"""TIFF files Pillow cannot decode (stage: input): float16 pictures, float colour pictures and
other sample formats, read with tifffile (an optional dependency, the ``slide`` extra).

:func:`read_tiff` gives the first page as ``(H, W, C)`` float32 values by the one rule for read
numbers (:func:`~featuremaps.inputs.values.float32_values`): 8- and 16-bit integers are divided
by their full scale, floats are kept. :mod:`featuremaps.inputs.images` calls it only for a
``.tif``/``.tiff`` file that Pillow does not recognise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featuremaps._errors import InputError
from featuremaps.inputs.checks import one_line
from featuremaps.inputs.values import FloatArray, float32_values

__all__ = ["TIFF_SUFFIXES", "read_tiff"]

TIFF_SUFFIXES = (".tif", ".tiff")


def read_tiff(path: Path) -> tuple[FloatArray, str, str, list[str]]:
    """The first page of the TIFF at ``path`` as ``(H, W, C)`` float32 values, its mode in words
    ("F" for one float sample, "RGB" for three, "4 samples"...), the file in words for
    :attr:`LoadedInput.original`, and the conversions made."""
    try:
        import tifffile
    except ImportError:
        raise InputError(
            f"image '{path}' is a TIFF that Pillow cannot decode (float16, or float samples in "
            f"colour, ...), and reading it needs tifffile, which is not installed; pip install "
            f"'featuremaps[slide]'"
        ) from None
    try:
        with tifffile.TiffFile(path) as tif:
            pages = len(tif.pages)
            page = tif.pages[0]
            axes = str(getattr(page, "axes", ""))
            array = np.asarray(page.asarray())
    except (tifffile.TiffFileError, ValueError, OSError, EOFError, IndexError) as error:
        raise InputError(
            f"image '{path}' has the suffix {path.suffix} but neither Pillow nor tifffile can "
            f"read it as a TIFF ({one_line(error)}); check that it opens in an image viewer, "
            f"or re-export it"
        ) from None
    if "S" in axes and array.ndim == 3:
        array = np.moveaxis(array, axes.index("S"), -1)  # samples per pixel last: (H, W, C)
    elif array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.size == 0 or array.dtype.kind not in "biuf":
        raise InputError(
            f"image '{path}' is a TIFF whose first page has axes {axes or '?'}, shape "
            f"{tuple(array.shape)} and dtype {array.dtype}, expected a picture (Y, X) or "
            f"(Y, X, samples) of real numbers; save it as an RGB or grayscale TIFF or PNG"
        )
    height, width, count = (int(size) for size in array.shape)
    samples = f"{count} sample{'s' if count != 1 else ''} per pixel"
    conversions = [f"read with tifffile: Pillow cannot decode {array.dtype} with {samples}"]
    if pages > 1:
        conversions.append(f"first of {pages} pages used")
    values = float32_values(array, conversions, noun="image", picture=True)
    if array.dtype == np.float32:  # other floats are said cast, with no scaling
        conversions.append("float32 values used as is (no scaling)")
    mode = {1: "F" if array.dtype.kind == "f" else "L", 3: "RGB"}.get(count, samples)
    original = f"TIFF {array.dtype} {samples} {height}x{width} (HxW)"
    return values, mode, original, conversions
