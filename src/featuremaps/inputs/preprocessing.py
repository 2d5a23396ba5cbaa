"""Preprocessing (stage: input): what is done to a picture's [0, 1] float tensor before it is fed.

:class:`Preprocessing` is a small frozen description of resize, centre crop and normalisation.
It comes from command-line options (:func:`parse_size`, :func:`parse_normalize`), from a
torchvision weights entry (:func:`preprocessing_from_weights`) or from a timm data config
(:func:`preprocessing_from_timm`). :func:`preprocess` applies it to one ``(C, H, W)`` picture and
says each step in words; inputs that are not pictures (signals, volumes) skip it through
:func:`skip_image_preprocessing`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from featuremaps._errors import InputError, OptionError
from featuremaps.inputs.checks import channel_count, one_line

__all__ = [
    "DEFAULT_PREPROCESSING",
    "Preprocessing",
    "parse_normalize",
    "parse_size",
    "preprocess",
    "preprocessing_from_timm",
    "preprocessing_from_weights",
    "skip_image_preprocessing",
]

_NO_PREPROCESSING_SOURCE = "ToTensor (values scaled to [0, 1], no normalisation)"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")

Transform = Callable[[torch.Tensor], torch.Tensor]


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
    ``antialias`` is off only for recipes that resize without it (torchvision's video presets).
    """

    resize: int | tuple[int, int] | None = None
    crop: int | tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    source: str = _NO_PREPROCESSING_SOURCE
    interpolation: str = "bilinear"
    antialias: bool = True
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

    @property
    def transform(self) -> Transform | None:
        """The recipe object called instead of the fields (set only by
        :func:`preprocessing_from_weights`, for recipes whose steps cannot be read off), or
        ``None`` when the fields say every step. Read-only."""
        return self._transform

    def steps(self) -> list[str]:
        """The steps in words, in the order they run; empty when nothing is done."""
        out: list[str] = []
        if self._transform is not None:
            out.append(f"{type(self._transform).__name__} (called as is)")
        if self.resize is not None:
            what = "shorter side" if isinstance(self.resize, int) else "to"
            how = self.interpolation + ("" if self.antialias else ", not antialiased")
            out.append(f"resize {what} {_size_text(self.resize)} ({how})")
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
            "antialias": self.antialias,
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


# The default of every loader's ``preprocessing``: nothing beyond scaling pictures to [0, 1].
# One shared instance (the class is frozen), so the loaders in other modules can name it.
DEFAULT_PREPROCESSING = Preprocessing()


def _size_from_recipe(value: object) -> int | tuple[int, int] | None:
    # torchvision's presets store sizes as one- or two-element lists.
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and len(value) in (1, 2):
        items = [int(item) for item in value]
        return items[0] if len(items) == 1 else (items[0], items[1])
    return None


def _is_video(transform: object) -> bool:
    return type(transform).__name__ == "VideoClassification"


def preprocessing_from_weights(weights: object) -> Preprocessing:
    """The preprocessing a torchvision weights entry expects, e.g. ``ResNet18_Weights.DEFAULT``.

    ``weights.transforms()`` only builds the recipe object; it never downloads the weights.
    Classification, segmentation and video classification recipes are read into plain fields
    (so reports can show them, and ``--size``/``--normalize`` replace one step each); a video
    recipe's steps apply to each frame of a clip. Any other recipe object is kept and called on
    the [0, 1] float tensor as it is.
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

        readable: tuple[type, ...] = (
            _presets.ImageClassification,
            _presets.SemanticSegmentation,
            _presets.VideoClassification,
        )
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
            # The video preset resizes without antialiasing (it has no attribute to say so).
            antialias=bool(getattr(transform, "antialias", not _is_video(transform))),
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


def preprocess(
    chw: torch.Tensor, preprocessing: Preprocessing, what: str, conversions: list[str]
) -> torch.Tensor:
    """``chw``, a ``(C, H, W)`` float picture, after the steps of ``preprocessing``; each step is
    added to ``conversions`` in words, and ``what`` names the picture in errors."""
    if preprocessing._transform is not None:
        name = type(preprocessing._transform).__name__
        try:
            out = preprocessing._transform(chw)
        except (RuntimeError, ValueError, TypeError, IndexError) as error:
            raise InputError(
                f"the preprocessing {name} ({preprocessing.source}) failed on {what} "
                f"({one_line(error)}); give resize, crop and normalisation explicitly instead"
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
            antialias=preprocessing.antialias,
        )
        smooth = "antialiased" if preprocessing.antialias else "not antialiased"
        how = f"{preprocessing.interpolation}, {smooth}"
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
                f"{channel_count(count)}; give one mean and one std per channel (or a single "
                f"pair for all channels), or no normalisation"
            )
        chw = tvf.normalize(chw, list(preprocessing.mean), list(preprocessing.std))
        conversions.append(
            f"normalised with mean {_numbers_text(preprocessing.mean)} std "
            f"{_numbers_text(preprocessing.std)}"
        )
    return chw


def skip_image_preprocessing(
    preprocessing: Preprocessing, conversions: list[str], *, noun: str, layout: str
) -> Preprocessing:
    """The preprocessing left for an input that is not a picture (``noun`` "signal" with
    ``layout`` "(C, L)", "volume" with "(C, D, H, W)"): image steps (resize, crop, per-channel
    picture normalisation) have no meaning for it, so the model's own are skipped and said so,
    and steps given by the user are refused."""
    if preprocessing.as_is:
        conversions.append("fed as is (asked for)")
        return preprocessing
    if not preprocessing.steps():
        return preprocessing
    if not preprocessing.from_model:
        raise OptionError(
            f"the preprocessing {', '.join(preprocessing.steps())} is for images, but this input "
            f"is a {noun} {layout}; drop --size and --normalize (in Python: the preprocessing "
            f"argument) and scale the {noun} yourself"
        )
    conversions.append(
        f"the model's image preprocessing ({', '.join(preprocessing.steps())}) was not applied "
        f"to a {noun}"
    )
    return Preprocessing(source=f"not applied (a {noun}): {preprocessing.source}", as_is=True)
