"""Stitching: run the model tile by tile and stream each tile's core cells to disk.

The heart of a slide run (reader → tissue → forward → **stitching** → pyramids → writers). For
every tile with tissue, the window (core + halos, see :mod:`featuremaps.slide.plan`) is read,
fed once, and for each layer only the core cells are kept. They go straight to their place in
on-disk arrays (:class:`featuremaps.io.DiskArray`): the selected channels, and a PCA-3 summary
projected on **one global basis** (fitted before the run on a sample of tissue tiles, so colours
mean the same everywhere; a per-tile PCA flips signs from tile to tile). Per-channel statistics
of all channels are merged as in ``featuremaps stats`` (:class:`featuremaps.datastats.RunningStats`)
and per-region statistics as in :mod:`featuremaps.slide.regions`. Nothing the size of the slide
is ever in memory.

After each tile the progress (which tiles are done, the merged statistics) is saved in the work
folder, so an interrupted run resumes where it stopped. A window that cannot be read is read
once more; if it fails again the tile is named in the results and skipped, and the run goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from featuremaps.datastats import RunningStats
from featuremaps.engine import EngineReport, ModelSpec
from featuremaps.io import DiskArray, WorkFolder
from featuremaps.slide.forward import SlideLayer, TileForward, to_input
from featuremaps.slide.plan import LayerPlacement, Tile, TilePlan
from featuremaps.slide.readers import SlideReader
from featuremaps.slide.regions import Region, RegionStats, cell_weights
from featuremaps.slide.tissue import TissueMask

__all__ = [
    "LayerMaps",
    "SlideMaps",
    "SlideTileJob",
    "TileCores",
    "compute_maps",
    "crop_core",
    "window_error",
]


@dataclass
class LayerMaps:
    """One layer's results: where its cells sit, the stored channels and PCA-3 on disk, and
    streamed statistics."""

    layer: SlideLayer
    place: LayerPlacement
    selected: tuple[int, ...]
    values: DiskArray
    pca: DiskArray
    stats: RunningStats
    pca_stats: RunningStats
    positive: np.ndarray
    basis: np.ndarray  # (C, 3): the global PCA basis
    center: np.ndarray  # (C,): the mean it is centred on
    explained: np.ndarray  # (3,): fraction of the variance of the fit sample per component
    regions: list[RegionStats] = field(default_factory=list)


@dataclass
class SlideMaps:
    """Everything a slide run computed; ``done`` marks the tiles whose cells were written."""

    plan: TilePlan
    level: int
    downsample: float
    layers: list[LayerMaps]
    tissue: np.ndarray  # (rows, cols) bool: tiles with tissue
    done: np.ndarray  # (rows, cols) bool
    failed: list[dict[str, Any]]
    computed: int  # tiles computed by this call (not counting resumed ones)
    resumed: int  # tiles found finished in the work folder
    seconds: float
    fit_tiles: list[tuple[int, int]]
    engine: EngineReport | None = None  # set when the tiles ran on another engine

    def valid(self, maps: LayerMaps, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """Which cells ``[rows) x [cols)`` of a layer were computed (bool, ``(h, w)``)."""
        sy, sx = maps.place.stride
        ty = np.minimum(np.arange(*rows) // (self.plan.y.core // sy), self.plan.y.count - 1)
        tx = np.minimum(np.arange(*cols) // (self.plan.x.core // sx), self.plan.x.count - 1)
        valid: np.ndarray = self.done[np.ix_(ty, tx)]
        return valid

    def read(
        self, maps: LayerMaps, kind: str, rows: tuple[int, int], cols: tuple[int, int]
    ) -> np.ndarray:
        """A block ``(h, w, k)`` of stored channels (``values``) or PCA (``pca``); NaN where no
        cell was computed (background, failed tiles)."""
        block = (maps.values if kind == "values" else maps.pca).read(rows, cols)
        block[~self.valid(maps, rows, cols)] = np.nan
        return block


def _stats_state(prefix: str, stats: RunningStats) -> dict[str, np.ndarray]:
    return {
        f"{prefix}{f.name}": np.asarray(getattr(stats, f.name)) for f in fields(stats) if not f.init
    }


def _restore_stats(prefix: str, stats: RunningStats, state: dict[str, np.ndarray]) -> None:
    for f in fields(stats):
        if not f.init:
            value = state[f"{prefix}{f.name}"]
            setattr(stats, f.name, int(value) if value.ndim == 0 else value.copy())


def _read_window(reader: SlideReader, level: int, tile: Tile, retries: int) -> np.ndarray:
    """The tile's window, read again up to ``retries`` times when it fails."""
    for attempt in range(retries + 1):
        try:
            return reader.read(level, tile.window[0], tile.window[1])
        except Exception:
            # Codec libraries (libjpeg via imagecodecs, OpenSlide) report a damaged tile with
            # their own exception types; any of them means "this window cannot be read". The
            # caller names the tile and goes on, so the finished tiles are never lost.
            if attempt == retries:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _fit_basis(
    forward: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    sample: Sequence[Tile],
    plan: TilePlan,
    reader: SlideReader,
    level: int,
    layers: Sequence[SlideLayer],
    normalize: tuple[Sequence[float] | None, Sequence[float] | None],
) -> tuple[
    dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    dict[tuple[int, int], dict[str, torch.Tensor]],
]:
    """The global PCA-3 basis of each layer from the core cells of ``sample`` tiles, and the
    sample's maps (kept so that the main pass does not compute those tiles again)."""
    fits = {layer.name: RunningStats(layer.channels, correlations=True) for layer in layers}
    kept: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    for tile in sample:
        try:
            window = _read_window(reader, level, tile, 1)
        except Exception:  # any decoder error: see _read_window
            continue  # the main pass reads it again and names it in the results
        maps = forward(to_input(window, *normalize))
        kept[tile.index] = maps
        for place in plan.layers:
            sy, sx, _, _ = plan.core_cells(tile, place)
            core = maps[place.name][:, sy, sx]
            fits[place.name].update(core.reshape(1, core.shape[0], -1).numpy())
    out = {}
    for layer in layers:
        stats = fits[layer.name]
        c = layer.channels
        if stats.joint_count < 2:
            basis = np.zeros((c, 3))
            basis[np.arange(min(3, c)), np.arange(min(3, c))] = 1.0
            out[layer.name] = (basis, np.zeros(c), np.zeros(3))
            continue
        cov = stats.comoment / (stats.joint_count - 1)
        values, vectors = np.linalg.eigh(cov)
        order = np.argsort(values)[::-1][:3]
        basis = np.zeros((c, 3))
        basis[:, : len(order)] = vectors[:, order]
        # A sign convention makes the basis reproducible: the largest loading is positive.
        for k in range(basis.shape[1]):
            j = int(np.argmax(np.abs(basis[:, k])))
            if basis[j, k] < 0:
                basis[:, k] *= -1
        total = float(values.clip(min=0).sum()) or 1.0
        explained = np.zeros(3)
        explained[: len(order)] = values[order].clip(min=0) / total
        out[layer.name] = (basis, stats.joint_mean.copy(), explained)
    return out, kept


def _region_cells(
    plan: TilePlan, tile: Tile, place: LayerPlacement, downsample: float, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    """Level-0 centres ``(xs, ys)`` (2-D) of a tile's core cells and their bounding box."""
    _, _, r0, c0 = plan.core_cells(tile, place)
    h, w = shape
    rows = np.arange(r0, r0 + h)
    cols = np.arange(c0, c0 + w)
    ys = (rows * place.stride[0] + place.offset[0] + 0.5) * downsample
    xs = (cols * place.stride[1] + place.offset[1] + 0.5) * downsample
    gx, gy = np.meshgrid(xs, ys)
    half_y = place.stride[0] * downsample / 2
    half_x = place.stride[1] * downsample / 2
    bbox = (xs[0] - half_x, ys[0] - half_y, xs[-1] + half_x, ys[-1] + half_y)
    return gx, gy, bbox


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def compute_maps(
    *,
    reader: SlideReader,
    level: int,
    plan: TilePlan,
    layers: Sequence[SlideLayer],
    selected: dict[str, tuple[int, ...]],
    forward: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    normalize: tuple[Sequence[float] | None, Sequence[float] | None],
    tissue: TissueMask,
    work: WorkFolder,
    regions: Sequence[Region] = (),
    coverage: str = "centre",
    pca_tiles: int = 8,
    retries: int = 1,
    progress: bool = False,
    on_tile: Callable[[int, int], None] | None = None,
    remote: RemoteTiles | None = None,
) -> SlideMaps:
    """Compute every tissue tile of ``plan`` (see the module docstring).

    ``on_tile(done, total)`` is called after each tile (the tests use it to interrupt a run).
    ``remote(tiles, fold, status)`` computes tiles elsewhere (the ray engine, see
    :class:`SlideTileJob`) and calls ``fold(key, TileCores)`` in tile order; the cores are
    stored here exactly as a local tile's, in the same order, so the results are the same.
    """
    start_time = time.perf_counter()
    ny, nx = plan.grid
    downsample = reader.levels[level].downsample
    tissue_grid = np.zeros((ny, nx), dtype=bool)
    for tile in plan.tiles():
        tissue_grid[tile.row, tile.col] = tissue.covers(*tile.core)
    todo = [plan.tile(r, c) for r, c in zip(*np.nonzero(tissue_grid), strict=True)]
    state = work.load_state()
    if state is not None:
        fit_index = [tuple(int(v) for v in rc) for rc in state["fit_tiles"]]
    else:
        picks = np.unique(np.linspace(0, len(todo) - 1, min(len(todo), pca_tiles)).round())
        fit_index = [todo[int(i)].index for i in picks] if todo else []
    places = {p.name: p for p in plan.layers}
    outputs: list[LayerMaps] = []
    computed_early: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    if state is None:
        bases, computed_early = _fit_basis(
            forward, [plan.tile(*rc) for rc in fit_index], plan, reader, level, layers, normalize
        )
    for i, layer in enumerate(layers):
        place = places[layer.name]
        rows, cols = place.cells
        chosen = selected[layer.name]
        prefix = f"l{i}."
        if state is not None:
            basis = state[prefix + "basis"]
            center = state[prefix + "center"]
            explained = state[prefix + "explained"]
        else:
            basis, center, explained = bases[layer.name]
        maps = LayerMaps(
            layer=layer,
            place=place,
            selected=chosen,
            values=work.disk_array(f"layer{i}.values", (rows, cols, len(chosen)), np.float32),
            pca=work.disk_array(f"layer{i}.pca", (rows, cols, 3), np.float32),
            stats=RunningStats(layer.channels),
            pca_stats=RunningStats(3),
            positive=np.zeros(layer.channels, dtype=np.int64),
            basis=basis,
            center=center,
            explained=explained,
            regions=[RegionStats(layer.channels) for _ in regions],
        )
        if state is not None:
            _restore_stats(prefix + "stats.", maps.stats, state)
            _restore_stats(prefix + "pca_stats.", maps.pca_stats, state)
            maps.positive = state[prefix + "positive"].copy()
            for k, acc in enumerate(maps.regions):
                acc.restore(f"{prefix}region{k}.", state)
        outputs.append(maps)
    done = state["done"].astype(bool) if state is not None else np.zeros((ny, nx), dtype=bool)
    failed: list[dict[str, Any]] = (
        [
            {"row": int(r), "col": int(c), "error": str(m)}
            for r, c, m in zip(
                state["failed_rc"][:, 0], state["failed_rc"][:, 1], state["failed_msg"], strict=True
            )
        ]
        if state is not None and len(state["failed_msg"])
        else []
    )
    resumed = int(done.sum())
    skip = done.copy()
    for item in failed:
        skip[item["row"], item["col"]] = True

    def save() -> None:
        arrays: dict[str, np.ndarray] = {
            "done": done,
            "fit_tiles": np.asarray(fit_index, dtype=np.int64).reshape(-1, 2),
            "failed_rc": np.asarray([(f["row"], f["col"]) for f in failed], dtype=np.int64).reshape(
                -1, 2
            ),
            "failed_msg": np.asarray([f["error"] for f in failed], dtype=str),
        }
        for i, maps in enumerate(outputs):
            prefix = f"l{i}."
            arrays[prefix + "basis"] = maps.basis
            arrays[prefix + "center"] = maps.center
            arrays[prefix + "explained"] = maps.explained
            arrays[prefix + "positive"] = maps.positive
            arrays.update(_stats_state(prefix + "stats.", maps.stats))
            arrays.update(_stats_state(prefix + "pca_stats.", maps.pca_stats))
            for k, acc in enumerate(maps.regions):
                arrays.update(acc.state(f"{prefix}region{k}."))
        work.save_state(arrays)

    remaining = [t for t in todo if not skip[t.row, t.col]]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=len(todo),
            initial=len(todo) - len(remaining),
            unit="tile",
            desc="slide",
            dynamic_ncols=True,
        )
    computed = 0
    engine: EngineReport | None = None

    def finish(tile: Tile, cores: dict[str, torch.Tensor] | None, error: str | None) -> None:
        nonlocal computed
        if error is not None:
            failed.append(
                {
                    "row": tile.row,
                    "col": tile.col,
                    "window": [list(tile.window[0]), list(tile.window[1])],
                    "error": error,
                }
            )
            save()
            if bar is not None:
                bar.update(1)
            return
        assert cores is not None  # one of the two is always given
        for maps in outputs:
            _store_core(plan, tile, maps, cores[maps.layer.name], regions, coverage, downsample)
        for maps in outputs:
            maps.values.flush()
            maps.pca.flush()
        done[tile.row, tile.col] = True
        computed += 1
        save()
        if bar is not None:
            bar.update(1)
        if on_tile is not None:
            on_tile(int(done.sum()), len(todo))

    def cores_of(tile: Tile, result: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m.layer.name: crop_core(plan, tile, m.place, result[m.layer.name]) for m in outputs}

    try:
        if remote is None:
            for tile in remaining:
                early = computed_early.pop(tile.index, None)
                if early is not None:
                    finish(tile, cores_of(tile, early), None)
                    continue
                try:
                    window = _read_window(reader, level, tile, retries)
                except Exception as exc:  # any decoder error: see _read_window
                    finish(tile, None, window_error(exc))
                    continue
                finish(tile, cores_of(tile, forward(to_input(window, *normalize))), None)
        else:
            # Tiles fitted for the PCA basis were computed here already; the others go to the
            # workers. Both are stored in the local engine's order.
            sent = [t for t in remaining if t.index not in computed_early]
            queue = list(remaining)

            def store_early_before(tile: Tile | None) -> None:
                while queue and queue[0] is not tile:
                    early_tile = queue.pop(0)
                    finish(
                        early_tile, cores_of(early_tile, computed_early.pop(early_tile.index)), None
                    )
                if queue:
                    queue.pop(0)

            def fold(key: int, part: TileCores) -> None:
                store_early_before(sent[key])
                cores = None if part.cores is None else {
                    name: torch.from_numpy(core) for name, core in part.cores.items()
                }  # fmt: skip
                finish(sent[key], cores, part.error)

            def status(line: str) -> None:
                if bar is not None:
                    bar.set_postfix_str(line, refresh=False)

            engine = remote(sent, fold, status)
            store_early_before(None)
    finally:
        if bar is not None:
            bar.close()
    return SlideMaps(
        plan=plan,
        level=level,
        downsample=downsample,
        layers=outputs,
        tissue=tissue_grid,
        done=done,
        failed=failed,
        computed=computed,
        resumed=resumed,
        seconds=time.perf_counter() - start_time,
        fit_tiles=[tuple(rc) for rc in fit_index],  # type: ignore[misc]
        engine=engine,
    )


def crop_core(
    plan: TilePlan, tile: Tile, place: LayerPlacement, output: torch.Tensor
) -> torch.Tensor:
    """The tile's core cells ``(C, h, w)`` of one layer's window output (halos cut away)."""
    sy, sx, _, _ = plan.core_cells(tile, place)
    return output[:, sy, sx]


def window_error(exc: Exception) -> str:
    """How a window that cannot be read is named in the results."""
    return f"{type(exc).__name__}: {str(exc).strip()[:200]}"


def _store_core(
    plan: TilePlan,
    tile: Tile,
    maps: LayerMaps,
    core: torch.Tensor,
    regions: Sequence[Region],
    coverage: str,
    downsample: float,
) -> None:
    _, _, r0, c0 = plan.core_cells(tile, maps.place)
    c, h, w = core.shape
    if h == 0 or w == 0:
        return
    flat = core.reshape(1, c, h * w)
    maps.stats.update(flat)
    values = flat[0].numpy()
    maps.positive += np.count_nonzero(values > 0, axis=1)
    chosen = core[list(maps.selected)].permute(1, 2, 0).numpy()
    maps.values.write((r0, c0), chosen)
    centred = values.T.astype(np.float64) - maps.center
    projected = (centred @ maps.basis).astype(np.float32)  # (h*w, 3)
    maps.pca_stats.update(projected.T[None])
    maps.pca.write((r0, c0), projected.reshape(h, w, 3))
    if regions:
        xs, ys, bbox = _region_cells(plan, tile, maps.place, downsample, (h, w))
        half = (maps.place.stride[1] * downsample / 2, maps.place.stride[0] * downsample / 2)
        for region, acc in zip(regions, maps.regions, strict=True):
            if not _overlaps(region.bounds, bbox):
                continue
            weights = cell_weights(region, xs.ravel(), ys.ravel(), half, coverage)
            acc.update(values, weights)


RemoteTiles = Callable[
    [list[Tile], Callable[[int, "TileCores"], None], Callable[[str], None]], EngineReport
]


@dataclass
class TileCores:
    """One tile's result from a worker: the core cells ``(C, h, w)`` float32 of each layer, or
    why its window could not be read."""

    cores: dict[str, np.ndarray] | None
    error: str | None = None


@dataclass
class SlideTileJob:
    """Slide tiles as a :class:`featuremaps.engine.Job`: each worker opens the slide itself
    (slide handles cannot be pickled) and loads the model from ``spec``; an item is a
    :class:`Tile`, its result the tile's core cells (:class:`TileCores`)."""

    spec: ModelSpec
    slide: str
    reader_name: str
    level: int
    plan: TilePlan
    places: dict[str, LayerPlacement]
    normalize: tuple[Sequence[float] | None, Sequence[float] | None]
    label: str | None
    retries: int = 1
    _forward: TileForward | None = field(default=None, repr=False)
    _reader: SlideReader | None = field(default=None, repr=False)
    _compute: dict[str, Any] | None = field(default=None, repr=False)

    def open(self) -> None:
        from featuremaps.slide.readers import open_slide

        loaded, placement = self.spec.load()
        self._forward = TileForward(loaded.model, list(self.places), self.label, placement)
        self._reader = open_slide(self.slide, self.reader_name)
        self._compute = placement.describe()

    def read(self, tile: Tile) -> tuple[Tile, np.ndarray | None, str | None]:
        assert self._reader is not None  # set by open()
        try:
            return tile, _read_window(self._reader, self.level, tile, self.retries), None
        except Exception as exc:  # any decoder error: see _read_window
            return tile, None, window_error(exc)

    def compute(self, data: tuple[Tile, np.ndarray | None, str | None]) -> TileCores:
        tile, window, error = data
        if window is None:
            return TileCores(None, error)
        assert self._forward is not None  # set by open()
        result = self._forward(to_input(window, *self.normalize))
        return TileCores(
            {
                name: np.ascontiguousarray(crop_core(self.plan, tile, place, result[name]).numpy())
                for name, place in self.places.items()
            }
        )

    def describe_compute(self) -> dict[str, Any] | None:
        return self._compute
