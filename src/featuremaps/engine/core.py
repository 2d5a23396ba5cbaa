"""The engine layer's pieces: the model spec workers load, the options, the report, the job
protocol and the merger that folds keyed partials in item order (see :mod:`featuremaps.engine`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from featuremaps._errors import EngineError, InputError, OptionError
from featuremaps.devices import Placement, model_device

__all__ = ["ENGINES", "EngineOptions", "EngineReport", "Job", "Merger", "ModelJob", "ModelSpec"]

#: The engines a command can run on.
ENGINES = ("local", "ray")

P = TypeVar("P")
P_co = TypeVar("P_co", covariant=True)
P_contra = TypeVar("P_contra", contravariant=True)


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the model by itself: the arguments of :func:`featuremaps.load_model`
    and where it runs (``device``/``dtype`` as for :func:`featuremaps.visualize`)."""

    spec: str
    weights: str | None = None
    trust_checkpoint: bool = False
    offline: bool = False
    device: str | None = "auto"
    dtype: str | None = None

    @classmethod
    def from_loaded(
        cls, loaded: Any, device: str | None = "auto", dtype: str | None = None
    ) -> ModelSpec:
        """The spec a :class:`featuremaps.LoadedModel` was loaded from; a model given as a Python
        object has none, and a worker cannot rebuild it."""
        if loaded.cli_spec is None:
            raise OptionError(
                f"the ray engine loads the model on every worker from its spec, but this "
                f"{type(loaded.model).__name__} was given as a Python object; pass a spec such as "
                "'resnet18' or 'package.module:factory', or use engine='local'"
            )
        # Weights the loader applied itself are named again; "as built" and "as saved" are not
        # weights files but what the factory or the file holds. A weights file given on top of
        # a factory is named again too, or the workers would run the factory's own weights.
        own = loaded.weights in ("as built", "as saved")
        return cls(
            spec=loaded.spec,
            weights=None if own else loaded.weights,
            trust_checkpoint=loaded.source == "pickle",
            # Random weights here (no network) must be the same seeded random weights there.
            offline=bool(loaded.random_weights),
            device=device,
            dtype=dtype,
        )

    def load(self) -> tuple[Any, Any]:
        """Load the model and place it: ``(LoadedModel, Placement)``."""
        from featuremaps.devices import resolve_placement
        from featuremaps.models import load_model

        loaded = load_model(
            self.spec, self.weights, trust_checkpoint=self.trust_checkpoint, offline=self.offline
        )
        placement = resolve_placement(loaded.model, self.device, self.dtype)
        placement.place(loaded.model)
        return loaded, placement


@dataclass(frozen=True)
class EngineOptions:
    """Which engine runs a command's items, and how.

    Args:
        name: ``local`` (default; needs no Ray) or ``ray``.
        address: the Ray cluster (``ray.init(address=...)``); None follows Ray's own
            ``RAY_ADDRESS`` and starts a local Ray when that is unset too.
        workers: Ray actors in the pool (each loads the model once).
        gpus_per_worker: GPUs each actor asks Ray for (fractions share a GPU).
        threads: torch threads per actor; None takes this process's count. A float32
            convolution's summation order depends on it, so only equal counts give the local
            engine's numbers bit for bit; fewer threads per actor fill a node's cores better.
    """

    name: str = "local"
    address: str | None = None
    workers: int = 2
    gpus_per_worker: float = 0.0
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.name not in ENGINES:
            raise OptionError(f"--engine '{self.name}' is unknown; expected local or ray")
        if self.workers < 1:
            raise OptionError(f"--workers {self.workers} for the ray engine; expected 1 or more")
        if self.threads is not None and self.threads < 1:
            raise OptionError(f"--threads-per-worker {self.threads}; expected 1 or more")
        if not self.gpus_per_worker >= 0:
            raise OptionError(
                f"--gpus-per-worker {self.gpus_per_worker}; expected 0 or more, e.g. 1 or 0.5"
            )


@dataclass
class EngineReport:
    """What a run cost and how it went: items, retries, workers and where the time went.

    ``seconds`` holds ``read`` and ``model`` (summed over workers: they overlap), ``merge``
    (driver), ``write`` (set by the command) and ``wall`` (the whole pass on the driver).
    """

    engine: str
    items: int = 0
    workers: int = 0
    started: int = 0
    retries: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    compute: dict[str, Any] | None = None

    @property
    def items_per_second(self) -> float:
        wall = self.seconds.get("wall", 0.0)
        return self.items / wall if wall > 0 else 0.0

    def describe(self) -> dict[str, Any]:
        """The summary's ``engine`` entry."""
        return {
            "name": self.engine,
            "items": self.items,
            "workers": self.workers,
            "workers_started": self.started,
            "retries": self.retries,
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
        }


class Job(Protocol[P_co]):
    """The work of one command, item by item. Picklable: the Ray engine ships it to workers.

    ``open`` runs once per worker before any item (load the model, open a slide); ``read`` and
    ``compute`` run per item, ``read`` possibly in another process than ``compute`` (the local
    engine's reader processes), so it must not need what ``open`` made.
    """

    def open(self) -> None: ...

    def read(self, item: Any) -> Any: ...

    def compute(self, data: Any) -> P_co: ...

    def describe_compute(self) -> dict[str, Any] | None: ...


class ModelJob:
    """The model half of a job that runs one model over batches (stats, ablation, atlas): its
    ``model`` and ``placement`` are used where given (the local engine) and never pickled; a
    worker elsewhere loads the model from ``spec`` in :meth:`open`. Subclasses are dataclasses
    with these three fields."""

    spec: ModelSpec | None
    model: Any
    placement: Placement | None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "model": None, "placement": None}

    def open(self) -> None:
        if self.model is None:
            if self.spec is None:  # pragma: no cover - callers give one or the other
                raise InputError(f"{type(self).__name__} needs a model or a model spec")
            loaded, self.placement = self.spec.load()
            self.model = loaded.model
        self.placement = self.placement or Placement(model_device(self.model))


class Merger(Generic[P_contra]):
    """Folds keyed partials in key order (0, 1, 2, ...), holding early arrivals until their turn;
    a key seen twice, or one outside ``0..total-1``, is refused."""

    def __init__(self, total: int, fold: Callable[[int, P_contra], None]) -> None:
        self.total = total
        self.fold = fold
        self.next = 0
        self.pending: dict[int, P_contra] = {}
        self.seconds = 0.0

    def add(self, key: int, partial: P_contra) -> None:
        if not 0 <= key < self.total:
            raise EngineError(f"a partial for item {key}; expected items 0..{self.total - 1}")
        if key < self.next or key in self.pending:
            raise EngineError(
                f"the partial for item {key} arrived twice; it is counted once and the run stops "
                "(a worker delivered a retried item again): run again"
            )
        self.pending[key] = partial
        start = time.perf_counter()
        while self.next in self.pending:
            self.fold(self.next, self.pending.pop(self.next))
            self.next += 1
        self.seconds += time.perf_counter() - start

    def finish(self) -> None:
        """Raise EngineError unless every item was folded."""
        if self.next != self.total:
            missing = self.total - self.next - len(self.pending)
            raise EngineError(
                f"{missing} of {self.total} items never came back (first: item {self.next}); "
                "run again"
            )
