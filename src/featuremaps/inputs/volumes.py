"""Volumes and clips in (stage: input): ``.npy`` volumes ``(C, D, H, W)`` and clips (a folder of
frames, or an animated GIF), fed as ``(1, C, D, H, W)`` float32 to a model whose first layer is
3-D.

A volume's values follow the arrays' rule and skip image preprocessing; a clip's frames are
pictures and are preprocessed frame by frame, as images are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, UnidentifiedImageError

from featuremaps._errors import InputError
from featuremaps.inputs.arrays import one_sample, read_array
from featuremaps.inputs.checks import channel_count, existing_path, layer_phrase
from featuremaps.inputs.display import for_display
from featuremaps.inputs.images import IMAGE_SUFFIXES, decode, not_an_image
from featuremaps.inputs.loaded import LoadedInput
from featuremaps.inputs.model_input import ANY_MODEL, ModelInput
from featuremaps.inputs.preprocessing import preprocess, skip_image_preprocessing
from featuremaps.inputs.values import EIGHT_BIT, FloatArray, float32_values, unit_scaled

__all__ = ["load_clip", "load_volume"]


def _volume_display(cdhw: FloatArray) -> npt.NDArray[np.uint8]:
    """The middle slice along D of a (C, D, H, W) volume, shown as the images' inputs are."""
    middle = cdhw[:, cdhw.shape[1] // 2]
    return for_display(np.ascontiguousarray(middle.transpose(1, 2, 0)))


def load_volume(path: str | Path, spec: ModelInput = ANY_MODEL) -> LoadedInput:
    """Load a ``.npy`` volume ``(C, D, H, W)`` or ``(1, C, D, H, W)`` as the ``(1, C, D, H, W)``
    float32 tensor to feed (for a model whose first layer is 3-D).

    Values follow :func:`load_array`'s dtype rules (``uint8``/``uint16`` divided by their full
    scale unless fed as is, ``bool`` to 0/1, others cast to float32 without scaling). Image
    preprocessing (resize, crop, normalisation) is not applied to volumes: the model's own is
    skipped and said so, and steps given by the user are refused. ``display`` is the middle
    slice along D.
    """
    channels, layer_name, preprocessing = spec.channels, spec.layer_name, spec.preprocessing
    where, array, _, original = read_array(path, channels)
    conversions: list[str] = []
    layout = "(C, D, H, W)"
    accepted = f"{layout} or (1, C, D, H, W)"
    array = one_sample(
        array, where, conversions, noun="volume", ndims=(4, 5), accepted=accepted, layout=layout
    )
    count = int(array.shape[0])
    if channels is not None and count != channels:
        raise InputError(
            f"volume '{where}' has {channel_count(count)} ({original}), but "
            f"{layer_phrase(layer_name)} takes {channels}; save it as ({channels}, D, H, W)"
        )
    values = float32_values(
        array, conversions, noun="volume", picture=True, as_is=preprocessing.as_is
    )
    preprocessing = skip_image_preprocessing(
        preprocessing, conversions, noun="volume", layout="(C, D, H, W)"
    )
    tensor = torch.from_numpy(np.ascontiguousarray(values)).unsqueeze(0)
    display = _volume_display(values)
    return LoadedInput(
        tensor, where, "volume", original, tuple(conversions), preprocessing, display
    )


def _clip_frames(where: Path) -> tuple[list[Image.Image], str]:
    """The frames of a folder of images (in name order) or of an animated GIF, as RGB."""
    if where.is_dir():
        files = sorted(
            p for p in where.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise InputError(
                f"clip folder '{where}' holds no image files ({', '.join(IMAGE_SUFFIXES)}); put "
                f"one image per frame in it, named in frame order"
            )
        frames = []
        for file in files:
            image, _, _ = decode(file)
            frames.append(image.convert("RGB"))
        return frames, f"folder of {len(frames)} frames"
    try:
        opened = Image.open(where)
    except (UnidentifiedImageError, OSError):
        raise not_an_image(where) from None
    with opened:
        count = int(getattr(opened, "n_frames", 1))
        frames = []
        for index in range(count):
            opened.seek(index)
            frames.append(opened.convert("RGB"))
        return frames, f"{opened.format or where.suffix.lstrip('.').upper()} of {count} frames"


def load_clip(path: str | Path, spec: ModelInput = ANY_MODEL) -> LoadedInput:
    """Load a clip, a folder of frames (image files in name order) or an animated GIF, as the
    ``(1, 3, T, H, W)`` float32 tensor to feed (for a model whose first layer is 3-D).

    Each frame is converted to RGB and divided by 255, then given the preprocessing (resize,
    crop, normalisation) frame by frame, as an image would be; the frames must all come out the
    same size. ``display`` is the first frame as given.
    """
    channels, layer_name, preprocessing = spec.channels, spec.layer_name, spec.preprocessing
    where = existing_path(path)
    frames, original = _clip_frames(where)
    if channels is not None and channels != 3:
        raise InputError(
            f"clip '{where}' has 3 channels (RGB frames), but {layer_phrase(layer_name)} takes "
            f"{channels}; give a .npy volume ({channels}, D, H, W) instead"
        )
    conversions = [f"{len(frames)} frames converted to RGB and divided by 255"]
    fed = []
    for i, frame in enumerate(frames):
        hwc = unit_scaled(np.asarray(frame, dtype=np.float32), EIGHT_BIT)
        steps: list[str] = []
        chw = torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1)))
        fed.append(preprocess(chw, preprocessing, f"frame {i} of clip '{where}'", steps))
        if i == 0:
            conversions.extend(f"each frame {step}" for step in steps)
    sizes = {tuple(f.shape[-2:]) for f in fed}
    if len(sizes) != 1:
        raise InputError(
            f"clip '{where}' has frames of different sizes {sorted(sizes)}, expected one size; "
            f"resize the frames alike or give --size"
        )
    tensor = torch.stack(fed, dim=1).unsqueeze(0).to(torch.float32).contiguous()
    first = unit_scaled(np.asarray(frames[0], dtype=np.float32), EIGHT_BIT)
    display = for_display(first)
    return LoadedInput(tensor, where, "clip", original, tuple(conversions), preprocessing, display)
