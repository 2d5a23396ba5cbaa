"""The Ray engine: a fixed pool of Ray actors that load the model once and compute items.

Ray Data streams the items (keys and pickled items, never data) through
``map_batches(..., compute=ActorPoolStrategy(size=workers))``; each actor opens the job once
(loads the model from its spec, opens a slide), then reads and computes one item per call and
returns one row: the item's key, its pickled partial and the seconds spent reading and computing.
The driver folds rows as they come with the command's own fold, in key order
(:class:`featuremaps.engine.Merger`). Actor pools restart a dead actor and run its block again;
a small ledger actor counts how often each item was started, so the summary can say how many
items were redone, and the merger refuses an item delivered twice.

Needs the ``ray`` extra; asking for this engine without it is one line naming the extra.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from featuremaps._errors import EngineError, FeaturemapsError
from featuremaps.engine.core import EngineOptions, EngineReport, Job, Merger

__all__ = ["INSTALL_HINT", "ray_available", "run_ray"]

INSTALL_HINT = "pip install 'featuremaps[ray]'"

P = TypeVar("P")

#: CPUs each actor asks Ray for. On a 2-core machine whole CPUs leave none for Ray Data's own
#: read tasks and the job stalls; half a CPU runs. Torch threads are set apart: float32
#: convolutions sum in an order that depends on the thread count, so workers use the driver's
#: count unless told otherwise (EngineOptions.threads), and give the local engine's numbers.
ACTOR_CPUS = 0.5


def ray_available() -> bool:
    """Whether ``ray`` can be imported (the ``ray`` extra)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # Ray Data and its pandas: the "data" extra of ray
    except ImportError as exc:
        what = "Ray" if exc.name == "ray" else f"Ray Data ({exc.name} is missing)"
        raise EngineError(
            f"--engine ray needs {what}, which is not installed; {INSTALL_HINT} (on every node of "
            "the cluster too), or leave out --engine to run locally"
        ) from None
    return ray


class _Ledger:
    """Counts, across the pool, the actors started and how often each item was started."""

    def __init__(self) -> None:
        self.actors = 0
        self.starts: dict[int, int] = {}

    def joined(self) -> int:
        self.actors += 1
        return self.actors

    def started(self, key: int) -> None:
        self.starts[key] = self.starts.get(key, 0) + 1

    def counts(self) -> tuple[int, int]:
        """(actors started, item starts beyond the first)."""
        return self.actors, sum(n - 1 for n in self.starts.values())


class _Worker:
    """One actor of the pool: opens the job once, then reads and computes one item per call."""

    def __init__(self, job: bytes, ledger: Any, threads: int) -> None:
        import ray
        import torch

        torch.set_num_threads(threads)
        self.job: Job[Any] = pickle.loads(job)
        self.job.open()
        self.ledger = ledger
        ray.get(ledger.joined.remote())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import ray

        keys, payloads, errors, reads, models = [], [], [], [], []
        for key, item in zip(batch["key"], batch["item"], strict=True):
            ray.get(self.ledger.started.remote(int(key)))
            t0 = time.perf_counter()
            t1 = t0
            try:
                data = self.job.read(pickle.loads(item))
                t1 = time.perf_counter()
                result: Any = self.job.compute(data)
            except FeaturemapsError as exc:  # raised on the driver, as the local engine would
                result = exc
            t2 = time.perf_counter()
            keys.append(int(key))
            payloads.append(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
            errors.append(isinstance(result, FeaturemapsError))
            reads.append(t1 - t0)
            models.append(t2 - t1)
        compute = pickle.dumps(self.job.describe_compute())
        return {
            "key": np.array(keys, dtype=np.int64),
            "partial": np.array(payloads, dtype=object),
            "error": np.array(errors, dtype=bool),
            "read": np.array(reads),
            "model": np.array(models),
            "compute": np.array([compute] * len(keys), dtype=object),
        }


def _driver_threads() -> int:
    import torch

    return torch.get_num_threads()


def _connect(ray: Any, options: EngineOptions) -> bool:
    """Connect to the cluster (or start a local Ray); True when this call started Ray."""
    if ray.is_initialized():
        return False
    address = options.address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise EngineError(
            f"cannot reach the Ray cluster at {address!r}: {str(exc).strip().splitlines()[0]}; "
            "start one with 'ray start --head' and pass its address with --address"
        ) from None
    return True


@contextlib.contextmanager
def connected(options: EngineOptions) -> Iterator[None]:
    """Ray connected for the block (started here when no cluster is given nor running)."""
    ray = _import_ray()
    started_here = _connect(ray, options)
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()


def run_ray(
    job: Job[P],
    items: Sequence[Any],
    fold: Callable[[int, P], None],
    options: EngineOptions,
    progress: Callable[[int, str], object] | None = None,
) -> EngineReport:
    """Run ``job`` over ``items`` on a pool of ``options.workers`` Ray actors; fold here."""
    ray = _import_ray()
    # Ray Data logs every execution's plan and end at INFO, and a WARNING for the progress bars
    # it is told not to draw: the command's own progress line says what matters.
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]
    loggers = [g for g in loggers if g.name.startswith("ray.data")]
    levels = [g.level for g in loggers]
    for g in loggers:
        g.setLevel(logging.ERROR)
    try:
        with connected(options):
            return _run(ray, job, items, fold, options, progress)
    finally:
        for g, level in zip(loggers, levels, strict=True):
            g.setLevel(level)


def _run(
    ray: Any,
    job: Job[P],
    items: Sequence[Any],
    fold: Callable[[int, P], None],
    options: EngineOptions,
    progress: Callable[[int, str], object] | None,
) -> EngineReport:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the command draws its own
    report = EngineReport("ray", workers=options.workers)
    ledger = ray.remote(num_cpus=0)(_Ledger).remote()
    rows = [
        {"key": key, "item": pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)}
        for key, item in enumerate(items)
    ]
    threads = options.threads or _driver_threads()
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, len(rows))).map_batches(
        _Worker,
        compute=ray.data.ActorPoolStrategy(size=options.workers),
        batch_size=1,
        batch_format="numpy",
        num_cpus=ACTOR_CPUS,
        num_gpus=options.gpus_per_worker or None,
        fn_constructor_kwargs={
            "job": pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL),
            "ledger": ledger,
            "threads": threads,
        },
    )
    merger = Merger(len(rows), fold)
    report.seconds = {"read": 0.0, "model": 0.0}
    start = time.perf_counter()
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            _fold_rows(batch, merger, report)
            if progress is not None:
                started, retries = ray.get(ledger.counts.remote())
                replaced = max(0, started - options.workers)
                progress(
                    report.items,
                    f"{options.workers} workers ({replaced} replaced), {retries} items retried",
                )
    except ray.exceptions.RayError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineError(
            f"the Ray workers failed: {first}; their logs are under /tmp/ray/session_latest/logs "
            "on each node"
        ) from None
    merger.finish()
    report.started, report.retries = ray.get(ledger.counts.remote())
    report.seconds["merge"] = merger.seconds
    report.seconds["wall"] = time.perf_counter() - start
    return report


def _fold_rows(batch: dict[str, np.ndarray], merger: Merger[Any], report: EngineReport) -> None:
    """Fold the rows of one batch from the workers; a featuremaps error a worker met is raised
    here, as the local engine raises it."""
    for i, key in enumerate(batch["key"]):
        result = pickle.loads(batch["partial"][i])
        if batch["error"][i]:
            raise result
        merger.add(int(key), result)
        report.seconds["read"] += float(batch["read"][i])
        report.seconds["model"] += float(batch["model"][i])
        report.items += 1
        if report.compute is None:
            report.compute = pickle.loads(batch["compute"][i])
