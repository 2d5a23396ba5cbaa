"""featuremaps benchmark suite: every figure is a ratio measured side by side in one run.

    python benchmarks/run.py              full suite (a few minutes on 2 cores), writes results.json
    python benchmarks/run.py --smoke      seconds; what the test suite runs so this file cannot rot
    python benchmarks/run.py --only stats some sections only; the other sections already in the
                                          results file (of the same mode, full or smoke) are kept

The machines this runs on are noisy, so each comparison alternates the two sides in the same
process after a warm-up and reports medians; ratios are the only numbers to compare across runs.
Memory is measured in child processes (peak RSS from ``resource``), one child per measurement.

Sections:
  render      the per-channel matplotlib recipe vs our mosaic, per layer, PNG files included
  capture     plain ``model(x)`` under no_grad vs capture of every leaf call with exact values
  end_to_end  resnet50, all layers, 32 channels, PNG + manifest: time per stage
  memory      peak RSS of an all-layers streamed run vs the plain forward's peak
  scaling     time vs channels shown and vs input size
  stats       images/s of ``featuremaps stats`` (compute_dataset_stats) vs a plain DataLoader +
              forward loop over the same files with the same reader, and where the difference goes
  slide       a synthetic 40,000 x 40,000 slide (mostly glass, a few tissue blobs) through
              resnet18 layer2 with ``featuremaps slide``: peak RSS (child process) and tiles/s vs
              a plain forward loop over the same windows read by the same reader
  e2e         whole processes, as a user times them: ``featuremaps run`` (all layers, pictures,
              manifest, report) and ``featuremaps layers`` vs the floor script ``floor.py``
              (import torch and torchvision, build the model, read the photo, one forward), in
              rotated rounds, medians of the per-round ratios; and ``import featuremaps`` alone
  gpu         the capture and a whole ``visualize`` run on CUDA vs a plain CUDA forward; only
              when a GPU is present (otherwise the section says so and measures nothing)
  engine      ``featuremaps stats --engine ray`` (2 workers, a local Ray started by the command)
              vs ``--engine local`` on the same files, each a whole process: items/s of the
              pass, the process's wall time, the driver's peak RSS, per-item costs (read, model,
              merge; the size of one pickled partial) and the Ray install size; only when the
              ``ray`` extra is installed
  prune       the trained shapes_cnn pruned at several ratios: top-1 agreement against MACs for
              channels ranked by std, by absmean and random ones (``benchmarks/prune.py``)
  watch       a training loop with ``fm.watch`` looking every 100 steps vs the same loop
              without, and one look vs one in-memory run of the same layers
              (``benchmarks/watch.py``)
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
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
from featuremaps.dataset import _collate, _Files, compute_dataset_stats
from featuremaps.inputs import fixed_input_size

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"


# -- helpers -----------------------------------------------------------------------------------


def median_time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate_runs(
    sides: dict[str, Callable[[], object]], reps: int, rotate: bool = False, warm_up: bool = True
) -> dict[str, list[float]]:
    """Seconds of every run of each side, the sides run in turn ``reps`` times after one warm-up.

    ``rotate`` starts each round one side later, so that no side always follows the same one
    (a run right after one that churned through gigabytes of temporaries is slower).
    """
    for fn in sides.values() if warm_up else ():
        fn()
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for i in range(reps):
        k = i % len(names) if rotate else 0
        for name in names[k:] + names[:k]:
            times[name].append(median_time(sides[name]))
    return times


def alternate(sides: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median seconds of each side, the sides run in turn ``reps`` times after one warm-up."""
    return {name: statistics.median(ts) for name, ts in alternate_runs(sides, reps).items()}


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
    grid = fm.make_grid(record.maps(0), fm.GridOptions(), label=label)
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
            maps = r.maps(0)
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


IMAGES_WHAT = (
    "photo-like JPEGs (quality 90), made with numpy from the image index: a two-colour gradient at "
    "a random angle, 2-4 filled disks and rectangles, a patch of stripes, Gaussian noise (sigma 8)"
)


def photo_like_images(folder: Path, n: int, size: int) -> list[Path]:
    """``n`` deterministic ``size``x``size`` RGB JPEGs as :data:`IMAGES_WHAT` describes."""
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * xx + np.sin(angle) * yy
        ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
        a, b = rng.uniform(0, 255, (2, 3))
        img = a + ramp[..., None] * (b - a)
        for _ in range(int(rng.integers(2, 5))):
            colour = rng.uniform(0, 255, 3)
            cx, cy = rng.uniform(0, 1, 2)
            r = rng.uniform(0.05, 0.25)
            if rng.random() < 0.5:
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
            else:
                mask = (abs(xx - cx) < r) & (abs(yy - cy) < r * rng.uniform(0.3, 1.0))
            img[mask] = colour
        x0, y0 = rng.uniform(0, 0.7, 2)
        patch = (xx >= x0) & (xx < x0 + 0.3) & (yy >= y0) & (yy < y0 + 0.3)
        stripes = np.sin(2 * np.pi * (xx + yy) / rng.uniform(0.02, 0.08)) > 0
        img[patch & stripes] *= 0.3
        img += rng.normal(0, 8, img.shape)
        path = folder / f"photo{i:04d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def stats_model(spec: str) -> tuple[nn.Module, fm.Preprocessing]:
    """The model and the fixed-size preprocessing it is fed in the stats section."""
    if spec == "resnet18":
        import torchvision

        from featuremaps.inputs import preprocessing_from_weights

        # Random weights carry no transforms, and ToTensor alone has no fixed size, so the engine
        # would run batches of 1: feed what the pretrained weights expect (resize 256, crop 224,
        # ImageNet normalisation), as `featuremaps stats` does for --weights DEFAULT.
        weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
        return fm.load_model("resnet18", "none").model, preprocessing_from_weights(weights)
    loaded = fm.load_model(spec)  # the zoo's shapes_cnn: its own 64x64 preprocessing
    return loaded.model, loaded.input_preprocessing()


def stats_sides(
    model: nn.Module, paths: list[Path], pre: fm.Preprocessing, batch: int, workers: int
) -> dict[str, Callable[[], object]]:
    """plain: the loop a user would write; capture: the same with every leaf captured and the
    records dropped; stats: the engine of `featuremaps stats`. All read with the same reader."""

    def loader() -> torch.utils.data.DataLoader[Any]:
        files = _Files(paths, 3, pre)
        return torch.utils.data.DataLoader(
            files, batch_size=batch, num_workers=workers, collate_fn=_collate
        )

    def plain() -> None:
        with torch.no_grad():  # what capture() runs under
            for tensors, _, _ in loader():
                model(tensors)

    def captured() -> None:
        for tensors, _, _ in loader():
            fm.capture(model, tensors, on_record=lambda record: None, copy=False)

    def stats() -> None:
        result = compute_dataset_stats(
            model, paths, channels=3, preprocessing=pre, batch_size=batch, workers=workers
        )
        assert result.images == len(paths) and not result.failed

    return {"plain": plain, "capture": captured, "stats": stats}


def stats_breakdown(
    model: nn.Module, paths: list[Path], pre: fm.Preprocessing, batch: int
) -> dict[str, Any]:
    """One pass of the real engine (workers 0) with its parts wrapped in timers: the forward
    pass with hooks, records to numpy, and the ``update`` of each running statistic the engine
    keeps (``RunningStats``, ``RunningHistogram``, whichever it has); reading and the loop are the
    rest. Wrapping the engine's own names keeps this right when its consumer changes."""
    from unittest import mock

    import featuremaps.dataset as engine

    spent: dict[str, float] = {}
    by_type: dict[str, float] = {}
    current = {"type": "", "values": 0}

    def add(key: str, seconds: float) -> None:
        spent[key] = spent.get(key, 0.0) + seconds

    def timed(key: str, fn: Callable[..., Any], per_type: bool = False) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - start
                add(key, dt)
                if per_type:
                    by_type[current["type"]] = by_type.get(current["type"], 0.0) + dt

        return wrapper

    channels_first = engine._channels_first

    def to_numpy(record: fm.LayerRecord) -> Any:
        current["type"] = record.module_type
        values = channels_first(record)
        # A host array, or a tensor left on a CUDA device for the statistics.
        current["values"] += 0 if values is None else int(np.prod(values.shape))
        return values

    updates = [
        cls
        for cls in (
            getattr(engine, "RunningStats", None),
            getattr(engine, "RunningHistogram", None),
        )
        if cls is not None
    ]
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(engine, "capture", timed("capture", engine.capture)))
        stack.enter_context(
            mock.patch.object(engine, "_channels_first", timed("to_numpy", to_numpy))
        )
        for cls in updates:
            wrapped = timed(f"{cls.__name__}.update", cls.update, per_type=True)
            stack.enter_context(mock.patch.object(cls, "update", wrapped))
        start = time.perf_counter()
        compute_dataset_stats(
            model, paths, channels=3, preprocessing=pre, batch_size=batch, workers=0
        )
        total = time.perf_counter() - start
    in_capture = spent.pop("capture")
    parts = {
        "read+loop": total - in_capture,
        "forward+hooks": in_capture - sum(spent.values()),
        **spent,
    }
    update_s = sum(v for k, v in spent.items() if k.endswith(".update"))
    values = int(current["values"])
    return {
        "s": parts,
        "total_s": total,
        "share": {k: v / total for k, v in parts.items()},
        "values_per_image": values / len(paths),
        "updates_ns_per_value": 1e9 * update_s / max(values, 1),
        "updates_s_by_type": dict(sorted(by_type.items(), key=lambda kv: -kv[1])),
    }


FIRST_READ = """
import time
import featuremaps
from featuremaps.inputs import Preprocessing
start = time.perf_counter()
featuremaps.load_input({path!r}, channels=3, preprocessing=Preprocessing(resize=64, crop=64))
print(time.perf_counter() - start)
"""


def first_read_s(path: Path) -> float:
    """Seconds of the first image read in a fresh process that imported featuremaps: the reader
    imports torchvision.transforms.v2 (and so torchvision) on first use. A DataLoader worker pays
    this in every epoch when its parent had not imported them before forking."""
    code = FIRST_READ.format(path=str(path))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_stats(
    models: list[tuple[str, int]], n: int, size: int, batch: int, workers: list[int]
) -> dict[str, Any]:
    """images/s of the stats engine vs a plain loop over the same files, per model and workers."""
    rows, breakdowns = [], []
    with tempfile.TemporaryDirectory() as tmp:
        paths = photo_like_images(Path(tmp), n, size)
        cold = first_read_s(paths[0])
        for spec, reps in models:
            model, pre = stats_model(spec)
            # Read once here so forked workers inherit the reader's imports: the sides then
            # measure steady throughput, whatever ran before; `cold` is that one-off cost.
            fm.load_input(paths[0], channels=3, preprocessing=pre)
            for w in workers:
                runs = alternate_runs(stats_sides(model, paths, pre, batch, w), reps, rotate=True)
                median_s = {k: statistics.median(v) for k, v in runs.items()}
                plain = median_s["plain"]
                rows.append(
                    {
                        "model": spec,
                        "input": pre.crop,
                        "preprocessing": pre.source,
                        "images": n,
                        "batch_size": batch,
                        "workers": w,
                        "reps": reps,
                        "runs_s": runs,
                        "median_s": median_s,
                        "images_per_s": {k: n / v for k, v in median_s.items()},
                        "ratio": {k: v / plain for k, v in median_s.items() if k != "plain"},
                    }
                )
            breakdowns.append({"model": spec, **stats_breakdown(model, paths, pre, batch)})
    return {
        "images": {"count": n, "size": [size, size], "what": IMAGES_WHAT},
        "torch_threads": torch.get_num_threads(),
        "first_read_in_fresh_process_s": cold,
        "rows": rows,
        "breakdown": breakdowns,
    }


FLOOR = HERE / "floor.py"
# The floor (import, build, read, one forward), and the same script ended as the featuremaps
# program ends (without the interpreter's teardown): the second shows what featuremaps adds.
FLOORS = ("floor", "floor_no_teardown")
# What the installed ``featuremaps`` console script runs.
CLI = "from featuremaps.cli import console_main; console_main()"
FORBIDDEN_AT_IMPORT = ("torchvision", "matplotlib", "pyarrow", "jinja2", "numba")


def child_env() -> dict[str, str]:
    """The timed processes' environment: the featuremaps this suite imported comes first on the
    path, and nothing is downloaded."""
    src = str(Path(fm.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    env["FEATUREMAPS_OFFLINE"] = "1"
    return env


def process_seconds(argv: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one whole process, from its start to its exit."""
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return seconds


def each_in_a_new_folder(argv: list[str], env: dict[str, str]) -> Callable[[], float]:
    """:func:`process_seconds` of ``argv``, whose last item, a folder ending in ``-N``, becomes
    a new folder at each call (``-0``, ``-1``, ...), kept until the caller removes them.

    Replacing one folder run after run removes the last run's files seconds before the next run
    creates its own, and on a file system without a journal (this machine's ext4) creating a
    file then passes over every inode freed in the last 30 s or so: densenet121's 1100 files
    cost its run about 0.4 s more (docs/performance.md). The floor writes no file.
    """
    done = itertools.count()

    def run() -> float:
        return process_seconds([*argv[:-1], argv[-1].replace("-N", f"-{next(done)}")], env)

    return run


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def import_times(rounds: int, env: dict[str, str]) -> dict[str, Any]:
    """``python -X importtime -c "import featuremaps"``: the cumulative import time of
    featuremaps and of torch within it (microseconds, medians), and the heavy packages that the
    import pulled in although no command needs them at import time."""
    totals: list[float] = []
    torch_part: list[float] = []
    walls: list[float] = []
    loaded: set[str] = set()
    for _ in range(rounds + 1):  # the first one warms the file cache and is dropped
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import featuremaps"],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        walls.append(time.perf_counter() - start)
        cumulative: dict[str, int] = {}
        for line in done.stderr.splitlines():
            if not line.startswith("import time:") or "|" not in line:
                continue
            parts = line.split("|")
            name = parts[2].strip()
            if parts[1].strip().isdigit():
                cumulative.setdefault(name, int(parts[1]))
                loaded.add(name.split(".")[0])
        totals.append(cumulative["featuremaps"])
        torch_part.append(cumulative.get("torch", 0))
    return {
        "featuremaps_cumulative_us": spread(totals[1:]),
        "torch_cumulative_us": spread(torch_part[1:]),
        "process_wall_s": spread(walls[1:]),
        "heavy_imported": sorted(loaded & set(FORBIDDEN_AT_IMPORT)),
    }


def byte_compile() -> None:
    """Compile featuremaps' modules to bytecode once, as installing a wheel does: timed children
    then load them as a user's process would, even where PYTHONDONTWRITEBYTECODE is set (it
    stops writing the cache, not reading it), instead of compiling every module in every run
    (about 0.15 s here)."""
    import compileall

    compileall.compile_dir(str(Path(fm.__file__).resolve().parent), quiet=1)


def bench_e2e(
    models: list[str], rounds: int, layers_model: str | None, warm_up: bool = True
) -> dict[str, Any]:
    """Whole processes as a user times them, each model's commands and its floor in rotated
    rounds; a round's ratio divides a command by the floor run in the same round."""
    import torchvision

    photo = str(fm.sample_image_path())
    byte_compile()
    env = child_env()
    py = sys.executable
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            # A model whose architecture fixes its input size (torchvision's ViTs) is fed at
            # that size by `featuremaps run`; its floor feeds the same input.
            fixed = fixed_input_size(torchvision.models.get_model(name, weights=None))
            size = ["--size", str(fixed[0][0])] if fixed is not None else []
            sides = {
                "floor": [py, str(FLOOR), photo, name, *size],
                "floor_no_teardown": [py, str(FLOOR), photo, name, *size, "--no-teardown"],
                "run": [py, "-c", CLI, "run", photo, "--model", name, "--weights", "none",
                        "--offline", "--out", f"{tmp}/{name}-N"],
            }  # fmt: skip
            if name == layers_model:
                sides["layers"] = [py, "-c", CLI, "layers", name, "--weights", "none", "--offline"]
            fns: dict[str, Callable[[], object]] = {
                side: (lambda argv=argv: process_seconds(argv, env)) for side, argv in sides.items()
            }
            fns["run"] = each_in_a_new_folder(sides["run"], env)
            runs = alternate_runs(fns, rounds, rotate=True, warm_up=warm_up)
            floors = {side: runs[side] for side in FLOORS}
            rows.append(
                {
                    "model": name,
                    "input": f"{fixed[0][0]}x{fixed[0][1]} (fixed by the architecture)"
                    if fixed is not None
                    else "600x512 (the photo at full size)",
                    "rounds": rounds,
                    "commands": {
                        side: " ".join(["python", *argv[2:]] if argv[1] == "-c" else
                                       ["python", "benchmarks/floor.py", *argv[2:]])
                        for side, argv in sides.items()
                    },
                    "runs_s": runs,
                    "s": {side: spread(ts) for side, ts in runs.items()},
                    "ratio": {
                        side: spread([t / f for t, f in zip(ts, runs["floor"], strict=True)])
                        for side, ts in runs.items()
                        if side not in FLOORS
                    },
                    "ratio_no_teardown": {
                        side: spread([t / f for t, f in zip(ts, floors["floor_no_teardown"],
                                                            strict=True)])
                        for side, ts in runs.items()
                        if side not in FLOORS
                    },
                }
            )  # fmt: skip
    return {
        "photo": "the bundled sample (grace_hopper.jpg, 600x512, fed at full size)",
        "rows": rows,
        "import": import_times(rounds, env),
    }


def bench_gpu(configs: list[tuple[str, int]], reps: int) -> dict[str, Any]:
    """On CUDA: a plain forward, the streamed capture of every leaf, and a whole ``visualize``
    run (pictures, manifest, report) with ``device="cuda"``, float32 and bfloat16 autocast.
    Without CUDA nothing is measured and the section says so."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device (torch.cuda.is_available() is False)"}
    rows = []
    for name, size in configs:
        model = build(name).cuda()
        x = torch.randn(1, 3, size, size, device="cuda")

        def synced(fn: Callable[[], object]) -> Callable[[], object]:
            def run() -> None:
                fn()
                torch.cuda.synchronize()

            return run

        def plain(m: nn.Module = model, x: torch.Tensor = x) -> None:
            with torch.no_grad():
                m(x)

        def run_dir(dtype: str, m: nn.Module = model, x: torch.Tensor = x) -> None:
            with tempfile.TemporaryDirectory() as tmp:
                fm.visualize(m, x, out=Path(tmp) / "o", device="cuda", dtype=dtype)

        def streamed(m: nn.Module = model, x: torch.Tensor = x) -> None:
            fm.capture(m, x, on_record=lambda record: None, copy=False)

        sides = {
            "plain": synced(plain),
            "streamed": synced(streamed),
            "visualize": synced(lambda: run_dir("float32")),
            "visualize_bf16": synced(lambda: run_dir("bfloat16")),
        }  # fmt: skip
        t = alternate(sides, reps)
        rows.append(
            {
                "model": name,
                "input": size,
                "median_s": t,
                "ratio": {k: v / t["plain"] for k, v in t.items() if k != "plain"},
            }
        )
    return {"device": torch.cuda.get_device_name(), "rows": rows}


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


def report_render(r: dict[str, Any]) -> list[str]:
    return [
        f"1. render vs recipe ({r['model']} @ {r['input']}, {r['layers']} layers; "
        f"recipe skips {', '.join(r['skipped_for_recipe']['layers']) or 'none'}: 1x1 maps)",
        f"   recipe {1e3 * r['recipe_s_per_layer']:.0f} ms/layer, ours "
        f"{1e3 * r['ours_s_per_layer']:.1f} ms/layer (one thread, PNG written)",
        f"   ratio per layer: median {r['ratio_median']:.0f}x, worst {r['ratio_min']:.0f}x, "
        f"total {r['ratio_total']:.0f}x   target >= 50x",
        f"   whole run minus a plain forward (2 threads, {r['layers'] + 2} records incl. stats "
        f"and manifest): {r['pipelined_s_all_layers']:.2f} s -> {r['ratio_pipelined_total']:.0f}x"
        " the recipe's total",
    ]


def report_capture(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["2. capture overhead (median time / plain no_grad forward)   target <= 1.25x"]
    for row in rows:
        ratios = "  ".join(f"{k} {v:.2f}x" for k, v in row["ratio"].items())
        plain_ms = 1e3 * row["median_s"]["plain"]
        lines.append(
            f"   {row['model']:>12} @ {row['input']:<5} plain {plain_ms:7.1f} ms  {ratios}"
        )
    return lines


def report_end_to_end(e: dict[str, Any]) -> list[str]:
    stages = "  ".join(f"{k} {v:.2f}s" for k, v in e["median_s"].items())
    return [f"3. end to end {e['model']} @ {e['input']}, {e['pictures']} pictures: {stages}"]


def report_memory(m: dict[str, Any]) -> list[str]:
    return [
        f"4. peak RSS {m['model']} @ {m['input']}: plain {m['peak_rss_mib']['plain']:.0f} MiB, "
        f"streamed all layers {m['peak_rss_mib']['streamed']:.0f} MiB -> {m['ratio']:.2f}x"
        "   target <= 1.5x",
        f"   above the loaded model alone ({m['peak_rss_mib']['model only']:.0f} MiB): "
        f"{m['ratio_above_model']:.2f}x",
    ]


def report_scaling(s: dict[str, Any]) -> list[str]:
    lines = ["5. scaling: channels shown (512x28x28 layer, draw + PNG)"]
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
    return lines


def report_stats(s: dict[str, Any]) -> list[str]:
    images = s["images"]
    first = s["rows"][0]
    lines = [
        "6. dataset stats: compute_dataset_stats (`featuremaps stats`, every leaf) vs a plain "
        "DataLoader + no_grad forward loop, same reader and files, alternating in rotated order, "
        "medians",
        f"   {images['count']} {images['size'][0]}x{images['size'][1]} {images['what']}; "
        f"batch {first['batch_size']}, torch threads {s['torch_threads']}; the reader's imports"
        " are done in the parent first (the first read in a fresh process takes "
        f"{s['first_read_in_fresh_process_s']:.2f} s, paid by every worker whose parent skipped "
        "it)",
    ]
    for row in s["rows"]:
        ips = row["images_per_s"]
        lines.append(
            f"   {row['model']:>10} @ {row['input']!s:<4} workers {row['workers']}: plain "
            f"{ips['plain']:6.1f} img/s, capture only {ips['capture']:6.1f}, stats "
            f"{ips['stats']:6.1f} -> stats takes {row['ratio']['stats']:.2f}x the plain time "
            f"({row['reps']} reps)"
        )
    for b in s["breakdown"]:
        share = ", ".join(f"{k} {100 * v:.0f}%" for k, v in b["share"].items())
        types = ", ".join(f"{k} {v:.2f}s" for k, v in list(b["updates_s_by_type"].items())[:3])
        lines.append(
            f"   {b['model']} stats, one timed pass, workers 0, {b['total_s']:.2f} s: {share}"
        )
        lines.append(
            f"      updates {b['updates_ns_per_value']:.1f} ns/value over "
            f"{b['values_per_image'] / 1e6:.2f}M values/image (by layer type: {types})"
        )
    return lines


# -- engines ----------------------------------------------------------------------------------

ENGINE_CHILD = (
    "import json, resource, sys; from featuremaps.cli import main; code = main(sys.argv[1:]); "
    "print(json.dumps({'code': code, 'peak_rss_kib': "
    "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))"
)
#: The distributions ``pip install 'featuremaps[ray]'`` adds to a development install.
RAY_DISTRIBUTIONS = ("ray", "pandas", "fsspec", "msgpack", "requests", "urllib3", "certifi",
                     "charset-normalizer", "idna")  # fmt: skip


def installed_mib(names: tuple[str, ...]) -> dict[str, float]:
    """MiB on disk of each installed distribution among ``names`` (its RECORD's files)."""
    from importlib import metadata

    sizes = {}
    for name in names:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        total = 0
        for f in dist.files or []:
            path = Path(str(dist.locate_file(f)))
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        sizes[name] = total / 2**20
    return sizes


def partial_bytes(spec: str, paths: list[Path], pre: fm.Preprocessing, batch: int) -> int:
    """Bytes of one pickled per-batch statistics partial (what a worker sends the driver)."""
    import pickle

    from featuremaps.dataset import StatsJob

    model = fm.load_model(spec, "none" if spec == "resnet18" else None).model
    job = StatsJob(None, 3, pre, model=model)
    job.open()
    partial = job.compute(job.read(paths[:batch]))
    return len(pickle.dumps(partial, protocol=pickle.HIGHEST_PROTOCOL))


def bench_engine(
    spec: str, n: int, size: int, batch: int, workers: int, reps: int
) -> dict[str, Any]:
    """``featuremaps stats`` with each engine, whole processes in alternating rounds."""
    import importlib.util

    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("pandas") is None:
        return {"skipped": "the ray extra is not installed (pip install 'featuremaps[ray]')"}
    env = child_env()
    env["RAY_AUTH_MODE"] = "disabled"
    weights = ["--weights", "none", "--size", "224x224"] if spec == "resnet18" else []
    rows: dict[str, list[dict[str, Any]]] = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        paths = photo_like_images(Path(tmp), n, size)
        _, pre = stats_model(spec)
        for _ in range(reps):
            for engine in ("local", "ray"):
                out = Path(tmp) / f"out-{engine}"
                argv = [
                    sys.executable, "-c", ENGINE_CHILD, "stats", *map(str, paths), "-m", spec,
                    *weights, "--batch-size", str(batch), "--workers", str(workers), "--engine",
                    engine, "--no-plots", "-q", "--out", str(out),
                ]  # fmt: skip
                start = time.perf_counter()
                done = subprocess.run(argv, env=env, capture_output=True, text=True)
                wall = time.perf_counter() - start
                if done.returncode != 0:
                    raise RuntimeError(f"stats --engine {engine} failed: {done.stderr[-2000:]}")
                child = json.loads(done.stdout.strip().splitlines()[-1])
                summary = json.loads((out / "summary.json").read_text())
                e = summary["engine"]
                rows[engine].append(
                    {
                        "process_s": wall,
                        "pass_s": e["seconds"]["wall"],
                        "items": e["items"],
                        "images_per_s": n / e["seconds"]["wall"],
                        "items_per_s": e["items"] / e["seconds"]["wall"],
                        "seconds": e["seconds"],
                        "retries": e["retries"],
                        "driver_peak_rss_mib": child["peak_rss_kib"] / 1024,
                    }
                )
        partial = partial_bytes(spec, paths, pre, batch)
    median = {
        engine: {
            key: statistics.median(r[key] for r in runs)
            for key in ("process_s", "pass_s", "images_per_s", "items_per_s", "driver_peak_rss_mib")
        }
        for engine, runs in rows.items()
    }
    ray_runs = rows["ray"]
    items = ray_runs[0]["items"]
    per_item = {
        key: statistics.median(r["seconds"][key] for r in ray_runs) / items
        for key in ("read", "model", "merge")
    }
    sizes = installed_mib(RAY_DISTRIBUTIONS)
    return {
        "model": spec,
        "images": {"count": n, "size": [size, size], "what": IMAGES_WHAT},
        "batch_size": batch,
        "workers": workers,
        "reps": reps,
        "runs": rows,
        "median": median,
        "ratio_items_per_s_ray_over_local": median["ray"]["items_per_s"]
        / median["local"]["items_per_s"],
        "ray_per_item_s": per_item,
        "partial_bytes": partial,
        "install_mib": sizes,
        "install_mib_total": sum(sizes.values()),
    }


def report_engine(e: dict[str, Any]) -> list[str]:
    if "skipped" in e:
        return [f"9. engines: not measured: {e['skipped']}"]
    m = e["median"]
    lines = [
        f"9. engines: `featuremaps stats` on {e['images']['count']} images, {e['model']}, batch "
        f"{e['batch_size']}, whole processes, medians of {e['reps']} alternating rounds",
    ]
    for engine in ("local", "ray"):
        workers = f"{e['workers']} Ray workers" if engine == "ray" else f"{e['workers']} readers"
        lines.append(
            f"   {engine:>5} ({workers}): {m[engine]['items_per_s']:.2f} items/s "
            f"({m[engine]['images_per_s']:.1f} img/s) in the pass, process "
            f"{m[engine]['process_s']:.1f} s, driver peak RSS "
            f"{m[engine]['driver_peak_rss_mib']:.0f} MiB"
        )
    per = e["ray_per_item_s"]
    lines.append(
        f"   ray / local items/s {e['ratio_items_per_s_ray_over_local']:.2f}x; per item on Ray: "
        f"read {per['read']:.3f} s, model {per['model']:.3f} s (worker-seconds), merge "
        f"{1e3 * per['merge']:.2f} ms (driver); one pickled partial {e['partial_bytes'] / 1024:.0f}"
        f" KiB; the ray extra installs {e['install_mib_total']:.0f} MiB"
    )
    return lines


# -- slide ------------------------------------------------------------------------------------


def synthetic_slide(path: Path, size: int, blobs: int, seed: int = 0, tile: int = 512) -> Path:
    """A JPEG-tiled page-pyramid TIFF of ``size`` x ``size`` px at 0.25 µm/px: white glass with
    ``blobs`` textured tissue discs, written tile by tile (never held whole)."""
    import tifffile

    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.15, 0.85, size=(blobs, 2)) * size
    radii = rng.uniform(0.03, 0.06, size=blobs) * size

    def tiles(level: int) -> Any:
        d = 2**level
        n = math.ceil(size / d)
        for ty in range(0, n, tile):
            for tx in range(0, n, tile):
                y = (np.arange(ty, ty + tile) * d)[:, None]
                x = (np.arange(tx, tx + tile) * d)[None, :]
                inside = np.zeros((tile, tile), dtype=bool)
                for (cy, cx), r in zip(centres, radii, strict=True):
                    if (
                        abs(cy - (ty + tile / 2) * d) < r + tile * d
                        and abs(cx - (tx + tile / 2) * d) < r + tile * d
                    ):
                        inside |= (y - cy) ** 2 + (x - cx) ** 2 < r**2
                block = np.full((tile, tile, 3), 244, dtype=np.uint8)
                if inside.any():
                    cells = np.random.default_rng([level, ty, tx]).integers(
                        0, 80, size=(tile // 8, tile // 8, 1)
                    )
                    texture = np.repeat(np.repeat(cells, 8, 0), 8, 1)
                    colour = np.clip(np.array([200, 100, 180]) - texture, 0, 255).astype(np.uint8)
                    block[inside] = colour[inside]
                yield block

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        level = 0
        while True:
            n = math.ceil(size / 2**level)
            tif.write(
                tiles(level),
                shape=(n, n, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": 85},
                resolution=(1e4 / (0.25 * 2**level),) * 2,
                resolutionunit="CENTIMETER",
                subfiletype=1 if level else 0,
                metadata=None,
            )
            if n <= 2048:
                break
            level += 1
    return path


SLIDE_CHILD = """
import json, sys, time, warnings
import numpy as np, torch, torchvision
import featuremaps as fm
from featuremaps.slide.forward import to_input
from featuremaps.slide.readers import open_slide
warnings.simplefilter("ignore", fm.FeaturemapsWarning)
mode, slide, out = sys.argv[1], sys.argv[2], sys.argv[3]
loaded = fm.load_model("resnet18", "none", offline=True)
result = {{}}
if mode == "slide":
    start = time.perf_counter()
    r = fm.slide_maps(loaded, slide, layers="layer2", out=out, tile={tile}, viewer={viewer})
    result = {{
        "wall_s": time.perf_counter() - start, "tiles_s": r.seconds, "computed": r.computed,
        "tiles": r.tiles, "tissue_tiles": r.tissue_tiles, "exact": r.exact,
        "cells": r.layers[0]["cells"],
    }}
else:
    # The same windows, read by the same reader, fed to the plain model under no_grad.
    manifest = json.load(open(out + "/slide.json"))
    plan = manifest["plan"]
    grid, core = plan["grid"], plan["core"][0]
    before, after = plan["halo_before"][0], plan["halo_after"][0]
    reader = open_slide(slide)
    h, w = manifest["slide"]["level_size"]
    tissue = json.load(open(out + "/tissue_tiles.json"))
    pre = loaded.input_preprocessing()
    model = loaded.model
    if mode == "plain-layer2":
        m = model
        model = torch.nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2).eval()
    start = time.perf_counter()
    for r, c in tissue:
        y0, y1 = max(r * core - before, 0), min((r + 1) * core + after, h)
        x0, x1 = max(c * core - before, 0), min((c + 1) * core + after, w)
        x = to_input(reader.read(0, (y0, y1), (x0, x1)), pre.mean, pre.std)
        with torch.no_grad():
            model(x)
    result = {{"tiles_s": time.perf_counter() - start, "computed": len(tissue)}}
with open("/proc/self/status") as status:
    hwm = [line for line in status if line.startswith("VmHWM:")][0]
result["peak_rss_mib"] = int(hwm.split()[1]) / 1024
print(json.dumps(result))
"""


def bench_slide(size: int, blobs: int, tile: int, viewer: bool) -> dict[str, Any]:
    """Peak RSS and tiles/s of ``featuremaps slide`` (resnet18 layer2) on a synthetic slide, and
    tiles/s of plain forward loops over the same tissue windows (each in a fresh child)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        slide = synthetic_slide(Path(tmp) / "slide.tif", size, blobs)
        write_s = time.perf_counter() - start
        out = str(Path(tmp) / "out")
        code = SLIDE_CHILD.format(tile=tile, viewer=viewer)

        def child(mode: str) -> dict[str, Any]:
            run = subprocess.run(
                [sys.executable, "-c", code, mode, str(slide), out],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            row: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
            return row

        ours = child("slide")
        manifest = json.loads((Path(out) / "slide.json").read_text())
        (Path(out) / "tissue_tiles.json").write_text(json.dumps(manifest["tiles"]["done"]))
        plain = child("plain")
        truncated = child("plain-layer2")
        files = {
            str(p.relative_to(out)): p.stat().st_size
            for p in Path(out).rglob("*")
            if p.is_file() and p.suffix in (".tif", ".json", ".csv", ".html")
        }
    rate = ours["computed"] / ours["tiles_s"]
    return {
        "slide": {"size": size, "blobs": blobs, "write_s": write_s, "mpp": 0.25},
        "tile_core": tile,
        "viewer": viewer,
        "tiles": ours["tiles"],
        "tissue_tiles": ours["tissue_tiles"],
        "exact": ours["exact"],
        "cells": ours["cells"],
        "peak_rss_mib": {"slide": ours["peak_rss_mib"], "plain": plain["peak_rss_mib"]},
        "wall_s": ours["wall_s"],
        "tiles_per_s": {
            "slide": rate,
            "plain": plain["computed"] / plain["tiles_s"],
            "plain_to_layer2": truncated["computed"] / truncated["tiles_s"],
        },
        "files_bytes": files,
    }


def report_slide(s: dict[str, Any]) -> list[str]:
    rss, tps = s["peak_rss_mib"], s["tiles_per_s"]
    size = s["slide"]["size"]
    return [
        f"7. slide: {size}x{size} px synthetic slide ({s['slide']['blobs']} tissue blobs, JPEG "
        f"page pyramid, written in {s['slide']['write_s']:.0f} s), resnet18 layer2, tile core "
        f"{s['tile_core']} px, {s['tissue_tiles']} of {s['tiles']} tiles with tissue, "
        f"{s['cells'][0]}x{s['cells'][1]} cells, {'exact' if s['exact'] else 'APPROXIMATE'}",
        f"   peak RSS: slide run {rss['slide']:.0f} MiB (target <= 4096), plain forward loop "
        f"{rss['plain']:.0f} MiB; whole run {s['wall_s']:.0f} s incl. files"
        + (" and viewer" if s["viewer"] else ""),
        f"   tiles/s: slide {tps['slide']:.2f}, plain resnet18 forward {tps['plain']:.2f} "
        f"({tps['slide'] / tps['plain']:.2f}x), plain forward to layer2 "
        f"{tps['plain_to_layer2']:.2f} ({tps['slide'] / tps['plain_to_layer2']:.2f}x)",
    ]


def report_e2e(e: dict[str, Any]) -> list[str]:
    targets = {"run": "target <= 1.25x", "layers": "target <= 1.10x"}
    lines = [
        "7. whole processes vs the floor (benchmarks/floor.py: import torch + torchvision, build "
        "the model, read the photo, one forward), rotated rounds; median [min, max]",
    ]
    for row in e["rows"]:
        f = row["s"]["floor"]
        lines.append(
            f"   {row['model']:>11} floor {f['median']:5.2f} s [{f['min']:.2f}, {f['max']:.2f}] "
            f"({row['rounds']} rounds; input {row.get('input', '600x512')})"
        )
        if "floor_no_teardown" in row["s"]:
            g = row["s"]["floor_no_teardown"]
            lines.append(
                f"   {'':>11} floor ended without teardown {g['median']:5.2f} s "
                f"[{g['min']:.2f}, {g['max']:.2f}]"
            )
        for side, r in row["ratio"].items():
            t = row["s"][side]
            lines.append(
                f"   {'':>11} {side:<6}{t['median']:5.2f} s [{t['min']:.2f}, {t['max']:.2f}] -> "
                f"{r['median']:.2f}x the floor [{r['min']:.2f}, {r['max']:.2f}]   "
                f"{targets.get(side, '')}"
            )
            rounds = [
                t / f for t, f in zip(row["runs_s"][side], row["runs_s"]["floor"], strict=True)
            ]
            lines.append(f"   {'':>11} {'':<6}per round: " + " ".join(f"{r:.2f}" for r in rounds))
            if side in row.get("ratio_no_teardown", {}):
                q = row["ratio_no_teardown"][side]
                lines.append(
                    f"   {'':>11} {'':<6}{'':>5}   {'':>14}    {q['median']:.2f}x the floor "
                    f"ended without teardown [{q['min']:.2f}, {q['max']:.2f}]"
                )
    imp = e["import"]
    fm_us, torch_us = imp["featuremaps_cumulative_us"], imp["torch_cumulative_us"]
    heavy = ", ".join(imp["heavy_imported"]) or "none of " + ", ".join(FORBIDDEN_AT_IMPORT)
    lines.append(
        f"   import featuremaps: {fm_us['median'] / 1e6:.2f} s cumulative (-X importtime), of "
        f"which torch {torch_us['median'] / 1e6:.2f} s; heavy packages imported: {heavy}"
    )
    return lines


def report_gpu(g: dict[str, Any]) -> list[str]:
    if "skipped" in g:
        return [f"8. GPU: not measured: {g['skipped']}"]
    lines = [f"8. GPU ({g['device']}): median time / plain CUDA forward"]
    for row in g["rows"]:
        ratios = "  ".join(f"{k} {v:.2f}x" for k, v in row["ratio"].items())
        plain_ms = 1e3 * row["median_s"]["plain"]
        lines.append(f"   {row['model']:>9} @ {row['input']:<5} plain {plain_ms:7.1f} ms  {ratios}")
    return lines


def _prune_bench() -> Any:
    """benchmarks/prune.py, loaded from beside this file (it needs the ``prune`` extra)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fm_bench_prune", HERE / "prune.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _watch_bench() -> Any:
    """benchmarks/watch.py, loaded from beside this file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fm_bench_watch", HERE / "watch.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REPORTS: dict[str, Callable[[Any], list[str]]] = {
    "render": report_render,
    "capture": report_capture,
    "end_to_end": report_end_to_end,
    "memory": report_memory,
    "scaling": report_scaling,
    "stats": report_stats,
    "slide": report_slide,
    "e2e": report_e2e,
    "gpu": report_gpu,
    "engine": report_engine,
    "prune": lambda section: _prune_bench().report_prune(section),
    "watch": lambda section: _watch_bench().report_watch(section),
}
SECTIONS = tuple(REPORTS)


def report(results: dict[str, Any]) -> str:
    lines: list[str] = []
    for name, lines_of in REPORTS.items():
        if name in results:
            lines.extend(lines_of(results[name]))
    return "\n".join(lines)


def plan(smoke: bool) -> dict[str, Callable[[], Any]]:
    """What each section runs, in the smoke or the full mode."""
    if smoke:
        return {
            "render": lambda: bench_render("tiny", 32, 1),
            "capture": lambda: bench_capture([("tiny", 32)], 1),
            "end_to_end": lambda: bench_end_to_end("squeezenet1_1", 64, 1),
            "memory": lambda: bench_memory("tiny", 64),
            "scaling": lambda: bench_scaling("tiny", [32, 64], 1),
            "stats": lambda: bench_stats([("shapes_cnn", 1)], 4, 64, 2, [2, 0]),
            "slide": lambda: bench_slide(3000, 2, 512, True),
            "e2e": lambda: bench_e2e(["squeezenet1_1"], 1, "squeezenet1_1", warm_up=False),
            "gpu": lambda: bench_gpu([("tiny", 64)], 1),
            "engine": lambda: bench_engine("shapes_cnn", 4, 64, 2, 2, 1),
            "prune": lambda: _prune_bench().bench_prune(8, 8, (0.25, 0.5), 1),
            "watch": lambda: _watch_bench().bench_watch(6, 3, 1),
        }
    return {
        "render": lambda: bench_render("resnet18", 224, 5),
        "capture": lambda: bench_capture(
            [("resnet18", 224), ("resnet50", 224), ("resnet50", 1024)], 7
        ),
        "end_to_end": lambda: bench_end_to_end("resnet50", 224, 3),
        "memory": lambda: bench_memory("resnet50", 1024),
        "scaling": lambda: bench_scaling("resnet18", [224, 512, 1024, 2048], 3),
        "stats": lambda: bench_stats([("resnet18", 3), ("shapes_cnn", 6)], 64, 256, 16, [2, 0]),
        "slide": lambda: bench_slide(40_000, 4, 1024, True),
        "e2e": lambda: bench_e2e(
            ["resnet18", "resnet50", "densenet121", "vit_b_16"], 7, "resnet18"
        ),
        "gpu": lambda: bench_gpu([("resnet50", 224), ("resnet50", 1024)], 5),
        "engine": lambda: bench_engine("resnet18", 48, 256, 4, 2, 3),
        "prune": lambda: _prune_bench().bench_prune(),
        "watch": lambda: _watch_bench().bench_watch(),
    }


def section_list(text: str) -> list[str]:
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(unknown) or text!r}; choose from {', '.join(SECTIONS)}"
        )
    return names


def previous_results(path: Path, smoke: bool) -> dict[str, Any]:
    """The results file already at ``path`` when it is of the same mode (full or smoke)."""
    try:
        old: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if old.get("smoke") != smoke:
        print(f"{path} holds {'smoke' if old.get('smoke') else 'full'} results: not merged")
        return {}
    return old


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON path")
    parser.add_argument(
        "--only",
        type=section_list,
        default=list(SECTIONS),
        metavar="SECTION[,SECTION...]",
        help=f"run these sections only ({', '.join(SECTIONS)}); the other sections already in "
        "--out (same mode) are kept",
    )
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", fm.FeaturemapsWarning)
    todo = plan(args.smoke)
    sections: dict[str, Any] = {}
    measured: dict[str, Any] = {}
    for name in args.only:
        load_before, start = os.getloadavg(), time.perf_counter()
        sections[name] = todo[name]()
        measured[name] = {
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "wall_s": time.perf_counter() - start,
            "loadavg_before": list(load_before),
            "loadavg_after": list(os.getloadavg()),
        }
    here = machine()
    if set(args.only) != set(SECTIONS):
        old = previous_results(args.out, args.smoke)
        for name in SECTIONS:
            if name in old and name not in sections:
                sections[name] = old[name]
                measured[name] = dict(old.get("measured", {}).get(name, {}))
                if old.get("machine", here) != here:  # keep what the kept rows ran on
                    measured[name]["machine"] = old["machine"]
    ordered = {name: sections[name] for name in SECTIONS if name in sections}
    measured = {name: measured[name] for name in ordered if measured.get(name)}
    results = {"machine": here, "smoke": args.smoke, "measured": measured, **ordered}
    text = report(results)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**results, "table": text.splitlines()}, indent=2) + "\n")
    print(f"results: {args.out}")
    return results


if __name__ == "__main__":
    main()
