"""NumPy arrays in (stage: input): read ``.npy`` files without unpickling, and feed arrays that
hold pictures ``(C, H, W)``.

:func:`read_array` is the one way every ``.npy`` loader (arrays, signals, volumes) opens its
file. :func:`load_array` then finds the channel axis, takes the values by the rule of
:func:`~featuremaps.inputs.values.float32_values`, and decides from them how much of the model's
preprocessing the array still needs.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from featuremaps._errors import InputError
from featuremaps.inputs.checks import (
    channel_count,
    check_file,
    layer_phrase,
    one_line,
    unreadable,
)
from featuremaps.inputs.loaded import LoadedInput, finish
from featuremaps.inputs.model_input import ANY_MODEL, ModelInput
from featuremaps.inputs.preprocessing import Preprocessing
from featuremaps.inputs.values import FloatArray, float32_values

__all__ = ["load_array", "one_sample", "read_array"]

# The first bytes of every .npy file, whatever its format version.
_NPY_MAGIC = b"\x93NUMPY"


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
        raise unreadable(path, error) from None
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
                f"array '{path}' is a damaged .npy file ({one_line(error)}); save it again with "
                f"numpy.save"
            ) from None
        except (OSError, EOFError) as error:
            raise InputError(
                f"array '{path}' is a damaged .npy file ({one_line(error)}); save it again with "
                f"numpy.save"
            ) from None
    return np.asarray(loaded)


def read_array(
    path: str | Path, channels: int | None
) -> tuple[Path, npt.NDArray[np.generic], tuple[int, ...], str]:
    """Check and read a ``.npy`` input of real numbers: its path, the array, its shape, and the
    file in words for :attr:`LoadedInput.original` (".npy uint8 (3, 224, 224)")."""
    where = check_file(path, channels)
    array = _read_npy(where)
    shape = tuple(int(size) for size in array.shape)
    original = f".npy {array.dtype} {shape}"
    if array.dtype.kind not in "biuf":
        raise InputError(
            f"array '{where}' has dtype {array.dtype}, expected real numbers (float, int or "
            f"bool); save it with array.astype('float32')"
        )
    return where, array, shape, original


def one_sample(
    array: npt.NDArray[np.generic],
    where: Path,
    conversions: list[str],
    *,
    noun: str,
    ndims: tuple[int, ...],
    accepted: str,
    layout: str,
) -> npt.NDArray[np.generic]:
    """``array``, a ``noun`` ("signal", "volume") read from ``where``, without its batch axis.

    It must have one of ``ndims`` axes (the most of them only with a batch of 1 in front) and at
    least one value; else the error lists the ``accepted`` layouts and asks for ``layout``.
    """
    shape = tuple(int(size) for size in array.shape)
    batched = max(ndims)
    if array.ndim not in ndims or (array.ndim == batched and shape[0] != 1) or array.size == 0:
        raise InputError(
            f"{noun} '{where}' has shape {shape}, expected {accepted} with at least one value; "
            f"save one sample per file as {layout}"
        )
    if array.ndim == batched:
        conversions.append("batch axis of size 1 dropped")
        sample: npt.NDArray[np.generic] = array[0]
        return sample
    return array


def _array_preprocessing(
    chw: FloatArray, preprocessing: Preprocessing, conversions: list[str]
) -> Preprocessing:
    """The part of the model's preprocessing an array still needs, decided from its values
    (``chw`` is ``(C, H, W)``, or a batch ``(N, C, H, W)`` decided as a whole).

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
    shape = (int(chw.shape[-2]), int(chw.shape[-1]))  # (H, W) of the (C, H, W) values
    if size is not None and shape == size and preprocessing.transform is None:
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


def load_array(path: str | Path, spec: ModelInput = ANY_MODEL) -> LoadedInput:
    """Load a ``.npy`` array as the tensor to feed, deciding from its dtype and values what it is.

    ``uint8`` and ``uint16`` arrays are pictures: divided by 255 or 65535, as image files are.
    Other dtypes keep their values (cast to float32). The model's own preprocessing
    (``spec.preprocessing.from_model``) is then applied only to arrays in [0, 1]; an array with
    values outside [0, 1] is taken as already preprocessed and fed as it is, and one that
    already has the recipe's final size is not resized or cropped again. A preprocessing given
    by the user is applied as given; :meth:`Preprocessing.unchanged` feeds the values as they
    are. Every decision is listed in ``conversions``.

    Accepted shapes: ``(H, W)``, ``(C, H, W)``, ``(H, W, C)`` and ``(1, C, H, W)``; a batch
    ``(N, C, H, W)`` of more than one sample when the model's first layer is 2-D
    (``spec.axes`` 2), fed whole as it is given (each sample preprocessed alike), so that a
    run's ``sample`` picks the one drawn. For 3-D
    arrays the channel axis is the one whose size equals ``spec.channels`` (first axis
    preferred); with no channel count (or when neither axis matches) the shorter of the first and
    last axis is taken as channels, and the guess is reported.
    """
    channels, layer_name, preprocessing = spec.channels, spec.layer_name, spec.preprocessing
    where, array, shape, original = read_array(path, channels)
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
    batch: npt.NDArray[np.generic] | None = None
    if array.ndim == 4:
        if shape[0] != 1 and spec.axes != 2:
            raise InputError(
                f"array '{where}' has shape {shape}, a batch of {shape[0]}, expected one sample "
                f"(1, C, H, W); save one file per sample"
            )
        chw = array[0]
        if shape[0] == 1:
            layout = "(1, C, H, W)"
            conversions.append("batch axis of size 1 dropped")
        else:
            batch = array
            layout = "(N, C, H, W)"
            conversions.append(
                f"batch of {shape[0]} samples (N, C, H, W) fed whole (--sample picks the one drawn)"
            )
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
            f"array '{where}' has shape {shape}, read as {channel_count(count)} {layout}, but "
            f"{layer_phrase(layer_name)} takes {channels}; save it with {channels} channels as "
            f"({channels}, H, W)"
        )

    given = chw if batch is None else batch
    values = float32_values(
        given, conversions, noun="array", picture=True, as_is=preprocessing.as_is
    )
    preprocessing = _array_preprocessing(values, preprocessing, conversions)
    if batch is None:
        hwc = np.ascontiguousarray(values.transpose(1, 2, 0))
        return finish(hwc, where, "array", original, conversions, preprocessing)
    # Every sample is preprocessed alike; the steps are said once, as the first sample's.
    samples = [
        finish(
            np.ascontiguousarray(sample.transpose(1, 2, 0)),
            where,
            "array",
            original,
            conversions if index == 0 else [],
            preprocessing,
        )
        for index, sample in enumerate(values)
    ]
    tensor = torch.cat([sample.tensor for sample in samples]).contiguous()
    displays = tuple(sample.display for sample in samples if sample.display is not None)
    return LoadedInput(
        tensor, where, "array", original, tuple(conversions), preprocessing, displays[0], displays
    )
