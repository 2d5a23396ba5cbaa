"""Which loader reads an input (stage: input): what the model's first layer takes, and the
dispatch from a path to the image, array, signal, volume or clip loader.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from featuremaps._errors import InputError
from featuremaps.inputs.arrays import load_array, read_array
from featuremaps.inputs.checks import layer_phrase
from featuremaps.inputs.images import load_image
from featuremaps.inputs.loaded import LoadedInput
from featuremaps.inputs.model_input import ModelInput
from featuremaps.inputs.preprocessing import DEFAULT_PREPROCESSING, Preprocessing
from featuremaps.inputs.signals import load_signal, load_wav
from featuremaps.inputs.tokens import load_tokens
from featuremaps.inputs.volumes import load_clip, load_volume

__all__ = [
    "expected_axes",
    "expected_channels",
    "expected_tokens",
    "load_input",
    "load_input_for",
]


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


def expected_tokens(model: torch.nn.Module) -> tuple[int, str] | None:
    """The size of the embedding table of the model's first layer, and that layer's name, when
    that layer is an ``nn.Embedding`` (or ``nn.EmbeddingBag``): the model takes integer token
    ids. ``None`` when the first layer takes channels (the same "first layer" as
    :func:`expected_channels`) or there is no embedding."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            return int(module.num_embeddings), name
        value = getattr(module, "in_channels", None)
        if isinstance(value, int) and not isinstance(value, bool):
            return None
    return None


def _holds_integers(path: str | Path) -> bool:
    """Whether the ``.npy`` file holds integers (what token ids are saved as)."""
    return read_array(path, None)[1].dtype.kind in "iu"


def load_input_for(
    path: str | Path, model: torch.nn.Module, preprocessing: Preprocessing = DEFAULT_PREPROCESSING
) -> LoadedInput:
    """:func:`load_input` with what ``model``'s first layer takes: its channels and spatial axes
    (:func:`expected_channels`, :func:`expected_axes`), or token ids
    (:func:`expected_tokens`)."""
    first = expected_channels(model)
    axes = expected_axes(model)
    return load_input(
        path,
        channels=first[0] if first else None,
        layer_name=first[1] if first else None,
        preprocessing=preprocessing,
        axes=axes[0] if axes else None,
        tokens=expected_tokens(model),
    )


def load_input(
    path: str | Path,
    *,
    channels: int | None = None,
    layer_name: str | None = None,
    preprocessing: Preprocessing = DEFAULT_PREPROCESSING,
    axes: int | None = None,
    tokens: tuple[int, str] | None = None,
) -> LoadedInput:
    """Load an image, a ``.npy`` array or a ``.wav`` sound as the tensor to feed.

    ``channels`` is what the model's first layer takes (see :func:`expected_channels`) and
    ``layer_name`` names that layer in messages; ``None`` keeps what the file has. ``axes`` is
    how many spatial axes that layer takes (see :func:`expected_axes`): with 1 (a ``Conv1d``),
    a ``.npy`` array is a signal ``(C, L)`` or ``(1, C, L)`` and is fed as ``(1, C, L)``; with 2
    (a ``Conv2d``) a ``.npy`` batch ``(N, C, H, W)`` is fed whole (see :func:`load_array`); with 3
    (a ``Conv3d``) a ``.npy`` array is a volume (see :func:`load_volume`) and a folder of frames
    or an animated GIF is a clip (see :func:`load_clip`). ``tokens`` is the embedding table's
    size and name when the model's first layer is an embedding (see :func:`expected_tokens`):
    a ``.npy`` array of integers is then token ids, fed as integers as given (see
    :func:`load_tokens`), and so is every ``.npy`` array when no layer takes channels.
    """
    spec = ModelInput(
        channels=channels,
        layer_name=layer_name,
        preprocessing=preprocessing,
        axes=axes,
        tokens=tokens,
    )
    suffix = Path(path).suffix.lower()
    if tokens is not None and suffix == ".npy" and (channels is None or _holds_integers(path)):
        return load_tokens(path, spec)
    if suffix == ".wav":
        if axes in (2, 3):
            takes = (
                "images; give an image file or a .npy array (C, H, W)"
                if axes == 2
                else "volumes (C, D, H, W) or clips; give a .npy volume, a folder of frames or "
                "an animated GIF"
            )
            raise InputError(
                f"input '{path}' is a sound (a signal (C, L)), but {layer_phrase(layer_name)} is "
                f"{axes}-D and takes {takes}"
            )
        return load_wav(path, spec)
    if axes == 1:
        if suffix != ".npy":
            raise InputError(
                f"input '{path}' is an image, but {layer_phrase(layer_name)} is 1-D and takes "
                f"signals (C, L); give a .npy array (C, L) or a .wav file"
            )
        return load_signal(path, spec)
    if axes == 3:
        if suffix == ".npy":
            return load_volume(path, spec)
        return load_clip(path, spec)
    loader = load_array if suffix == ".npy" else load_image
    return loader(path, spec)
