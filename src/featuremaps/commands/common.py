"""What every command does first: resolve the model and the inputs it was given.

Shared by the command modules (run, stats, ablate, locate, layers); a caller may pass a model
object, a :class:`~featuremaps.models.LoadedModel` or a spec string, and an input as a tensor, a
path or a :class:`~featuremaps.inputs.LoadedInput`; :func:`place_model` also moves the model to
the device it runs on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from featuremaps.checkpoints import PYTHON_OBJECT
from featuremaps.devices import Placement, resolve_placement
from featuremaps.inputs import (
    LoadedInput,
    Preprocessing,
    expected_axes,
    load_input_for,
)
from featuremaps.models import LoadedModel, load_model

__all__ = ["ResolvedInput", "nonfinite_message", "place_model", "resolve_input", "resolve_model"]


def resolve_model(model: nn.Module | LoadedModel | str) -> LoadedModel:
    """A :class:`LoadedModel` for a spec string, a module (described as given) or one already
    loaded."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, str):
        return load_model(model)
    name = type(model).__name__
    return LoadedModel(model, name, PYTHON_OBJECT, "as given", "as given by the caller", False)


def place_model(
    model: nn.Module | LoadedModel | str, device: str | torch.device | None, dtype: str | None
) -> tuple[LoadedModel, Placement]:
    """Resolve ``model`` (as :func:`resolve_model`) and move it where it runs, in place; return
    it with its :class:`~featuremaps.devices.Placement` (the device and precision of the run)."""
    loaded = resolve_model(model)
    placement = resolve_placement(loaded.model, device, dtype)
    placement.place(loaded.model)
    return loaded, placement


@dataclass(frozen=True)
class ResolvedInput:
    """One input ready to run: what to feed, how to describe it, and its pictures' sources."""

    tensor: torch.Tensor
    info: dict[str, Any]
    stem: str
    display: np.ndarray | None = None  # (H, W, 3) uint8, the input as given
    preprocessing: Preprocessing | None = None
    # Every sample's picture as given, for a batch read from one array (empty for one sample).
    displays: tuple[np.ndarray, ...] = ()

    def display_of(self, sample: int) -> np.ndarray | None:
        """The picture of sample ``sample`` as given (``display`` for one sample)."""
        if self.displays:
            return self.displays[sample] if 0 <= sample < len(self.displays) else None
        return self.display


def resolve_input(item: Any, loaded: LoadedModel) -> ResolvedInput:
    """Return the tensor to feed, its manifest description, a folder name and its pictures."""
    if isinstance(item, torch.Tensor):
        # One sample without its batch axis gets one: (C, H, W) for images, (C, L) for a model
        # whose first layer is 1-D.
        axes = expected_axes(loaded.model)
        single = (axes[0] if axes else 2) + 1
        tensor = item if item.dim() != single else item.unsqueeze(0)
        return ResolvedInput(tensor, {"kind": "tensor", "fed_shape": list(tensor.shape)}, "input")
    if not isinstance(item, LoadedInput):
        item = load_input_for(item, loaded.model, loaded.input_preprocessing())
    return ResolvedInput(
        item.tensor,
        item.describe(),
        item.path.stem,
        item.display,
        item.preprocessing,
        item.displays,
    )


def nonfinite_message(layers: Sequence[str], counted: str) -> str | None:
    """The warning of every command about NaN/Inf values, by one rule: any layer that holds one
    (``layers``, in order) is counted and the first named; ``counted`` says where the values are
    counted. None when no layer holds one."""
    if not layers:
        return None
    return f"{len(layers)} layer(s) hold NaN/Inf values (first: '{layers[0]}'); {counted}"
