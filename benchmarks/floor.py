"""The floor of a whole ``featuremaps`` process: import torch and torchvision, build the model,
read and preprocess one photo, run one forward pass. Nothing of featuremaps is imported.

    python benchmarks/floor.py PHOTO [MODEL] [--size N] [--no-teardown]
                                          MODEL: a torchvision name (default resnet18)

The photo is read the way ``featuremaps run PHOTO --weights none`` reads an RGB JPEG: decoded by
Pillow with its EXIF orientation applied, values divided by 255 as float32, fed at full size
(random weights carry no preprocessing of their own). ``--size N`` resizes the shorter side to N
and crops the centre to N x N, as ``featuremaps run`` prepares inputs for a model whose
architecture fixes its input size (torchvision's ViTs: 224). The model is built with
``weights=None`` after ``torch.manual_seed(0)``, as ``load_model(name, "none")`` builds it.

``--no-teardown`` ends the process the way the ``featuremaps`` program ends (exit handlers,
flushed streams, then ``os._exit``), skipping the interpreter's teardown, which costs a process
that imported torch about a second: the floor that program can be held to on equal terms.
"""

from __future__ import annotations

import atexit
import os
import sys

import numpy as np
import torch
import torchvision
from PIL import Image, ImageOps


def main(argv: list[str]) -> None:
    teardown = "--no-teardown" not in argv
    argv = [a for a in argv if a != "--no-teardown"]
    size = None
    if "--size" in argv:
        at = argv.index("--size")
        size = int(argv[at + 1])
        del argv[at : at + 2]
    photo, name = argv[0], argv[1] if len(argv) > 1 else "resnet18"
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    with Image.open(photo) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    hwc = np.array(image, dtype=np.float32) / np.float32(255)
    chw = torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1)))
    if size is not None:
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as tvf

        chw = tvf.resize(chw, [size], interpolation=InterpolationMode.BILINEAR, antialias=True)
        chw = tvf.center_crop(chw, [size, size])
    x = chw.unsqueeze(0)
    with torch.no_grad():
        model(x)
    if not teardown:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
