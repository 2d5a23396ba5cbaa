"""The cost of fm.watch: a training loop with a look every N steps against the same loop without,
and one look against one in-memory ``run`` (``fm.visualize``) of the same layers.

The loop trains ``ShapesNet`` (the bundled shapes_cnn's architecture) from scratch on its
generated shapes, 64x64, batch 32, AdamW; the watch looks at every leaf layer on a fixed probe
batch of 8. The two loops alternate in one process after a warm-up; medians are reported.

    python benchmarks/watch.py [--smoke]

``benchmarks/run.py`` runs it as its ``watch`` section (``make bench``).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import featuremaps as fm
from featuremaps.zoo.shapes import ShapesNet, make_shapes


def _loop(
    steps: int, every: int | None, data: tuple[torch.Tensor, torch.Tensor]
) -> Callable[[], Any]:
    x, y = data
    probe = x[:8]

    def train() -> None:
        torch.manual_seed(0)
        model = ShapesNet()
        optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
        watcher = fm.watch(model, probe, every=every) if every else None
        model.train()
        for step in range(steps):
            if watcher is not None:
                watcher.step(step)
            begin = (step * 32) % (len(x) - 32)
            loss = nn.functional.cross_entropy(model(x[begin : begin + 32]), y[begin : begin + 32])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()

    return train


def _median_runs(sides: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    for fn in sides.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for i in range(reps):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_watch(steps: int = 400, every: int = 100, reps: int = 3) -> dict[str, Any]:
    """Seconds of the loop with and without the watch, and of one look vs one run."""
    warnings.simplefilter("ignore", fm.FeaturemapsWarning)
    images, labels = make_shapes(512, seed=70_001)
    data = (torch.from_numpy(images), torch.from_numpy(labels).long())
    loops = _median_runs(
        {"plain": _loop(steps, None, data), "watched": _loop(steps, every, data)}, reps
    )
    torch.manual_seed(0)
    model = ShapesNet()
    probe = data[0][:8]
    watcher = fm.watch(model, probe, every=1)
    once = _median_runs(
        {
            "look": lambda: watcher.look(0),
            "run": lambda: fm.visualize(model, probe, report=False),
        },
        max(reps, 5),
    )
    looks = len(range(0, steps, every))
    return {
        "model": "ShapesNet",
        "steps": steps,
        "every": every,
        "looks": looks,
        "layers": len(watcher.last.layers) if watcher.last else 0,
        "median_s": {**loops, **once},
        "ratio": {
            "loop": loops["watched"] / loops["plain"],
            "look_vs_run": once["look"] / once["run"],
        },
        "threads": torch.get_num_threads(),
    }


def report_watch(section: dict[str, Any]) -> list[str]:
    s, r = section["median_s"], section["ratio"]
    return [
        f"11. watch: {section['model']} trained {section['steps']} steps, a look at all "
        f"{section['layers']} leaf layers every {section['every']} steps "
        f"({section['looks']} looks)",
        f"   loop plain {s['plain']:.2f} s  watched {s['watched']:.2f} s  ratio {r['loop']:.3f}x",
        f"   one look {1e3 * s['look']:.1f} ms  one run (in memory) {1e3 * s['run']:.1f} ms  "
        f"ratio {r['look_vs_run']:.2f}x",
        # The loop ratio is within the machine's noise; the looks' own time bounds the cost.
        f"   the looks' own time / the plain loop: "
        f"{section['looks'] * s['look'] / s['plain']:.1%}   target <= 5%",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few steps, one repetition")
    args = parser.parse_args()
    section = bench_watch(6, 3, 1) if args.smoke else bench_watch()
    print("\n".join(report_watch(section)))


if __name__ == "__main__":
    main()
