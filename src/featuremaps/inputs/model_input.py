"""What the model takes (stage: input, facing the model): the one description every loader reads.

:class:`ModelInput` says what the model's first layer takes (its channel count, and its name for
messages) and the preprocessing its inputs get. :func:`~featuremaps.inputs.load_input` builds one
from its options and hands it to the loader of the input's kind, so every loader takes a path and
this description.
"""

from __future__ import annotations

from dataclasses import dataclass

from featuremaps.inputs.preprocessing import DEFAULT_PREPROCESSING, Preprocessing

__all__ = ["ANY_MODEL", "ModelInput"]


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


# The default of every loader's ``spec``: any model, inputs kept as the file has them, with the
# default preprocessing. One shared instance (the class is frozen), as ``DEFAULT_PREPROCESSING``.
ANY_MODEL = ModelInput()
