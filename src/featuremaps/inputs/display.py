"""Pictures of inputs for people (stage: input, read again by render and report).

:func:`for_display` draws an input as it was given, :func:`fed_picture` what the model was fed
(de-normalised or stretched, and a sentence saying which). Both are for display only: the fed
tensor is never changed by them.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch

from featuremaps.inputs.preprocessing import Preprocessing
from featuremaps.inputs.values import FloatArray

__all__ = ["fed_picture", "for_display"]


def for_display(hwc: FloatArray) -> npt.NDArray[np.uint8]:
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
