"""Where the looks of :func:`featuremaps.watch` go: TensorBoard event files, or a plain folder.

The output end of the watch flow (capture → look → **writer**). :class:`TensorBoardWriter` logs
each layer's picture, histogram and statistics through ``torch.utils.tensorboard``'s
``SummaryWriter`` (which writes its event files itself) under ``featuremaps/<layer>/...`` tags
(see :func:`tags`); :class:`FolderWriter` writes a PNG per layer and a JSON per look through
:mod:`featuremaps.io`, which ``featuremaps report-timeline`` turns into a page.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featuremaps._errors import OptionError
from featuremaps.io import OutputFolder, dump_json, safe_filename, update_run_folder
from featuremaps.manifest import MANIFEST, TOOL
from featuremaps.render.encode import encode

if TYPE_CHECKING:  # annotations only: featuremaps.watch imports this module
    from featuremaps.watch import LayerLook, Look, LookWriter

__all__ = [
    "WATCH_KIND",
    "FolderWriter",
    "TensorBoardWriter",
    "Writers",
    "look_json",
    "resolve_writer",
    "step_folder",
    "tags",
]

#: The ``kind`` of a folder writer's manifest.
WATCH_KIND = "watch"


def tags(layer: str) -> dict[str, str]:
    """The TensorBoard tags of one layer: picture, histogram and the two statistics."""
    base = f"featuremaps/{layer}"
    return {
        "grid": f"{base}/grid",
        "histogram": f"{base}/histogram",
        "dead_fraction": f"{base}/dead_fraction",
        "mean_abs": f"{base}/mean_abs",
    }


_SUMMARY_METHODS = ("add_image", "add_histogram_raw", "add_scalar", "flush", "close")


def _summary_writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise OptionError(
            "writing TensorBoard event files needs the tensorboard package, which is not "
            "installed; pip install 'featuremaps[tensorboard]', or pass "
            "writer=FolderWriter(path) for PNG and JSON files"
        ) from None
    return SummaryWriter


class TensorBoardWriter:
    """Log looks to TensorBoard: ``target`` is a ``SummaryWriter`` (left open on
    :meth:`close`, only flushed) or a folder path (a writer of its own, closed on close)."""

    def __init__(self, target: Any) -> None:
        if isinstance(target, (str, Path)):
            self.experiment = _summary_writer_class()(log_dir=str(target))
            self.owned = True
        elif all(callable(getattr(target, m, None)) for m in _SUMMARY_METHODS):
            # torch's SummaryWriter, or one with its methods (tensorboardX's, which Lightning's
            # TensorBoardLogger uses when it is installed).
            self.experiment = target
            self.owned = False
        else:
            raise OptionError(
                f"TensorBoardWriter got a {type(target).__name__}; expected a "
                "torch.utils.tensorboard.SummaryWriter or a folder path"
            )

    def __repr__(self) -> str:
        return f"TensorBoardWriter({getattr(self.experiment, 'log_dir', '?')!r})"

    def write(self, look: Look) -> None:
        """Log every layer of ``look`` at its step."""
        for layer in look.layers:
            self.write_layer(layer, look.step)

    def write_layer(self, layer: LayerLook, step: int) -> None:
        """Log one layer: the picture (RGB, as drawn), the exact histogram, the statistics."""
        tag = tags(layer.name)
        if layer.picture is not None:
            pixels = np.asarray(layer.picture.pixels)
            self.experiment.add_image(tag["grid"], pixels, step, dataformats="HWC")
        histogram = layer.histogram
        if histogram.total:
            lo, hi, total, squares = layer.moments
            # TensorBoard's buckets are given by their right edges; the first starts at min.
            self.experiment.add_histogram_raw(
                tag["histogram"],
                min=lo,
                max=hi,
                num=histogram.total,
                sum=total,
                sum_squares=squares,
                bucket_limits=histogram.edges[1:].tolist(),
                bucket_counts=histogram.counts.tolist(),
                global_step=step,
            )
        self.experiment.add_scalar(tag["dead_fraction"], layer.dead_fraction, step)
        self.experiment.add_scalar(tag["mean_abs"], layer.mean_abs, step)

    def close(self) -> None:
        """Flush the event files (and close the writer when this object made it)."""
        if self.owned:
            self.experiment.close()
        else:
            self.experiment.flush()


def step_folder(step: int) -> str:
    """The sub-folder of one look in a folder writer's output."""
    return f"steps/{step:08d}"


def look_json(look: Look, images: dict[str, str]) -> dict[str, Any]:
    """What a folder writer's ``look.json`` says about one look (``images``: layer -> PNG)."""
    return {
        "step": look.step,
        "layers": [
            {
                "name": layer.name,
                "module_type": layer.module_type,
                "shape": list(layer.shape),
                "image": images.get(layer.name),
                "skipped": layer.skipped,
                "warnings": list(layer.warnings),
                "dead_fraction": layer.dead_fraction,
                "mean_abs": layer.mean_abs,
                "histogram": {
                    "edges": layer.histogram.edges.tolist(),
                    "counts": layer.histogram.counts.tolist(),
                    "nonfinite": layer.histogram.nonfinite,
                },
                "channel_stats": layer.stats.to_json(),
            }
            for layer in look.layers
        ],
    }


class FolderWriter:
    """Write each look as PNG files and a ``look.json`` under ``steps/<step>/`` of ``target``,
    and a ``manifest.json`` that lists the looks so far (read by ``featuremaps
    report-timeline``). The folder is made (or an earlier featuremaps folder replaced) at the
    first look; each file then appears whole (see :func:`featuremaps.io.update_run_folder`)."""

    def __init__(self, target: str | Path) -> None:
        self.target = Path(target)
        self.steps: list[dict[str, Any]] = []
        self.started = False

    def __repr__(self) -> str:
        return f"FolderWriter({str(self.target)!r}, {len(self.steps)} looks)"

    def _manifest(self) -> dict[str, Any]:
        return {"tool": TOOL, "kind": WATCH_KIND, "looks": self.steps}

    def write(self, look: Look) -> None:
        """Write one look's pictures and numbers, then the manifest that lists it."""
        if not self.started:
            with OutputFolder(self.target) as folder:
                folder.write_json(MANIFEST, self._manifest())
            self.started = True
        where = step_folder(look.step)
        files: dict[str, bytes] = {}
        images: dict[str, str] = {}
        for index, layer in enumerate(look.layers):
            if layer.picture is not None:
                image = f"{where}/{safe_filename(index, layer.name)}"
                files[image] = encode(layer.picture)
                images[layer.name] = image
        look_file = f"{where}/look.json"
        files[look_file] = (dump_json(look_json(look, images)) + "\n").encode("utf-8")
        self.steps = [s for s in self.steps if s["step"] != look.step]
        self.steps.append({"step": look.step, "look": look_file})
        update_run_folder(self.target, files)
        manifest = (dump_json(self._manifest()) + "\n").encode("utf-8")
        update_run_folder(self.target, {MANIFEST: manifest})

    def close(self) -> None:
        """Nothing to flush: every look is on disk when :meth:`write` returns."""


class Writers:
    """Several writers as one: each look goes to every one of them, in order."""

    def __init__(self, writers: list[LookWriter]) -> None:
        self.writers = writers

    def __repr__(self) -> str:
        return f"Writers({self.writers!r})"

    def write(self, look: Look) -> None:
        """Hand ``look`` to every writer."""
        for writer in self.writers:
            writer.write(look)

    def close(self) -> None:
        """Close every writer."""
        for writer in self.writers:
            writer.close()


def resolve_writer(writer: Any) -> LookWriter | None:
    """The writer for :func:`featuremaps.watch`'s ``writer=``: None, a writer as it is, a
    ``SummaryWriter`` or a folder path (TensorBoard event files), or a list of those."""
    if writer is None:
        return None
    if isinstance(writer, (list, tuple)):
        found = [resolve_writer(w) for w in writer]
        return Writers([w for w in found if w is not None])
    if isinstance(writer, (str, Path)) or hasattr(writer, "add_scalar"):
        return TensorBoardWriter(writer)
    if callable(getattr(writer, "write", None)) and callable(getattr(writer, "close", None)):
        return writer  # type: ignore[no-any-return]
    raise OptionError(
        f"watch() got writer={type(writer).__name__}; expected a SummaryWriter, a folder path "
        "(TensorBoard event files), a FolderWriter(path) or None"
    )
