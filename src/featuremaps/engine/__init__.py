"""Engines: where the work of a data-set command runs, one process (``local``) or a Ray cluster.

Between the inputs and the pure statistics (inputs → **engine** → model → partials → merge). A
command that goes over many items (``stats``, ``ablate``, ``slide``) describes its work as a
:class:`Job`: ``read`` one item (a batch of file paths, a slide tile), ``compute`` its partial
result with the model, and the command's own ``fold`` merges partials on the driver with the same
functions whichever engine ran them. Every partial carries the key of its inputs (the item's
position); :class:`Merger` folds them in key order and refuses a key twice, so nothing is counted
twice or lost, and the result does not depend on which worker finished first.

* ``local`` (:mod:`featuremaps.engine.local`): the items are read by a torch ``DataLoader``
  (reader processes) and computed here; needs nothing beyond the package.
* ``ray`` (:mod:`featuremaps.engine.ray`): a fixed pool of Ray actors, each loading the model once
  from its :class:`ModelSpec` (never pickled weights), reading and computing items; the ``ray``
  extra (``pip install 'featuremaps[ray]'``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from featuremaps.engine.core import (
    ENGINES,
    EngineOptions,
    EngineReport,
    Job,
    Merger,
    ModelJob,
    ModelSpec,
)
from featuremaps.engine.local import run_local
from featuremaps.engine.ray import connected, run_ray

__all__ = [
    "ENGINES",
    "EngineOptions",
    "EngineReport",
    "Job",
    "Merger",
    "ModelJob",
    "ModelSpec",
    "run_job",
    "session",
]

P = TypeVar("P")


def run_job(
    job: Job[P],
    items: Iterable[Any],
    fold: Callable[[int, P], None],
    options: EngineOptions | None = None,
    *,
    readers: int = 0,
    pin_memory: bool = False,
    progress: Callable[[int, str], object] | None = None,
) -> EngineReport:
    """Run ``job`` over ``items`` on the engine ``options`` names; ``fold(key, partial)`` is
    called on this process for every item, in item order.

    ``readers`` (local engine): reader processes; ``pin_memory``: pin what they read (CUDA).
    ``progress(items done, status)`` is
    called after each item with a short status (workers, retries).
    """
    options = options or EngineOptions()
    listed = list(items)
    if options.name == "ray":
        return run_ray(job, listed, fold, options, progress)
    return run_local(job, listed, fold, readers, pin_memory, progress)


@contextlib.contextmanager
def session(options: EngineOptions | None) -> Iterator[None]:
    """Keep the engine's cluster connection open over several runs (a cohort of slides): the
    ray engine connects (or starts a local Ray) once, and lets it go at the end."""
    if options is None or options.name == "local":
        yield
        return
    with connected(options):
        yield
