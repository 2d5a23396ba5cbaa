"""One error family for everything featuremaps reports to a user.

Every error message is one line that says what was received, what was expected and one next step.
The command line prints ``str(error)`` and exits with status 2; nothing else reaches the user.

    FeaturemapsError              base class; catch this to catch everything we raise
    ├── InputError                an image or array that cannot be read or fed to the model
    ├── ModelError                a model spec, weights file or checkpoint that cannot be used
    │   └── UntrustedCheckpointError  a checkpoint that needs full unpickling (may run code)
    ├── LayerError                a layer pattern or type that matches nothing
    │   └── GeometryError         a layer whose cells cannot be placed on the input
    ├── CaptureError              the model's forward pass failed on the given input
    ├── OptionError               an option value that is not valid (colormap, scale, channels)
    ├── OutputError               an output folder that cannot be written safely
    └── EngineError               a run over workers that cannot go on (Ray missing or out of
                                  reach, a partial delivered twice, a worker that always fails)

    FeaturemapsWarning            base class of the warnings we emit (a UserWarning)
    ├── RandomWeightsWarning      pretrained weights were asked for but could not be had
    └── NonFiniteWarning          a captured tensor holds NaN or Inf values
"""

from __future__ import annotations

__all__ = [
    "CaptureError",
    "EngineError",
    "FeaturemapsError",
    "FeaturemapsWarning",
    "GeometryError",
    "InputError",
    "LayerError",
    "ModelError",
    "NonFiniteWarning",
    "OptionError",
    "OutputError",
    "RandomWeightsWarning",
    "UntrustedCheckpointError",
]


class FeaturemapsError(Exception):
    """Base class of every error featuremaps raises on purpose."""


class InputError(FeaturemapsError):
    """An input image or array is missing, unreadable, or does not fit the model."""


class ModelError(FeaturemapsError):
    """A model spec, weights file or checkpoint cannot be resolved or loaded."""


class UntrustedCheckpointError(ModelError):
    """A checkpoint needs full unpickling, which can execute arbitrary code."""


class LayerError(FeaturemapsError):
    """A layer pattern or module type selects nothing in the model."""


class GeometryError(LayerError):
    """A layer's cells cannot be placed on the input: no stride, offset and receptive field
    describe them (uneven spacing, a field cut off by the input border, no 2-D grid)."""


class CaptureError(FeaturemapsError):
    """The model's forward pass raised an error on the given input."""


class OptionError(FeaturemapsError):
    """An option value is not valid (unknown colormap, scale mode, channel list, size)."""


class OutputError(FeaturemapsError):
    """The output folder cannot be written without risking the user's files."""


class EngineError(FeaturemapsError):
    """A run spread over workers cannot go on: the engine is not installed or its cluster cannot
    be reached, a worker keeps failing, or a partial result arrived twice or never."""


class FeaturemapsWarning(UserWarning):
    """Base class of every warning featuremaps emits."""


class RandomWeightsWarning(FeaturemapsWarning):
    """Pretrained weights were requested but the model runs with random weights."""


class NonFiniteWarning(FeaturemapsWarning):
    """A captured activation contains NaN or infinite values."""
