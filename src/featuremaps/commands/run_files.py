"""The ``run`` command's files: the writer thread, the report's layer data, the input pictures.

Part of :mod:`featuremaps.commands.run` (stage: render → encode → io): what one run hands to its
output folder besides the channel grids' own pictures, encoded off the model's thread where it can,
and the token layers' pictures, whose PCA is taken there too (:func:`finish_tokens`).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import PurePosixPath
from typing import Any, TypeVar

import numpy as np
import torch

from featuremaps.capture import LayerRecord
from featuremaps.commands.common import ResolvedInput
from featuremaps.commands.run_drawing import Drawing, finished
from featuremaps.inputs import fed_picture
from featuremaps.io import OutputFolder, safe_filename
from featuremaps.manifest import RecordSummary
from featuremaps.render.encode import encode, encode_png
from featuremaps.render.tokens import PcaMemo, TokenPlan
from featuremaps.report import (
    DATA_DIR,
    STATS_FILE,
    float16_copy,
    layer_data_script,
    stats_script,
)
from featuremaps.report.budget import LayerDataFile
from featuremaps.report.render import layer_data_head, layer_data_size
from featuremaps.stats import ChannelStats

__all__ = [
    "FED_PICTURE",
    "INPUT_PICTURE",
    "BackgroundWriter",
    "StatisticsScripts",
    "finish_tokens",
    "held_bytes",
    "input_pictures",
    "layer_data",
    "npy_bytes",
]

T = TypeVar("T")

INPUT_PICTURE = "input.png"
FED_PICTURE = "input-fed.png"
#: Bytes the writer's queue may hold beyond its first jobs (:class:`BackgroundWriter`).
WRITER_BUDGET = 64 << 20


class SharedCores:
    """The CPU threads of a run, shared between the model, the drawing and the writer's thread.

    Entered around the capture. On a machine with few cores, threads that wait for each other
    at every step lose more than they gain while the writer holds a core: numpy's BLAS (the PCA
    of token layers) runs on one thread (a (768, 14, 14) PCA: 8 ms alone, 34 ms with two BLAS
    threads beside a busy thread, 13 ms on one), and :meth:`share` gives the model one intra-op
    thread while the writer is busy and its own number again when the writer is idle. The
    numbers of threads are restored on exit.
    """

    def __init__(self) -> None:
        self._threads = self._current = 0
        self._blas: Any = None

    def __enter__(self) -> SharedCores:
        from threadpoolctl import threadpool_limits

        self._threads = self._current = torch.get_num_threads()
        self._blas = threadpool_limits(1, user_api="blas")
        return self

    def share(self, writer_busy: bool) -> None:
        """One intra-op thread for the model while the writer is busy, else all of them."""
        want = 1 if writer_busy else self._threads
        if want != self._current and self._threads:
            torch.set_num_threads(want)
            self._current = want

    def __exit__(self, *exc: object) -> None:
        if self._current != self._threads:
            torch.set_num_threads(self._threads)
        if self._blas is not None:
            self._blas.restore_original_limits()


class BackgroundWriter:
    """Encode and write files on a second thread while the model keeps running.

    PNG compression (ISA-L or zlib) and file writes release the GIL, so they overlap with the
    forward pass and the next layer's drawing; so does the PCA of a token layer (LAPACK), which
    :meth:`run` takes there too. The queue is bounded by what its jobs hold: ``limit`` jobs may
    always wait, more only while they hold at most ``budget`` bytes together (a ViT's token
    layers queue their PCAs, a few MB each, instead of holding up the model after four).
    """

    def __init__(
        self, timings: dict[str, float], limit: int = 4, budget: int = WRITER_BUDGET
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="featuremaps-write")
        self._pending: list[tuple[Future[Any], int]] = []
        self._limit = limit
        self._budget = budget
        self._timings = timings  # only this thread touches the "encode" and "write" keys

    def submit(
        self,
        write: Callable[[str, bytes], object],
        path: str,
        encode: Callable[[], bytes],
        held: int,
    ) -> None:
        """Encode and write one file; ``held``: the bytes ``encode`` keeps alive until then
        (no default: a job that forgot them would be free against the budget)."""

        def job() -> None:
            start = time.perf_counter()
            data = encode()
            middle = time.perf_counter()
            write(path, data)
            self._timings["encode"] += middle - start
            self._timings["write"] += time.perf_counter() - middle

        self.run(job, held)

    def run(self, job: Callable[[], T], held: int) -> Future[T]:
        """Run ``job`` on the writer's thread, in turn with the files; its future. ``held``:
        the bytes the job keeps alive until it has run."""
        while self._pending and self._pending[0][0].done():
            self._pending.pop(0)[0].result()
        while len(self._pending) >= self._limit and (
            held + sum(size for _, size in self._pending) > self._budget
        ):
            self._pending.pop(0)[0].result()  # re-raises a failed job here, in the caller
        future = self._pool.submit(job)
        self._pending.append((future, held))
        return future

    def busy(self) -> bool:
        """Whether a picture is being encoded or waits to be."""
        return any(not job.done() for job, _ in self._pending)

    def wait(self) -> None:
        while self._pending:
            self._pending.pop(0)[0].result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class StatisticsScripts:
    """The report's statistics script of one run (:data:`~featuremaps.report.STATS_FILE`): each
    record's part (:func:`stats_script`) made as the record passes, the file written once by
    :meth:`finish`. A record whose statistics change afterwards (``--filters`` adds the norms of
    its filters to them) has its part made again there."""

    def __init__(self, folder: OutputFolder, prefix: str) -> None:
        self._folder, self._prefix = folder, prefix
        self._made: dict[str, tuple[object, bytes]] = {}  # the statistics scripted, the part

    def add(self, summary: RecordSummary) -> None:
        """Make the part of ``summary`` (a drawn record with statistics; else nothing)."""
        part = self._part(summary)
        if part is not None:
            self._made[summary.name] = (summary.channel_stats, part)

    def finish(self, summaries: Sequence[RecordSummary]) -> int:
        """Write the script of ``summaries``, in their order, from the parts made as the records
        passed where their statistics are still the same; its bytes (0: no file, no record has
        statistics to show)."""
        parts = []
        for summary in summaries:
            made = self._made.get(summary.name)
            if made is not None and made[0] is summary.channel_stats:
                part: bytes | None = made[1]
            else:
                part = self._part(summary)
            if part is not None:
                parts.append(part)
        if not parts:
            return 0
        script = b"".join(parts)
        self._folder.write_bytes(self._prefix + STATS_FILE, script)
        return len(script)

    @staticmethod
    def _part(summary: RecordSummary) -> bytes | None:
        """The part of ``summary``; None: the record has none."""
        if not summary.image or summary.channel_stats is None:
            return None
        return stats_script(PurePosixPath(summary.image).stem, summary.channel_stats)


def held_bytes(picture: object) -> int:
    """The bytes of the arrays a picture waiting for the writer keeps alive: a mosaic's palette
    indices, a composite's RGB pixels, a token plan's copy of the tokens and its panels."""
    parts = [picture]
    if isinstance(picture, TokenPlan):
        parts = [picture.patches, picture.norm, picture.tail, picture.grid]
    total = 0
    for part in parts:
        if not isinstance(part, np.ndarray):
            indices = getattr(part, "indices", None)
            part = getattr(part, "rgb", None) if indices is None else indices
        total += part.nbytes if isinstance(part, np.ndarray) else 0
    return total


def _finite_or_none(values: np.ndarray) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values.tolist()]


def layer_data(
    record: LayerRecord, maps: np.ndarray, shown: tuple[int, ...], stats: ChannelStats, prefix: str
) -> tuple[str, Callable[[], bytes], LayerDataFile]:
    """The report's data file for one record: its path, a job that encodes it (float16), and
    what the report's budget needs to know of it.

    The float16 copy is taken here, not in the job: ``maps`` may share memory with the live
    activation, which the network can change in place as soon as this record is consumed.
    """
    stem = safe_filename(record.index, record.name, suffix="")
    block = maps[: len(shown)] if shown == tuple(range(len(shown))) else maps[list(shown)]
    low, high = stats.min[list(shown)], stats.max[list(shown)]
    ends = np.abs(np.concatenate([low, high]))
    ends = ends[np.isfinite(ends)]  # NaN: a channel without finite values
    half, overflow = float16_copy(block, float(ends.max()) if ends.size else 0.0)
    ranges = list(zip(_finite_or_none(low), _finite_or_none(high), strict=True))
    path = f"{DATA_DIR}/{stem}.js"
    each = (0,) * len(shown)
    if overflow:  # rare: which channels overflowed, for a file that keeps only some of them
        over = np.isfinite(block) & ~np.isfinite(half)
        each = tuple(int(n) for n in over.reshape(len(shown), -1).sum(axis=1))
    k, h, w = (int(n) for n in half.shape)
    head = layer_data_head(stem, (k, h, w), overflow, ranges)  # its numbers' text made once
    size = layer_data_size(stem, (k, h, w), overflow, ranges, head)
    file = LayerDataFile(prefix + path, record.name, stem, (k, h, w), tuple(ranges), each, size)
    return path, lambda: layer_data_script(stem, half, overflow, ranges, head), file


def input_pictures(
    folder: OutputFolder, prefix: str, item: ResolvedInput, sample: int, writer: BackgroundWriter
) -> dict[str, Any]:
    """Queue the input as given and as fed (PNG) for writing; return the manifest's
    ``input.pictures``. They are encoded on the writer's thread, while the model runs."""
    given = None
    display = item.display_of(sample)
    encode_given: Callable[[], bytes] | None = None
    if display is not None:
        given = prefix + INPUT_PICTURE
        # Cached: fed as read, the fed picture is the same one, and the writer (one thread, jobs
        # in order) then writes these bytes again instead of encoding it twice.
        encode_given = functools.lru_cache(maxsize=1)(functools.partial(encode_png, display))
        writer.submit(folder.write_bytes, given, encode_given, display.nbytes)
    fed = fed_picture(item.tensor, item.preprocessing, sample)
    fed_path = None
    if fed is not None:
        fed_path = prefix + FED_PICTURE
        encode_fed: Callable[[], bytes] = functools.partial(encode_png, fed[0])
        if encode_given is not None and display is not None and np.array_equal(display, fed[0]):
            encode_fed = encode_given
        writer.submit(folder.write_bytes, fed_path, encode_fed, fed[0].nbytes)
    return {"given": given, "fed": fed_path, "fed_note": fed[1] if fed else None}


def finish_tokens(
    drawing: Drawing,
    folder: OutputFolder,
    image: str,
    basis: str,
    timings: dict[str, float],
    memo: PcaMemo | None = None,
) -> dict[str, Any]:
    """A :attr:`~featuremaps.commands.run_drawing.Drawing.pending` token layer, on the writer's
    thread: its PCA taken (numpy's LAPACK lets go of the GIL, so the model goes on; ``memo``:
    the run's, one thread in layer order), its picture and PCA basis written; the manifest's
    ``pca`` entry."""
    start = time.perf_counter()
    done = finished(drawing, memo)
    middle = time.perf_counter()
    data = encode(done.picture), npy_bytes(done.pca_array)
    encoded = time.perf_counter()
    folder.write_bytes(image, data[0])
    folder.write_bytes(basis, data[1])
    # Only this thread touches these keys.
    timings["pca"] += middle - start
    timings["encode"] += encoded - middle
    timings["write"] += time.perf_counter() - encoded
    assert done.pca is not None
    return {**done.pca, "basis": basis}


def npy_bytes(array: np.ndarray | None) -> bytes:
    assert array is not None
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
