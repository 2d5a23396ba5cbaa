"""The classic feature-map recipe in a few lines of featuremaps.

The recipe: load an image with PIL, turn it into a tensor (ToTensor), push it through
``nn.Conv2d(3, 64, 3, stride=2, padding=1)`` and draw the first 32 of the 64 channels in an
8-column grid. Here every tile shares one colour scale with its legend, 1x1 maps would not crash,
and the numbers land in ``manifest.json``.

    python examples/seed_recipe.py [OUT_DIR]
"""

import sys

from torch import nn

import featuremaps as fm

conv = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1)
image = fm.load_input(fm.sample_image_path())  # PIL image -> (1, 3, H, W) floats in [0, 1]
out = sys.argv[1] if len(sys.argv) > 1 else "out/seed_recipe"
[result] = fm.visualize(conv, image, out=out, grid=fm.GridOptions(max_channels=32, columns=8))
print(f"wrote {result.records[0].image} to {result.out_dir}")
