"""Token ids in (stage: input): ``.npy`` arrays of integer ids ``(L,)`` or ``(N, L)``, fed as
integers, as given, to a model whose first layer is an ``nn.Embedding``.

Ids are indices, not values: they are never cast to float, scaled, reshaped into a picture or
preprocessed, and each must name a row of the embedding table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from featuremaps._errors import InputError
from featuremaps.inputs.arrays import read_array
from featuremaps.inputs.checks import layer_phrase
from featuremaps.inputs.loaded import LoadedInput
from featuremaps.inputs.model_input import ANY_MODEL, ModelInput
from featuremaps.inputs.preprocessing import skip_image_preprocessing

__all__ = ["load_tokens"]

# The integer dtypes an embedding looks ids up with; the others are widened to int64.
_FED_AS_IS = (np.dtype(np.int64), np.dtype(np.int32))


def load_tokens(path: str | Path, spec: ModelInput = ANY_MODEL) -> LoadedInput:
    """Load a ``.npy`` array of integer token ids, ``(L,)`` or ``(N, L)``, as the tensor to feed.

    ``(N, L)`` is fed as given; ``(L,)`` gets a batch axis, ``(1, L)``. ``int64`` and ``int32``
    ids keep their dtype, other integer dtypes are widened to ``int64`` (values unchanged). With
    ``spec.tokens`` (the embedding table's size and the layer's name), every id must lie in
    ``0 .. size - 1``. Image preprocessing is never applied to ids: the model's own is skipped
    and said so, steps given by the user are refused. There is no picture of the input.
    """
    where, array, shape, original = read_array(path, None)
    table = spec.tokens
    layer = layer_phrase(table[1] if table else None)
    if array.dtype.kind not in "iu":
        raise InputError(
            f"array '{where}' holds {array.dtype} values, but {layer} is an embedding and takes "
            f"integer token ids; save the ids as integers: numpy.save(path, ids.astype('int64'))"
        )
    if array.ndim not in (1, 2) or array.size == 0:
        raise InputError(
            f"token ids '{where}' have shape {shape}, expected (L,) or (N, L) with at least one "
            f"id; save one sequence per row"
        )
    conversions: list[str] = []
    if table is not None:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= table[0]:
            raise InputError(
                f"token ids '{where}' span {low} .. {high}, but {layer} has {table[0]:,} "
                f"embeddings (ids 0 .. {table[0] - 1}); give ids the model's vocabulary has"
            )
    if array.ndim == 1:
        array = array[None]
        conversions.append(f"batch axis added: ({shape[0]},) fed as (1, {shape[0]})")
    if array.dtype not in _FED_AS_IS:
        array = array.astype(np.int64)
        conversions.append(f"{original.split()[1]} ids widened to int64 (values unchanged)")
    preprocessing = skip_image_preprocessing(
        spec.preprocessing, conversions, noun="token id array", layout="(N, L)"
    )
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return LoadedInput(tensor, where, "tokens", original, tuple(conversions), preprocessing, None)
