"""The local engine: items read by a torch ``DataLoader`` (reader processes), computed and folded
in this process. Needs nothing beyond the package; the default of every data-set command."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from featuremaps.engine.core import EngineReport, Job, Merger

__all__ = ["run_local"]

P = TypeVar("P")


class _Items(torch.utils.data.Dataset[Any]):
    """Item ``i`` read by the job (in a reader process when there are any)."""

    def __init__(self, job: Job[Any], items: Sequence[Any]) -> None:
        self.job, self.items = job, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.job.read(self.items[i])


def _as_read(data: Any) -> Any:
    return data  # no batching: an item is already what compute takes


def run_local(
    job: Job[P],
    items: Sequence[Any],
    fold: Callable[[int, P], None],
    readers: int = 0,
    pin_memory: bool = False,
    progress: Callable[[int, str], object] | None = None,
) -> EngineReport:
    """Read every item (``readers`` processes), compute and fold it here, in item order."""
    report = EngineReport("local", workers=1, started=1)
    job.open()
    report.compute = job.describe_compute()
    merger = Merger(len(items), fold)
    loader = torch.utils.data.DataLoader(
        _Items(job, items),
        batch_size=None,
        num_workers=readers,
        collate_fn=_as_read,
        pin_memory=pin_memory,
    )
    read = model = 0.0
    start = time.perf_counter()
    it = iter(loader)
    for key in range(len(items)):
        t0 = time.perf_counter()
        data = next(it)
        t1 = time.perf_counter()
        partial = job.compute(data)
        t2 = time.perf_counter()
        merger.add(key, partial)
        read, model = read + t1 - t0, model + t2 - t1
        report.items += 1
        if progress is not None:
            progress(report.items, "local")
    merger.finish()
    report.seconds = {
        "read": read,
        "model": model,
        "merge": merger.seconds,
        "wall": time.perf_counter() - start,
    }
    return report
