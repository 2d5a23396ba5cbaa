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

Submodules, in the order an input goes through them:

- ``loading``: :func:`load_input` picks the loader from the suffix and the model's first layer
  (:func:`expected_channels`, :func:`expected_axes`, :func:`expected_tokens`).
- ``model_input``: :class:`ModelInput`, what the model takes, which every loader is given, and
  the input size an architecture fixes (:func:`fixed_input_size`).
- ``checks``: the path checks and message pieces every loader shares.
- ``images``: image files, decoded with Pillow (EXIF orientation, pixel modes).
- ``tiffs``: TIFF files Pillow cannot decode (float16, float colour), read with tifffile.
- ``arrays``: ``.npy`` files read without unpickling; arrays that hold pictures.
- ``signals``: ``.npy`` signals ``(C, L)`` and PCM ``.wav`` files.
- ``volumes``: ``.npy`` volumes ``(C, D, H, W)`` and clips of frames.
- ``tokens``: ``.npy`` integer token ids ``(N, L)`` for a model that starts with an embedding.
- ``values``: the one rule by which read numbers become float32 (full scales, dtypes).
- ``preprocessing``: :class:`Preprocessing`, its recipes and parsers, and applying it.
- ``loaded``: :class:`LoadedInput`, and finishing a picture into one.
- ``display``: pictures of the input as given and as fed, for reports.
"""

from __future__ import annotations

from featuremaps.inputs.arrays import load_array
from featuremaps.inputs.display import fed_picture
from featuremaps.inputs.images import (
    IMAGE_SUFFIXES,
    load_image,
    readable_suffixes,
    sample_image_path,
)
from featuremaps.inputs.loaded import LoadedInput
from featuremaps.inputs.loading import (
    expected_axes,
    expected_channels,
    expected_tokens,
    load_input,
    load_input_for,
)
from featuremaps.inputs.model_input import ModelInput, fixed_input_size, fixed_size_preprocessing
from featuremaps.inputs.preprocessing import (
    Preprocessing,
    parse_normalize,
    parse_size,
    preprocessing_from_timm,
    preprocessing_from_weights,
)
from featuremaps.inputs.signals import load_signal, load_wav
from featuremaps.inputs.tokens import load_tokens
from featuremaps.inputs.volumes import load_clip, load_volume

__all__ = [
    "IMAGE_SUFFIXES",
    "LoadedInput",
    "ModelInput",
    "Preprocessing",
    "expected_axes",
    "expected_channels",
    "expected_tokens",
    "fed_picture",
    "fixed_input_size",
    "fixed_size_preprocessing",
    "load_array",
    "load_clip",
    "load_image",
    "load_input",
    "load_input_for",
    "load_signal",
    "load_tokens",
    "load_volume",
    "load_wav",
    "parse_normalize",
    "parse_size",
    "preprocessing_from_timm",
    "preprocessing_from_weights",
    "readable_suffixes",
    "sample_image_path",
]
