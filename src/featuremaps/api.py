"""The one-call API: model + input in, pictures, numbers and a manifest out.

This module wires the stages together (inputs → models → capture → render → io) and is what the
command line calls. Records are streamed: each one is measured, drawn, encoded and written as soon
as its module returns, then dropped, so an all-layers run of a large model on a large image never
holds every activation at once. Only the "global" scale needs the range over all layers before it
can draw anything; it runs the model twice (a cheap pass that only measures, then the drawing
pass) instead of keeping every activation.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import html
import math
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from featuremaps._errors import (
    FeaturemapsWarning,
    LayerError,
    NonFiniteWarning,
    OptionError,
    OutputError,
)
from featuremaps.ablation import AblationResult
from featuremaps.capture import Capture, LayerRecord, capture
from featuremaps.dataset import DatasetStats, SavedStats, read_stats
from featuremaps.datastats import RunningStats
from featuremaps.geometry import GeometryTracker, MapGeometry
from featuremaps.inputs import (
    LoadedInput,
    Preprocessing,
    expected_channels,
    fed_picture,
    load_input,
)
from featuremaps.io import ABLATION, LOCATE, MANIFEST, SUMMARY, TOOL, OutputFolder, safe_filename
from featuremaps.layers import select_modules
from featuremaps.models import LoadedModel, load_model
from featuremaps.render import Grid, GridLabel, GridOptions, ValueRange, make_grid
from featuremaps.render.overlay import Overlay
from featuremaps.render.png import encode_png
from featuremaps.render.scaling import compute_range, is_signed, merge_ranges
from featuremaps.report import (
    DATA_DIR,
    INDEX,
    float16_copy,
    layer_data_script,
    report_files,
    runs_report_files,
)
from featuremaps.stats import ChannelStats, channel_stats

__all__ = [
    "RecordSummary",
    "Visualization",
    "ablate",
    "collect_stats",
    "draw_overlay",
    "locate",
    "summarize",
    "visualize",
]

ARRAYS = "arrays.safetensors"
STATS_CSV = "stats.csv"
ABLATION_CSV = "ablation.csv"
ABLATION_PNG = "ablation.png"
OVERLAY_PNG = "overlay.png"
INPUT_PICTURE = "input.png"
FED_PICTURE = "input-fed.png"
# capture: the forward pass with hooks, without the time spent consuming records; wall: the
# capture with everything it waits for; manifest+report: writing those after the forward pass.
TIMING_KEYS = ("capture", "stats", "render", "encode", "write", "consume", "wall")


@dataclass(frozen=True)
class RecordSummary:
    """What the manifest says about one record (or one selected module that never ran)."""

    name: str
    module: str
    call: int
    type: str
    shape: tuple[int, ...] | None
    dtype: str | None
    layout: str | None
    image: str | None
    skipped: str | None
    min: float | None
    max: float | None
    mean: float | None
    nonfinite: int
    channels_shown: tuple[int, ...] | None = None
    warnings: tuple[str, ...] = ()
    channel_stats: dict[str, list[float]] | None = None
    data: str | None = None
    geometry: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The manifest entry (key order as documented in the README)."""
        return {
            "name": self.name,
            "module": self.module,
            "call": self.call,
            "type": self.type,
            "shape": list(self.shape) if self.shape is not None else None,
            "dtype": self.dtype,
            "layout": self.layout,
            "image": self.image,
            "data": self.data,
            "skipped": self.skipped,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "nonfinite": self.nonfinite,
            "channels_shown": list(self.channels_shown) if self.channels_shown else None,
            "channel_stats": self.channel_stats,
            "geometry": self.geometry,
            "warnings": list(self.warnings),
        }


@dataclass
class Visualization:
    """The result of :func:`visualize` for one input.

    ``grids`` holds the pictures in memory when no output folder was given (they display inline
    in Jupyter); with an output folder they are written and not kept. ``timings`` holds seconds
    spent in each stage (see :data:`TIMING_KEYS`); "encode" and "write" run on a second thread,
    overlapping the others, so the stages add up to more than "wall".
    """

    records: list[RecordSummary]
    manifest: dict[str, Any]
    out_dir: Path | None = None
    grids: dict[str, Grid] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    report: Path | None = None

    def _repr_html_(self) -> str:
        parts = []
        for name, grid in self.grids.items():
            data = base64.b64encode(grid.to_png()).decode()
            parts.append(
                f"<figure><img src='data:image/png;base64,{data}'/>"
                f"<figcaption>{html.escape(name)}</figcaption></figure>"
            )
        skipped = [r for r in self.records if r.skipped]
        if skipped:
            items = "".join(
                f"<li>{html.escape(r.name)}: {html.escape(r.skipped or '')}</li>" for r in skipped
            )
            parts.append(f"<details><summary>{len(skipped)} not drawn</summary><ul>{items}</ul>")
        where = f"<p>written to {html.escape(str(self.out_dir))}</p>" if self.out_dir else ""
        return where + "".join(parts)


def summarize(tensor: torch.Tensor) -> tuple[float | None, float | None, float | None, int]:
    """``(min, max, mean, nonfinite count)`` over the finite values of ``tensor`` (all samples)."""
    if tensor.is_complex() or tensor.numel() == 0:
        return None, None, None, 0
    t = tensor.detach().float()
    total = float(t.sum(dtype=torch.float64))  # float64: a float32 running sum loses digits
    if math.isfinite(total):  # a float64 sum of float32 values is finite iff every value is
        low, high = torch.aminmax(t)
        return float(low), float(high), total / t.numel(), 0
    finite = torch.isfinite(t)
    nonfinite = int(t.numel() - int(finite.sum()))
    t = t[finite]
    if t.numel() == 0:
        return None, None, None, nonfinite
    return float(t.min()), float(t.max()), float(t.sum(dtype=torch.float64)) / t.numel(), nonfinite


def _skip_reason(record: LayerRecord) -> str | None:
    layout = record.layout
    if record.tensor.is_complex():
        return "complex-valued output; not drawn"
    if layout == "NCHW":
        return None
    if layout == "NC":
        return "output is a vector per sample (N, C); channel grids need (N, C, H, W)"
    if layout in ("NLD", "NCL"):
        return f"output is 3-D ({layout}); sequence and token pictures are not drawn yet"
    if layout == "NCDHW":
        return "output is a 5-D volume (N, C, D, H, W); volume pictures are not drawn yet"
    return f"output has {record.tensor.dim()} dimension(s); channel grids need (N, C, H, W)"


def _maps(record: LayerRecord, sample: int) -> np.ndarray:
    if not 0 <= sample < record.tensor.shape[0]:
        raise OptionError(
            f"sample {sample} asked for, but layer '{record.name}' has a batch of "
            f"{record.tensor.shape[0]}; choose a sample from 0 to {record.tensor.shape[0] - 1}"
        )
    maps = record.tensor[sample].detach()
    if maps.dtype != torch.float32 and maps.dtype != torch.float64:
        maps = maps.float()
    return maps.cpu().numpy()


def _versions() -> dict[str, str]:
    import matplotlib
    import PIL
    import torchvision

    from featuremaps import __version__

    return {
        "featuremaps": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "matplotlib": matplotlib.__version__,
        "python": platform.python_version(),
    }


def _resolve_model(model: nn.Module | LoadedModel | str) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, str):
        return load_model(model)
    name = type(model).__name__
    return LoadedModel(model, name, "python object", "as given", "as given by the caller", False)


@dataclass(frozen=True)
class _Resolved:
    """One input ready to run: what to feed, how to describe it, and its pictures' sources."""

    tensor: torch.Tensor
    info: dict[str, Any]
    stem: str
    display: np.ndarray | None = None  # (H, W, 3) uint8, the input as given
    preprocessing: Preprocessing | None = None


def _resolve_input(item: Any, loaded: LoadedModel) -> _Resolved:
    """Return the tensor to feed, its manifest description, a folder name and its pictures."""
    if isinstance(item, torch.Tensor):
        tensor = item if item.dim() != 3 else item.unsqueeze(0)
        return _Resolved(tensor, {"kind": "tensor", "fed_shape": list(tensor.shape)}, "input")
    if not isinstance(item, LoadedInput):
        first = expected_channels(loaded.model)
        item = load_input(
            item,
            channels=first[0] if first else None,
            layer_name=first[1] if first else None,
            preprocessing=loaded.input_preprocessing(),
        )
    return _Resolved(item.tensor, item.describe(), item.path.stem, item.display, item.preprocessing)


def _global_range(
    model: nn.Module, tensor: torch.Tensor, cap: dict[str, Any], sample: int
) -> ValueRange:
    ranges: list[ValueRange] = []
    signed = False

    def measure(record: LayerRecord) -> None:
        nonlocal signed
        if _skip_reason(record) is None:
            maps = _maps(record, sample)
            signed = signed or is_signed(maps)
            ranges.append(compute_range(maps, symmetric=False))

    capture(model, tensor, on_record=measure, copy=False, **cap)
    merged = merge_ranges(ranges) if ranges else ValueRange(0.0, 0.0, False)
    if signed:
        m = max(abs(merged.vmin), abs(merged.vmax))
        return ValueRange(-m, m, True)
    return merged


class _BackgroundWriter:
    """Encode and write PNGs on a second thread while the model keeps running.

    PNG compression releases the GIL in Pillow, so it overlaps with the forward pass and the next
    layer's drawing. At most ``limit`` pictures wait in the queue, which keeps memory bounded.
    """

    def __init__(self, timings: dict[str, float], limit: int = 4) -> None:
        from concurrent.futures import Future, ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="featuremaps-write")
        self._pending: list[Future[None]] = []
        self._limit = limit
        self._timings = timings  # only this thread touches the "encode" and "write" keys

    def submit(
        self, write: Callable[[str, bytes], object], path: str, encode: Callable[[], bytes]
    ) -> None:
        while len(self._pending) >= self._limit:
            self._pending.pop(0).result()  # re-raises a failed write here, in the caller

        def job() -> None:
            start = time.perf_counter()
            data = encode()
            middle = time.perf_counter()
            write(path, data)
            self._timings["encode"] += middle - start
            self._timings["write"] += time.perf_counter() - middle

        self._pending.append(self._pool.submit(job))

    def wait(self) -> None:
        while self._pending:
            self._pending.pop(0).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _layer_data(
    record: LayerRecord, maps: np.ndarray, shown: tuple[int, ...], stats: ChannelStats
) -> tuple[str, Callable[[], bytes]]:
    """The report's data file for one record: its path, and a job that encodes it (float16).

    The float16 copy is taken here, not in the job: ``maps`` may share memory with the live
    activation, which the network can change in place as soon as this record is consumed.
    """
    stem = safe_filename(record.index, record.name, suffix="")
    block = maps[: len(shown)] if shown == tuple(range(len(shown))) else maps[list(shown)]
    half, overflow = float16_copy(block)
    ranges = [(_finite_or_none(stats.min[c]), _finite_or_none(stats.max[c])) for c in shown]
    return f"{DATA_DIR}/{stem}.js", lambda: layer_data_script(stem, half, overflow, ranges)


def _input_pictures(
    folder: OutputFolder, prefix: str, item: _Resolved, sample: int
) -> dict[str, Any]:
    """Write the input as given and as fed (PNG); return the manifest's ``input.pictures``."""
    given = None
    if item.display is not None:
        given = folder.write_bytes(prefix + INPUT_PICTURE, encode_png(item.display))
    fed = fed_picture(item.tensor, item.preprocessing, sample)
    fed_path = folder.write_bytes(prefix + FED_PICTURE, encode_png(fed[0])) if fed else None
    return {"given": given, "fed": fed_path, "fed_note": fed[1] if fed else None}


def _geometry_tracker(model: nn.Module, tensor: torch.Tensor) -> GeometryTracker | None:
    """Follow receptive-field geometry through the capture's own forward pass (no extra run);
    it describes every leaf, selected or not, since geometry flows through all of them."""
    if tensor.dim() != 4 or isinstance(model, torch.jit.ScriptModule):
        return None
    return GeometryTracker(tensor, select_modules(model, None, None, False, type(model).__name__))


def _run_one(
    loaded: LoadedModel,
    item: _Resolved,
    grid: GridOptions,
    cap: dict[str, Any],
    folder: OutputFolder | None,
    prefix: str,
    save_arrays: bool,
    sample: int,
    progress: bool,
    report: bool = False,
    saved: SavedStats | None = None,
) -> Visualization:
    from tqdm import tqdm

    tensor, input_info = item.tensor, dict(item.info)
    report = report and folder is not None
    if folder is not None:
        input_info["pictures"] = _input_pictures(folder, prefix, item, sample)
    if grid.scale == "global":
        r = _global_range(loaded.model, tensor, cap, sample)
        grid = replace(grid, value_range=(r.vmin, r.vmax))
    stamp = "RANDOM WEIGHTS" if loaded.random_weights else None
    summaries: list[RecordSummary] = []
    grids: dict[str, Grid] = {}
    arrays = folder.arrays(prefix + ARRAYS) if folder is not None and save_arrays else None
    bar = tqdm(desc=f"layers of {loaded.spec}", unit=" layer", disable=not progress, leave=False)

    timings: dict[str, float] = dict.fromkeys(TIMING_KEYS, 0.0)

    def consume(record: LayerRecord) -> None:
        start = time.perf_counter()
        lo, hi, mean, nonfinite = summarize(record.tensor)
        reason = _skip_reason(record)
        timings["stats"] += time.perf_counter() - start
        image = None
        data = None
        stats: ChannelStats | None = None
        shown: tuple[int, ...] | None = None
        notes: list[str] = []
        if nonfinite:
            notes.append(f"{nonfinite} NaN/Inf values")
        if reason is None:
            label = GridLabel(record.name, record.module_type, record.shape, stamp)
            maps = _maps(record, sample)
            drawn = time.perf_counter()
            options = _ranked_by_file(grid, saved, record.name, maps.shape[0], notes)
            picture = make_grid(maps, options, label=label)
            timings["render"] += time.perf_counter() - drawn
            shown = picture.channels
            notes.extend(w for w in picture.warnings if w not in notes)
            measured = time.perf_counter()
            stats = channel_stats(maps)  # every channel of the drawn sample, not only those shown
            timings["stats"] += time.perf_counter() - measured
            if folder is not None:
                image = prefix + safe_filename(record.index, record.name)
                writer.submit(folder.write_bytes, image, picture.to_png)
                if report:
                    path, encode = _layer_data(record, maps, shown, stats)
                    data = prefix + path
                    writer.submit(folder.write_bytes, data, encode)
            else:
                grids[record.name] = picture
        if arrays is not None:
            arrays.add(record.name, record.tensor)
        summaries.append(
            RecordSummary(
                record.name,
                record.module,
                record.call,
                record.module_type,
                record.shape,
                record.dtype,
                record.layout,
                image,
                reason,
                lo,
                hi,
                mean,
                nonfinite,
                shown,
                tuple(notes),
                channel_stats=stats.to_json() if stats is not None else None,
                data=data,
            )
        )
        bar.update(1)
        timings["consume"] += time.perf_counter() - start

    writer = _BackgroundWriter(timings)
    tracker = _geometry_tracker(loaded.model, tensor) if folder is not None else None
    try:
        start = time.perf_counter()
        # consume() measures, draws and writes each record before the forward pass goes on,
        # so it sees the exact value without a copy (see capture's ``copy`` argument).
        with tracker or contextlib.nullcontext():
            result: Capture = capture(loaded.model, tensor, on_record=consume, copy=False, **cap)
        timings["capture"] = time.perf_counter() - start - timings.pop("consume")
        writer.wait()
        timings["wall"] = time.perf_counter() - start
    finally:
        writer.close()
        bar.close()
    for miss in result.not_run:
        summaries.append(
            RecordSummary(
                miss.module, miss.module, 0, miss.module_type, None, None, None, None,
                f"never ran: {miss.reason}", None, None, None, 0,
            )
        )  # fmt: skip
    if arrays is not None:
        arrays.close()
    if tracker is not None:
        placed = {n: g.to_json() for n, g in tracker.found.items() if g is not None}
        summaries = [replace(r, geometry=placed.get(r.name)) for r in summaries]

    messages = []
    if saved is not None and not any(s.name in saved.layers for s in summaries if s.image):
        messages.append(
            f"no drawn layer is in the statistics file '{saved.path}', so every layer ranked its "
            "channels on this input; was the file made with another model or other layers?"
        )
        warnings.warn(FeaturemapsWarning(messages[-1]), stacklevel=3)
    bad = [s.name for s in summaries if s.nonfinite]
    if bad:
        messages.append(
            f"{len(bad)} layer(s) hold NaN/Inf values (first: '{bad[0]}'); they are drawn in "
            "magenta and counted in the manifest's 'nonfinite'"
        )
        warnings.warn(NonFiniteWarning(messages[-1]), stacklevel=3)
    if loaded.random_weights:
        messages.append(f"RANDOM WEIGHTS: {loaded.weights_status}")

    manifest: dict[str, Any] = {
        "tool": TOOL,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "model": loaded.describe(),
        "input": input_info,
        "render": {
            "scale": grid.scale,
            "value_range": list(grid.value_range) if grid.value_range else None,
            "cmap": grid.cmap or "auto (viridis; RdBu_r centred on 0 for signed data)",
            "max_channels": grid.max_channels,
            "columns": grid.columns,
            "order": grid.order,
            "channels": list(grid.channels) if grid.channels else None,
            "sample": sample,
        },
        "arrays": prefix + ARRAYS if arrays is not None else None,
        "report": prefix + INDEX if report else None,
        "warnings": messages,
        "records": [s.to_json() for s in summaries],
    }
    if folder is not None:
        start = time.perf_counter()
        folder.write_json(prefix + MANIFEST, manifest)
        if report:
            # The page is built from the manifest just written, as write_report() would.
            for relative, content in report_files(manifest, prefix).items():
                folder.write_bytes(prefix + relative, content)
        timings["manifest+report"] = time.perf_counter() - start
    return Visualization(summaries, manifest, None, grids, messages, timings)


def visualize(
    model: nn.Module | LoadedModel | str,
    inputs: Any,
    *,
    out: str | Path | None = None,
    layers: str | Sequence[str] | None = None,
    types: str | Sequence[str] | None = None,
    containers: bool = False,
    grid: GridOptions | None = None,
    save_arrays: bool = False,
    sample: int = 0,
    progress: bool = False,
    report: bool = True,
    channel_stats: SavedStats | str | Path | None = None,
) -> list[Visualization]:
    """Capture, draw and (optionally) write every selected layer for one or several inputs.

    Args:
        model: an ``nn.Module``, a :class:`LoadedModel`, or a model spec string.
        inputs: a tensor ``(N, C, H, W)``, an image/array path, a :class:`LoadedInput`, or a list
            of those (one result, and with ``out`` one sub-folder, per input).
        out: output folder; ``None`` keeps the pictures in memory (``Visualization.grids``).
        layers, types, containers: layer selection, as in :func:`featuremaps.capture`.
        grid: how to draw (channels, columns, scale, colormap); defaults to :class:`GridOptions`.
        save_arrays: also write ``arrays.safetensors`` (float32, batch dimension kept).
        sample: which sample of the batch to draw.
        progress: show a progress bar on stderr.
        report: with ``out``, also write the HTML report ``index.html`` and its float16 layer
            data (``data/``); ``Visualization.report`` is then its path. Ignored without ``out``.
        channel_stats: a ``stats.csv``/``stats.parquet`` from :func:`collect_stats` (or its
            :class:`~featuremaps.dataset.SavedStats`). With a ``grid.order`` other than "index",
            layers found in it show their top channels by that statistic over the data set
            instead of over this input (the legend says which); other layers rank on the input.

    Returns:
        One :class:`Visualization` per input.
    """
    loaded = _resolve_model(model)
    grid = grid or GridOptions()
    saved = read_stats(channel_stats) if isinstance(channel_stats, (str, Path)) else channel_stats
    if saved is not None and (grid.order == "index" or grid.channels is not None):
        raise OptionError(
            f"a statistics file ('{saved.path.name}') ranks channels only for a top-K choice; "
            "use --channels top:K:STAT (grid order absmean, mean, std or max)"
        )
    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    cap: dict[str, Any] = {
        "layers": layers,
        "types": types,
        "containers": containers,
        "model_label": loaded.spec,
    }
    if out is not None:
        _refuse_inputs_inside(items, Path(out))
    resolved = [_resolve_input(item, loaded) for item in items]
    folders = _unique([r.stem for r in resolved]) if len(resolved) > 1 else [""]
    folder = OutputFolder(out) if out is not None else None
    results: list[Visualization] = []
    try:
        for item, sub in zip(resolved, folders, strict=True):
            prefix = f"{sub}/" if sub else ""
            results.append(
                _run_one(loaded, item, grid, cap, folder, prefix, save_arrays, sample, progress,
                         report, saved)
            )  # fmt: skip
        if folder is not None:
            if len(results) > 1:
                folder.write_json(
                    MANIFEST,
                    {
                        "tool": TOOL,
                        "versions": _versions(),
                        "runs": [f"{sub}/{MANIFEST}" for sub in folders],
                    },
                )
                if report:
                    pages = runs_report_files(
                        [(sub, r.manifest) for sub, r in zip(folders, results, strict=True)]
                    )
                    for relative, content in pages.items():
                        folder.write_bytes(relative, content)
            target = folder.commit()
            for result, sub in zip(results, folders, strict=True):
                result.out_dir = target / sub if sub else target
                if report:
                    result.report = result.out_dir / INDEX
    except BaseException:
        if folder is not None:
            folder.discard()
        raise
    return results


def _ranked_by_file(
    grid: GridOptions, saved: SavedStats | None, name: str, channels: int, notes: list[str]
) -> GridOptions:
    """The grid options for one layer: its top channels by the saved data-set statistic."""
    if saved is None:
        return grid
    values = saved.values(name, grid.order)
    if values is None:
        notes.append(f"not in {saved.path.name}: top channels ranked on this input")
        return grid
    if len(values) != channels:
        raise OptionError(
            f"'{name}' has {channels} channels but the statistics file '{saved.path}' lists "
            f"{len(values)}; use a file made with the same model (featuremaps stats)"
        )
    key = np.nan_to_num(values, nan=-np.inf)
    top = np.argsort(-key, kind="stable")[: grid.max_channels]
    note = f"top {len(top)} by {grid.order} over the data set in {saved.path.name}"
    return replace(grid, channels=tuple(int(c) for c in top), channels_note=note)


def _refuse_inputs_inside(items: list[Any], out: Path) -> None:
    """A run replaces its whole output folder, so an input inside it would be deleted."""
    target = out.resolve()
    for item in items:
        path = item.path if isinstance(item, LoadedInput) else item
        if isinstance(path, (str, Path)) and target in Path(path).resolve().parents:
            raise OutputError(
                f"input '{path}' lies inside the output folder '{out}', which each run replaces "
                "as a whole; move the input or choose another --out"
            )


def _unique(stems: list[str]) -> list[str]:
    """Safe, distinct folder names for several inputs (``a``, ``a-2``, ...)."""
    # The report's folders and the top-level files sit beside the per-input folders.
    used: set[str] = {"assets", "data", "index.html", "manifest.json", "summary.json"}
    out = []
    for stem in stems:
        base = safe_filename(0, stem, suffix="")[5:]  # drop the "0000_" index prefix
        name, k = base, 1
        while name.lower() in used:
            k += 1
            name = f"{base}-{k}"
        used.add(name.lower())
        out.append(name)
    return out


def collect_stats(
    model: nn.Module | LoadedModel | str,
    data: Sequence[str],
    *,
    out: str | Path,
    layers: str | Sequence[str] | None = None,
    types: str | Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    batch_size: int = 16,
    workers: int = 2,
    near_zero: float = 1e-6,
    duplicates: float | None = None,
    rank_by: str = "absmean",
    plots: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Per-channel statistics of the selected layers over a data set, written to ``out``.

    ``data`` names files, folders (searched recursively) or globs. Writes:

    - ``stats.csv`` and ``stats.parquet``: the same table, one row per layer and channel, with
      ``dead`` and a per-layer rank by ``rank_by`` (the Parquet file keeps the column types);
    - ``summary.json``: inputs read and not read, images/s, and per layer its dead channels,
      with ``duplicates`` the channel pairs correlated at least that much, its histogram of all
      values (channels pooled; exact ``edges`` and ``counts`` of the finite values and the
      ``nonfinite`` count) and, with ``plots``, the names of its two plot files;
    - with ``plots`` (the default), per layer ``plots/NNNN_<name>.hist.png`` (that histogram,
      counts on a log scale) and ``plots/NNNN_<name>.ranked.png`` (its channels sorted by
      ``rank_by``, largest first, dead channels in red); ``NNNN_<name>`` is the layer's position
      and its name made safe for any filesystem (:func:`featuremaps.io.safe_filename`).

    Returns the summary.
    """
    from tqdm import tqdm

    from featuremaps.dataset import compute_dataset_stats, find_inputs, stats_rows

    statistics = list(RunningStats(1).result())
    if rank_by not in statistics:
        raise OptionError(
            f"rank_by={rank_by!r} is not a per-channel statistic; expected one of "
            f"{', '.join(statistics)}"
        )
    loaded = _resolve_model(model)
    paths = find_inputs(data)
    if preprocessing is None:
        preprocessing = loaded.input_preprocessing()
    first = expected_channels(loaded.model)
    folder = OutputFolder(out)  # refuses a bad --out before the long run, not after
    with folder, tqdm(total=len(paths), unit=" img", disable=not progress, leave=False) as bar:
        result = compute_dataset_stats(
            loaded.model,
            paths,
            channels=first[0] if first else None,
            preprocessing=preprocessing,
            layers=layers,
            types=types,
            batch_size=batch_size,
            workers=workers,
            near_zero=near_zero,
            correlations=duplicates is not None,
            progress=bar.update,
        )
        rows = stats_rows(result, rank_by)
        folder.write_csv(STATS_CSV, rows)
        folder.write_parquet("stats.parquet", rows)
        plot_files: dict[str, dict[str, str]] | None = None
        if plots:
            from featuremaps.render.plots import Charts

            charts, plot_files = Charts(), {}  # one Charts: its figures are reused per layer
            for index, (name, stats) in enumerate(result.layers.items()):
                numbers = stats.result()
                hist = result.histograms[name].result()
                hist_png = charts.histogram(hist, layer=name, images=result.images)
                ranked_png = charts.ranked(
                    numbers[rank_by], layer=name, statistic=rank_by, dead=numbers["std"] == 0
                )
                plot_files[name] = {
                    "histogram": folder.write_bytes(
                        "plots/" + safe_filename(index, name, ".hist.png"), hist_png
                    ),
                    "ranked": folder.write_bytes(
                        "plots/" + safe_filename(index, name, ".ranked.png"), ranked_png
                    ),
                }
        summary = _stats_summary(
            loaded, paths, preprocessing, result, near_zero, duplicates, plot_files
        )
        folder.write_json(SUMMARY, summary)
    return summary


def _stats_summary(
    loaded: LoadedModel,
    paths: Sequence[Path],
    preprocessing: Preprocessing,
    result: DatasetStats,
    near_zero: float,
    duplicates: float | None,
    plot_files: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    from featuremaps.dataset import near_duplicates

    def dead(stats: RunningStats) -> list[int]:
        return [int(c) for c in np.flatnonzero(stats.result()["std"] == 0)]

    def histogram(name: str) -> dict[str, Any]:
        hist = result.histograms[name].result()  # at most 128 bins: small enough to keep here
        return {
            "edges": hist.edges.tolist(),
            "counts": hist.counts.tolist(),
            "nonfinite": hist.nonfinite,
        }

    return {
        "tool": TOOL,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "model": loaded.describe(),
        "preprocessing": preprocessing.describe(),
        "inputs": {
            "found": len(paths),
            "read": result.images,
            "not_read": [{"path": p, "reason": why} for p, why in result.failed],
        },
        "images_per_second": result.images_per_second,
        "near_zero": near_zero,
        "layers": [
            {
                "name": name,
                "type": result.types[name],
                "channels": stats.channels,
                "dead": dead(stats),
                "near_duplicates": (
                    [list(p) for p in near_duplicates(stats, duplicates)]
                    if duplicates is not None
                    else None
                ),
                "histogram": histogram(name),
                "plots": None if plot_files is None else plot_files[name],
            }
            for name, stats in result.layers.items()
        ],
    }


def ablate(
    model: nn.Module | LoadedModel | str,
    data: Sequence[str],
    *,
    layers: str | Sequence[str],
    out: str | Path | None = None,
    stat: str = "absmean",
    ks: Sequence[int] = (0, 8, 16, 32),
    trials: int = 3,
    seed: int = 0,
    channel_stats: SavedStats | str | Path | None = None,
    preprocessing: Preprocessing | None = None,
    batch_size: int = 16,
    workers: int = 2,
    progress: bool = False,
) -> AblationResult:
    """Zero the K lowest-ranked channels of ``layers`` and measure the model's output change.

    The ranking is ``stat`` per channel: from ``channel_stats`` (a saved ``stats.csv`` or
    ``stats.parquet``, ideally made on other images) or, without it, from statistics computed
    first on the same ``data`` (an in-sample ranking; the summary says which). For each K the
    masked model is compared with the unmasked one on every readable input (top-1 agreement,
    mean |Δlogit|, KL divergence), and ``trials`` random K-channel masks per layer give the
    control. With ``out``, writes ``ablation.csv`` (one row per point), ``ablation.json`` (the
    curve, the layers, their lowest-ranked channels, the inputs) and ``ablation.png`` (the curve,
    ranked against the random band). See :mod:`featuremaps.ablation`.
    """
    from tqdm import tqdm

    from featuremaps.ablation import check_classifier, check_options, measure_ablation
    from featuremaps.dataset import RANKABLE, compute_dataset_stats, find_inputs
    from featuremaps.layers import as_patterns, keep_record
    from featuremaps.render.plots import plot_ablation

    if stat not in RANKABLE:
        raise OptionError(
            f"--stat '{stat}' is not a statistic; expected one of {', '.join(RANKABLE)}"
        )
    check_options(ks, trials)
    loaded = _resolve_model(model)
    patterns = as_patterns(layers)
    if patterns is None:
        raise OptionError("ablation needs --layers: the layers whose channels are zeroed")
    select_modules(loaded.model, patterns, None, False, loaded.spec)  # unknown names fail here
    paths = find_inputs(data)
    pre = preprocessing or loaded.input_preprocessing()
    first = expected_channels(loaded.model)
    saved = read_stats(channel_stats) if isinstance(channel_stats, (str, Path)) else channel_stats
    folder = OutputFolder(out) if out is not None else None
    with (
        folder or contextlib.nullcontext(),
        tqdm(desc="ablation", unit=" pass", disable=not progress, leave=False) as bar,
    ):
        if saved is not None:
            values = {
                name: numbers[stat]
                for name, numbers in saved.layers.items()
                if keep_record(name, name.rpartition("#")[0] or name, patterns)
            }
            source = f"statistics file {saved.path}"
            missing = [
                p for p in patterns if not any(keep_record(n, n.rpartition("#")[0] or n, (p,))
                                               for n in values)
            ]  # fmt: skip
            if missing:
                raise OptionError(
                    f"the statistics file '{saved.path}' has no layer matching --layers "
                    f"{','.join(missing)}; run 'featuremaps stats' with those layers first"
                )
        else:
            # The output must be class scores: find out on one input, not after a whole pass.
            check_classifier(loaded.model, paths, first[0] if first else None, pre)
            bar.set_description("ranking")
            ranking = compute_dataset_stats(
                loaded.model, paths, channels=first[0] if first else None, preprocessing=pre,
                layers=patterns, batch_size=batch_size, workers=workers,
            )  # fmt: skip
            values = {name: s.result()[stat] for name, s in ranking.layers.items()}
            source = "the same inputs (in-sample: computed first on the data measured)"
        bar.set_description("ablation")
        result = measure_ablation(
            loaded.model, paths, values, ks=ks, stat=stat, channels=first[0] if first else None,
            preprocessing=pre, trials=trials, seed=seed, batch_size=batch_size,
            workers=workers, progress=bar.update,
        )  # fmt: skip
        if folder is not None:
            summary = {
                "tool": TOOL,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "versions": _versions(),
                "model": loaded.describe(),
                "preprocessing": pre.describe(),
                "inputs": {
                    "found": len(paths),
                    "read": result.images,
                    "not_read": [{"path": p, "reason": why} for p, why in result.failed],
                },
                "ranking": {"stat": stat, "source": source, "zeroed_first": "lowest"},
                "layers": [
                    {"name": n, "channels": c, "lowest_ranked": result.order[n][: max(ks)]}
                    for n, c in result.channels.items()
                ],
                "trials": trials,
                "seed": seed,
                "seconds": result.seconds,
                "curve": result.curve(),
            }
            folder.write_csv(ABLATION_CSV, result.rows())
            folder.write_json(ABLATION, summary)
            picture = plot_ablation(
                result.curve(), model=loaded.spec, layers=list(result.channels),
                images=result.images, stat=stat, trials=trials,
                random_weights=loaded.random_weights,
            )  # fmt: skip
            folder.write_bytes(ABLATION_PNG, picture)
    return result


def locate(
    model: nn.Module | LoadedModel | str,
    inputs: Any,
    layer: str,
    *,
    method: str = "auto",
) -> MapGeometry:
    """Where the cells of record ``layer`` sit in ``inputs`` (the input as fed to the model).

    The returned :class:`~featuremaps.geometry.MapGeometry` answers both questions of region
    analysis: ``cell_region(r, c)`` is the input region cell (r, c) sees and ``cells_seeing(y, x)``
    the cells whose receptive field holds input pixel (y, x), in the coordinates of the input as
    fed (after resizing and cropping). ``method`` is as in
    :func:`featuremaps.geometry.compute_geometry`; the result says which one was used.

    Raises:
        LayerError: ``layer`` is unknown, or is not a 2-D map (its geometry is undefined).
    """
    from featuremaps.geometry import compute_geometry

    loaded = _resolve_model(model)
    tensor = _resolve_input(inputs, loaded).tensor[:1]
    module = layer.rpartition("#")[0] if "#" in layer else layer
    selected = select_modules(loaded.model, (module,), None, True, loaded.spec)
    found: dict[str, MapGeometry] = {}
    if method != "empirical":  # the analytic chain needs every layer on the way, not just this
        found = compute_geometry(loaded.model, tensor, method="analytic")
    if layer not in found and method != "analytic":
        found = compute_geometry(loaded.model, tensor, layers=selected, method="empirical")
    if layer not in found:
        maps = ", ".join(list(found)[:5]) or "none"
        raise LayerError(
            f"'{layer}' has no 2-D map whose cells can be placed on the input (maps selected by "
            f"that name: {maps}); pick a convolution or pooling layer from 'featuremaps layers "
            f"{loaded.spec}'"
        )
    return found[layer]


def draw_overlay(
    model: nn.Module | LoadedModel | str,
    inputs: Any,
    layer: str,
    channel: int,
    *,
    out: str | Path | None = None,
    alpha: float = 0.6,
    threshold: float | None = None,
    cmap: str | None = None,
    geometry: MapGeometry | None = None,
) -> Overlay:
    """Draw channel ``channel`` of record ``layer`` over the input as fed, each cell at its
    receptive-field centre (:func:`locate`; pass ``geometry`` to reuse one), blended with
    ``alpha``; cells below ``threshold`` (a fraction of the colour range) stay transparent.

    With ``out``, also writes that folder (replacing an earlier one): ``overlay.png`` and
    ``locate.json`` (model, input, layer, channel, geometry and the caption of the picture).
    """
    from featuremaps.render import overlay

    loaded = _resolve_model(model)
    item = _resolve_input(inputs, loaded)
    tensor = item.tensor[:1]
    geometry = geometry or locate(loaded, tensor, layer)
    record = capture(loaded.model, tensor, layers=layer.partition("#")[0], model_label=loaded.spec)
    maps = _maps(record.get(layer), 0)
    if not 0 <= channel < maps.shape[0]:
        raise OptionError(
            f"channel {channel} does not exist in '{layer}', which has {maps.shape[0]} channels"
        )
    fed = fed_picture(tensor, item.preprocessing)
    if fed is None:
        raise OptionError(f"the input of shape {tuple(tensor.shape)} is not a picture to draw on")
    picture = overlay(fed[0], maps[channel], geometry, alpha=alpha, threshold=threshold, cmap=cmap)
    if out is not None:
        with OutputFolder(out) as folder:
            folder.write_bytes(OVERLAY_PNG, picture.to_png())
            folder.write_json(
                LOCATE,
                {
                    "tool": TOOL,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "versions": _versions(),
                    "model": loaded.describe(),
                    "input": item.info,
                    "layer": layer,
                    "channel": channel,
                    "geometry": geometry.to_json(),
                    "picture": OVERLAY_PNG,
                    "caption": picture.caption,
                    "warnings": list(picture.warnings),
                },
            )
    return picture
