"""Pruning the trained shapes_cnn: agreement against MACs for ranking by std, by absmean and random.

Two disjoint sets of the procedural shapes shapes_cnn was trained on, drawn with seeds its
training never used: the ranking statistics come from set A (``featuremaps stats``), the
agreement is measured on set B (``featuremaps prune --stats``), so the ranking is not judged on
its own data. For each ratio, each group of coupled layers loses that fraction of its channels:
the lowest by the statistic, or random ones (the control; ``--draws`` seeds, reported as mean,
min and max). Time is the median of side-by-side forward passes (pruned over original).

    python benchmarks/prune.py [--out DIR] [--smoke]

``benchmarks/run.py`` runs it as its ``prune`` section (``make bench``).
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import featuremaps as fm
from featuremaps.zoo.shapes import make_shapes

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75)
STATS = ("std", "absmean")


def write_shapes(folder: Path, n: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    images, _ = make_shapes(n, seed=seed)
    for i, image in enumerate(images):
        pixels = (image.transpose(1, 2, 0) * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return folder


def bench_prune(
    rank_images: int = 256,
    measure_images: int = 512,
    ratios: tuple[float, ...] = RATIOS,
    draws: int = 3,
    out: Path | None = None,
) -> dict[str, Any]:
    """Agreement, MACs, parameters and time ratio per ratio for each ranking and the random
    control, on the trained shapes_cnn."""
    warnings.simplefilter("ignore", fm.FeaturemapsWarning)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rank = write_shapes(root / "a", rank_images, seed=90_001)
        measure = write_shapes(root / "b", measure_images, seed=90_002)
        stats = root / "stats"
        layers = "bn1,bn2,bn3,conv1,conv2,conv3"
        fm.collect_stats("shapes_cnn", [str(rank)], layers=layers, out=stats, plots=False)
        rows: list[dict[str, Any]] = []
        for by in STATS:
            for draw in range(draws if by == STATS[0] else 1):
                result = fm.prune(
                    "shapes_cnn", [str(measure)], ratio=list(ratios), by=by, seed=draw,
                    channel_stats=stats / "stats.csv", workers=0,
                    out=(out / f"by_{by}") if out is not None and draw == 0 else None,
                )  # fmt: skip
                for p in result.points:
                    # random rows from the first ranking's runs only (one per seed)
                    if (p.selection == "random" and by == STATS[0]) or (
                        p.selection == "ranked" and draw == 0
                    ):
                        name = "random" if p.selection == "random" else by
                        rows.append({**p.row(), "selection": name, "draw": draw})
        before = result.params_before, result.macs_before
    table = []
    for ratio in ratios:
        at = [r for r in rows if r["ratio"] == ratio]
        entry: dict[str, Any] = {"ratio": ratio, "macs": at[0]["macs"] / before[1],
                                 "params": at[0]["params"] / before[0]}  # fmt: skip
        for by in STATS:
            entry[by] = next(r["agreement"] for r in at if r["selection"] == by)
        rand = [r["agreement"] for r in at if r["selection"] == "random"]
        entry["random_mean"], entry["random_min"], entry["random_max"] = (
            float(np.mean(rand)), float(np.min(rand)), float(np.max(rand)),
        )  # fmt: skip
        entry["time"] = float(np.median([r["latency_ratio"] for r in at]))
        table.append(entry)
    return {
        "model": "shapes_cnn (trained)",
        "images": {"ranked_on": rank_images, "measured_on": measure_images},
        "random_draws": len({(r["draw"]) for r in rows if r["selection"] == "random"}),
        "rows": table,
        "points": rows,
    }


def report_prune(section: dict[str, Any]) -> list[str]:
    lines = [
        f"10. pruning {section['model']}: top-1 agreement with the original vs MACs left "
        f"(ranked on {section['images']['ranked_on']} shapes, measured on "
        f"{section['images']['measured_on']}; random: mean [min, max] of "
        f"{section['random_draws']} draws)",
        f"{'ratio':>6} {'MACs':>6} {'params':>7} {'time':>5} {'std':>6} {'absmean':>8} "
        f"{'random':>20}",
    ]
    for r in section["rows"]:
        lines.append(
            f"{r['ratio']:>6g} {r['macs']:>6.1%} {r['params']:>7.1%} {r['time']:>5.2f} "
            f"{r['std']:>6.3f} {r['absmean']:>8.3f} {r['random_mean']:>7.3f} "
            f"[{r['random_min']:.3f}, {r['random_max']:.3f}]"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="keep each ranking's prune folder here")
    parser.add_argument("--smoke", action="store_true", help="a few images, two ratios")
    args = parser.parse_args()
    if args.smoke:
        section = bench_prune(8, 8, (0.25, 0.5), 1, args.out)
    else:
        section = bench_prune(out=args.out)
    print("\n".join(report_prune(section)))


if __name__ == "__main__":
    main()
