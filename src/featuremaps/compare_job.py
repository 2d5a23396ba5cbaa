"""Linear CKA between two checkpoints over a data set, as an engine job (local or Ray).

Between the engine and the pure sums (inputs → engine → two models → capture →
:class:`featuremaps.compare.CKASums` partials → merge). An item is one minibatch of paths; its
partial is that minibatch's HSIC sums and per-channel sums, and partials merge in item order
with the same functions whichever engine computed them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from featuremaps._errors import InputError
from featuremaps.capture import LayerRecord, capture
from featuremaps.compare import CKASums, gram
from featuremaps.engine import ModelSpec
from featuremaps.inputs import Preprocessing
from featuremaps.layouts import channels_first

__all__ = ["CKAJob", "CKAPartial", "CKAResult", "fold_cka"]


@dataclass
class CKAPartial:
    """One minibatch: its HSIC sums, per layer and side the per-channel sums of values and the
    number of values summed per channel, images read and files not read."""

    sums: CKASums | None = None
    channel_sums: dict[str, list[np.ndarray | None]] = field(default_factory=dict)
    cells: dict[str, float] = field(default_factory=dict)
    images: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class CKAResult:
    """The merged partials of a whole data set."""

    sums: CKASums | None = None
    channel_sums: dict[str, list[np.ndarray | None]] = field(default_factory=dict)
    cells: dict[str, float] = field(default_factory=dict)
    images: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def mean_shift(self, name: str) -> list[float] | None:
        """Mean of B − mean of A per channel of layer ``name`` (None: shapes differ)."""
        a, b = self.channel_sums[name]
        if a is None or b is None or a.shape != b.shape:
            return None
        shift: list[float] = ((b - a) / self.cells[name]).tolist()
        return shift


def _values(record: LayerRecord) -> np.ndarray | None:
    if record.tensor.is_complex():
        return None
    t = channels_first(record.layout_info, record.tensor)
    return None if t is None else t.detach().to("cpu", torch.float64).numpy()


@dataclass
class CKAJob:
    """``compare --data`` as a :class:`featuremaps.engine.Job`. ``model_a``/``model_b`` are
    used where given (the local engine) and never pickled; a worker elsewhere loads them from
    ``spec_a``/``spec_b``."""

    spec_a: ModelSpec | None
    spec_b: ModelSpec | None
    channels: int | None
    preprocessing: Preprocessing
    layers: str | Sequence[str] | None = None
    types: str | Sequence[str] | None = None
    model_a: nn.Module | None = None
    model_b: nn.Module | None = None
    placement: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "model_a": None, "model_b": None, "placement": None}

    def open(self) -> None:
        if self.model_a is None or self.model_b is None:
            if self.spec_a is None or self.spec_b is None:  # pragma: no cover - callers give one
                raise InputError("a CKA job needs two models or two model specs")
            loaded_a, self.placement = self.spec_a.load()
            loaded_b, _ = self.spec_b.load()
            self.model_a, self.model_b = loaded_a.model, loaded_b.model

    def read(self, item: Sequence[Path]) -> Any:
        from featuremaps.dataset import read_batch

        return read_batch(item, self.channels, self.preprocessing)

    def compute(self, data: Any) -> CKAPartial:
        batch, paths, failed = data
        out = CKAPartial(failed=list(failed))
        if batch is None:
            return out
        assert self.model_a is not None and self.model_b is not None  # set by open()
        if self.placement is not None:
            batch = self.placement.inputs(batch)
        grams: list[dict[str, np.ndarray]] = []
        for which, model in enumerate((self.model_a, self.model_b)):
            found: dict[str, np.ndarray] = {}

            def keep(
                record: LayerRecord, which: int = which, found: dict[str, np.ndarray] = found
            ) -> None:
                values = _values(record)
                if values is None:
                    return
                found[record.name] = gram(values)
                sums = values.sum(axis=tuple(i for i in range(values.ndim) if i != 1))
                entry = out.channel_sums.setdefault(record.name, [None, None])
                entry[which] = sums
                if which == 0:
                    out.cells[record.name] = values.size / values.shape[1]

            with torch.no_grad():
                capture(model, batch, layers=self.layers, types=self.types, on_record=keep,
                        copy=False)  # fmt: skip
            grams.append(found)
        out.sums = CKASums(list(grams[0]), list(grams[1]))
        out.sums.update(list(grams[0].values()), list(grams[1].values()))
        out.images = len(paths)
        return out

    def describe_compute(self) -> dict[str, Any] | None:
        return None if self.placement is None else self.placement.describe()


def fold_cka(total: CKAResult, partial: CKAPartial) -> None:
    """Merge one minibatch's partial into ``total`` (the same for every engine)."""
    total.failed.extend(partial.failed)
    total.images += partial.images
    if partial.sums is None:
        return
    if total.sums is None:
        total.sums = CKASums(partial.sums.layers_a, partial.sums.layers_b)
    total.sums.merge(partial.sums)
    for name, (a, b) in partial.channel_sums.items():
        entry = total.channel_sums.setdefault(name, [None, None])
        entry[0] = a if entry[0] is None else (entry[0] + a if a is not None else entry[0])
        entry[1] = b if entry[1] is None else (entry[1] + b if b is not None else entry[1])
        total.cells[name] = total.cells.get(name, 0.0) + partial.cells.get(name, 0.0)
