"""featuremaps' own zoo: small models trained by scripts in this repository, shipped as weights.

Part of the *model* stage (input → **model** → capture → ...): :func:`featuremaps.load_model`
hands the names in :data:`NAMES` to :func:`load` before it asks torchvision. These models need no
download, so their maps show learned features on any machine, which random weights cannot.

``shapes_cnn``
    :class:`~featuremaps.zoo.shapes.ShapesNet` trained by ``scripts/train_shapes.py`` on
    procedurally drawn stripes, disks, rectangles and checkerboards (64x64 RGB in [0, 1]). Its
    ``conv1`` filters are oriented edge detectors. The card ``shapes_cnn.json`` beside the weights
    records the settings, the accuracies and how to reproduce them.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from featuremaps._errors import ModelError
from featuremaps.checkpoints import (
    RANDOM_SEED,
    WEIGHT_SUFFIXES,
    LoadedModel,
    fit_state_dict,
    load_weights_file,
    seeded_build,
)
from featuremaps.inputs import Preprocessing
from featuremaps.zoo.shapes import INPUT_SIZE, ShapesNet

__all__ = ["NAMES", "card", "load"]

NAMES = ("shapes_cnn",)
SOURCE = "featuremaps"


def _resource(filename: str) -> Any:
    return resources.files(__name__).joinpath(filename)


def card(name: str) -> dict[str, Any]:
    """The JSON card written next to the weights by the training script."""
    _check_name(name)
    try:
        text = _resource(f"{name}.json").read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelError(
            f"the card {name}.json of zoo model '{name}' is missing from the featuremaps package "
            f"({exc}); reinstall featuremaps or run scripts/train_shapes.py"
        ) from None
    data: dict[str, Any] = json.loads(text)
    return data


def _check_name(name: str) -> None:
    if name not in NAMES:
        raise ModelError(f"'{name}' is not a featuremaps zoo model; expected one of {NAMES}")


def _packaged_state(name: str) -> dict[str, Any]:
    from safetensors.torch import load

    try:
        data = _resource(f"{name}.safetensors").read_bytes()
    except OSError as exc:
        raise ModelError(
            f"the weights {name}.safetensors of zoo model '{name}' are missing from the "
            f"featuremaps package ({exc}); reinstall featuremaps, or run scripts/train_shapes.py "
            "to make them, or pass --weights none for random weights"
        ) from None
    return dict(load(data))


def _preprocessing(name: str) -> Preprocessing:
    # Keep the aspect ratio (so stripe angles stay true), then take the centre square the model
    # was trained on. The model was trained on [0, 1] values, so there is no normalisation.
    return Preprocessing(
        resize=INPUT_SIZE,
        crop=INPUT_SIZE,
        source=f"{name}: trained on {INPUT_SIZE}x{INPUT_SIZE} RGB in [0, 1], no normalisation",
        from_model=True,
    )


def load(name: str, weights: str | None = None, trust_checkpoint: bool = False) -> LoadedModel:
    """Build zoo model ``name`` with its packaged weights, random weights or a weights file.

    Args:
        name: one of :data:`NAMES`.
        weights: ``None``/``"DEFAULT"`` for the packaged trained weights, ``"none"`` for seeded
            random weights (PyTorch's default init, seed 0), or a ``.safetensors``/``.pth`` path.
        trust_checkpoint: as for :func:`featuremaps.load_model`, for a ``.pth`` weights file.
    """
    _check_name(name)
    asked = weights or "DEFAULT"
    pre = _preprocessing(name)
    if asked.lower() in ("none", "random"):
        model = seeded_build(ShapesNet)
        status = f"random (asked for: --weights none; PyTorch default init, seed {RANDOM_SEED})"
        return LoadedModel(model, name, SOURCE, asked, status, True, preprocessing=pre)
    if asked.lower() == "default":
        model = ShapesNet()
        fit_state_dict(model, _packaged_state(name), f"{name}.safetensors (packaged)", name)
        accuracy = card(name).get("test_accuracy")
        score = f", test accuracy {accuracy:.1%}" if isinstance(accuracy, float) else ""
        status = f"pretrained: {name} (procedural shapes{score})"
        return LoadedModel(model, name, SOURCE, asked, status, False, preprocessing=pre)
    if Path(asked).suffix in WEIGHT_SUFFIXES or Path(asked).exists():
        model = ShapesNet()
        fit_state_dict(model, load_weights_file(asked, trust_checkpoint), asked, name)
        return LoadedModel(
            model, name, SOURCE, asked, f"loaded from {asked}", False, preprocessing=pre
        )
    raise ModelError(
        f"'{asked}' is not a weights name for {name}; expected DEFAULT (the packaged trained "
        "weights), none, or a weights file path"
    )
