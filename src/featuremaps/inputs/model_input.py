"""What the model takes (stage: input, facing the model): the one description every loader reads.

:class:`ModelInput` says what the model's first layer takes (its channel count, and its name for
messages) and the preprocessing its inputs get. :func:`~featuremaps.inputs.load_input` builds one
from its options and hands it to the loader of the input's kind, so every loader takes a path and
this description. :func:`fixed_input_size` reads the one input size a model's architecture
takes, where the model says it (torchvision's ViT: ``image_size``), and
:func:`fixed_size_preprocessing` feeds inputs at that size.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from featuremaps.inputs.preprocessing import DEFAULT_PREPROCESSING, Preprocessing

__all__ = ["ANY_MODEL", "ModelInput", "fixed_input_size", "fixed_size_preprocessing"]


@dataclass(frozen=True)
class ModelInput:
    """What the model takes, for a loader to shape one input to.

    ``channels`` is the channel count of the model's first layer (see
    :func:`~featuremaps.inputs.expected_channels`) and ``layer_name`` names that layer in
    messages; ``None`` keeps what the file has. ``preprocessing`` is what is done to a picture
    before it is fed. ``axes`` is how many spatial axes that layer takes (see
    :func:`~featuremaps.inputs.expected_axes`; 2 for images), ``None`` when its type does not
    say: a ``.npy`` batch ``(N, C, H, W)`` is fed whole only when it is 2. Nothing is checked
    here: each loader checks what it uses, with its own message (a clip, for one, never reads a
    channel count from its file).
    """

    channels: int | None = None
    layer_name: str | None = None
    preprocessing: Preprocessing = DEFAULT_PREPROCESSING
    axes: int | None = None
    # The model's first layer is an embedding: its table's size and its name (see
    # expected_tokens); integer .npy arrays are then token ids.
    tokens: tuple[int, str] | None = None


# The default of every loader's ``spec``: any model, inputs kept as the file has them, with the
# default preprocessing. One shared instance (the class is frozen), as ``DEFAULT_PREPROCESSING``.
ANY_MODEL = ModelInput()


def fixed_input_size(model: nn.Module) -> tuple[tuple[int, int], str] | None:
    """The ``(height, width)`` the model's architecture fixes for its input, and where that was
    read; ``None`` when the model does not say.

    Read from an ``image_size`` attribute of the model (an int, or a pair), as torchvision's
    ``VisionTransformer`` has: such a model asserts its input has exactly that size.
    """
    value = getattr(model, "image_size", None)
    where = f"{type(model).__name__}.image_size"

    def positive(item: object) -> bool:
        return isinstance(item, int) and not isinstance(item, bool) and item > 0

    if positive(value):
        assert isinstance(value, int)
        return (value, value), where
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(map(positive, value)):
        return (int(value[0]), int(value[1])), where
    return None


def fixed_size_preprocessing(size: tuple[int, int], where: str, rest: str = "") -> Preprocessing:
    """Inputs resized to ``size``, the one input size an architecture takes (read from
    ``where``, said in the source with ``rest`` after it): a square size resizes the shorter
    side and crops the centre, keeping the aspect; another is resized to it exactly. Nothing
    else is done (no normalisation)."""
    height, width = size
    square = height == width
    return Preprocessing(
        resize=height if square else (height, width),
        crop=height if square else None,
        source=f"input size {height}x{width} fixed by the architecture ({where}){rest}",
        from_model=True,
    )
