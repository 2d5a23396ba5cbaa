"""featuremaps benchmark suite: every figure is a ratio measured side by side in one run.

    python benchmarks/run.py              full suite (a few minutes on 2 cores), writes results.json
    python benchmarks/run.py --smoke      seconds; what the test suite runs so this file cannot rot

The machines this runs on are noisy, so each comparison alternates the two sides in the same
process after a warm-up and reports medians; ratios are the only numbers to compare across runs.
Memory is measured in child processes (peak RSS from ``resource``), one child per measurement.

Sections:
  render      the per-channel matplotlib recipe vs our mosaic, per layer, PNG files included
  capture     plain ``model(x)`` under no_grad vs capture of every leaf call with exact values
  end_to_end  resnet50, all layers, 32 channels, PNG + manifest: time per stage
  memory      peak RSS of an all-layers streamed run vs the plain forward's peak
  scaling     time vs channels shown and vs input size
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import featuremaps as fm
from featuremaps.api import _maps

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"


# -- helpers -----------------------------------------------------------------------------------


def median_time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(sides: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median seconds of each side, the sides run in turn ``reps`` times after one warm-up."""
    for fn in sides.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(reps):
        for name, fn in sides.items():
            times[name].append(median_time(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


class Tiny(nn.Module):
    """A small CNN for the smoke mode: in-place ReLU, a reused module, a 1x1 map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.conv2(self.act(self.conv1(x)))))


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "tiny":
        return Tiny().eval()
    import torchvision

    return torchvision.models.get_model(name, weights=None).eval()


def sample_input(size: int) -> torch.Tensor:
    """The bundled photo, resized so its shorter side is ``size`` and centre-cropped square."""
    pre = fm.Preprocessing(
        resize=size,
        crop=size,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        source="benchmark",
    )
    return fm.load_input(fm.sample_image_path(), channels=3, preprocessing=pre).tensor


def recipe_draw(maps: np.ndarray, path: Path) -> None:
    """The classic recipe's drawing, written from its description: one matplotlib subplot per
    channel, the first 32 channels, 8 columns, default colormap, axes off, saved at 300 dpi."""
    import matplotlib.pyplot as plt

    k = min(32, maps.shape[0])
    fig = plt.figure()
    for i in range(k):
        plt.subplot(4, 8, i + 1)
        plt.imshow(maps[i])
        plt.axis("off")
    fig.savefig(path, dpi=300)
    plt.close(fig)


def ours_draw(record: fm.LayerRecord, path: Path) -> None:
    label = fm.GridLabel(record.name, record.module_type, record.shape)
    grid = fm.make_grid(_maps(record, 0), fm.GridOptions(), label=label)
    path.write_bytes(grid.to_png())


# -- sections ----------------------------------------------------------------------------------


def bench_render(model_name: str, size: int, reps: int) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    model = build(model_name)
    records = [r for r in fm.capture(model, sample_input(size)) if r.layout == "NCHW"]
    skipped = [r.name for r in records if r.shape[2] * r.shape[3] == 1]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for r in records:
            if r.name in skipped:
                continue
            maps = _maps(r, 0)
            t = alternate(
                {
                    "recipe": lambda m=maps: recipe_draw(m, out / "recipe.png"),
                    "ours": lambda r=r: ours_draw(r, out / "ours.png"),
                },
                reps,
            )
            rows.append(
                {"layer": r.name, "shape": list(r.shape), **t, "ratio": t["recipe"] / t["ours"]}
            )
        # Our real pipeline (drawing in the hooks, PNG encoding and writing on a second thread)
        # minus a plain forward pass, both measured here, alternating.
        tensor = sample_input(size)

        def plain() -> None:
            with torch.no_grad():
                model(tensor)

        def pipelined() -> None:
            with tempfile.TemporaryDirectory() as run_dir:
                fm.visualize(model, tensor, out=Path(run_dir) / "o")

        t = alternate({"plain": plain, "pipelined": pipelined}, max(1, reps // 2))
        pipeline = [t["pipelined"] - t["plain"]]
    ratios = [row["ratio"] for row in rows]
    recipe_total = sum(row["recipe"] for row in rows)
    ours_total = sum(row["ours"] for row in rows)
    return {
        "model": model_name,
        "input": size,
        "layers": len(rows),
        "skipped_for_recipe": {"layers": skipped, "why": "the recipe crashes on 1x1 maps"},
        "recipe_s_per_layer": recipe_total / len(rows),
        "ours_s_per_layer": ours_total / len(rows),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_total": recipe_total / ours_total,
        "pipelined_s_all_layers": statistics.median(pipeline),
        "ratio_pipelined_total": recipe_total / statistics.median(pipeline),
        "per_layer": rows,
    }


def capture_sides(model: nn.Module, x: torch.Tensor, lens: Any) -> dict[str, Callable[[], object]]:
    """The ways of running ``model`` on ``x`` that the capture table compares."""

    def plain() -> None:
        with torch.no_grad():
            model(x)

    def consume(record: fm.LayerRecord) -> None:
        record.tensor.sum()  # a consumer that reads every value, as drawing does

    sides: dict[str, Callable[[], object]] = {
        "plain": plain,
        "streamed": lambda: fm.capture(model, x, on_record=consume, copy=False),
        "streamed+copy": lambda: fm.capture(model, x, on_record=consume),
        "kept": lambda: fm.capture(model, x),
    }
    if lens is not None:

        def trace() -> None:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lens.trace(model, x)

        sides["torchlens"] = trace
    return sides


def bench_capture(configs: list[tuple[str, int]], reps: int) -> list[dict[str, Any]]:
    rows = []
    try:
        import torchlens
    except ImportError:
        torchlens = None
    for name, size in configs:
        # TorchLens at 1024^2 takes minutes per call; it is timed at 224^2 only.
        lens = torchlens if size <= 224 and name != "tiny" else None
        t = alternate(capture_sides(build(name), torch.randn(1, 3, size, size), lens), reps)
        row: dict[str, Any] = {"model": name, "input": size, "median_s": t}
        row["ratio"] = {k: v / t["plain"] for k, v in t.items() if k != "plain"}
        rows.append(row)
    return rows


def bench_end_to_end(model_name: str, size: int, reps: int) -> dict[str, Any]:
    runs = []
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            loaded = fm.load_model(model_name, "none")
            load = time.perf_counter() - start
            [res] = fm.visualize(loaded, sample_input(size), out=Path(tmp) / "o")
            runs.append({"load_model": load, **res.timings, "total": time.perf_counter() - start})
            drawn = sum(1 for r in res.records if r.image)
    medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return {"model": model_name, "input": size, "pictures": drawn, "median_s": medians}


CHILD = """
import json, sys, tempfile
import torch, torchvision
mode, name, size = {mode!r}, {name!r}, {size!r}
torch.manual_seed(0)
if name == "tiny":
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(inplace=True))
else:
    model = torchvision.models.get_model(name, weights=None)
model.eval()
x = torch.randn(1, 3, size, size)
if mode == "streamed":
    import featuremaps as fm  # only this side pays for importing the tool
    with tempfile.TemporaryDirectory() as tmp:
        fm.visualize(model, x, out=tmp + "/o")
elif mode == "plain":
    with torch.no_grad():
        model(x)
# VmHWM is this process's own peak; ru_maxrss would include the parent's peak before exec.
with open("/proc/self/status") as status:
    hwm = [line for line in status if line.startswith("VmHWM:")][0]
print(json.dumps(int(hwm.split()[1])))
"""


def bench_memory(name: str, size: int) -> dict[str, Any]:
    """Peak RSS in fresh child processes: the model alone, a plain forward, our streamed run."""
    peaks = {}
    for mode in ("model only", "plain", "streamed"):
        code = CHILD.format(mode=mode, name=name, size=size)
        out = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        )
        peaks[mode] = int(out.stdout.strip().splitlines()[-1]) / 1024  # KiB -> MiB
    base = peaks["model only"]
    return {
        "model": name,
        "input": size,
        "peak_rss_mib": peaks,
        "ratio": peaks["streamed"] / peaks["plain"],
        "ratio_above_model": (peaks["streamed"] - base) / max(peaks["plain"] - base, 1.0),
    }


def bench_scaling(model_name: str, sizes: list[int], reps: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    channel_rows = []
    maps = rng.standard_normal((512, 28, 28)).astype(np.float32)
    for k in (32, 256, 512):
        opts = fm.GridOptions(max_channels=k)
        t = alternate({"draw": lambda o=opts: fm.make_grid(maps, o).to_png()}, reps)["draw"]
        channel_rows.append({"channels": k, "s": t, "ms_per_channel": 1e3 * t / k})
    size_rows = []
    model = build(model_name)
    for size in sizes:
        x = torch.randn(1, 3, size, size)

        def plain(x: torch.Tensor = x) -> None:
            with torch.no_grad():
                model(x)

        def run(x: torch.Tensor = x) -> None:
            with tempfile.TemporaryDirectory() as tmp:
                fm.visualize(model, x, out=Path(tmp) / "o")

        t = alternate({"plain": plain, "featuremaps": run}, max(1, reps // 2))
        size_rows.append(
            {
                "input": size,
                "s": t["featuremaps"],
                "plain_s": t["plain"],
                "us_per_input_pixel": 1e6 * t["featuremaps"] / size**2,
                "ratio_to_plain": t["featuremaps"] / t["plain"],
            }
        )
    return {"channels_shown": channel_rows, "input_size": size_rows, "model": model_name}


# -- main --------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import matplotlib
    import PIL
    import torchvision

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": {
            "featuremaps": fm.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": np.__version__,
            "pillow": PIL.__version__,
            "matplotlib": matplotlib.__version__,
        },
        "cuda": torch.cuda.is_available(),
    }


def report(results: dict[str, Any]) -> str:
    lines = []
    r = results["render"]
    lines.append(
        f"1. render vs recipe ({r['model']} @ {r['input']}, {r['layers']} layers; "
        f"recipe skips {', '.join(r['skipped_for_recipe']['layers']) or 'none'}: 1x1 maps)"
    )
    lines.append(
        f"   recipe {1e3 * r['recipe_s_per_layer']:.0f} ms/layer, ours "
        f"{1e3 * r['ours_s_per_layer']:.1f} ms/layer (one thread, PNG written)"
    )
    lines.append(
        f"   ratio per layer: median {r['ratio_median']:.0f}x, worst {r['ratio_min']:.0f}x, "
        f"total {r['ratio_total']:.0f}x   target >= 50x"
    )
    lines.append(
        f"   whole run minus a plain forward (2 threads, {r['layers'] + 2} records incl. stats "
        f"and manifest): {r['pipelined_s_all_layers']:.2f} s -> {r['ratio_pipelined_total']:.0f}x"
        " the recipe's total"
    )
    lines.append("2. capture overhead (median time / plain no_grad forward)   target <= 1.25x")
    for row in results["capture"]:
        ratios = "  ".join(f"{k} {v:.2f}x" for k, v in row["ratio"].items())
        plain_ms = 1e3 * row["median_s"]["plain"]
        lines.append(
            f"   {row['model']:>12} @ {row['input']:<5} plain {plain_ms:7.1f} ms  {ratios}"
        )
    e = results["end_to_end"]
    stages = "  ".join(f"{k} {v:.2f}s" for k, v in e["median_s"].items())
    lines.append(f"3. end to end {e['model']} @ {e['input']}, {e['pictures']} pictures: {stages}")
    m = results["memory"]
    lines.append(
        f"4. peak RSS {m['model']} @ {m['input']}: plain {m['peak_rss_mib']['plain']:.0f} MiB, "
        f"streamed all layers {m['peak_rss_mib']['streamed']:.0f} MiB -> {m['ratio']:.2f}x"
        "   target <= 1.5x"
    )
    lines.append(
        f"   above the loaded model alone ({m['peak_rss_mib']['model only']:.0f} MiB): "
        f"{m['ratio_above_model']:.2f}x"
    )
    s = results["scaling"]
    lines.append("5. scaling: channels shown (512x28x28 layer, draw + PNG)")
    for row in s["channels_shown"]:
        lines.append(
            f"   {row['channels']:>4} channels {1e3 * row['s']:7.1f} ms "
            f"({row['ms_per_channel']:.2f} ms/channel)"
        )
    lines.append(f"   input size ({s['model']}, all layers, whole run incl. report)")
    for row in s["input_size"]:
        lines.append(
            f"   {row['input']:>4}^2 {row['s']:7.2f} s ({row['us_per_input_pixel']:.2f} us/pixel,"
            f" {row['ratio_to_plain']:.1f}x a plain forward of {row['plain_s']:.2f} s)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON path")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", fm.FeaturemapsWarning)
    if args.smoke:
        results = {
            "render": bench_render("tiny", 32, 1),
            "capture": bench_capture([("tiny", 32)], 1),
            "end_to_end": bench_end_to_end("squeezenet1_1", 64, 1),
            "memory": bench_memory("tiny", 64),
            "scaling": bench_scaling("tiny", [32, 64], 1),
        }
    else:
        results = {
            "render": bench_render("resnet18", 224, 5),
            "capture": bench_capture([("resnet18", 224), ("resnet50", 224), ("resnet50", 1024)], 7),
            "end_to_end": bench_end_to_end("resnet50", 224, 3),
            "memory": bench_memory("resnet50", 1024),
            "scaling": bench_scaling("resnet18", [224, 512, 1024, 2048], 3),
        }
    results = {"machine": machine(), "smoke": args.smoke, **results}
    text = report(results)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**results, "table": text.splitlines()}, indent=2) + "\n")
    print(f"results: {args.out}")
    return results


if __name__ == "__main__":
    main()
