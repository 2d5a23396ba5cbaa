"""Read one image or array from disk and turn it into the exact tensor the model will see.

This is the first stage of the flow **input → model → capture → render → io**. Everything the
later stages know about the input comes from the :class:`LoadedInput` built here: the fed tensor,
a picture of the input as given (for reports and overlays), and a list, in words, of every
conversion applied on the way (mode changes, channel changes, scaling, resizing, normalisation).
Nothing is converted silently: if a value changed, ``conversions`` says how and why.

Images are read with Pillow (decompression-bomb protection stays on), ``.npy`` arrays with numpy
(never unpickled). Preprocessing is a small frozen description (:class:`Preprocessing`) that can
come from command-line options (:func:`parse_size`, :func:`parse_normalize`) or from a torchvision
weights entry (:func:`preprocessing_from_weights`).
"""

from __future__ import annotations

import math
import re
import struct
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from featuremaps._errors import InputError, OptionError

__all__ = [
    "IMAGE_SUFFIXES",
    "LoadedInput",
    "Preprocessing",
    "expected_axes",
    "expected_channels",
    "fed_picture",
    "load_array",
    "load_clip",
    "load_image",
    "load_input",
    "load_signal",
    "load_volume",
    "load_wav",
    "parse_normalize",
    "parse_size",
    "preprocessing_from_timm",
    "preprocessing_from_weights",
    "readable_suffixes",
    "sample_image_path",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif")
# Pillow formats it only identifies (stubs without a decoder here) or decodes through an outside
# program (Ghostscript): files with these suffixes are not taken from folders.
_UNDECODED_FORMATS = frozenset({"BUFR", "GRIB", "HDF5", "WMF", "EPS", "MPEG"})

_NO_PREPROCESSING_SOURCE = "ToTensor (values scaled to [0, 1], no normalisation)"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
# The first bytes of every .npy file, whatever its format version.
_NPY_MAGIC = b"\x93NUMPY"
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

FloatArray = npt.NDArray[np.float32]
Transform = Callable[[torch.Tensor], torch.Tensor]


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


# --------------------------------------------------------------------------------------------------
# Preprocessing


def _size_is_valid(value: object) -> bool:
    # bool is an int subclass; True as a size is a bug upstream, not a size of 1.
    def positive_int(item: object) -> bool:
        return isinstance(item, int) and not isinstance(item, bool) and item > 0

    if isinstance(value, tuple):
        return len(value) == 2 and all(positive_int(item) for item in value)
    return positive_int(value)


def _size_text(size: int | tuple[int, int]) -> str:
    return str(size) if isinstance(size, int) else f"{size[0]}x{size[1]} (HxW)"


def _numbers_text(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{value:g}" for value in values) + ")"


@dataclass(frozen=True)
class Preprocessing:
    """What is done to the [0, 1] float tensor before it is fed: resize, centre crop, normalise.

    The default does nothing, which matches torchvision's ``ToTensor``: 8-bit images are divided by
    255 and nothing else. ``resize`` follows torchvision's ``Resize``: an int sets the shorter side
    (keeping the aspect ratio), a ``(height, width)`` pair sets the exact size. ``crop`` takes the
    centre of the resized picture. ``mean``/``std`` are both given or both ``None``.
    """

    resize: int | tuple[int, int] | None = None
    crop: int | tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    source: str = _NO_PREPROCESSING_SOURCE
    interpolation: str = "bilinear"
    # True for a recipe that belongs to the model (its weights' transforms, timm's data config,
    # a zoo model's own): arrays that are visibly already preprocessed then skip it. A recipe
    # given by the user (options, or built in code) is always applied.
    from_model: bool = False
    # Feed inputs exactly as read: arrays keep their values (no dtype scaling), images are only
    # scaled to [0, 1]; no resize, crop or normalisation.
    as_is: bool = False
    # Set only by preprocessing_from_weights for transform classes whose steps cannot be read off
    # as fields; then that object is called instead of the fields above.
    _transform: Transform | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if value is not None and not _size_is_valid(value):
                raise OptionError(
                    f"{name} {value!r} is not a valid size; expected a positive integer (shorter "
                    f"side) or a (height, width) pair of positive integers, e.g. 224 or (224, 320)"
                )
        if (self.mean is None) != (self.std is None):
            raise OptionError(
                f"normalisation needs both mean and std, got mean {self.mean!r} and std "
                f"{self.std!r}; give both or neither"
            )
        if self.mean is not None and self.std is not None:
            # Accept lists from callers but store tuples, so the object stays hashable and frozen.
            mean = tuple(float(value) for value in self.mean)
            std = tuple(float(value) for value in self.std)
            object.__setattr__(self, "mean", mean)
            object.__setattr__(self, "std", std)
            if not mean or len(mean) != len(std):
                raise OptionError(
                    f"normalisation has {len(mean)} mean values but {len(std)} std values; give "
                    f"one std per mean (at least one of each)"
                )
            if not all(math.isfinite(value) for value in mean):
                raise OptionError(
                    f"normalisation mean {_numbers_text(mean)} holds a value that is not a finite "
                    f"number; give finite numbers such as 0.485,0.456,0.406"
                )
            if not all(math.isfinite(value) and value > 0 for value in std):
                raise OptionError(
                    f"normalisation std {_numbers_text(std)} holds a value that is not a positive "
                    f"finite number; every std must be > 0, e.g. 0.229,0.224,0.225"
                )
        if self.as_is and self.steps():
            raise OptionError(
                "'as is' feeds inputs exactly as read, so it cannot also resize, crop or "
                "normalise; drop the other preprocessing steps, or do not ask for 'as is'"
            )
        if self.interpolation not in _INTERPOLATIONS:
            raise OptionError(
                f"interpolation {self.interpolation!r} is not known; expected one of "
                f"{', '.join(_INTERPOLATIONS)}"
            )

    @classmethod
    def unchanged(cls) -> Preprocessing:
        """Feed inputs exactly as read (``--as-is``): arrays keep their values, images are only
        scaled to [0, 1]; no resize, crop or normalisation."""
        return cls(source="as is (asked for): inputs fed exactly as read", as_is=True)

    def steps(self) -> list[str]:
        """The steps in words, in the order they run; empty when nothing is done."""
        out: list[str] = []
        if self._transform is not None:
            out.append(f"{type(self._transform).__name__} (called as is)")
        if self.resize is not None:
            what = "shorter side" if isinstance(self.resize, int) else "to"
            out.append(f"resize {what} {_size_text(self.resize)} ({self.interpolation})")
        if self.crop is not None:
            out.append(f"centre crop {_size_text(self.crop)}")
        if self.mean is not None and self.std is not None:
            out.append(f"normalise mean {_numbers_text(self.mean)} std {_numbers_text(self.std)}")
        return out

    def summary(self) -> str:
        """One line for the terminal: what is done to every input, and where that came from."""
        steps = self.steps()
        if self.as_is:
            return "none, inputs fed as read (arrays keep their values; images scaled to [0, 1])"
        if not steps:
            known = self.source != _NO_PREPROCESSING_SOURCE
            return (
                f"{self.source if known else 'none known for this model'}: images scaled to "
                "[0, 1] at full size, arrays fed as read (8/16-bit integers scaled to [0, 1]), "
                "no normalisation"
            )
        return f"{', '.join(steps)} ({self.source})"

    def describe(self) -> dict[str, object]:
        """A JSON-able summary for reports: every step, and where the recipe came from."""

        def size(value: int | tuple[int, int] | None) -> object:
            return list(value) if isinstance(value, tuple) else value

        return {
            "resize": size(self.resize),
            "crop": size(self.crop),
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "interpolation": self.interpolation,
            "transform": None if self._transform is None else type(self._transform).__name__,
            "source": self.source,
            "from_model": self.from_model,
            "as_is": self.as_is,
        }

    def final_size(self) -> tuple[int, int] | None:
        """The (height, width) every input comes out at, when the recipe fixes it."""
        if self.crop is not None:
            return (self.crop, self.crop) if isinstance(self.crop, int) else self.crop
        if isinstance(self.resize, tuple):
            return self.resize
        return None


def _size_from_recipe(value: object) -> int | tuple[int, int] | None:
    # torchvision's presets store sizes as one- or two-element lists.
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and len(value) in (1, 2):
        items = [int(item) for item in value]
        return items[0] if len(items) == 1 else (items[0], items[1])
    return None


def preprocessing_from_weights(weights: object) -> Preprocessing:
    """The preprocessing a torchvision weights entry expects, e.g. ``ResNet18_Weights.DEFAULT``.

    ``weights.transforms()`` only builds the recipe object; it never downloads the weights.
    Classification and segmentation recipes are read into plain fields (so reports can show them);
    any other recipe object is kept and called on the [0, 1] float tensor as it is.
    """
    make = getattr(weights, "transforms", None)
    if not callable(make):
        raise OptionError(
            f"weights {weights!r} have no transforms(); expected a torchvision weights entry such "
            f"as torchvision.models.ResNet18_Weights.DEFAULT"
        )
    transform = make()
    source = f"transforms of {weights}"
    try:
        from torchvision.transforms import _presets

        readable: tuple[type, ...] = (_presets.ImageClassification, _presets.SemanticSegmentation)
    except (ImportError, AttributeError):
        # A torchvision that moved its presets: fall back to calling the recipe object.
        readable = ()
    if isinstance(transform, readable):
        interpolation = getattr(transform, "interpolation", None)
        return Preprocessing(
            resize=_size_from_recipe(getattr(transform, "resize_size", None)),
            crop=_size_from_recipe(getattr(transform, "crop_size", None)),
            mean=tuple(float(value) for value in getattr(transform, "mean", ())),
            std=tuple(float(value) for value in getattr(transform, "std", ())),
            source=source,
            interpolation=str(getattr(interpolation, "value", "bilinear")),
            from_model=True,
        )
    if not callable(transform):
        raise OptionError(
            f"weights {weights} gave a transforms() result of type {type(transform).__name__}, "
            f"which cannot be called on an image; give the preprocessing as options instead"
        )
    return Preprocessing(source=source, _transform=transform, from_model=True)


def preprocessing_from_timm(config: Mapping[str, object], name: str) -> Preprocessing:
    """The preprocessing of a timm model's data config (``timm.data.resolve_data_config``).

    It follows timm's evaluation transform: with ``crop_mode`` "center" (timm's default) the
    shorter side is resized to ``floor(size / crop_pct)`` and the centre ``size`` is cropped;
    "squash" resizes both sides to ``floor(size / crop_pct)`` first. Other crop modes (and
    non-square centre crops) are approximated by resizing straight to the input size, and the
    source says so. Tensors are resized with antialiasing, which differs from timm's PIL resize
    by less than one grey level on average (single pixels at sharp edges differ more).
    """
    size = config.get("input_size", (3, 224, 224))
    if not isinstance(size, (tuple, list)) or len(size) != 3:
        raise OptionError(f"timm data config of {name} has input_size {size!r}; expected (C, H, W)")
    height, width = int(size[1]), int(size[2])
    crop_pct = float(config.get("crop_pct") or 0.875)  # type: ignore[arg-type]
    mode = str(config.get("crop_mode") or "center")
    interpolation = str(config.get("interpolation") or "bilinear")
    if interpolation not in _INTERPOLATIONS:
        interpolation = "bicubic" if interpolation == "random" else "bilinear"
    mean = tuple(float(v) for v in config.get("mean", _IMAGENET_MEAN))  # type: ignore[attr-defined]
    std = tuple(float(v) for v in config.get("std", _IMAGENET_STD))  # type: ignore[attr-defined]
    scaled = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    crop: int | tuple[int, int] = height if height == width else (height, width)
    source = f"timm data config of {name} (crop_pct {crop_pct:g}, crop_mode {mode})"
    resize: int | tuple[int, int]
    if mode == "center" and height == width:
        resize = scaled[0]
    elif mode == "squash":
        resize = scaled
    else:
        resize, crop = (height, width), (height, width)
        source += f"; approximated by resizing to {height}x{width}"
    return Preprocessing(
        resize=resize,
        crop=crop,
        mean=mean,
        std=std,
        source=source,
        interpolation=interpolation,
        from_model=True,
    )


def parse_size(text: str) -> int | tuple[int, int]:
    """Parse a size option: ``"224"`` is the shorter side, ``"224x320"`` is height x width."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if match is None or int(match[1]) == 0 or (match[2] is not None and int(match[2]) == 0):
        raise OptionError(
            f"size {text!r} is not valid; expected a positive integer (shorter side) like 224 or "
            f"HEIGHTxWIDTH like 224x320"
        )
    if match[2] is None:
        return int(match[1])
    return int(match[1]), int(match[2])


def parse_normalize(text: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Parse a normalisation option: ``imagenet``, ``none``, or ``m1,m2,m3/s1,s2,s3``."""
    cleaned = text.strip().lower()
    if cleaned == "imagenet":
        return _IMAGENET_MEAN, _IMAGENET_STD
    if cleaned == "none":
        return None
    bad = OptionError(
        f"normalisation {text!r} is not valid; expected 'imagenet', 'none', or mean/std lists of "
        f"the same length with every std > 0, like 0.5,0.5,0.5/0.25,0.25,0.25"
    )
    parts = cleaned.split("/")
    if len(parts) != 2:
        raise bad
    try:
        mean = tuple(float(item) for item in parts[0].split(","))
        std = tuple(float(item) for item in parts[1].split(","))
    except ValueError:
        raise bad from None
    if (
        len(mean) != len(std)
        or not all(math.isfinite(value) for value in mean)
        or not all(math.isfinite(value) and value > 0 for value in std)
    ):
        raise bad
    return mean, std


def expected_channels(model: torch.nn.Module) -> tuple[int, str] | None:
    """The channel count the model's first layer takes, and that layer's name; ``None`` if unknown.

    "First" is registration order (``named_modules``), which is the forward order in torchvision's
    models and nearly every hand-written one; a model that registers its head before its stem
    would fool it. A lazy layer has not learnt its channel count yet, so it gives ``None``. The
    model itself counts as a layer, named ``""``.
    """
    for name, module in model.named_modules():
        value = getattr(module, "in_channels", None)
        if isinstance(value, int) and not isinstance(value, bool):
            return (value, name) if value > 0 else None
    return None


def expected_axes(model: torch.nn.Module) -> tuple[int, str, str] | None:
    """How many spatial axes the model's first layer takes (1 for ``Conv1d``: signals
    ``(C, L)``; 2 for ``Conv2d``: images; 3 for ``Conv3d``: volumes and clips), that layer's name
    and its type; ``None`` when its type does not say (the same "first layer" as
    :func:`expected_channels`)."""
    for name, module in model.named_modules():
        value = getattr(module, "in_channels", None)
        if isinstance(value, int) and not isinstance(value, bool):
            found = re.search(r"([123])d$", type(module).__name__)
            return (int(found[1]), name, type(module).__name__) if found else None
    return None


# --------------------------------------------------------------------------------------------------
# Loaded input


@dataclass(frozen=True)
class LoadedInput:
    """One input, ready to feed, with a record of how it got that way.

    ``tensor`` is ``(1, C, H, W)`` float32 (``(1, C, L)`` for a signal) and is exactly what the
    model receives. ``display`` is an ``(H, W, 3)`` uint8 picture of the input as given (after
    mode conversion, before resizing or normalisation); arrays are shown by their first channel
    when they do not have 1 or 3, and values outside [0, 1] are stretched from their minimum to
    their maximum for display only. Signals have none (their pictures draw them beside each
    layer, on the same time axis).
    """

    tensor: torch.Tensor
    path: Path
    kind: str
    original: str
    conversions: tuple[str, ...]
    preprocessing: Preprocessing
    display: npt.NDArray[np.uint8] | None

    def __repr__(self) -> str:
        t = self.tensor
        dtype = str(t.dtype).removeprefix("torch.")
        return (
            f"LoadedInput('{self.path.name}', {self.kind} {self.original}, fed {tuple(t.shape)} "
            f"{dtype}, {len(self.conversions)} conversions)"
        )

    def describe(self) -> dict[str, object]:
        """A JSON-able summary for reports."""
        return {
            "path": str(self.path),
            "kind": self.kind,
            "original": self.original,
            "conversions": list(self.conversions),
            "preprocessing": self.preprocessing.describe(),
            "fed_shape": list(self.tensor.shape),
        }


def load_input(
    path: str | Path,
    *,
    channels: int | None = None,
    layer_name: str | None = None,
    preprocessing: Preprocessing = Preprocessing(),
    axes: int | None = None,
) -> LoadedInput:
    """Load an image, a ``.npy`` array or a ``.wav`` sound as the tensor to feed.

    ``channels`` is what the model's first layer takes (see :func:`expected_channels`) and
    ``layer_name`` names that layer in messages; ``None`` keeps what the file has. ``axes`` is
    how many spatial axes that layer takes (see :func:`expected_axes`): with 1 (a ``Conv1d``),
    a ``.npy`` array is a signal ``(C, L)`` or ``(1, C, L)`` and is fed as ``(1, C, L)``; with 3
    (a ``Conv3d``) a ``.npy`` array is a volume (see :func:`load_volume`) and a folder of frames
    or an animated GIF is a clip (see :func:`load_clip`).
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".wav":
        return load_wav(path, channels=channels, layer_name=layer_name, preprocessing=preprocessing)
    if axes == 1:
        if suffix != ".npy":
            raise InputError(
                f"input '{path}' is an image, but {_layer_phrase(layer_name)} is 1-D and takes "
                f"signals (C, L); give a .npy array (C, L) or a .wav file"
            )
        return load_signal(
            path, channels=channels, layer_name=layer_name, preprocessing=preprocessing
        )
    if axes == 3:
        if suffix == ".npy":
            return load_volume(
                path, channels=channels, layer_name=layer_name, preprocessing=preprocessing
            )
        return load_clip(
            path, channels=channels, layer_name=layer_name, preprocessing=preprocessing
        )
    loader = load_array if suffix == ".npy" else load_image
    return loader(path, channels=channels, layer_name=layer_name, preprocessing=preprocessing)


def _check_file(path: str | Path, channels: int | None) -> Path:
    if channels is not None and (
        not isinstance(channels, int) or isinstance(channels, bool) or channels < 1
    ):
        raise OptionError(
            f"channels {channels!r} is not valid; expected a positive integer (what the model's "
            f"first layer takes) or None to keep what the file has"
        )
    where = Path(path)
    if not where.exists():
        raise InputError(
            f"input '{where}' does not exist; check the path (relative paths start from "
            f"'{Path.cwd()}')"
        )
    if where.is_dir():
        raise InputError(
            f"input '{where}' is a directory, expected one image or .npy file; pass a file "
            f"inside it"
        )
    if where.stat().st_size == 0:
        raise InputError(
            f"input '{where}' is empty (0 bytes), expected an image or .npy file; check that it "
            f"was written completely"
        )
    return where


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _unreadable(path: Path, error: OSError) -> InputError:
    return InputError(
        f"input '{path}' cannot be read ({error.strerror or _one_line(error)}); check that you "
        f"may read it"
    )


def _layer_phrase(layer_name: str | None) -> str:
    return f"the model's first layer '{layer_name}'" if layer_name else "the model's first layer"


def _for_display(hwc: FloatArray) -> npt.NDArray[np.uint8]:
    """An (H, W, 3) uint8 picture of float values; [0, 1] is shown as is, else min-max stretched."""
    source = hwc[:, :, :1] if hwc.shape[2] not in (1, 3) else hwc
    if source.dtype == np.float32 and source.size:
        low, high = float(source.min()), float(source.max())  # NaN would show here
        if low >= 0.0 and high <= 1.0:
            # The common case, a picture read from 8- or 16-bit values (k/255, k/65535): float32
            # gives the float64 pixels (k/255 * 255 is within 1e-4 of k; k/65535 * 255 = k/257
            # never comes within 0.001 of a half), in a third of the time and memory.
            scaled = np.multiply(source, np.float32(255.0), dtype=np.float32)
            pixels = np.rint(scaled, out=scaled).astype(np.uint8)
            return np.ascontiguousarray(
                np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels
            )
    # float64 so that stretching float32 extremes cannot overflow.
    picture = source.astype(np.float64)
    finite: np.ndarray | None = None
    low, high = (float(picture.min()), float(picture.max())) if picture.size else (0.0, 1.0)
    if not (math.isfinite(low) and math.isfinite(high)):
        # NaN and ±Inf show in the ends: only then is a mask over the picture needed.
        finite = np.isfinite(picture)
        values = picture[finite]
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if low < 0.0 or high > 1.0:
        # Display only: the fed tensor keeps the true values.
        span = high - low
        picture = (picture - low) / span if span > 0 else np.zeros_like(picture)
    scaled = np.clip(picture, 0.0, 1.0)
    scaled *= 255.0
    if finite is not None:
        scaled[~finite] = 0.0
    pixels = np.rint(scaled, out=scaled).astype(np.uint8)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels)


def fed_picture(
    tensor: torch.Tensor, preprocessing: Preprocessing | None = None, sample: int = 0
) -> tuple[npt.NDArray[np.uint8], str] | None:
    """An (H, W, 3) uint8 picture of what the model was fed, and a sentence saying how it was made.

    With a normalisation (``mean``/``std`` for each channel) the values are de-normalised and
    shown as [0, 1]; values already in [0, 1] are shown as they are; otherwise each channel is
    stretched from its minimum to its maximum. Inputs
    with neither 1 nor 3 channels are shown by their first channel. Returns ``None`` for tensors
    that are not ``(N, C, H, W)`` pictures. ``tensor`` is not modified.
    """
    if tensor.dim() != 4 or tensor.is_complex() or not 0 <= sample < tensor.shape[0]:
        return None
    # float64 arithmetic as numpy would do it, in torch: on both cores and without numpy's
    # temporaries (a 12-megapixel input took 2.9 s in numpy).
    t = tensor[sample].detach().to("cpu", torch.float64)
    channels = t.shape[0]
    mean, std = (preprocessing.mean, preprocessing.std) if preprocessing else (None, None)
    if mean is not None and std is not None and len(mean) == channels:
        view = (channels, 1, 1)
        t = t * torch.tensor(std, dtype=torch.float64).view(view)
        t += torch.tensor(mean, dtype=torch.float64).view(view)
        note = "de-normalised with the preprocessing mean and std, then clipped to [0, 1]"
    elif _within_unit(t):
        note = "values shown as they are (already in [0, 1])"
    else:
        t = torch.from_numpy(_stretched(t.numpy()))
        note = "each channel stretched from its minimum (black) to its maximum (white)"
    if channels not in (1, 3):
        t = t[:1]
        note = f"channel 0 of {channels}; " + note
    scaled = t.clamp(0.0, 1.0).mul_(255.0)
    if not _all_finite(t):  # NaN and ±Inf are drawn black
        scaled = torch.where(torch.isfinite(t), scaled, 0.0)
    pixels = scaled.round_().to(torch.uint8).permute(1, 2, 0).numpy()
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels), note


def _within_unit(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite and in [0, 1] (NaN fails both comparisons)."""
    if t.numel() == 0:
        return True
    low, high = torch.aminmax(t)
    return bool(low >= 0.0) and bool(high <= 1.0)


def _all_finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite: NaN and ±Inf show in the minimum or maximum,
    one pass instead of a mask (which costs six times as long in float64)."""
    if t.numel() == 0:
        return True
    low, high = torch.aminmax(t)
    return math.isfinite(float(low)) and math.isfinite(float(high))


def _stretched(chw: np.ndarray) -> np.ndarray:
    """Each channel of ``chw`` (float64) mapped from its finite minimum to its maximum onto
    [0, 1], on its own: a colour cast is not hidden by another channel. A new array."""
    values: np.ndarray = chw.copy()
    for c in range(values.shape[0]):
        finite = np.isfinite(values[c])
        if finite.any():
            low, high = float(values[c][finite].min()), float(values[c][finite].max())
            span = high - low
            values[c] = (values[c] - low) / span if span > 0 else 0.0
    return values


def _preprocess(
    chw: torch.Tensor, preprocessing: Preprocessing, what: str, conversions: list[str]
) -> torch.Tensor:
    if preprocessing._transform is not None:
        name = type(preprocessing._transform).__name__
        try:
            out = preprocessing._transform(chw)
        except (RuntimeError, ValueError, TypeError, IndexError) as error:
            raise InputError(
                f"the preprocessing {name} ({preprocessing.source}) failed on {what} "
                f"({_one_line(error)}); give resize, crop and normalisation explicitly instead"
            ) from None
        if not isinstance(out, torch.Tensor) or out.ndim != 3:
            raise InputError(
                f"the preprocessing {name} ({preprocessing.source}) turned {what} into "
                f"{type(out).__name__} {tuple(getattr(out, 'shape', ()))}, expected a (C, H, W) "
                f"tensor; give resize, crop and normalisation explicitly instead"
            )
        conversions.append(f"applied {name} from {preprocessing.source}")
        return out.to(torch.float32)
    normalise = preprocessing.mean is not None and preprocessing.std is not None
    if preprocessing.resize is None and preprocessing.crop is None and not normalise:
        return chw  # nothing to do: spare the transforms' import (a run that never needs them)

    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as tvf

    if preprocessing.resize is not None:
        size = preprocessing.resize
        chw = tvf.resize(
            chw,
            [size] if isinstance(size, int) else list(size),
            interpolation=InterpolationMode(preprocessing.interpolation),
            antialias=True,
        )
        how = f"{preprocessing.interpolation}, antialiased"
        if isinstance(size, int):
            conversions.append(f"resized shorter side to {size} ({how})")
        else:
            conversions.append(f"resized to {_size_text(size)} ({how})")
    if preprocessing.crop is not None:
        crop = preprocessing.crop
        height, width = (crop, crop) if isinstance(crop, int) else crop
        padded = height > chw.shape[-2] or width > chw.shape[-1]
        chw = tvf.center_crop(chw, [height, width])
        conversions.append(
            f"centre-cropped to {_size_text(crop)}"
            + (" (padded with zeros where the picture was smaller)" if padded else "")
        )
    if preprocessing.mean is not None and preprocessing.std is not None:
        count = chw.shape[0]
        if len(preprocessing.mean) not in (1, count):
            raise OptionError(
                f"normalisation has {len(preprocessing.mean)} mean/std values but {what} has "
                f"{_channel_count(count)}; give one mean and one std per channel (or a single "
                f"pair for all channels), or no normalisation"
            )
        chw = tvf.normalize(chw, list(preprocessing.mean), list(preprocessing.std))
        conversions.append(
            f"normalised with mean {_numbers_text(preprocessing.mean)} std "
            f"{_numbers_text(preprocessing.std)}"
        )
    return chw


def _finish(
    hwc: FloatArray,
    *,
    path: Path,
    kind: str,
    original: str,
    conversions: list[str],
    preprocessing: Preprocessing,
    what: str,
) -> LoadedInput:
    display = _for_display(hwc)
    chw = torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1)))
    chw = _preprocess(chw, preprocessing, what, conversions)
    return LoadedInput(
        tensor=chw.unsqueeze(0).to(torch.float32).contiguous(),
        path=path,
        kind=kind,
        original=original,
        conversions=tuple(conversions),
        preprocessing=preprocessing,
        display=display,
    )


def _picture_values(
    array: np.ndarray, preprocessing: Preprocessing, conversions: list[str]
) -> FloatArray:
    """``array`` as float32 by the rule for pictures saved as arrays: integers of a picture
    dtype are divided by their full scale (as an image file's would be; not with ``--as-is``),
    bools become 0 and 1, anything else is cast. ``conversions`` gets what was done, and how
    many float64 values were too large for float32 (they become Inf)."""
    wide = array.dtype.kind == "f" and array.dtype.itemsize > 4
    was_finite = np.isfinite(array) if wide else None
    with np.errstate(over="ignore"):
        values = array.astype(np.float32)
    full_scale = None if preprocessing.as_is else _PICTURE_DTYPES.get(array.dtype.str[1:])
    if array.dtype == np.bool_:
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
    return values


# --------------------------------------------------------------------------------------------------
# Images


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
        f"image '{path}' is damaged or truncated and cannot be decoded ({_one_line(error)}); "
        f"re-export or re-download it"
    )


def _not_an_image(path: Path) -> InputError:
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


def _decode(path: Path) -> tuple[Image.Image, str, list[str]]:
    """Open and fully decode the image, with every failure turned into one InputError."""
    conversions: list[str] = []
    try:
        handle = path.open("rb")
    except OSError as error:
        raise _unreadable(path, error) from None
    with handle, warnings.catch_warnings():
        # Pillow only warns between its limit and twice its limit; that is a bomb to us as well.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            opened = Image.open(handle)
        except UnidentifiedImageError:
            raise _not_an_image(path) from None
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


def _image_values(image: Image.Image, path: Path, conversions: list[str]) -> tuple[FloatArray, str]:
    """The pixels as (H, W, C) float32, C being 1 (gray) or 3 (RGB), and the resulting mode."""
    mode = image.mode
    if mode == "1":
        conversions.append("1-bit black/white read as 0 and 1")
        return np.array(image, dtype=np.float32)[:, :, None], "1"
    if mode in _SIXTEEN_BIT_MODES:
        # Pillow cannot convert 16-bit modes without losing bits; take the integers directly.
        conversions.append("16-bit values divided by 65535")
        return np.array(image, dtype=np.float32)[:, :, None] / np.float32(65535), mode
    if mode == "I":
        values = np.array(image, dtype=np.int64)
        if values.size and values.min() >= 0 and values.max() <= 65535:
            conversions.append("32-bit integer values (all within 0..65535) divided by 65535")
            return values.astype(np.float32)[:, :, None] / np.float32(65535), mode
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
        return np.array(image, dtype=np.float32)[:, :, None] / np.float32(255), "L"
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
    return np.array(image, dtype=np.float32) / np.float32(255), "RGB"


def _channel_count(count: int) -> str:
    return f"{count} channel{'s' if count != 1 else ''}"


def load_image(
    path: str | Path,
    *,
    channels: int | None = None,
    layer_name: str | None = None,
    preprocessing: Preprocessing = Preprocessing(),
) -> LoadedInput:
    """Load an image file (JPEG, PNG, TIFF, BMP, WebP, ...) as the tensor to feed.

    8-bit values are divided by 255, 16-bit values by 65535, float images are used as is. Colour
    images give 3 channels and gray ones 1; ``channels`` of 1 or 3 converts between the two (luma
    or repetition), any other count is an error because a picture cannot supply it.
    """
    where = _check_file(path, channels)
    image, original, conversions = _decode(where)
    hwc, mode = _image_values(image, where, conversions)
    count = hwc.shape[2]
    if channels is not None and channels != count:
        because = f"because {layer_name or _layer_phrase(None)} takes {_channel_count(channels)}"
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
        else:
            raise InputError(
                f"image '{where}' has {_channel_count(count)} ({mode}) but "
                f"{_layer_phrase(layer_name)} takes {channels}; give a .npy array with {channels} "
                f"channels, or a model that takes 1 or 3"
            )
    return _finish(
        hwc,
        path=where,
        kind="image",
        original=original,
        conversions=conversions,
        preprocessing=preprocessing,
        what=f"image '{where}'",
    )


# --------------------------------------------------------------------------------------------------
# Arrays


def _read_npy(path: Path) -> npt.NDArray[np.generic]:
    """Read a .npy file without ever unpickling anything."""
    pickled = InputError(
        f"array '{path}' holds pickled Python objects, which featuremaps never unpickles "
        f"because that can run code; save a numeric array instead: "
        f"numpy.save(path, array.astype('float32'))"
    )
    try:
        handle = path.open("rb")
    except OSError as error:
        raise _unreadable(path, error) from None
    with handle:
        head = handle.read(len(_NPY_MAGIC))
        if head != _NPY_MAGIC:
            # Protocol 2+ pickles start with 0x80; anything else is just not a .npy file.
            if head[:1] == b"\x80":
                raise pickled
            raise InputError(
                f"array '{path}' is not a NumPy .npy file (it lacks the .npy header); save the "
                f"array with numpy.save, or give an image file"
            )
        handle.seek(0)
        try:
            loaded = np.load(handle, allow_pickle=False)
        except ValueError as error:
            # numpy refuses object arrays with a ValueError that mentions allow_pickle.
            if "pickle" in str(error).lower():
                raise pickled from None
            raise InputError(
                f"array '{path}' is a damaged .npy file ({_one_line(error)}); save it again with "
                f"numpy.save"
            ) from None
        except (OSError, EOFError) as error:
            raise InputError(
                f"array '{path}' is a damaged .npy file ({_one_line(error)}); save it again with "
                f"numpy.save"
            ) from None
    return np.asarray(loaded)


# Unsigned integer arrays hold pictures at these full scales, as 8- and 16-bit image files do.
_PICTURE_DTYPES = {"u1": 255, "u2": 65535}


def _array_preprocessing(
    chw: FloatArray, preprocessing: Preprocessing, conversions: list[str]
) -> Preprocessing:
    """The part of the model's preprocessing an array still needs, decided from its values.

    A recipe given by the user is applied as given. The model's own recipe expects a picture in
    [0, 1]: an array with values outside [0, 1] is already preprocessed (normalised, or raw
    measurements), so it is fed as it is; an array in [0, 1] that already has the recipe's
    final size is only normalised, not resized and cropped again. Each decision is reported.
    """
    if preprocessing.as_is:
        conversions.append("fed as is (asked for): no scaling, resize, crop or normalisation")
        return preprocessing
    if not preprocessing.from_model or not preprocessing.steps():
        return preprocessing
    finite = chw[np.isfinite(chw)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if low < 0.0 or high > 1.0:
        conversions.append(
            f"values span {low:.4g} … {high:.4g}, outside [0, 1], so the array is taken as "
            f"already preprocessed and fed as it is: the model's preprocessing "
            f"({', '.join(preprocessing.steps())}) was not applied; give --size/--normalize to "
            f"apply steps anyway, or scale it to [0, 1] for the full preprocessing"
        )
        return Preprocessing(
            source=f"not applied (values outside [0, 1]): {preprocessing.source}", as_is=True
        )
    size = preprocessing.final_size()
    shape = (int(chw.shape[1]), int(chw.shape[2]))  # (H, W) of the (C, H, W) values
    if size is not None and shape == size and preprocessing._transform is None:
        conversions.append(
            f"array is already {size[0]}x{size[1]}, the model's input size: not resized or "
            f"cropped again"
        )
        return replace(
            preprocessing,
            resize=None,
            crop=None,
            source=f"{preprocessing.source}; resize and crop skipped (already {size[0]}x{size[1]})",
        )
    return preprocessing


def load_array(
    path: str | Path,
    *,
    channels: int | None = None,
    layer_name: str | None = None,
    preprocessing: Preprocessing = Preprocessing(),
) -> LoadedInput:
    """Load a ``.npy`` array as the tensor to feed, deciding from its dtype and values what it is.

    ``uint8`` and ``uint16`` arrays are pictures: divided by 255 or 65535, as image files are.
    Other dtypes keep their values (cast to float32). The model's own preprocessing
    (``preprocessing.from_model``) is then applied only to arrays in [0, 1]; an array with
    values outside [0, 1] is taken as already preprocessed and fed as it is, and one that
    already has the recipe's final size is not resized or cropped again. A preprocessing given
    by the user is applied as given; :meth:`Preprocessing.unchanged` feeds the values as they
    are. Every decision is listed in ``conversions``.

    Accepted shapes: ``(H, W)``, ``(C, H, W)``, ``(H, W, C)`` and ``(1, C, H, W)``. For 3-D
    arrays the channel axis is the one whose size equals ``channels`` (first axis preferred); with
    no ``channels`` (or when neither axis matches) the shorter of the first and last axis is taken
    as channels, and the guess is reported.
    """
    where = _check_file(path, channels)
    array = _read_npy(where)
    shape = tuple(int(size) for size in array.shape)
    original = f".npy {array.dtype} {shape}"
    if array.dtype.kind not in "biuf":
        raise InputError(
            f"array '{where}' has dtype {array.dtype}, expected real numbers (float, int or "
            f"bool); save it with array.astype('float32')"
        )
    conversions: list[str] = []
    if array.ndim not in (2, 3, 4):
        raise InputError(
            f"array '{where}' has shape {shape} ({array.ndim}-D), expected (H, W), (C, H, W), "
            f"(H, W, C) or (1, C, H, W); reshape it before saving"
        )
    if array.size == 0:
        raise InputError(
            f"array '{where}' has shape {shape}, which holds no values; save an array with at "
            f"least one value along every axis"
        )

    layout = "(C, H, W)"
    if array.ndim == 4:
        if shape[0] != 1:
            raise InputError(
                f"array '{where}' has shape {shape}, a batch of {shape[0]}, expected one sample "
                f"(1, C, H, W); save one file per sample"
            )
        chw = array[0]
        layout = "(1, C, H, W)"
        conversions.append("batch axis of size 1 dropped")
    elif array.ndim == 2:
        chw = array[None]
        layout = "(H, W)"
        conversions.append("2-D array (H, W) read as 1 channel")
    elif channels is not None and shape[0] == channels:
        chw = array
    elif channels is not None and shape[-1] == channels:
        chw = array.transpose(2, 0, 1)
        layout = "(H, W, C)"
        conversions.append("array (H, W, C) transposed to (C, H, W)")
    elif channels is None and shape[0] <= shape[-1]:
        chw = array
        conversions.append(
            f"channel axis guessed: first axis (size {shape[0]}) read as channels, (C, H, W)"
        )
    else:
        # With channels given this is a mismatch; the guess only names the count in the message.
        first = shape[0] <= shape[-1]  # channels are the short axis in every real layout
        chw = array if first else array.transpose(2, 0, 1)
        layout = "(C, H, W)" if first else "(H, W, C)"
        if channels is None:
            conversions.append(
                f"channel axis guessed: last axis (size {shape[-1]}) read as channels, "
                f"(H, W, C) transposed to (C, H, W)"
            )

    count = int(chw.shape[0])
    if channels is not None and count != channels:
        raise InputError(
            f"array '{where}' has shape {shape}, read as {_channel_count(count)} {layout}, but "
            f"{_layer_phrase(layer_name)} takes {channels}; save it with {channels} channels as "
            f"({channels}, H, W)"
        )

    values = _picture_values(chw, preprocessing, conversions)
    not_finite = int(np.count_nonzero(~np.isfinite(values)))
    if not_finite:
        conversions.append(f"array holds {not_finite:,} NaN/Inf values (fed as they are)")
    preprocessing = _array_preprocessing(values, preprocessing, conversions)
    return _finish(
        np.ascontiguousarray(values.transpose(1, 2, 0)),
        path=where,
        kind="array",
        original=original,
        conversions=conversions,
        preprocessing=preprocessing,
        what=f"array '{where}'",
    )


# --------------------------------------------------------------------------------------------------
# Signals (N, C, L)


def _signal_preprocessing(preprocessing: Preprocessing, conversions: list[str]) -> Preprocessing:
    """Image steps (resize, crop, per-channel picture normalisation) have no meaning for a
    signal: the model's own are skipped and said so; steps given by the user are refused."""
    if preprocessing.as_is:
        conversions.append("fed as is (asked for)")
        return preprocessing
    if not preprocessing.steps():
        return preprocessing
    if not preprocessing.from_model:
        raise OptionError(
            f"the preprocessing {', '.join(preprocessing.steps())} is for images, but this input "
            f"is a signal (C, L); drop --size/--crop/--normalize and scale the signal yourself"
        )
    conversions.append(
        f"the model's image preprocessing ({', '.join(preprocessing.steps())}) was not applied "
        f"to a signal"
    )
    return Preprocessing(source=f"not applied (a signal): {preprocessing.source}", as_is=True)


def _signal(
    values: FloatArray,
    *,
    path: Path,
    kind: str,
    original: str,
    conversions: list[str],
    preprocessing: Preprocessing,
    channels: int | None,
    layer_name: str | None,
) -> LoadedInput:
    count = int(values.shape[0])
    if channels is not None and count != channels:
        raise InputError(
            f"signal '{path}' has {_channel_count(count)} ({original}), but "
            f"{_layer_phrase(layer_name)} takes {channels}; give a signal with {channels} "
            f"channels as ({channels}, L)"
        )
    preprocessing = _signal_preprocessing(preprocessing, conversions)
    return LoadedInput(
        tensor=torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).unsqueeze(0),
        path=path,
        kind=kind,
        original=original,
        conversions=tuple(conversions),
        preprocessing=preprocessing,
        display=None,
    )


def load_signal(
    path: str | Path,
    *,
    channels: int | None = None,
    layer_name: str | None = None,
    preprocessing: Preprocessing = Preprocessing(),
) -> LoadedInput:
    """Load a ``.npy`` signal ``(C, L)`` or ``(1, C, L)`` (a 1-D array is one channel) as the
    ``(1, C, L)`` float32 tensor to feed; values are kept (cast to float32, never rescaled).

    An array whose first axis does not match ``channels`` but whose last does is read as
    ``(L, C)`` and transposed (said so in ``conversions``).
    """
    where = _check_file(path, channels)
    array = _read_npy(where)
    shape = tuple(int(size) for size in array.shape)
    original = f".npy {array.dtype} {shape}"
    if array.dtype.kind not in "biuf":
        raise InputError(
            f"array '{where}' has dtype {array.dtype}, expected real numbers (float, int or "
            f"bool); save it with array.astype('float32')"
        )
    if array.ndim not in (1, 2, 3) or (array.ndim == 3 and shape[0] != 1) or array.size == 0:
        raise InputError(
            f"signal '{where}' has shape {shape}, expected (C, L), (1, C, L) or (L,) with at "
            f"least one value; save one sample per file as (C, L)"
        )
    conversions: list[str] = []
    if array.ndim == 3:
        array = array[0]
        conversions.append("batch axis of size 1 dropped")
    elif array.ndim == 1:
        array = array[None]
        conversions.append("1-D array (L,) read as 1 channel")
    if channels is not None and array.shape[0] != channels and array.shape[1] == channels:
        array = array.T
        conversions.append("array (L, C) transposed to (C, L)")
    if array.dtype != np.float32:
        conversions.append(f"{array.dtype} values cast to float32 (no scaling)")
    with np.errstate(over="ignore"):
        values = array.astype(np.float32)
    not_finite = int(np.count_nonzero(~np.isfinite(values)))
    if not_finite:
        conversions.append(f"signal holds {not_finite:,} NaN/Inf values (fed as they are)")
    return _signal(
        values,
        path=where,
        kind="signal",
        original=original,
        conversions=conversions,
        preprocessing=preprocessing,
        channels=channels,
        layer_name=layer_name,
    )


# --------------------------------------------------------------------------------------------------
# Volumes and clips (N, C, D, H, W)


def _volume_display(cdhw: FloatArray) -> npt.NDArray[np.uint8]:
    """The middle slice along D of a (C, D, H, W) volume, shown as the images' inputs are."""
    middle = cdhw[:, cdhw.shape[1] // 2]
    return _for_display(np.ascontiguousarray(middle.transpose(1, 2, 0)))


def load_volume(
    path: str | Path,
    *,
    channels: int | None = None,
    layer_name: str | None = None,
    preprocessing: Preprocessing = Preprocessing(),
) -> LoadedInput:
    """Load a ``.npy`` volume ``(C, D, H, W)`` or ``(1, C, D, H, W)`` as the ``(1, C, D, H, W)``
    float32 tensor to feed (for a model whose first layer is 3-D).

    Values follow :func:`load_array`'s dtype rules (``uint8``/``uint16`` divided by their full
    scale unless fed as is, ``bool`` to 0/1, others cast to float32 without scaling). Image
    preprocessing (resize, crop, normalisation) is not applied to volumes: the model's own is
    skipped and said so, and steps given by the user are refused. ``display`` is the middle
    slice along D.
    """
    where = _check_file(path, channels)
    array = _read_npy(where)
    shape = tuple(int(size) for size in array.shape)
    original = f".npy {array.dtype} {shape}"
    if array.dtype.kind not in "biuf":
        raise InputError(
            f"array '{where}' has dtype {array.dtype}, expected real numbers (float, int or "
            f"bool); save it with array.astype('float32')"
        )
    if array.ndim not in (4, 5) or (array.ndim == 5 and shape[0] != 1) or array.size == 0:
        raise InputError(
            f"volume '{where}' has shape {shape}, expected (C, D, H, W) or (1, C, D, H, W) with "
            f"at least one value; save one sample per file as (C, D, H, W)"
        )
    conversions: list[str] = []
    if array.ndim == 5:
        array = array[0]
        conversions.append("batch axis of size 1 dropped")
    count = int(array.shape[0])
    if channels is not None and count != channels:
        raise InputError(
            f"volume '{where}' has {_channel_count(count)} ({original}), but "
            f"{_layer_phrase(layer_name)} takes {channels}; save it as ({channels}, D, H, W)"
        )
    values = _picture_values(array, preprocessing, conversions)
    not_finite = int(np.count_nonzero(~np.isfinite(values)))
    if not_finite:
        conversions.append(f"volume holds {not_finite:,} NaN/Inf values (fed as they are)")
    if preprocessing.as_is:
        conversions.append("fed as is (asked for)")
    elif preprocessing.steps():
        if not preprocessing.from_model:
            raise OptionError(
                f"the preprocessing {', '.join(preprocessing.steps())} is for images, but this "
                f"input is a volume (C, D, H, W); drop --size/--crop/--normalize and scale the "
                f"volume yourself"
            )
        conversions.append(
            f"the model's image preprocessing ({', '.join(preprocessing.steps())}) was not "
            f"applied to a volume"
        )
        preprocessing = Preprocessing(
            source=f"not applied (a volume): {preprocessing.source}", as_is=True
        )
    return LoadedInput(
        tensor=torch.from_numpy(np.ascontiguousarray(values)).unsqueeze(0),
        path=where,
        kind="volume",
        original=original,
        conversions=tuple(conversions),
        preprocessing=preprocessing,
        display=_volume_display(values),
    )


def _clip_frames(where: Path) -> tuple[list[Image.Image], str]:
    """The frames of a folder of images (in name order) or of an animated GIF, as RGB."""
    if where.is_dir():
        files = sorted(
            p for p in where.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise InputError(
                f"clip folder '{where}' holds no image files ({', '.join(IMAGE_SUFFIXES)}); put "
                f"one image per frame in it, named in frame order"
            )
        frames = []
        for file in files:
            image, _, _ = _decode(file)
            frames.append(image.convert("RGB"))
        return frames, f"folder of {len(frames)} frames"
    try:
        opened = Image.open(where)
    except (UnidentifiedImageError, OSError):
        raise _not_an_image(where) from None
    with opened:
        count = int(getattr(opened, "n_frames", 1))
        frames = []
        for index in range(count):
            opened.seek(index)
            frames.append(opened.convert("RGB"))
        return frames, f"{opened.format or where.suffix.lstrip('.').upper()} of {count} frames"


def load_clip(
    path: str | Path,
    *,
    channels: int | None = None,
    layer_name: str | None = None,
    preprocessing: Preprocessing = Preprocessing(),
) -> LoadedInput:
    """Load a clip, a folder of frames (image files in name order) or an animated GIF, as the
    ``(1, 3, T, H, W)`` float32 tensor to feed (for a model whose first layer is 3-D).

    Each frame is converted to RGB and divided by 255, then given the preprocessing (resize,
    crop, normalisation) frame by frame, as an image would be; the frames must all come out the
    same size. ``display`` is the first frame as given.
    """
    where = Path(path)
    if not where.exists():
        raise InputError(
            f"input '{where}' does not exist; check the path (relative paths start from "
            f"'{Path.cwd()}')"
        )
    frames, original = _clip_frames(where)
    if channels is not None and channels != 3:
        raise InputError(
            f"clip '{where}' has 3 channels (RGB frames), but {_layer_phrase(layer_name)} takes "
            f"{channels}; give a .npy volume ({channels}, D, H, W) instead"
        )
    conversions = [f"{len(frames)} frames converted to RGB and divided by 255"]
    fed = []
    for i, frame in enumerate(frames):
        hwc = np.asarray(frame, dtype=np.float32) / np.float32(255)
        steps: list[str] = []
        chw = torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1)))
        fed.append(_preprocess(chw, preprocessing, f"frame {i} of clip '{where}'", steps))
        if i == 0:
            conversions.extend(f"each frame {step}" for step in steps)
    sizes = {tuple(f.shape[-2:]) for f in fed}
    if len(sizes) != 1:
        raise InputError(
            f"clip '{where}' has frames of different sizes {sorted(sizes)}, expected one size; "
            f"resize the frames alike or give --size"
        )
    tensor = torch.stack(fed, dim=1).unsqueeze(0).to(torch.float32).contiguous()
    first = np.asarray(frames[0], dtype=np.float32) / np.float32(255)
    return LoadedInput(
        tensor=tensor,
        path=where,
        kind="clip",
        original=original,
        conversions=tuple(conversions),
        preprocessing=preprocessing,
        display=_for_display(first),
    )


def load_wav(
    path: str | Path,
    *,
    channels: int | None = None,
    layer_name: str | None = None,
    preprocessing: Preprocessing = Preprocessing(),
) -> LoadedInput:
    """Load a PCM ``.wav`` file (8, 16, 24 or 32 bit, read with the standard library's
    :mod:`wave`) as a ``(1, channels, samples)`` float32 tensor scaled to [-1, 1]: signed
    samples are divided by 2**(bits - 1), 8-bit (unsigned) ones centred on 128 first."""
    import wave

    where = _check_file(path, channels)
    try:
        with wave.open(str(where), "rb") as reader:
            count, width = reader.getnchannels(), reader.getsampwidth()
            rate, frames = reader.getframerate(), reader.getnframes()
            raw = reader.readframes(frames)
    except OSError as error:
        raise _unreadable(where, error) from None
    except (wave.Error, EOFError, struct.error) as error:
        raise InputError(
            f"'{where}' is not a PCM .wav file the standard library can read "
            f"({_one_line(error)}); convert it to 16-bit PCM WAV, or save the samples as .npy"
        ) from None
    frames = len(raw) // (count * width)
    if frames == 0:
        raise InputError(f"'{where}' holds no samples; give a .wav file with at least one frame")
    data = np.frombuffer(raw[: frames * count * width], dtype=np.uint8).reshape(
        frames, count, width
    )
    if width == 1:
        values = (data[..., 0].astype(np.float32) - 128.0) / 128.0
    else:
        # Little-endian signed integers of 2, 3 or 4 bytes, sign-extended into int32.
        padded = np.zeros((frames, count, 4), dtype=np.uint8)
        padded[..., 4 - width :] = data
        values = (padded.view("<i4")[..., 0] / float(2**31)).astype(np.float32)
    bits = 8 * width
    how = "unsigned, centred on 128, divided by 128" if width == 1 else f"divided by 2^{bits - 1}"
    conversions = [
        f"{bits}-bit PCM, {count} channel(s) x {frames} samples at {rate} Hz, scaled to "
        f"[-1, 1] ({how})"
    ]
    return _signal(
        np.ascontiguousarray(values.T),
        path=where,
        kind="signal",
        original=f"WAV {bits}-bit PCM {count}ch {rate} Hz {frames} samples",
        conversions=conversions,
        preprocessing=preprocessing,
        channels=channels,
        layer_name=layer_name,
    )
