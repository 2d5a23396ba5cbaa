"""The atlas's one pass over a data set: inputs → model → capture → per-channel cell heaps.

The same readers, batches and engines as ``stats`` (:mod:`featuremaps.dataset`,
:mod:`featuremaps.engine`): each batch is reduced to an :class:`AtlasPartial` (a top-k heap and
a control sample per layer, :mod:`featuremaps.atlas`), and partials merge exactly in batch order,
so every engine keeps the same cells. Memory is O(layers × channels × k).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from featuremaps._errors import InputError
from featuremaps.atlas import CellHeap, control_heap, top_heap
from featuremaps.capture import LayerRecord, capture
from featuremaps.dataset import batch_paths, read_batch
from featuremaps.devices import Placement, model_device
from featuremaps.engine import EngineOptions, EngineReport, ModelJob, ModelSpec
from featuremaps.inputs import Preprocessing
from featuremaps.layouts import channels_first
from featuremaps.layouts.arrays import spatial_maps
from featuremaps.layouts.registry import TOKEN_GRID

__all__ = ["AtlasJob", "AtlasPartial", "AtlasPass", "compute_atlas_pass"]


@dataclass
class AtlasPartial:
    """The heaps of one batch: ``layers`` maps record name → (top heap, control heap)."""

    layers: dict[str, tuple[CellHeap, CellHeap]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    images: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class AtlasPass:
    """The merged heaps of every batch, and an account of the inputs (indices into ``paths``)."""

    paths: list[Path]
    layers: dict[str, tuple[CellHeap, CellHeap]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    #: token layers: record name → prefix tokens left out (their cells are the patch grid)
    tokens: dict[str, int] = field(default_factory=dict)
    images: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    engine: EngineReport | None = None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def __repr__(self) -> str:
        return f"AtlasPass({len(self.layers)} layers, {self.images} images)"

    def fold(self, partial: AtlasPartial) -> None:
        """Merge one batch's partial (the same for every engine)."""
        self.failed.extend(partial.failed)
        self.images += partial.images
        for name, (top, controls) in partial.layers.items():
            found = self.layers.get(name)
            if found is None:
                self.layers[name] = (top, controls)
                self.types[name] = partial.types[name]
                if name in partial.tokens:
                    self.tokens[name] = partial.tokens[name]
            else:
                found[0].merge(top)
                found[1].merge(controls)


@dataclass
class AtlasJob(ModelJob):
    """The atlas pass as a :class:`featuremaps.engine.Job`: an item is one batch as a list of
    ``(input index, path)``; ``model`` and ``placement`` are never pickled (a remote worker
    loads the model from ``spec``)."""

    spec: ModelSpec | None
    channels: int | None
    preprocessing: Preprocessing
    k: int
    controls: int
    seed: int = 0
    layers: str | Sequence[str] | None = None
    types: str | Sequence[str] | None = None
    model_label: str | None = None
    model: nn.Module | None = None
    placement: Placement | None = None

    def read(self, item: Sequence[tuple[int, Path]]) -> Any:
        index = {str(p): i for i, p in item}
        batch, read, failed = read_batch([p for _, p in item], self.channels, self.preprocessing)
        return batch, [index[p] for p in read], failed

    def compute(self, data: Any) -> AtlasPartial:
        batch, inputs, failed = data
        out = AtlasPartial(failed=list(failed))
        if batch is None:
            return out
        assert self.model is not None and self.placement is not None  # set by open()
        where = np.asarray(inputs, dtype=np.int64)

        def consume(record: LayerRecord) -> None:
            if record.tensor.is_complex():
                return
            layout = record.layout_info
            token_grid = layout.drawn_as == TOKEN_GRID and layout.grid is not None
            # tokens: their patch grid without the prefix tokens; else channels first
            t = spatial_maps(layout, record.tensor) if token_grid else None
            t = t if t is not None else channels_first(layout, record.tensor)
            if t is None:
                return
            if token_grid:
                out.tokens[record.name] = layout.prefix
            values = t.detach().float().cpu().numpy()
            found = out.layers.get(record.name)
            if found is None:
                grid = tuple(values.shape[2:])
                found = out.layers[record.name] = (
                    top_heap(values.shape[1], grid, self.k),
                    control_heap(values.shape[1], grid, self.controls, self.seed),
                )
                out.types[record.name] = record.module_type
            found[0].update(values, where)
            found[1].update(values, where)

        with self.placement.autocast():
            capture(
                self.model, self.placement.inputs(batch), layers=self.layers, types=self.types,
                on_record=consume, copy=False, model_label=self.model_label,
            )  # fmt: skip
        out.images = len(inputs)
        return out

    def describe_compute(self) -> dict[str, Any] | None:
        return None if self.placement is None else self.placement.describe()


def compute_atlas_pass(
    model: nn.Module,
    paths: Sequence[Path],
    *,
    channels: int | None,
    preprocessing: Preprocessing,
    k: int = 9,
    controls: int = 3,
    seed: int = 0,
    layers: str | Sequence[str] | None = None,
    types: str | Sequence[str] | None = None,
    batch_size: int = 16,
    workers: int = 2,
    progress: Callable[[int], object] | None = None,
    model_label: str | None = None,
    placement: Placement | None = None,
    engine: EngineOptions | None = None,
    spec: ModelSpec | None = None,
    status: Callable[[str], object] | None = None,
) -> AtlasPass:
    """The ``k`` largest cells and ``controls`` random positive cells of every channel of the
    selected layers over every readable input in ``paths`` (batches as
    :func:`featuremaps.dataset.compute_dataset_stats` reads them; ``seed`` picks the controls)."""
    from featuremaps.engine import run_job

    top_heap(1, (1,), k)  # refuses a bad k now rather than inside the first hook
    control_heap(1, (1,), controls)
    placement = placement or Placement(model_device(model))
    remote = engine is not None and engine.name != "local"
    job = AtlasJob(
        spec, channels, preprocessing, k, controls, seed, layers, types, model_label,
        None if remote else model, None if remote else placement,
    )  # fmt: skip
    listed = list(paths)
    index = {p: i for i, p in enumerate(listed)}
    items = [[(index[p], p) for p in b] for b in batch_paths(listed, preprocessing, batch_size)]
    out = AtlasPass(listed)

    def fold(_key: int, partial: AtlasPartial) -> None:
        out.fold(partial)
        if progress is not None:
            progress(partial.images + len(partial.failed))

    report = run_job(
        job, items, fold, engine, readers=workers,
        pin_memory=placement.device.type == "cuda",
        progress=None if status is None else (lambda _n, line: status(line)),
    )  # fmt: skip
    out.seconds = report.seconds["wall"]
    out.engine = report
    if out.images == 0:
        first = out.failed[0][1] if out.failed else "no inputs"
        raise InputError(
            f"none of the {len(listed)} inputs could be read (first: {first}); check the files"
        )
    return out
