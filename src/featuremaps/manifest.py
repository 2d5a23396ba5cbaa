"""The manifest: the schema of what a run says about itself, written by the commands and read
back by the report.

Between the commands and io/report in the flow (… → render → **manifest** → report, io). One
place builds the header every output file starts with (``tool``, ``created``, ``versions``,
``model``), one class is a record's entry (:class:`RecordSummary`, written with
:meth:`RecordSummary.to_json` and read back with :meth:`RecordSummary.from_json`), and the file
names every command writes are named here. Nothing here writes files (:mod:`featuremaps.io` does).
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from featuremaps._version import __version__

__all__ = [
    "ABLATION",
    "ARRAYS",
    "LOCATE",
    "MANIFEST",
    "MARK_KEY",
    "OUTPUT_FILES",
    "PRUNE",
    "RANDOM_WEIGHTS",
    "SLIDE",
    "SUMMARY",
    "TOOL",
    "RecordSummary",
    "header",
    "runs_manifest",
    "versions",
    "weights_mark",
]

TOOL = "featuremaps"
MANIFEST = "manifest.json"  # what `featuremaps run` writes
SUMMARY = "summary.json"  # ... `featuremaps stats`
ABLATION = "ablation.json"  # ... `featuremaps ablate`
LOCATE = "locate.json"  # ... `featuremaps locate --overlay`
SLIDE = "slide.json"  # ... `featuremaps slide`
PRUNE = "prune.json"  # ... `featuremaps prune`
#: The files that mark a folder as written by featuremaps (each holds ``"tool": "featuremaps"``).
OUTPUT_FILES = (MANIFEST, SUMMARY, ABLATION, LOCATE, SLIDE, PRUNE)
ARRAYS = "arrays.safetensors"

#: The stamp drawn on every picture of a model with random weights (a red box in its legend).
RANDOM_WEIGHTS = "RANDOM WEIGHTS"
#: The key under which pictures (PNG text, JPEG comment), arrays and OME-XML annotations of a
#: model with random weights carry :func:`weights_mark`.
MARK_KEY = "featuremaps:weights"


def weights_mark(weights_status: str) -> str:
    """The one sentence every output of a model with random weights carries, in its metadata
    and descriptions (``RANDOM WEIGHTS (<how the weights came about>)``); pictures draw
    :data:`RANDOM_WEIGHTS` itself."""
    return f"{RANDOM_WEIGHTS} ({weights_status})"


def _version_of(module: str, distribution: str) -> str:
    """A package's version without importing it when it is not imported yet (torchvision and
    matplotlib take seconds to import, and a run that does not use them should not pay that):
    then it is the installed distribution's version, without a local build tag like ``+cu130``."""
    loaded = sys.modules.get(module)
    if loaded is not None and isinstance(getattr(loaded, "__version__", None), str):
        return str(loaded.__version__)
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    """The versions that made a result (featuremaps, torch, torchvision, numpy, ...)."""
    return {
        "featuremaps": __version__,
        "torch": _version_of("torch", "torch"),
        "torchvision": _version_of("torchvision", "torchvision"),
        "numpy": _version_of("numpy", "numpy"),
        "pillow": _version_of("PIL", "pillow"),
        "matplotlib": _version_of("matplotlib", "matplotlib"),
        "python": platform.python_version(),
    }


def header(model: Mapping[str, Any] | None = None, *, created: bool = True) -> dict[str, Any]:
    """The first keys of every file a command writes: tool, created (UTC), versions, model."""
    head: dict[str, Any] = {"tool": TOOL}
    if created:
        head["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    head["versions"] = versions()
    if model is not None:
        head["model"] = dict(model)
    return head


def runs_manifest(
    manifests: Sequence[str],
    inputs: Sequence[dict[str, Any]] | None = None,
    model: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The top-level manifest of a run over several inputs: it lists each input's manifest and,
    with ``inputs``, which input each sub-folder holds (``{"folder", "input", "kind",
    "manifest"}``), so folders whose names were made safe or unique stay traceable; ``model``
    (the model's description) is in it as in each input's manifest."""
    out = {**header(model, created=False), "runs": list(manifests)}
    if inputs is not None:
        out["inputs"] = list(inputs)
    return out


def _finite(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError, OverflowError):
        return 0


def _ints(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, list):
        return None
    try:
        return tuple(int(n) for n in value)
    except (TypeError, ValueError, OverflowError):
        return None


@dataclass(frozen=True)
class RecordSummary:
    """What the manifest says about one record (or one selected module that never ran).

    ``layout`` names the output's axes and ``drawn_as`` how it was drawn (``None``: not drawn,
    ``skipped`` says why); ``layout_evidence`` says what the layout was decided from; see
    :mod:`featuremaps.layouts`. ``pca``: for token pictures, the explained variance of the PCA
    to RGB and the file holding its basis. ``data_channels``: when the report's data budget
    made the record's data file keep fewer channels than were drawn, how many of the first drawn
    channels it keeps (0: no data file); ``None`` when it holds every drawn channel.
    """

    name: str
    module: str
    call: int
    type: str
    shape: tuple[int, ...] | None
    dtype: str | None
    layout: str | None
    image: str | None
    skipped: str | None
    min: float | None
    max: float | None
    mean: float | None
    nonfinite: int
    channels_shown: tuple[int, ...] | None = None
    warnings: tuple[str, ...] = ()
    channel_stats: dict[str, list[float]] | None = None
    data: str | None = None
    geometry: dict[str, Any] | None = None
    drawn_as: str | None = None
    layout_evidence: str | None = None
    pca: dict[str, Any] | None = None
    data_channels: int | None = None

    def __repr__(self) -> str:
        what = f"drawn as {self.drawn_as}" if self.drawn_as else f"not drawn: {self.skipped}"
        return f"RecordSummary({self.name!r}, {self.type}, {self.shape} {self.dtype}, {what})"

    def to_json(self) -> dict[str, Any]:
        """The manifest entry (key order as documented in the README)."""
        return {
            "name": self.name,
            "module": self.module,
            "call": self.call,
            "type": self.type,
            "shape": list(self.shape) if self.shape is not None else None,
            "dtype": self.dtype,
            "layout": self.layout,
            "layout_evidence": self.layout_evidence,
            "drawn_as": self.drawn_as,
            "pca": self.pca,
            "image": self.image,
            "data": self.data,
            "data_channels": self.data_channels,
            "skipped": self.skipped,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "nonfinite": self.nonfinite,
            "channels_shown": list(self.channels_shown) if self.channels_shown else None,
            "channel_stats": self.channel_stats,
            "geometry": self.geometry,
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> RecordSummary:
        """Read a manifest entry back, tolerating missing or malformed fields (old manifests,
        hand edits): what cannot be read becomes ``None`` or empty."""
        stats = entry.get("channel_stats")
        warnings = entry.get("warnings")
        geometry = entry.get("geometry")

        def text(key: str) -> str | None:
            value = entry.get(key)
            return value if isinstance(value, str) else None

        return cls(
            name=str(entry.get("name", "")),
            module=str(entry.get("module", "")),
            call=_int(entry.get("call")),
            type=str(entry.get("type", "")),
            shape=_ints(entry.get("shape")),
            dtype=text("dtype"),
            layout=text("layout"),
            image=text("image"),
            skipped=text("skipped"),
            min=_finite(entry.get("min")),
            max=_finite(entry.get("max")),
            mean=_finite(entry.get("mean")),
            nonfinite=_int(entry.get("nonfinite")),
            channels_shown=_ints(entry.get("channels_shown")),
            warnings=tuple(str(w) for w in warnings) if isinstance(warnings, (list, tuple)) else (),
            channel_stats=dict(stats) if isinstance(stats, Mapping) else None,
            data=text("data"),
            geometry=dict(geometry) if isinstance(geometry, Mapping) else None,
            drawn_as=text("drawn_as"),
            layout_evidence=text("layout_evidence"),
            pca=dict(entry["pca"]) if isinstance(entry.get("pca"), Mapping) else None,
            data_channels=(
                _int(entry.get("data_channels")) if entry.get("data_channels") is not None else None
            ),
        )
