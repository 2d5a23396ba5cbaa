"""The loaded input (stage: input; what the model, capture and report stages receive).

:class:`LoadedInput` carries the fed tensor, a picture of the input as given, and in words every
conversion applied on the way. :func:`finish` builds one from a picture's float values: it draws
the picture and applies the preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from featuremaps.inputs.display import for_display
from featuremaps.inputs.preprocessing import Preprocessing, preprocess
from featuremaps.inputs.values import FloatArray

__all__ = ["LoadedInput", "finish"]


@dataclass(frozen=True)
class LoadedInput:
    """One input, ready to feed, with a record of how it got that way.

    ``tensor`` is ``(1, C, H, W)`` float32 (``(1, C, L)`` for a signal) and is exactly what the
    model receives. ``display`` is an ``(H, W, 3)`` uint8 picture of the input as given (after
    mode conversion, before resizing or normalisation); arrays are shown by their first channel
    when they do not have 1 or 3, and values outside [0, 1] are stretched from their minimum to
    their maximum for display only. Signals have none (their pictures draw them beside each
    layer, on the same time axis). For a batch ``(N, C, H, W)`` read from one array, ``display``
    is the first sample's picture and ``displays`` holds every sample's (empty for one sample):
    see :meth:`display_of`.
    """

    tensor: torch.Tensor
    path: Path
    kind: str
    original: str
    conversions: tuple[str, ...]
    preprocessing: Preprocessing
    display: npt.NDArray[np.uint8] | None
    displays: tuple[npt.NDArray[np.uint8], ...] = ()

    def display_of(self, sample: int) -> npt.NDArray[np.uint8] | None:
        """The picture of sample ``sample`` of the batch as given (``display`` for one sample)."""
        if self.displays:
            return self.displays[sample] if 0 <= sample < len(self.displays) else None
        return self.display

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


def finish(
    hwc: FloatArray,
    path: Path,
    kind: str,
    original: str,
    conversions: list[str],
    preprocessing: Preprocessing,
    *,
    display: npt.NDArray[np.uint8] | None = None,
) -> LoadedInput:
    """The loaded input of ``kind`` ("image", "array") for a picture's ``(H, W, C)`` float values:
    drawn as given (or as ``display``, when given), then preprocessed and fed as ``(1, C, H, W)``
    float32. The fields after ``hwc`` are :class:`LoadedInput`'s, in its order."""
    if display is None:
        display = for_display(hwc)
    chw = torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1)))
    chw = preprocess(chw, preprocessing, f"{kind} '{path}'", conversions)
    tensor = chw.unsqueeze(0).to(torch.float32).contiguous()
    return LoadedInput(tensor, path, kind, original, tuple(conversions), preprocessing, display)
