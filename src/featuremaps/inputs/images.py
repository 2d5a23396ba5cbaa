"""Image files in (stage: input): decode with Pillow, apply EXIF orientation, turn every pixel
mode into gray or RGB float values, and feed them.

Pillow's decompression-bomb protection stays on, and every way a file can fail to decode becomes
one :class:`~featuremaps.InputError` that says what to do. The suffixes read here
(:func:`readable_suffixes`) are the ones the commands that search folders take.
"""

from __future__ import annotations

import re
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from featuremaps._errors import InputError
from featuremaps.inputs.checks import (
    channel_count,
    check_file,
    layer_phrase,
    one_line,
    unreadable,
)
from featuremaps.inputs.display import for_display
from featuremaps.inputs.loaded import LoadedInput, finish
from featuremaps.inputs.model_input import ANY_MODEL, ModelInput
from featuremaps.inputs.tiffs import TIFF_SUFFIXES, read_tiff
from featuremaps.inputs.values import EIGHT_BIT, SIXTEEN_BIT, FloatArray, unit_scaled

__all__ = [
    "IMAGE_SUFFIXES",
    "decode",
    "load_image",
    "not_an_image",
    "readable_suffixes",
    "sample_image_path",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif")
# Pillow formats it only identifies (stubs without a decoder here) or decodes through an outside
# program (Ghostscript): files with these suffixes are not taken from folders.
_UNDECODED_FORMATS = frozenset({"BUFR", "GRIB", "HDF5", "WMF", "EPS", "MPEG"})
# Pillow's decoders signal a damaged file with any of these; all of them mean "cannot decode".
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)
_EXIF_ORIENTATION_TAG = 0x0112
_EXIF_ORIENTATIONS = {
    2: "mirrored left-right",
    3: "rotated 180°",
    4: "mirrored top-bottom",
    5: "transposed",
    6: "rotated 90° clockwise",
    7: "transversed",
    8: "rotated 90° counter-clockwise",
}
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_INT32_MAX = 2_147_483_647
# Pixel modes with an alpha channel; a model that takes 4 channels is fed them as RGBA.
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def readable_suffixes() -> tuple[str, ...]:
    """Every suffix an input file may have: the formats Pillow decodes, and ``.npy``.

    ``featuremaps run`` reads any file Pillow can open; commands that search folders
    (``stats``, ``ablate``) take exactly these suffixes, so both read the same formats.
    """
    Image.init()
    found = {
        suffix.lower()
        for suffix, kind in Image.registered_extensions().items()
        if kind in Image.OPEN and kind not in _UNDECODED_FORMATS
    }
    return tuple(sorted(found | {*IMAGE_SUFFIXES, ".npy", ".wav"}))


def sample_image_path() -> Path:
    """The project's default image: matplotlib's bundled photo of Grace Hopper (512 wide, 600 high).

    It ships with matplotlib, which featuremaps depends on anyway, so a first run needs no download.
    The path is found without importing matplotlib (which takes about 0.3 s): it is the file
    ``matplotlib.cbook.get_sample_data("grace_hopper.jpg")`` opens, in the package's ``mpl-data``.
    """
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
        if path.is_file():
            return path
    import matplotlib.cbook  # another layout of the package: ask matplotlib itself

    return Path(str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))


def _bomb(path: Path, error: Exception) -> InputError:
    # Pillow reports the size only inside its message: "Image size (N pixels) exceeds limit ...".
    found = re.search(r"\((\d+) pixels\)", str(error))
    pixels = f"{int(found[1]):,} pixels" if found else "more pixels"
    limit = Image.MAX_IMAGE_PIXELS
    limit_text = f"{limit:,}" if limit is not None else "its limit"
    return InputError(
        f"image '{path}' has {pixels}, more than Pillow's safety limit of {limit_text} "
        f"(decompression-bomb protection); downscale it or crop a region first"
    )


def _damaged(path: Path, error: BaseException) -> InputError:
    return InputError(
        f"image '{path}' is damaged or truncated and cannot be decoded ({one_line(error)}); "
        f"re-export or re-download it"
    )


def not_an_image(path: Path) -> InputError:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return InputError(
            f"image '{path}' has the suffix {path.suffix} but Pillow cannot recognise its contents "
            f"as an image; check that it opens in an image viewer, or re-export it"
        )
    return InputError(
        f"input '{path}' has the suffix '{path.suffix}', which is neither an image "
        f"({' '.join(IMAGE_SUFFIXES)}) nor .npy, and Pillow cannot read it; convert it to PNG "
        f"or save an array with numpy.save"
    )


def decode(path: Path) -> tuple[Image.Image, str, list[str]]:
    """Open and fully decode the image, with every failure turned into one InputError."""
    conversions: list[str] = []
    try:
        handle = path.open("rb")
    except OSError as error:
        raise unreadable(path, error) from None
    with handle, warnings.catch_warnings():
        # Pillow only warns between its limit and twice its limit; that is a bomb to us as well.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            opened = Image.open(handle)
        except UnidentifiedImageError:
            raise not_an_image(path) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise _bomb(path, error) from None
        except _DECODE_ERRORS as error:
            raise _damaged(path, error) from None
        with opened:
            width, height = opened.size
            original = f"{opened.format or path.suffix.lstrip('.').upper()} {opened.mode} "
            original += f"{height}x{width} (HxW)"
            try:
                frames = int(getattr(opened, "n_frames", 1))
                orientation = opened.getexif().get(_EXIF_ORIENTATION_TAG, 1)
                # exif_transpose returns a decoded copy; load() makes sure the whole file was
                # decoded here, inside the try, so truncation cannot surface later.
                image = ImageOps.exif_transpose(opened)
                image.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
                raise _bomb(path, error) from None
            except _DECODE_ERRORS as error:
                raise _damaged(path, error) from None
    if frames > 1:
        conversions.append(f"first of {frames} frames used")
    if orientation in _EXIF_ORIENTATIONS:
        conversions.append(f"EXIF orientation applied ({_EXIF_ORIENTATIONS[orientation]})")
    return image, original, conversions


def _has_alpha(image: Image.Image) -> bool:
    """Whether the image carries an alpha channel (or a palette entry that is transparent)."""
    if image.mode in _ALPHA_MODES:
        return True
    return image.mode == "P" and "transparency" in image.info


def _image_values(
    image: Image.Image, path: Path, conversions: list[str], *, keep_alpha: bool = False
) -> tuple[FloatArray, str]:
    """The pixels as (H, W, C) float32, C being 1 (gray) or 3 (RGB), and the resulting mode.

    With ``keep_alpha`` (a model that takes 4 channels), an image with an alpha channel gives
    4 channels (RGBA) instead, alpha last, scaled as the colours are."""
    mode = image.mode
    if keep_alpha and _has_alpha(image):
        if mode != "RGBA":
            image = image.convert("RGBA")
            how = {
                "LA": "LA -> RGBA (gray repeated 3x, alpha kept)",
                "La": "La -> RGBA (premultiplied alpha undone, gray repeated 3x, alpha kept)",
                "RGBa": "RGBa -> RGBA (premultiplied alpha undone)",
            }
            conversions.append(how.get(mode, f"palette {mode} -> RGBA"))
        return unit_scaled(np.array(image, dtype=np.float32), EIGHT_BIT), "RGBA"
    if mode == "1":
        conversions.append("1-bit black/white read as 0 and 1")
        return np.array(image, dtype=np.float32)[:, :, None], "1"
    if mode in _SIXTEEN_BIT_MODES:
        # Pillow cannot convert 16-bit modes without losing bits; take the integers directly.
        conversions.append("16-bit values divided by 65535")
        return unit_scaled(np.array(image, dtype=np.float32)[:, :, None], SIXTEEN_BIT), mode
    if mode == "I":
        values = np.array(image, dtype=np.int64)
        if values.size and values.min() >= 0 and values.max() <= SIXTEEN_BIT:
            conversions.append("32-bit integer values (all within 0..65535) divided by 65535")
            return unit_scaled(values.astype(np.float32)[:, :, None], SIXTEEN_BIT), mode
        # Dividing by the type's range, not by this image's maximum, keeps the scale comparable
        # between images; the report says so, so the user can rescale if that was not meant.
        conversions.append(
            f"32-bit integer values (some outside 0..65535) divided by {_INT32_MAX:,} "
            f"(the int32 maximum)"
        )
        return (values / _INT32_MAX).astype(np.float32)[:, :, None], mode
    if mode == "F":
        conversions.append("32-bit float values used as is (no scaling)")
        return np.array(image, dtype=np.float32)[:, :, None], mode
    if mode in ("L", "LA"):
        if mode == "LA":
            image = image.convert("L")
            conversions.append("LA -> L (alpha dropped)")
        return unit_scaled(np.array(image, dtype=np.float32)[:, :, None], EIGHT_BIT), "L"
    if mode != "RGB":
        if mode in ("P", "PA"):
            has_alpha = mode == "PA" or "transparency" in image.info
            target = "RGBA" if has_alpha else "RGB"
            image = image.convert(target)
            conversions.append(f"palette {mode} -> {target}")
            mode = target
        try:
            converted = image.convert("RGB")
        except ValueError:
            raise InputError(
                f"image '{path}' has the pixel mode {mode}, which featuremaps cannot convert to "
                f"RGB; save it as an RGB or grayscale PNG first"
            ) from None
        if mode in ("RGBA", "RGBa"):
            conversions.append(f"{mode} -> RGB (alpha dropped)")
        elif mode != "RGB":
            conversions.append(f"{mode} -> RGB")
        image = converted
    return unit_scaled(np.array(image, dtype=np.float32), EIGHT_BIT), "RGB"


def _pillow_reads(path: Path) -> bool:
    """Whether Pillow recognises the file (only opened, not decoded: cheap)."""
    try:
        with Image.open(path):
            return True
    except UnidentifiedImageError:
        return False
    except (OSError, *_DECODE_ERRORS, Image.DecompressionBombError):
        return True  # Pillow knows it; decode() says what is wrong with it


def load_image(path: str | Path, spec: ModelInput = ANY_MODEL) -> LoadedInput:
    """Load an image file (JPEG, PNG, TIFF, BMP, WebP, ...) as the tensor to feed.

    8-bit values are divided by 255, 16-bit values by 65535, float images are used as is. A TIFF
    Pillow cannot decode (float16, float colour) is read with tifffile, the ``slide`` extra. Colour
    images give 3 channels and gray ones 1; ``spec.channels`` of 1 or 3 converts between the two
    (luma or repetition). An image with an alpha channel (RGBA, LA, a palette with transparency)
    gives 4 channels, RGBA, when ``spec.channels`` is 4, and drops its alpha otherwise. Any
    other count is an error because a picture cannot supply it.
    """
    channels, layer_name = spec.channels, spec.layer_name
    where = check_file(path, channels)
    if where.suffix.lower() in TIFF_SUFFIXES and not _pillow_reads(where):
        hwc, mode, original, conversions = read_tiff(where)
    else:
        image, original, conversions = decode(where)
        hwc, mode = _image_values(image, where, conversions, keep_alpha=channels == 4)
    count = hwc.shape[2]
    if mode == "RGBA":
        conversions.append(
            f"alpha kept as the 4th channel (RGBA) because {layer_phrase(layer_name)} takes "
            f"{channel_count(4)}"
        )
        display = for_display(hwc[:, :, :3])  # the colours; alpha is fed, not drawn
        return finish(
            hwc, where, "image", original, conversions, spec.preprocessing, display=display
        )
    if channels is not None and channels != count:
        because = f"because {layer_name or layer_phrase(None)} takes {channel_count(channels)}"
        if channels == 1:
            # ITU-R 601-2 luma, the same weights as Pillow's RGB -> L conversion, on float values.
            weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
            hwc = (hwc @ weights)[:, :, None].astype(np.float32)
            conversions.append(
                f"RGB -> grayscale (ITU-R 601-2 luma 0.299 R + 0.587 G + 0.114 B) {because}"
            )
        elif channels == 3:
            hwc = np.repeat(hwc, 3, axis=2)
            conversions.append(f"grayscale {mode} -> RGB (channel repeated 3x) {because}")
        elif channels == 4:
            raise InputError(
                f"image '{where}' has {channel_count(count)} ({mode}) and no alpha channel, but "
                f"{layer_phrase(layer_name)} takes 4; give an RGBA image (or a .npy array with 4 "
                f"channels), or a model that takes 1 or 3"
            )
        else:
            raise InputError(
                f"image '{where}' has {channel_count(count)} ({mode}) but "
                f"{layer_phrase(layer_name)} takes {channels}; give a .npy array with {channels} "
                f"channels, or a model that takes 1 or 3"
            )
    return finish(hwc, where, "image", original, conversions, spec.preprocessing)
