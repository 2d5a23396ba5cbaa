"""First-layer maps of the bundled trained ``shapes_cnn`` on four test patterns.

The input holds horizontal, vertical and diagonal stripes and a disk (one per quadrant); each
conv1 channel lights up on the orientations it learned to detect.

    python examples/shapes_conv1.py [OUT_DIR]
"""

import sys

import numpy as np
import torch

import featuremaps as fm

y, x = np.mgrid[:32, :32]
quadrants = [
    (y // 3) % 2,  # horizontal stripes
    (x // 3) % 2,  # vertical stripes
    ((x + y) // 4) % 2,  # diagonal stripes
    ((y - 15.5) ** 2 + (x - 15.5) ** 2 < 10**2).astype(int),  # a disk
]
picture = np.zeros((64, 64), dtype=np.float32)
for (r, c), pattern in zip([(0, 0), (0, 1), (1, 0), (1, 1)], quadrants, strict=True):
    picture[r * 32 : r * 32 + 32, c * 32 : c * 32 + 32] = pattern * 0.75 + 0.15
image = torch.from_numpy(picture).expand(1, 3, 64, 64)

out = sys.argv[1] if len(sys.argv) > 1 else "out/shapes_conv1"
[result] = fm.visualize("shapes_cnn", image, out=out, layers="conv1", report=False)
print(f"wrote {result.records[0].image} to {result.out_dir}")
