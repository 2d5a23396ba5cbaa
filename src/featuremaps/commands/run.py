"""The ``run`` command: model + inputs in; pictures, numbers, a manifest and a report out.

This module wires the stages together for one run (inputs → model → capture → layouts → stats →
render → encode → manifest → io/report). Records are streamed: each one is measured, drawn,
encoded and written as soon as its module returns, then dropped, so an all-layers run of a large
model on a large image never holds every activation at once. Only the "global" scale needs the
range over all layers before it can draw anything; it runs the model twice (a cheap pass that
only measures, then the drawing pass) instead of keeping every activation. Each record is drawn
by :mod:`featuremaps.commands.run_drawing`; the command line's ``featuremaps run`` is at the end.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import html
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from featuremaps import layouts
from featuremaps._errors import FeaturemapsWarning, NonFiniteWarning, OptionError, OutputError
from featuremaps.capture import Capture, LayerRecord, capture
from featuremaps.classmaps import ClassMap
from featuremaps.commands.cam_files import (
    CamOptions,
    cam_entries,
    compute_cams,
    sanity_message,
)
from featuremaps.commands.cli_common import (
    Command,
    add_containers_option,
    add_device_options,
    add_layer_options,
    add_model_options,
    add_out_option,
    add_quiet_option,
    add_run_cam_options,
    check_layers,
    load_model_and_inputs,
    parse_channels,
    parse_patch,
    parse_range,
    print_closing,
    run_cam_options,
    show_progress,
)
from featuremaps.commands.common import (
    ResolvedInput,
    nonfinite_message,
    place_model,
    resolve_input,
)
from featuremaps.commands.run_drawing import (
    SignalContext,
    covers_whole_output,
    draw_record,
    global_range,
    ranked_by_file,
    skip_reason,
)
from featuremaps.commands.run_files import (
    BackgroundWriter,
    SharedCores,
    StatisticsScripts,
    finish_tokens,
    held_bytes,
    input_pictures,
    layer_data,
)
from featuremaps.commands.run_filters import add_filters_option, check_filters, run_filters
from featuremaps.dataset import SavedStats, read_stats
from featuremaps.devices import Placement
from featuremaps.geometry import GeometryTracker
from featuremaps.inputs import LoadedInput, fed_picture, sample_image_path
from featuremaps.io import OutputFolder, safe_filename, shared_number_text
from featuremaps.manifest import (
    ARRAYS,
    MANIFEST,
    RANDOM_WEIGHTS,
    RecordSummary,
    header,
    runs_manifest,
)
from featuremaps.models import LoadedModel
from featuremaps.predictions import categories, prediction, prediction_lines
from featuremaps.render import Grid, GridLabel, GridOptions
from featuremaps.render.encode import encode
from featuremaps.render.signal import Placement as AxisPlacement
from featuremaps.render.tokens import PcaMemo
from featuremaps.report import (
    INDEX,
    report_files,
    runs_report_files,
)
from featuremaps.report.budget import (
    DEFAULT_REPORT_BUDGET_MIB,
    MIB,
    LayerDataFile,
    apply_budget,
)
from featuremaps.report.render import RUN_PAGE, prepare_templates
from featuremaps.selection import select_modules
from featuremaps.stats import (
    TOP_K_ORDERS,
    ChannelStats,
    channel_stats,
    summarize,
    summary_of_channels,
)

__all__ = ["COMMAND", "TIMING_KEYS", "Visualization", "visualize"]

# capture: the forward pass with hooks, without the time spent consuming records; wall: the
# capture with everything it waits for; manifest+report: writing those after the forward pass.
TIMING_KEYS = ("capture", "stats", "render", "pca", "encode", "write", "consume", "wall")


@dataclass
class Visualization:
    """The result of :func:`visualize` for one input.

    ``grids`` holds the pictures in memory when no output folder was given (they display inline
    in Jupyter); with an output folder they are written and not kept. ``timings`` holds seconds
    spent in each stage (see :data:`TIMING_KEYS`); "encode", "write" and "pca" (token layers)
    run on a second thread, overlapping the others, so the stages add up to more than "wall".
    """

    records: list[RecordSummary]
    manifest: dict[str, Any]
    out_dir: Path | None = None
    grids: dict[str, Grid] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    report: Path | None = None
    cams: list[ClassMap] = field(default_factory=list)

    def __repr__(self) -> str:
        drawn = sum(1 for r in self.records if r.image or r.name in self.grids)
        where = f", out_dir='{self.out_dir}'" if self.out_dir else ""
        memory = f", {len(self.grids)} grids in memory" if self.grids else ""
        notes = f", {len(self.warnings)} warnings" if self.warnings else ""
        return f"Visualization({len(self.records)} records, {drawn} drawn{memory}{where}{notes})"

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


def _geometry_tracker(model: nn.Module, tensor: torch.Tensor) -> GeometryTracker | None:
    """Follow receptive-field geometry through the capture's own forward pass (no extra run,
    and not the capture's shape probes); it describes every module, selected or not, since
    geometry flows through all the leaves and a container has the geometry of the leaf call
    whose tensor it returns."""
    if tensor.dim() not in (3, 4) or isinstance(model, torch.jit.ScriptModule):
        return None
    every = select_modules(model, None, None, True, None)
    return GeometryTracker(tensor, every, model)


def _run_one(
    loaded: LoadedModel,
    item: ResolvedInput,
    grid: GridOptions,
    cap: dict[str, Any],
    folder: OutputFolder | None,
    prefix: str,
    save_arrays: bool,
    sample: int,
    progress: bool,
    report: bool = False,
    saved: SavedStats | None = None,
    placement: Placement | None = None,
    attention_patch: tuple[int, int] | None = None,
    report_budget: int | None = None,
    cams: CamOptions | None = None,
    filters: bool = False,
) -> Visualization:
    from tqdm import tqdm

    placement = placement or Placement(torch.device("cpu"))
    # Only the forward pass runs on the device; what is drawn or written comes to the host.
    tensor, input_info = placement.inputs(item.tensor), dict(item.info)
    if isinstance(tensor, torch.Tensor) and tensor.dim() > 0 and not 0 <= sample < len(tensor):
        raise OptionError(
            f"sample {sample} asked for, but the input has a batch of {len(tensor)}; choose a "
            f"sample from 0 to {len(tensor) - 1}"
        )
    report = report and folder is not None
    if grid.scale == "global":
        r = global_range(loaded.model, tensor, cap, sample, placement)
        grid = replace(grid, value_range=(r.vmin, r.vmax))
    stamp = loaded.stamp
    precision = placement.label
    summaries: list[RecordSummary] = []
    grids: dict[str, Grid] = {}
    arrays = folder.arrays(prefix + ARRAYS) if folder is not None and save_arrays else None
    bar = tqdm(desc=f"layers of {loaded.spec}", unit=" layer", disable=not progress, leave=False)

    timings: dict[str, float] = dict.fromkeys(TIMING_KEYS, 0.0)
    data_files: list[LayerDataFile] = []
    later: list[tuple[int, Future[dict[str, Any]]]] = []
    pca_memo = PcaMemo()  # used on the writer's thread only, token layers in order

    def consume(record: LayerRecord) -> None:
        start = time.perf_counter()
        reason = skip_reason(record, sample)
        maps: np.ndarray | None = None
        stats: ChannelStats | None = None
        if reason is None and record.layout_info.drawn_as != layouts.BAR_STRIP:
            maps = record.maps(sample)
            stats = channel_stats(maps)  # every channel of the drawn sample, not only shown
        if stats is not None and maps is not None and covers_whole_output(maps, record.tensor):
            lo, hi, mean, nonfinite = summary_of_channels(stats, maps.size)
        else:
            lo, hi, mean, nonfinite = summarize(record.tensor)
        timings["stats"] += time.perf_counter() - start
        image = None
        data = None
        shown: tuple[int, ...] | None = None
        notes: list[str] = []
        if nonfinite:
            notes.append(f"{nonfinite} NaN/Inf values")
        pca: dict[str, Any] | None = None
        if reason is None:
            label = GridLabel(record.name, record.module_type, record.shape, stamp, precision)
            drawn = time.perf_counter()
            options = grid
            if maps is not None:
                options = ranked_by_file(grid, saved, record.name, maps.shape[0], notes)
            context = _signal_context(record)
            # With a folder, a token layer's PCA is taken on the writer's thread (numpy's
            # LAPACK lets go of the GIL there), from the plan's copy of the tokens.
            drawing = draw_record(
                record, sample, maps, options, label, context, attention_patch, stats,
                pca_later=folder is not None,
            )  # fmt: skip
            picture = drawing.picture
            timings["render"] += time.perf_counter() - drawn
            shown = drawing.shown
            notes.extend(w for w in drawing.warnings if w not in notes)
            if stats is None:  # a vector: each feature is a channel of one value
                measured = time.perf_counter()
                vector = layouts.drawable_maps(record.layout_info, record.tensor, sample)
                stats = channel_stats(vector.reshape(-1, 1, 1))
                timings["stats"] += time.perf_counter() - measured
            if folder is not None:
                image = prefix + safe_filename(record.index, record.name)
                if drawing.pending:
                    basis = prefix + "pca/" + safe_filename(record.index, record.name, ".npy")
                    job = functools.partial(
                        finish_tokens, drawing, folder, image, basis, timings, pca_memo
                    )
                    later.append((len(summaries), writer.run(job, held_bytes(picture))))
                else:
                    encode_image = functools.partial(encode, picture)
                    writer.submit(folder.write_bytes, image, encode_image, held_bytes(picture))
                if report and drawing.tiles and shown is not None and stats is not None:
                    assert maps is not None
                    path, encode_data, written = layer_data(record, maps, shown, stats, prefix)
                    data = prefix + path
                    data_files.append(written)
                    # The float16 copy it holds: less than its file's size (base64).
                    writer.submit(folder.write_bytes, data, encode_data, written.size)
            else:
                grids[record.name] = picture
                pca = drawing.pca
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
                drawn_as=record.layout_info.drawn_as if reason is None else None,
                layout_evidence=record.layout_note or None,
                pca=pca,
            )
        )
        if scripts is not None:
            scripts.add(summaries[-1])
        bar.update(1)
        # Two cores, three busy threads make the forward slower than one thread does: the
        # model's own threads wait for each other while the writer holds a core (resnet50 on
        # 2 cores: 1.5 s with 2 threads beside a busy writer, 1.0 s with 1, 0.55 s alone).
        threads.share(writer.busy())
        timings["consume"] += time.perf_counter() - start

    writer = BackgroundWriter(timings)
    scripts = StatisticsScripts(folder, prefix) if report and folder is not None else None
    if report:  # its page is compiled while the model runs
        writer.run(functools.partial(prepare_templates, RUN_PAGE), 0)
    signal = isinstance(tensor, torch.Tensor) and tensor.dim() == 3
    tracker = _geometry_tracker(loaded.model, tensor) if folder is not None or signal else None

    def _signal_context(record: LayerRecord) -> SignalContext | None:
        """The input signal and the record's placement on its time axis (signals only)."""
        if record.layout_info.drawn_as != layouts.SIGNAL_MAP:
            return None
        given = tensor[sample].detach().float().cpu().numpy() if signal else None
        found = tracker.found.get(record.name) if tracker is not None else None
        axis = getattr(found, "x", None)
        on_axis = AxisPlacement(axis.stride, axis.offset, axis.size) if axis is not None else None
        return SignalContext(given, on_axis)

    threads = SharedCores()
    try:
        if folder is not None:  # encoded and written on the writer's thread, during the forward
            input_info["pictures"] = input_pictures(folder, prefix, item, sample, writer)
        start = time.perf_counter()
        # consume() measures, draws and writes each record before the forward pass goes on,
        # so it sees the exact value without a copy (see capture's ``copy`` argument).
        # The writer's last jobs run within ``threads`` too: a token layer's PCA queued when
        # the forward ends is then taken on the same one BLAS thread as the others (with two,
        # its explained variances could differ in the last digits from one run to the next).
        with threads:
            with tracker or contextlib.nullcontext(), placement.autocast():
                result: Capture = capture(
                    loaded.model, tensor, on_record=consume, copy=False, **cap
                )
            timings["capture"] = time.perf_counter() - start - timings.pop("consume")
            for at, done in later:  # token layers: their PCA, taken on the writer's thread
                summaries[at] = replace(summaries[at], pca=done.result())
            writer.wait()
        timings["wall"] = time.perf_counter() - start
    finally:
        writer.close()
        bar.close()
    for other in result.no_tensor:
        summaries.append(
            RecordSummary(
                other.name, other.module, other.call, other.module_type, None, None, None, None,
                other.reason, None, None, None, 0,
            )
        )  # fmt: skip
    for miss in result.not_run:
        summaries.append(
            RecordSummary(
                miss.module, miss.module, 0, miss.module_type, None, None, None, None,
                f"never ran: {miss.reason}", None, None, None, 0,
            )
        )  # fmt: skip
    if arrays is not None:
        arrays.close()
    found_cams: list[ClassMap] = []
    cam_list: list[dict[str, Any]] | None = None
    if cams is not None:
        start = time.perf_counter()
        chosen = tensor[sample : sample + 1] if isinstance(tensor, torch.Tensor) else tensor
        named_classes = categories(loaded)
        found_cams = compute_cams(
            loaded.model, chosen, cams, named_classes[0] if named_classes else None, loaded.cli_spec
        )
        found_cams = [replace(c, sample=sample) for c in found_cams]
        fed = fed_picture(chosen, item.preprocessing) if isinstance(chosen, torch.Tensor) else None
        cam_list = cam_entries(folder, prefix, found_cams, fed[0] if fed else None, cams, stamp)
        timings["cams"] = time.perf_counter() - start
    if tracker is not None:
        placed = {n: g.to_json() for n, g in tracker.found.items() if g is not None}
        summaries = [replace(r, geometry=placed.get(r.name)) for r in summaries]
    # With filters: a sheet per Conv/Linear module; its norms join the channel statistics.
    summaries, filter_entries = run_filters(loaded, summaries, folder, prefix, stamp, filters)

    messages = []
    budget = None
    if scripts is not None and folder is not None:
        budget = apply_budget(folder, data_files, report_budget, scripts.finish(summaries))
        summaries = [budget.record(r) for r in summaries]
        if budget.message() is not None:
            messages.append(str(budget.message()))
    if saved is not None and not any(s.name in saved.layers for s in summaries if s.image):
        messages.append(
            f"no drawn layer is in the statistics file '{saved.path}', so every layer ranked its "
            "channels on this input; was the file made with another model or other layers?"
        )
        warnings.warn(FeaturemapsWarning(messages[-1]), stacklevel=3)
    bad = nonfinite_message(
        [s.name for s in summaries if s.nonfinite],
        "they are drawn in magenta and counted in the manifest's 'nonfinite'",
    )
    if bad is not None:
        messages.append(bad)
        warnings.warn(NonFiniteWarning(bad), stacklevel=3)
    failing = sanity_message(found_cams)
    if failing is not None:
        messages.append(failing)
    if loaded.random_weights:
        messages.append(f"{RANDOM_WEIGHTS}: {loaded.weights_status}")
    named = categories(loaded)
    found = None
    if named is not None:
        found = prediction(result.output, named[0], named[1], loaded.random_weights, sample)

    manifest: dict[str, Any] = {
        **header(loaded.describe()),
        "input": input_info,
        "compute": placement.describe(),
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
        "report_data": budget.describe() if budget is not None else None,
        "warnings": messages,
        "outputs": dict(result.outputs),
        "prediction": found,
        "records": [s.to_json() for s in summaries],
    }
    if cam_list is not None:
        manifest["cams"] = cam_list
    manifest.update({"filters": filter_entries} if filter_entries is not None else {})
    if folder is not None:
        start = time.perf_counter()
        folder.write_json(prefix + MANIFEST, manifest)
        if report:
            # The page is built from the manifest just written, as write_report() would.
            pages = report_files(manifest, prefix, statistics=False)  # those: written above
            for relative, content in pages.items():
                folder.write_bytes(prefix + relative, content)
        timings["manifest+report"] = time.perf_counter() - start
    return Visualization(summaries, manifest, None, grids, messages, timings, cams=found_cams)


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
    device: str | torch.device | None = None,
    dtype: str | None = None,
    attention_patch: tuple[int, int] | None = None,
    report_budget: float | None = DEFAULT_REPORT_BUDGET_MIB,
    cams: CamOptions | None = None,
    filters: bool = False,
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
        device: where the model runs: ``"auto"`` (a GPU when there is one), ``"cpu"``,
            ``"cuda"``, ``"cuda:N"`` or ``"mps"``; the model is moved there (in place). ``None``
            (default) leaves the model where it is and moves the inputs to it.
        dtype: ``"float32"`` (default), or ``"bfloat16"``/``"float16"`` to run the forward pass
            under ``torch.autocast``; the manifest's ``compute`` and every legend say so.
        attention_patch: the patch (row, column) whose attention over the patch grid is drawn
            per head for attention records, beside the class token's (default: the centre).
        report_budget: the most MiB the report's data (``data/``) may take, for all inputs
            together (default 200; ``None``: no limit). Past it, the largest layers keep fewer
            of their drawn channels there, and the manifest, the page and each record's
            warnings say so; the PNGs and ``save_arrays`` keep everything.
        cams: also compute class activation maps of the drawn sample
            (:class:`~featuremaps.commands.cam_files.CamOptions`); they are in
            ``Visualization.cams``, and with ``out`` in the manifest's ``cams`` (arrays and
            pictures under ``cams/``) and the report.
        filters: also draw each selected Conv/Linear layer's filters, as ``run --filters``
            does (see :func:`featuremaps.commands.run_filters.run_filters`).

    Returns:
        One :class:`Visualization` per input.
    """
    loaded, placement = place_model(model, device, dtype)
    grid = grid or GridOptions()
    if grid.scale == "global" and grid.value_range is not None:
        raise OptionError(
            f"scale 'global' measures its range over all layers itself, so the given range "
            f"{grid.value_range[0]:g} … {grid.value_range[1]:g} would be ignored; use scale "
            "'fixed' for a range of your own, or leave the range out"
        )
    saved = read_stats(channel_stats) if isinstance(channel_stats, (str, Path)) else channel_stats
    if saved is not None and (grid.order == "index" or grid.channels is not None):
        raise OptionError(
            f"a statistics file ('{saved.path.name}') ranks channels only for a top-K choice; "
            "use --channels top:K:STAT (grid order absmean, mean, std or max)"
        )
    if report_budget is not None and not 0 <= report_budget < float("inf"):
        raise OptionError(
            f"report budget {report_budget:g} MiB is not valid; expected a size of 0 or more in "
            "MiB, e.g. 200"
        )
    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    cap: dict[str, Any] = {
        "layers": layers,
        "types": types,
        "containers": containers,
        "model_label": loaded.cli_spec,
    }
    check_filters(loaded, layers, types, containers, filters)
    if out is not None:
        _refuse_inputs_inside(items, Path(out))
    resolved = [resolve_input(item, loaded) for item in items]
    folders = _unique([r.stem for r in resolved]) if len(resolved) > 1 else [""]
    folder = OutputFolder(out, loaded.mark) if out is not None else None
    each = None if report_budget is None else int(report_budget * MIB) // len(resolved)
    results: list[Visualization] = []
    # Each statistics list becomes JSON text once, for the manifest, the report and its budget.
    with shared_number_text():
        try:
            for i, (item, sub) in enumerate(zip(resolved, folders, strict=True)):
                prefix = f"{sub}/" if sub else ""
                mine = cams.for_input(i) if cams is not None else None
                results.append(
                    _run_one(loaded, item, grid, cap, folder, prefix, save_arrays, sample, progress,
                             report, saved, placement, attention_patch, each, mine,
                             filters)
                )  # fmt: skip
            if folder is not None:
                if len(results) > 1:
                    listed = [
                        {
                            "folder": sub,
                            "input": item.info.get("path"),
                            "kind": item.info.get("kind"),
                            "manifest": f"{sub}/{MANIFEST}",
                        }
                        for item, sub in zip(resolved, folders, strict=True)
                    ]
                    folder.write_json(
                        MANIFEST,
                        runs_manifest(
                            [f"{sub}/{MANIFEST}" for sub in folders], listed, loaded.describe()
                        ),
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
    """Safe, distinct folder names for several inputs (``a``, ``a-2``, ...); the top-level
    manifest's ``inputs`` says which input each one holds."""
    # The report's folders and the top-level files sit beside the per-input folders.
    used: set[str] = {"assets", "data", "index.html", "manifest.json", "summary.json"}
    out = []
    for stem in stems:
        base = safe_filename(0, stem, suffix="")[5:]  # drop the "0000_" index prefix
        if not any(ch.isascii() and ch.isalnum() for ch in stem):
            base = "input"  # nothing of the name was safe (e.g. only non-ASCII letters)
        name, k = base, 1
        while name.lower() in used:
            k += 1
            name = f"{base}-{k}"
        used.add(name.lower())
        out.append(name)
    return out


# -- the command line ---------------------------------------------------------------------------


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help="image files or .npy arrays (default: the bundled sample photo)",
    )
    add_model_options(p)
    add_device_options(p)
    add_containers_option(p)
    add_out_option(p, "featuremaps-out")
    add_layer_options(
        p,
        "name, glob, re:REGEX, or NAME#k; repeat or use commas (default: all leaves)",
        "module class, e.g. Conv2d",
    )
    p.add_argument(
        "--channels",
        default="32",
        help="N (first N), all, a list like 0,5,7, or top:K:STAT with STAT in "
        f"{', '.join(TOP_K_ORDERS)} (default: 32)",
    )
    p.add_argument(
        "--stats",
        metavar="FILE",
        help="stats.csv/stats.parquet from 'featuremaps stats': --channels top:K:STAT then ranks "
        "channels over that data set instead of this image",
    )
    p.add_argument("--columns", type=int, default=8, help="tiles per row (default: 8)")
    p.add_argument(
        "--scale",
        choices=("layer", "channel", "global", "fixed"),
        default="layer",
        help="colour scale shared per layer (default), per channel, across all layers, or fixed",
    )
    p.add_argument("--range", dest="value_range", help="LO,HI for --scale fixed")
    p.add_argument(
        "--cmap", help="matplotlib colormap (default: viridis; RdBu_r centred on 0 if signed)"
    )
    p.add_argument("--sample", type=int, default=0, help="batch sample to draw (default: 0)")
    p.add_argument(
        "--attention-patch",
        help="ROW,COL: the patch whose attention per head is drawn beside the class token's "
        "(default: the centre patch)",
    )
    p.add_argument(
        "--save-arrays", action="store_true", help="also write arrays.safetensors (float32)"
    )
    p.add_argument(
        "--no-report",
        dest="report",
        action="store_false",
        help="do not write the HTML report (index.html and its float16 layer data in data/)",
    )
    p.add_argument(
        "--report-budget",
        type=float,
        default=DEFAULT_REPORT_BUDGET_MIB,
        metavar="MiB",
        help="the most the report's data (data/) may take, all inputs together; past it the "
        "largest layers keep fewer channels there, and the run says so (default: 200)",
    )
    add_run_cam_options(p)
    add_filters_option(p)
    add_quiet_option(p)


def _check_scale(args: argparse.Namespace) -> None:
    """--range belongs to --scale fixed: given with another scale it would be ignored."""
    if args.value_range is not None and args.scale != "fixed":
        raise OptionError(
            f"--range {args.value_range} is used only with --scale fixed, but the scale is "
            f"'{args.scale}'; add --scale fixed, or drop --range"
        )
    if args.scale == "fixed" and args.value_range is None:
        raise OptionError("--scale fixed needs --range LO,HI, for example --range -1,1")
    if args.columns < 1:
        raise OptionError(f"--columns {args.columns} is not valid; expected 1 or more, e.g. 8")


def _execute(args: argparse.Namespace, out: TextIO) -> int:
    check_layers(args.layers)
    _check_scale(args)
    grid = GridOptions(
        columns=args.columns,
        scale=args.scale,
        value_range=parse_range(args.value_range),
        cmap=args.cmap,
        **parse_channels(args.channels),  # type: ignore[arg-type]
    )
    if not args.images:
        print(f"no image given; using the bundled sample {sample_image_path()}", file=out)
    loaded, inputs = load_model_and_inputs(args, args.model, args.images, out)
    for item in inputs:
        for line in item.conversions:
            print(f"{item.path.name}: {line}", file=out)
    if args.stats and "order" not in parse_channels(args.channels):
        raise OptionError(
            f"--stats ranks channels for --channels top:K:STAT; got --channels {args.channels}"
        )
    results = visualize(
        loaded,
        inputs,
        out=args.out,
        layers=args.layers,
        types=args.types,
        containers=args.containers,
        grid=grid,
        save_arrays=args.save_arrays,
        sample=args.sample,
        progress=show_progress(args),
        report=args.report,
        channel_stats=args.stats,
        device=args.device,
        dtype=args.dtype,
        attention_patch=parse_patch(args.attention_patch),
        report_budget=args.report_budget,
        cams=run_cam_options(args),
        filters=args.filters,
    )
    for result in results:
        drawn = sum(1 for r in result.records if r.image)
        skipped = len(result.records) - drawn
        print(
            f"{result.out_dir}: {drawn} pictures, {skipped} records not drawn (reasons in "
            f"{MANIFEST})",
            file=out,
        )
    for result in results:
        found = result.manifest.get("prediction")
        if found:
            for line in prediction_lines(found):
                print(line, file=out)
    for result in results:
        data = result.manifest.get("report_data") or {}
        if data.get("reduced_records"):
            print(f"{result.out_dir}: note: {result.warnings[0]}", file=out)
    print_closing(loaded, args.out, args.out, out)
    if args.report:
        # The last line: the page to open (for several inputs, the one that links them all).
        print(f"report: {(Path(args.out) / 'index.html').resolve()}", file=out)
    return 0


COMMAND = Command(
    "draw the selected layers of a model for images (default)",
    _add_options,
    _execute,
    signed_values=("--range",),  # LO may be negative: --range -1,1
)
