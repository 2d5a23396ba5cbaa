"""Peak RSS of ``featuremaps atlas``'s pass over a fake data set of 2,000 vs 20,000 images.

    python benchmarks/atlas_memory.py            both sizes, one child process each
    python benchmarks/atlas_memory.py --n 500    one size (what the child runs)

The images are tiny PNG files (16 x 16 RGB, random pixels) written once to a temporary folder;
the model is a small conv net built in code, every layer selected, k = 9 and 3 controls,
batches of 64 (a fixed 16 x 16 resize, so the images share batches). The
heaps hold O(layers x channels x k) numbers, so the peak should not grow with the data: the
ratio printed is peak(20,000) / peak(2,000).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _write(folder: Path, n: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            folder / f"{i:05d}.png"
        )


def _child(folder: Path, n: int) -> dict[str, float]:
    import torch
    from torch import nn

    from featuremaps.atlas_pass import compute_atlas_pass
    from featuremaps.inputs import Preprocessing

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
    ).eval()  # fmt: skip
    paths = sorted(folder.glob("*.png"))[:n]
    start = time.perf_counter()
    result = compute_atlas_pass(
        model, paths, channels=3, preprocessing=Preprocessing(resize=(16, 16)), k=9, controls=3,
        batch_size=64, workers=0,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"images": result.images, "seconds": seconds, "peak_rss_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int)
    parser.add_argument("--folder", type=Path)
    args = parser.parse_args()
    if args.n is not None:
        print(json.dumps(_child(args.folder, args.n)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _write(folder, 20_000)
        rows = {}
        for n in (2_000, 20_000):
            out = subprocess.run(
                [sys.executable, __file__, "--n", str(n), "--folder", str(folder)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            rows[n] = json.loads(out.stdout.strip().splitlines()[-1])
            print(n, rows[n], flush=True)
        ratio = rows[20_000]["peak_rss_mib"] / rows[2_000]["peak_rss_mib"]
        print(f"peak RSS ratio 20,000 / 2,000 images: {ratio:.3f}")


if __name__ == "__main__":
    main()
