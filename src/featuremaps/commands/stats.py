"""The ``stats`` command: per-channel statistics of every layer over a data set, to files.

Wires the data-set stage together (inputs → model → capture → layouts → running statistics →
charts → manifest → io): :mod:`featuremaps.dataset` computes, this module writes ``stats.csv``,
``stats.parquet`` (with the ``parquet`` extra), ``summary.json`` and the per-layer charts.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from featuremaps._errors import NonFiniteWarning, OptionError
from featuremaps.commands.cli_common import (
    Command,
    add_device_options,
    add_engine_options,
    add_layer_options,
    add_loader_options,
    add_model_options,
    add_out_option,
    add_quiet_option,
    check_data_options,
    engine_from_args,
    engine_line,
    load_model_with_preprocessing,
    print_closing,
    show_progress,
)
from featuremaps.commands.common import nonfinite_message, place_model
from featuremaps.dataset import DatasetStats
from featuremaps.datastats import RunningStats
from featuremaps.engine import EngineOptions, ModelSpec
from featuremaps.inputs import Preprocessing, expected_channels
from featuremaps.io import OutputFolder, parquet_available, safe_filename
from featuremaps.manifest import SUMMARY, header
from featuremaps.models import LoadedModel
from featuremaps.stats import RANKABLE

__all__ = ["COMMAND", "STATS_CSV", "STATS_PARQUET", "collect_stats"]

STATS_CSV = "stats.csv"
STATS_PARQUET = "stats.parquet"


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
    parquet: bool | None = None,
    progress: bool = False,
    device: str | torch.device | None = None,
    dtype: str | None = None,
    engine: EngineOptions | str | None = None,
) -> dict[str, Any]:
    """Per-channel statistics of the selected layers over a data set, written to ``out``.

    ``data`` names files, folders (searched recursively) or globs. Writes:

    - ``stats.csv`` and ``stats.parquet``: the same table, one row per layer and channel, with
      ``dead`` and a per-layer rank by ``rank_by`` (the Parquet file keeps the column types).
      ``parquet`` None writes the Parquet file when pyarrow is installed (the ``parquet``
      extra), True requires it, False skips it; the summary's ``files`` says what was written;
    - ``summary.json``: inputs read and not read, images/s, and per layer its dead channels,
      with ``duplicates`` the channel pairs ``[i, j, r]`` whose correlation has ``|r|`` at
      least that much (``r`` signed; the rule is in ``duplicates``), its histogram of all
      values (channels pooled; exact ``edges`` and ``counts`` of the finite values and the
      ``nonfinite`` count) and, with ``plots``, the names of its two plot files;
    - with ``plots`` (the default), per layer ``plots/NNNN_<name>.hist.png`` (that histogram,
      counts on a log scale) and ``plots/NNNN_<name>.ranked.png`` (its channels sorted by
      ``rank_by``, largest first, dead channels in red); ``NNNN_<name>`` is the layer's position
      and its name made safe for any filesystem (:func:`featuremaps.io.safe_filename`).

    ``device`` and ``dtype`` are as for :func:`featuremaps.visualize` (``None``: where the model
    is, float32); on CUDA the reader pins its batches so that reading overlaps the model. The
    summary's ``compute`` says where it ran.

    ``engine`` (``"local"``, ``"ray"`` or :class:`featuremaps.engine.EngineOptions`) picks where
    the batches run; ``workers`` stays the local engine's reader processes. The ray engine's
    workers load the model from its spec (a model object has none; ``device=None`` means
    ``auto`` there: a worker with a GPU uses it) and give the same numbers:
    the summary's ``engine`` says how many workers ran, how many items were retried and where
    the time went. Returns the summary.
    """
    from tqdm import tqdm

    from featuremaps.dataset import (
        check_image_model,
        compute_dataset_stats,
        scan_inputs,
        stats_rows,
    )

    write_parquet = parquet_available() if parquet is None else parquet
    if parquet and not parquet_available():
        raise OptionError(
            "stats.parquet needs pyarrow, which is not installed; pip install "
            "'featuremaps[parquet]', or leave out --parquet to write stats.csv only"
        )
    statistics = list(RunningStats(1).result())
    if rank_by not in statistics:
        raise OptionError(
            f"rank_by={rank_by!r} is not a per-channel statistic; expected one of "
            f"{', '.join(statistics)}"
        )
    if not near_zero >= 0:  # also refuses NaN
        raise OptionError(
            f"near-zero threshold {near_zero:g} is not valid; expected 0 or more, e.g. 1e-6"
        )
    if duplicates is not None and not 0 <= duplicates <= 1:
        raise OptionError(
            f"duplicate threshold {duplicates:g} can never be reached by a correlation's size; "
            "expected a number from 0 to 1, e.g. 0.95"
        )
    options = _engine_options(engine)
    loaded, placement = place_model(model, device, dtype)
    spec = _worker_spec(loaded, options, device, dtype)
    check_image_model(loaded.model, "stats")
    scanned = scan_inputs(data)
    paths = scanned.paths
    if preprocessing is None:
        preprocessing = loaded.input_preprocessing()
    first = expected_channels(loaded.model)
    folder = OutputFolder(out, loaded.mark)  # refuses a bad --out before the long run, not after
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
            model_label=loaded.cli_spec,
            placement=placement,
            engine=options,
            spec=spec,
            status=lambda line: bar.set_postfix_str(line, refresh=False),
        )
        written = time.perf_counter()
        rows = stats_rows(result, rank_by)
        folder.write_csv(STATS_CSV, rows)
        if write_parquet:
            folder.write_parquet(STATS_PARQUET, rows)
        plot_files: dict[str, dict[str, str]] | None = None
        if plots:
            from featuremaps.render.plots import Charts

            # One Charts: its figures are reused per layer.
            charts, plot_files = Charts(stamp=loaded.stamp), {}
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
        summary["inputs"]["skipped"] = scanned.skipped
        report = result.engine
        summary["compute"] = (
            report.compute if report is not None and report.compute else placement.describe()
        )
        summary["files"] = [STATS_CSV, *([STATS_PARQUET] if write_parquet else [])]
        bad = nonfinite_message(
            [name for name, stats in result.layers.items() if stats.nonfinite.any()],
            "they are counted per channel in stats.csv's 'nonfinite' (a fraction of all values) "
            "and left out of the other statistics",
        )
        summary["warnings"] = [] if bad is None else [bad]
        if report is not None:
            report.seconds["write"] = time.perf_counter() - written
            summary["engine"] = report.describe()
        folder.write_json(SUMMARY, summary)
    if bad is not None:
        warnings.warn(NonFiniteWarning(bad), stacklevel=2)
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
    from featuremaps.dataset import DUPLICATES_RULE, near_duplicates

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
        **header(loaded.describe()),
        "preprocessing": preprocessing.describe(),
        "inputs": {
            "found": len(paths),
            "read": result.images,
            "not_read": [{"path": p, "reason": why} for p, why in result.failed],
        },
        "images_per_second": result.images_per_second,
        "near_zero": near_zero,
        "duplicates": (
            None if duplicates is None else {"threshold": duplicates, "rule": DUPLICATES_RULE}
        ),
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


def _engine_options(engine: EngineOptions | str | None) -> EngineOptions:
    return engine if isinstance(engine, EngineOptions) else EngineOptions(engine or "local")


def _worker_spec(
    loaded: LoadedModel,
    options: EngineOptions,
    device: str | torch.device | None,
    dtype: str | None,
) -> ModelSpec | None:
    """What remote workers load the model from (None for the local engine)."""
    if options.name == "local":
        return None
    return ModelSpec.from_loaded(loaded, "auto" if device is None else str(device), dtype)


# -- the command line ---------------------------------------------------------------------------


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="+", metavar="DATA", help="files, folders or globs")
    add_model_options(p)
    add_device_options(p)
    add_out_option(p, "featuremaps-stats")
    add_layer_options(p)
    add_loader_options(p)
    add_engine_options(p)
    p.add_argument(
        "--near-zero", type=float, default=1e-6, help="|x| at most this counts as near zero"
    )
    p.add_argument(
        "--duplicates",
        type=float,
        metavar="R",
        help="also list the channel pairs of a layer whose correlation r over the data has "
        "|r| >= R, with r's sign kept (costs C^2 per value)",
    )
    p.add_argument(
        "--rank-by", choices=RANKABLE, default="absmean",
        help="statistic that ranks channels within a layer (default: absmean)",
    )  # fmt: skip
    p.add_argument(
        "--no-plots", dest="plots", action="store_false",
        help="skip the per-layer histogram and ranked-channel charts (plots/)",
    )  # fmt: skip
    p.add_argument(
        "--parquet", action="store_true", default=None,
        help="require stats.parquet (needs the 'parquet' extra; by default it is written when "
        "pyarrow is installed)",
    )  # fmt: skip
    add_quiet_option(p)


def _execute(args: argparse.Namespace, out: TextIO) -> int:
    check_data_options(args)
    loaded, pre = load_model_with_preprocessing(args, args.model, out)
    summary = collect_stats(
        loaded,
        args.data,
        out=args.out,
        layers=args.layers,
        types=args.types,
        preprocessing=pre,
        batch_size=args.batch_size,
        workers=args.workers,
        near_zero=args.near_zero,
        duplicates=args.duplicates,
        rank_by=args.rank_by,
        plots=args.plots,
        parquet=args.parquet,
        progress=show_progress(args),
        device=args.device,
        dtype=args.dtype,
        engine=engine_from_args(args),
    )
    inputs = summary["inputs"]
    for item in inputs["not_read"]:
        print(f"not read: {item['path']}: {item['reason']}", file=out)
    for reason, count in inputs["skipped"].items():
        print(f"skipped: {count} file{'s' if count != 1 else ''}: {reason}", file=out)
    dead = sum(len(layer["dead"]) for layer in summary["layers"])
    print(
        f"{inputs['read']} of {inputs['found']} inputs read at "
        f"{summary['images_per_second']:.1f} images/s; {len(summary['layers'])} layers, "
        f"{dead} dead channels",
        file=out,
    )
    print(engine_line(summary["engine"]), file=out)
    print_closing(loaded, args.out, Path(args.out) / STATS_CSV, out)
    return 0


COMMAND = Command(
    "per-channel statistics of every layer over a folder or list of images",
    _add_options,
    _execute,
)
