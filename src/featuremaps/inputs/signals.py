"""Signals in (stage: input): ``.npy`` arrays ``(C, L)`` and PCM ``.wav`` files, fed as
``(1, C, L)`` float32 to a model whose first layer is 1-D.

A signal keeps its values (only cast to float32; WAV samples are scaled to [-1, 1]), and image
preprocessing is not applied to it.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from featuremaps._errors import InputError
from featuremaps.inputs.arrays import one_sample, read_array
from featuremaps.inputs.checks import (
    channel_count,
    check_file,
    layer_phrase,
    one_line,
    unreadable,
)
from featuremaps.inputs.loaded import LoadedInput
from featuremaps.inputs.model_input import ANY_MODEL, ModelInput
from featuremaps.inputs.preprocessing import skip_image_preprocessing
from featuremaps.inputs.values import FloatArray, float32_values

__all__ = ["load_signal", "load_wav"]


def _signal(
    values: FloatArray, where: Path, original: str, conversions: list[str], spec: ModelInput
) -> LoadedInput:
    """The loaded signal ``(1, C, L)`` for values ``(C, L)``, after checking its channels against
    ``spec``; image preprocessing is skipped (see :func:`skip_image_preprocessing`)."""
    count = int(values.shape[0])
    channels = spec.channels
    if channels is not None and count != channels:
        raise InputError(
            f"signal '{where}' has {channel_count(count)} ({original}), but "
            f"{layer_phrase(spec.layer_name)} takes {channels}; give a signal with {channels} "
            f"channels as ({channels}, L)"
        )
    preprocessing = skip_image_preprocessing(
        spec.preprocessing, conversions, noun="signal", layout="(C, L)"
    )
    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).unsqueeze(0)
    return LoadedInput(tensor, where, "signal", original, tuple(conversions), preprocessing, None)


def load_signal(path: str | Path, spec: ModelInput = ANY_MODEL) -> LoadedInput:
    """Load a ``.npy`` signal ``(C, L)`` or ``(1, C, L)`` (a 1-D array is one channel) as the
    ``(1, C, L)`` float32 tensor to feed; values are kept (cast to float32, never rescaled).

    An array whose first axis does not match ``spec.channels`` but whose last does is read as
    ``(L, C)`` and transposed (said so in ``conversions``).
    """
    channels = spec.channels
    where, array, _, original = read_array(path, channels)
    conversions: list[str] = []
    accepted = "(C, L), (1, C, L) or (L,)"
    array = one_sample(
        array,
        where,
        conversions,
        noun="signal",
        ndims=(1, 2, 3),
        accepted=accepted,
        layout="(C, L)",
    )
    if array.ndim == 1:
        array = array[None]
        conversions.append("1-D array (L,) read as 1 channel")
    if channels is not None and array.shape[0] != channels and array.shape[1] == channels:
        array = array.T
        conversions.append("array (L, C) transposed to (C, L)")
    values = float32_values(array, conversions, noun="signal", picture=False)
    return _signal(values, where, original, conversions, spec)


def load_wav(path: str | Path, spec: ModelInput = ANY_MODEL) -> LoadedInput:
    """Load a PCM ``.wav`` file (8, 16, 24 or 32 bit, read with the standard library's
    :mod:`wave`) as a ``(1, channels, samples)`` float32 tensor scaled to [-1, 1]: signed
    samples are divided by 2**(bits - 1), 8-bit (unsigned) ones centred on 128 first."""
    import wave

    where = check_file(path, spec.channels)
    try:
        with wave.open(str(where), "rb") as reader:
            count, width = reader.getnchannels(), reader.getsampwidth()
            rate, frames = reader.getframerate(), reader.getnframes()
            raw = reader.readframes(frames)
    except OSError as error:
        raise unreadable(where, error) from None
    except (wave.Error, EOFError, struct.error) as error:
        raise InputError(
            f"'{where}' is not a PCM .wav file the standard library can read "
            f"({one_line(error)}); convert it to 16-bit PCM WAV, or save the samples as .npy"
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
    original = f"WAV {bits}-bit PCM {count}ch {rate} Hz {frames} samples"
    values = np.ascontiguousarray(values.T)
    return _signal(values, where, original, conversions, spec)
