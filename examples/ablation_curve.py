"""Is a channel ranking worth anything? Rank on one image set, ablate on another, against random.

Two generated, disjoint image sets (nothing is downloaded):

* ``photos``: random crops (20-100% of the area, random aspect), mirror flips and brightness /
  contrast changes of the photo bundled with matplotlib (``grace_hopper.jpg``), 224x224 JPEG;
* ``shapes``: the procedural stripes / disks / rectangles / checkerboards that ``shapes_cnn`` was
  trained on, 64x64 PNG, drawn with seeds the training never used.

For each model the ranking comes from ``featuremaps stats`` on set A and the curve from
``featuremaps ablate --stats`` on set B, so the ranking is not judged on its own data.

    python examples/ablation_curve.py [OUT_DIR] [--quick]

resnet18 runs with the weights torchvision has cached, or random weights when there are none
(the output says which); ``shapes_cnn`` is trained and ships with the package.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from featuremaps.cli import main
from featuremaps.inputs import sample_image_path
from featuremaps.zoo.shapes import make_shapes


def photo_set(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with Image.open(sample_image_path()) as source:
        photo = source.convert("RGB")
    width, height = photo.size
    for i in range(n):
        area = rng.uniform(0.2, 1.0) * width * height
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w = int(min(width, round(np.sqrt(area * aspect))))
        h = int(min(height, round(np.sqrt(area / aspect))))
        left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        crop = photo.crop((left, top, left + w, top + h)).resize((224, 224), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.6, 1.4))
        crop = ImageEnhance.Contrast(crop).enhance(rng.uniform(0.6, 1.4))
        crop.save(folder / f"photo{i:03d}.jpg", quality=92)


def shape_set(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = make_shapes(n, seed=seed)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)
        Image.fromarray(pixels).save(folder / f"shape{i:03d}_class{label}.png")


def run(argv: list[str]) -> None:
    print("$ featuremaps " + " ".join(argv), flush=True)
    code = main(argv)
    if code != 0:
        raise SystemExit(code)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    quick = "--quick" in sys.argv
    out = Path(args[0] if args else "out/ablation")
    n = 16 if quick else 64
    photo_set(out / "data" / "photos-a", n, seed=101)
    photo_set(out / "data" / "photos-b", n, seed=202)
    shape_set(out / "data" / "shapes-a", 4 * n, seed=1001)
    shape_set(out / "data" / "shapes-b", 4 * n, seed=2002)

    experiments = [
        ("resnet18", "photos", "layer3.1.relu#2,layer4.1.relu#2", "0,16,32,64,128,192,256"),
        ("shapes_cnn", "shapes", "relu2,relu3", "0,4,8,12,16,20,24,28,32"),
    ]
    for model, data, layers, ks in experiments:
        stats = out / f"{model}-stats"
        common = ["-m", model, "--layers", layers]
        run(["stats", str(out / "data" / f"{data}-a"), *common, "-o", str(stats), "--no-plots"])
        for stat in ("absmean", "std"):
            run(["ablate", str(out / "data" / f"{data}-b"), *common, "--k", ks, "--random", "5",
                 "--stat", stat, "--stats", str(stats / "stats.csv"),
                 "-o", str(out / f"{model}-ablation-{stat}")])  # fmt: skip
