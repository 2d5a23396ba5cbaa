"""Statistics of every layer over a data set: images in, per-channel numbers out.

Inputs → model → capture → :mod:`featuremaps.datastats`, batch after batch. Images are read by a
torch ``DataLoader`` (worker processes, batching); a file that cannot be read is counted, named
and skipped, and only a data set where nothing could be read is an error. Records are consumed
while their module runs (no copies) and folded into running statistics and running histograms
(all values of a layer, channels pooled), so memory does not grow with the number of images.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from featuremaps._errors import FeaturemapsError, InputError
from featuremaps.capture import LayerRecord, capture
from featuremaps.datastats import RunningHistogram, RunningStats
from featuremaps.devices import Placement, model_device
from featuremaps.engine import EngineOptions, EngineReport, ModelJob, ModelSpec
from featuremaps.inputs import (
    IMAGE_SUFFIXES,
    Preprocessing,
    expected_axes,
    load_input,
    readable_suffixes,
)
from featuremaps.io import parquet_available
from featuremaps.layouts import channels_first
from featuremaps.stats import RANKABLE

__all__ = [
    "DUPLICATES_RULE",
    "DatasetStats",
    "FoundInputs",
    "SavedStats",
    "StatsJob",
    "StatsPartial",
    "batch_paths",
    "check_image_model",
    "compute_dataset_stats",
    "find_inputs",
    "fold_stats",
    "read_batch",
    "read_stats",
    "scan_inputs",
]


@dataclass(frozen=True)
class FoundInputs:
    """The input files a data argument names, and the files it passed over, counted by reason."""

    paths: list[Path]
    skipped: dict[str, int]


def scan_inputs(data: Sequence[str]) -> FoundInputs:
    """Files named by ``data``: files as given, folders searched recursively, globs expanded.

    From folders and globs, only files with a suffix that ``featuremaps run`` reads are taken
    (:func:`featuremaps.inputs.readable_suffixes`: every format Pillow decodes, and ``.npy``);
    every other file is counted in ``skipped`` under its reason. Paths are sorted within each
    item and free of duplicates.
    """
    suffixes = set(readable_suffixes())
    found: dict[Path, None] = {}
    skipped: dict[str, int] = {}
    for item in data:
        path = Path(item)
        if path.is_dir():
            candidates = sorted(p for p in path.rglob("*") if p.is_file())
        elif any(ch in item for ch in "*?["):
            candidates = sorted(Path(p) for p in glob.glob(item, recursive=True))
        else:
            candidates = [path]
        for p in candidates:
            if p in found:
                continue
            if p != path and p.is_dir():
                continue  # a glob's folders: their files are for a recursive glob to name
            if p != path and p.suffix.lower() not in suffixes:
                reason = (
                    f"suffix '{p.suffix.lower()}' is not an image or .npy"
                    if p.suffix
                    else ("no suffix (not an image or .npy)")
                )
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            found[p] = None
    if not found:
        passed = f"; passed over {sum(skipped.values())} other files" if skipped else ""
        raise InputError(
            f"no input files found in {', '.join(repr(d) for d in data)}{passed}; expected "
            f"image files ({', '.join(IMAGE_SUFFIXES)}, or any other format Pillow reads), .npy "
            f"arrays, folders holding them, or a glob like 'data/**/*.png'"
        )
    return FoundInputs(list(found), skipped)


def find_inputs(data: Sequence[str]) -> list[Path]:
    """The paths of :func:`scan_inputs`."""
    return scan_inputs(data).paths


def check_image_model(model: nn.Module, command: str) -> None:
    """Refuse a model whose first layer is 1-D or 3-D: ``command`` (``stats``, ``ablate``)
    reads every file as an image or a 2-D array, so such a model is fed from ``run`` only."""
    axes = expected_axes(model)
    if axes is None or axes[0] == 2:
        return
    count, name, kind = axes
    layer = f"first layer '{name}'" if name else "first layer"
    takes = "signals (C, L)" if count == 1 else "volumes (C, D, H, W) or clips"
    raise InputError(
        f"{command} reads every file as an image or a 2-D array, but the model's {layer} "
        f"({kind}) is {count}-D and takes {takes}; 1-D and 3-D models are fed from "
        f"'featuremaps run' (or fm.visualize) only"
    )


class _Files(torch.utils.data.Dataset[tuple[torch.Tensor | None, str, str | None]]):
    """Each item: (tensor or None, path, reason it could not be read or None)."""

    def __init__(self, paths: list[Path], channels: int | None, pre: Preprocessing) -> None:
        self.paths, self.channels, self.pre = paths, channels, pre

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, str, str | None]:
        path = self.paths[i]
        try:
            item = load_input(path, channels=self.channels, preprocessing=self.pre)
        except FeaturemapsError as exc:
            return None, str(path), str(exc)
        return item.tensor[0], str(path), None


def _collate(
    items: list[tuple[torch.Tensor | None, str, str | None]],
) -> tuple[torch.Tensor | None, list[str], list[tuple[str, str]]]:
    tensors = [t for t, _, _ in items if t is not None]
    paths = [p for t, p, _ in items if t is not None]
    failed = [(p, why) for t, p, why in items if t is None and why is not None]
    return (torch.stack(tensors) if tensors else None), paths, failed


def make_loader(
    paths: Sequence[Path],
    channels: int | None,
    preprocessing: Preprocessing,
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader[Any]:
    """A loader of ``(batch or None, paths read, [(path, why not read)])`` over ``paths``.

    ``pin_memory`` (for a CUDA model) has the batches put in page-locked memory, so that their
    copy to the GPU does not block the host: the reader and the model then overlap.

    Without a fixed-size preprocessing (a crop or an ``HxW`` resize), images of different sizes
    cannot share a batch, so each is its own batch. The same holds when ``.npy`` arrays meet the
    model's own preprocessing: an array that is already preprocessed keeps its own size.
    """
    fixed = _fixed_size(paths, preprocessing)
    return torch.utils.data.DataLoader(
        _Files(list(paths), channels, preprocessing),
        batch_size=batch_size if fixed else 1,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
    )


def batch_paths(
    paths: Sequence[Path], preprocessing: Preprocessing, batch_size: int
) -> list[list[Path]]:
    """``paths`` cut into the batches :func:`make_loader` reads (every engine reads the same
    batches, so their partials are the same): ``batch_size`` at a time with a fixed-size
    preprocessing, else one at a time (see :func:`make_loader`)."""
    size = batch_size if _fixed_size(paths, preprocessing) else 1
    return [list(paths[i : i + size]) for i in range(0, len(paths), size)]


def _fixed_size(paths: Sequence[Path], preprocessing: Preprocessing) -> bool:
    return preprocessing.final_size() is not None and not (
        preprocessing.from_model and any(Path(p).suffix.lower() == ".npy" for p in paths)
    )


def read_batch(
    paths: Sequence[Path], channels: int | None, preprocessing: Preprocessing
) -> tuple[torch.Tensor | None, list[str], list[tuple[str, str]]]:
    """One batch as :func:`make_loader` gives it: ``(stacked tensors or None, paths read,
    [(path, why not read)])``."""
    files = _Files(list(paths), channels, preprocessing)
    return _collate([files[i] for i in range(len(files))])


@dataclass
class DatasetStats:
    """Running statistics and histograms per record name, and an account of the inputs."""

    layers: dict[str, RunningStats] = field(default_factory=dict)
    histograms: dict[str, RunningHistogram] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    images: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    engine: EngineReport | None = None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def __repr__(self) -> str:
        return (
            f"DatasetStats({len(self.layers)} layers, {self.images} images, "
            f"{len(self.failed)} not read, {self.images_per_second:.1f} images/s)"
        )


def _channels_first(record: LayerRecord) -> np.ndarray | torch.Tensor | None:
    """The record as (N, C, ...) float values, or None when its layout has no channel axis: a
    tensor left on a CUDA device (the statistics are reduced there), else a host array."""
    if record.tensor.is_complex():
        return None
    t = channels_first(record.layout_info, record.tensor)
    if t is None:
        return None
    if t.device.type == "cuda":
        return t.detach()
    return t.detach().float().cpu().numpy()


@dataclass
class StatsPartial:
    """The statistics of one batch: what a worker returns, keyed by the batch's position."""

    layers: dict[str, tuple[RunningStats, RunningHistogram]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    images: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class StatsJob(ModelJob):
    """``stats`` as a :class:`featuremaps.engine.Job`: an item is a list of paths (one batch),
    read with the local readers and reduced to a :class:`StatsPartial`.

    ``model`` and ``placement`` are used where given (the local engine) and never pickled; a
    worker elsewhere loads the model from ``spec``.
    """

    spec: ModelSpec | None
    channels: int | None
    preprocessing: Preprocessing
    layers: str | Sequence[str] | None = None
    types: str | Sequence[str] | None = None
    near_zero: float = 1e-6
    correlations: bool = False
    bins: int = 128
    model_label: str | None = None
    model: nn.Module | None = None
    placement: Placement | None = None

    def read(self, item: Sequence[Path]) -> Any:
        return read_batch(item, self.channels, self.preprocessing)

    def compute(self, data: Any) -> StatsPartial:
        batch, batch_paths, failed = data
        out = StatsPartial(failed=list(failed))
        if batch is None:
            return out
        assert self.model is not None and self.placement is not None  # set by open()

        def consume(record: LayerRecord) -> None:
            values = _channels_first(record)
            if values is None:
                return
            found = out.layers.get(record.name)
            if found is None:
                found = out.layers[record.name] = (
                    RunningStats(
                        values.shape[1], near_zero=self.near_zero, correlations=self.correlations
                    ),
                    RunningHistogram(self.bins),
                )
                out.types[record.name] = record.module_type
            # Reads the live output before the forward pass goes on; one sweep for both.
            found[0].update(values, histogram=found[1])

        with self.placement.autocast():
            capture(
                self.model, self.placement.inputs(batch), layers=self.layers, types=self.types,
                on_record=consume, copy=False, model_label=self.model_label,
            )  # fmt: skip
        out.images = len(batch_paths)
        return out

    def describe_compute(self) -> dict[str, Any] | None:
        return None if self.placement is None else self.placement.describe()


def fold_stats(
    total: DatasetStats, partial: StatsPartial, near_zero: float, correlations: bool
) -> None:
    """Merge one batch's partial into ``total`` (the same for every engine)."""
    total.failed.extend(partial.failed)
    total.images += partial.images
    for name, (stats, histogram) in partial.layers.items():
        if name not in total.layers:
            total.layers[name] = RunningStats(
                stats.channels, near_zero=near_zero, correlations=correlations
            )
            total.histograms[name] = RunningHistogram(histogram.bins)
            total.types[name] = partial.types[name]
        total.layers[name].merge(stats)
        total.histograms[name].merge(histogram)


def compute_dataset_stats(
    model: nn.Module,
    paths: Sequence[Path],
    *,
    channels: int | None,
    preprocessing: Preprocessing,
    layers: str | Sequence[str] | None = None,
    types: str | Sequence[str] | None = None,
    batch_size: int = 16,
    workers: int = 2,
    near_zero: float = 1e-6,
    correlations: bool = False,
    bins: int = 128,
    progress: Callable[[int], object] | None = None,
    model_label: str | None = None,
    placement: Placement | None = None,
    engine: EngineOptions | None = None,
    spec: ModelSpec | None = None,
    status: Callable[[str], object] | None = None,
) -> DatasetStats:
    """Per-channel statistics and a histogram (at most ``bins`` bins) of the selected layers
    over every readable input in ``paths``. ``model_label`` names the model in error messages
    (its spec; default its class name).

    Without a fixed-size preprocessing (a crop or an ``HxW`` resize), images of different sizes
    cannot share a batch, so each is its own batch. ``placement`` says where the model runs and
    in which precision (default: where its weights are, float32); batches go there, and each
    record comes to the host once for the running statistics.

    ``engine`` picks where the batches run (:mod:`featuremaps.engine`; default local, with
    ``workers`` reader processes); the ray engine's workers load the model from ``spec``. Each
    batch is reduced to a partial and the partials are merged in batch order, so both engines
    give the same numbers. ``status`` gets the engine's progress line (workers, retries).
    """
    from featuremaps.engine import run_job

    RunningHistogram(bins)  # refuses a bad bin count now rather than inside the first hook
    placement = placement or Placement(model_device(model))
    cuda = placement.device.type == "cuda"
    remote = engine is not None and engine.name != "local"
    job = StatsJob(
        spec, channels, preprocessing, layers, types, near_zero, correlations, bins,
        model_label, None if remote else model, None if remote else placement,
    )  # fmt: skip
    out = DatasetStats()

    def fold(_key: int, partial: StatsPartial) -> None:
        fold_stats(out, partial, near_zero, correlations)
        if progress is not None:
            progress(partial.images + len(partial.failed))

    report = run_job(
        job, batch_paths(paths, preprocessing, batch_size), fold, engine, readers=workers,
        pin_memory=cuda, progress=None if status is None else (lambda _n, line: status(line)),
    )  # fmt: skip
    out.seconds = report.seconds["wall"]
    out.engine = report
    if out.images == 0:
        first = out.failed[0][1] if out.failed else "no inputs"
        raise InputError(
            f"none of the {len(paths)} inputs could be read (first: {first}); check the files"
        )
    return out


def stats_rows(result: DatasetStats, rank_by: str = "absmean") -> list[dict[str, Any]]:
    """One row per layer and channel, with a per-layer rank by ``rank_by`` (1 = largest) and
    ``dead`` marking channels that were constant over every input."""
    rows: list[dict[str, Any]] = []
    for name, stats in result.layers.items():
        numbers = stats.result()
        key = np.nan_to_num(numbers[rank_by], nan=-np.inf)
        order = np.argsort(-key, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(1, len(order) + 1)
        for c in range(stats.channels):
            row: dict[str, Any] = {"layer": name, "type": result.types[name], "channel": c}
            row.update({k: v[c].item() for k, v in numbers.items()})
            row["dead"] = bool(numbers["std"][c] == 0)
            row[f"rank_{rank_by}"] = int(rank[c])
            rows.append(row)
    return rows


DUPLICATES_RULE = (
    "pairs [channel, channel, r] whose Pearson correlation r over the data has |r| >= threshold; "
    "r keeps its sign (near -1: one channel is the other upside down)"
)


def near_duplicates(stats: RunningStats, threshold: float) -> list[tuple[int, int, float]]:
    """Channel pairs ``(i, j, r)`` whose correlation ``r`` over the data has ``|r| >= threshold``;
    ``r`` keeps its sign (see :data:`DUPLICATES_RULE`)."""
    corr = stats.correlation()
    i, j = np.triu_indices(stats.channels, k=1)
    values = corr[i, j]
    keep = np.abs(np.nan_to_num(values)) >= threshold
    pairs = zip(i[keep], j[keep], values[keep], strict=True)
    return [(int(a), int(b), float(v)) for a, b, v in pairs]


@dataclass(frozen=True)
class SavedStats:
    """Per-channel statistics read back from a ``stats.csv`` or ``stats.parquet`` file.

    ``layers`` maps record name → statistic name → one value per channel (channel order).
    """

    path: Path
    layers: dict[str, dict[str, np.ndarray]]

    def __repr__(self) -> str:
        return f"SavedStats('{self.path}', {len(self.layers)} layers)"

    def values(self, layer: str, stat: str) -> np.ndarray | None:
        """The statistic of every channel of ``layer``, or None when the file lacks the layer."""
        found = self.layers.get(layer)
        return None if found is None else found[stat]


def read_stats(path: str | Path) -> SavedStats:
    """Read a statistics table written by ``featuremaps stats`` (CSV or Parquet).

    Raises:
        InputError: the file is missing, unreadable, or lacks the ``layer``/``channel`` columns or
            a statistic column; the message names the file and what was expected.
    """
    path = Path(path)
    expected = "a stats.csv or stats.parquet written by 'featuremaps stats'"
    if path.suffix.lower() == ".parquet" and not parquet_available():
        raise InputError(
            f"'{path}' is a Parquet file, which needs pyarrow; pip install "
            "'featuremaps[parquet]', or pass the stats.csv written beside it"
        )
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            columns: dict[str, list[Any]] = pq.read_table(path).to_pydict()
        else:
            import csv

            with path.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
            columns = {key: [row[key] for row in rows] for key in (rows[0] if rows else {})}
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(
            f"cannot read statistics file '{path}': {exc}; expected {expected}"
        ) from None
    except Exception as exc:  # pyarrow's own errors (ArrowInvalid) are not OSErrors
        raise InputError(
            f"cannot read statistics file '{path}': {type(exc).__name__}; expected {expected}"
        ) from None
    missing = [c for c in ("layer", "channel", *RANKABLE) if c not in columns]
    if missing:
        raise InputError(
            f"statistics file '{path}' has no column {', '.join(missing)}; expected {expected}"
        )
    layers: dict[str, dict[str, np.ndarray]] = {}
    try:
        names = [str(v) for v in columns["layer"]]
        channel = np.array([int(v) for v in columns["channel"]])
        numbers = {s: np.array([float(v) for v in columns[s]]) for s in RANKABLE}
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"statistics file '{path}' holds a value that is not a number: {exc}"
        ) from None
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name, []).append(i)
    for name, members in groups.items():
        rows_of = np.array(members)
        order = np.argsort(channel[rows_of], kind="stable")
        chans = channel[rows_of][order]
        if not np.array_equal(chans, np.arange(len(chans))):
            raise InputError(
                f"statistics file '{path}' lists channels {chans[:5].tolist()}... for '{name}'; "
                "expected every channel 0..C-1 once"
            )
        layers[name] = {s: v[rows_of][order] for s, v in numbers.items()}
    if not layers:
        raise InputError(f"statistics file '{path}' holds no rows; expected {expected}")
    return SavedStats(path, layers)
