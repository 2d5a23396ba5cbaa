"""Trust numbers of every class map method on the trained ``shapes_cnn``: a table, not a test.

    python benchmarks/cam_trust.py [--per-class N] [--layers relu3,relu2] [--steps 16] [--seed 11]

For each layer and method (all seven), over ``N`` procedurally drawn images of each of the six
shape classes (``featuremaps.zoo.shapes.make_shapes``, the target being the model's top class):
the mean deletion and insertion areas of the map's cell order beside those of the random control
(lower deletion and higher insertion are better), how many images beat the control on each, and
the mean rank correlation of the sanity check with how many maps it flags (at or above
``SANITY_THRESHOLD``; ``-`` where it gave no number: a constant map, see the maps' notes), then
Grad-CAM's areas class by class.
Nothing is written; the table goes to stdout.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import featuremaps as fm
from featuremaps.classmaps import METHODS, SANITY_THRESHOLD, class_maps
from featuremaps.zoo.shapes import CLASSES, make_shapes


def _mean(values: list[float | None]) -> str:
    found = [v for v in values if v is not None]
    return f"{np.mean(found):6.3f}" if found else "     -"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=3)
    parser.add_argument("--layers", default="relu3,relu2")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()

    torch.set_num_threads(2)
    model = fm.load_model("shapes_cnn").model
    images, labels = make_shapes(args.per_class * len(CLASSES), seed=args.seed)
    x = torch.from_numpy(images)
    with torch.no_grad():
        top = model(x).argmax(1).numpy()
    print(
        f"shapes_cnn (trained), {len(x)} images ({args.per_class} per class, seed {args.seed}), "
        f"top-1 correct {int((top == labels).sum())}/{len(x)}, {args.steps} steps, "
        f"sanity threshold {SANITY_THRESHOLD}"
    )
    for layer in args.layers.split(","):
        start = time.perf_counter()
        maps = class_maps(model, x, layers=layer, methods="all", steps=args.steps)
        seconds = time.perf_counter() - start
        cells = "x".join(str(s) for s in maps[0].array.shape)
        print(f"\nlayer {layer} ({cells} cells), all methods in {seconds:.1f} s")
        print(
            f"{'method':<10} {'del':>6} {'random':>6} {'beats':>5}  {'ins':>6} {'random':>6} "
            f"{'beats':>5}  {'sanity':>6} {'flagged':>7}"
        )
        for method in METHODS:
            mine = [m for m in maps if m.method == method]
            beats_del = sum(m.deletion_auc < m.random_auc for m in mine)  # type: ignore[operator]
            beats_ins = sum(
                m.insertion_auc > m.random_insertion_auc  # type: ignore[operator]
                for m in mine
            )
            flagged = sum(bool(m.sanity_failed) for m in mine)
            measured = sum(m.sanity_failed is not None for m in mine)
            print(
                f"{method:<10} {_mean([m.deletion_auc for m in mine])} "
                f"{_mean([m.random_auc for m in mine])} {beats_del:>2}/{len(mine):<2}  "
                f"{_mean([m.insertion_auc for m in mine])} "
                f"{_mean([m.random_insertion_auc for m in mine])} {beats_ins:>2}/{len(mine):<2}  "
                f"{_mean([m.sanity_rank_correlation for m in mine])} {flagged:>3}/{measured:<3}"
            )
        grad = [m for m in maps if m.method == "gradcam"]
        print("gradcam by class:  del / random     ins / random")
        for index, name in enumerate(CLASSES):
            mine = [m for m, label in zip(grad, labels, strict=True) if label == index]
            print(
                f"  {name:<13} {_mean([m.deletion_auc for m in mine])} / "
                f"{_mean([m.random_auc for m in mine])}  {_mean([m.insertion_auc for m in mine])}"
                f" / {_mean([m.random_insertion_auc for m in mine])}"
            )


if __name__ == "__main__":
    main()
