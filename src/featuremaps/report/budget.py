"""The report's data budget: ``data/`` of a run stays within a size (``--report-budget``).

Part of the ``report`` stage (… → render → **report** → io). A run writes each drawn record's
float16 data file whole, as the record passes, and notes it as a :class:`LayerDataFile`. When the
run is over and the files (with the statistics script the page adds) exceed the budget,
:func:`plan` gives every file the number of its channels it keeps: all of them up to one common
size cap, the largest with which the total fits, so small layers stay whole and only the largest
lose channels. :func:`apply_budget` then rewrites those files with their first channels (the
tiles shown first), or removes a file whose one channel is already over the cap (the page then
shows the record's PNG). The PNGs and the arrays file (``--save-arrays``, exact float32 values of
every channel) are not counted and never reduced. The files are read and written through the
run's :class:`~featuremaps.io.OutputFolder`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from featuremaps.io import OutputFolder
from featuremaps.manifest import RecordSummary
from featuremaps.report.render import (
    layer_data_script,
    layer_data_size,
    layer_data_values,
)

__all__ = [
    "DEFAULT_REPORT_BUDGET_MIB",
    "MIB",
    "BudgetOutcome",
    "LayerDataFile",
    "apply_budget",
    "plan",
]

DEFAULT_REPORT_BUDGET_MIB = 200.0
MIB = 1 << 20


@dataclass(frozen=True)
class LayerDataFile:
    """One record's data file as written: its path in the run folder, the record's name and file
    stem, the shape ``(k, H, W)`` of the channels it holds, their exact ranges, the values of each
    channel that overflowed float16, and its size in bytes."""

    path: str
    record: str
    stem: str
    shape: tuple[int, int, int]
    ranges: tuple[tuple[float | None, float | None], ...]
    overflow: tuple[int, ...]
    size: int

    def size_with(self, channels: int) -> int:
        """The file's size with only its first ``channels`` channels (0: no file)."""
        if channels >= self.shape[0]:
            return self.size
        if channels <= 0:
            return 0
        return layer_data_size(
            self.stem,
            (channels, *self.shape[1:]),
            sum(self.overflow[:channels]),
            self.ranges[:channels],
        )

    def channels_within(self, cap: int) -> int:
        """The most leading channels whose file is at most ``cap`` bytes."""
        low, high = 0, self.shape[0]  # the size grows with the channel count
        while low < high:
            middle = (low + high + 1) // 2
            if self.size_with(middle) <= cap:
                low = middle
            else:
                high = middle - 1
        return low


def plan(files: Sequence[LayerDataFile], limit: int) -> list[int]:
    """How many channels each file keeps so that together they take at most ``limit`` bytes:
    every file is cut to the same size cap, the largest that fits (all channels when the files
    already fit)."""

    def total(cap: int) -> int:
        return sum(f.size_with(f.channels_within(cap)) for f in files)

    if sum(f.size for f in files) <= limit:
        return [f.shape[0] for f in files]
    low, high = 0, max(f.size for f in files)
    while low < high:
        middle = (low + high + 1) // 2
        if total(middle) <= limit:
            low = middle
        else:
            high = middle - 1
    return [f.channels_within(low) for f in files]


@dataclass(frozen=True)
class BudgetOutcome:
    """What the budget did: the budget (``None``: none), the bytes the data files needed and now
    take (the statistics script included), and the channels each reduced record keeps (by
    record name; 0: its data file was dropped)."""

    budget: int | None
    needed: int
    stored: int
    kept: dict[str, int]

    def describe(self) -> dict[str, object]:
        """The manifest's ``report_data``."""
        return {
            "budget_bytes": self.budget,
            "needed_bytes": self.needed,
            "stored_bytes": self.stored,
            "reduced_records": len(self.kept),
        }

    def message(self) -> str | None:
        """One sentence for the terminal and the page when records were reduced."""
        if not self.kept or self.budget is None:
            return None
        dropped = sum(1 for k in self.kept.values() if k == 0)
        none = f" ({dropped} keep none: the page shows their pictures)" if dropped else ""
        over = (
            " (the statistics of every channel alone are over the budget)"
            if self.stored > self.budget
            else ""
        )
        return (
            f"the report's data would take {self.needed / MIB:.1f} MiB, over its budget of "
            f"{self.budget / MIB:g} MiB: {len(self.kept)} layers keep fewer of their drawn "
            f"channels in it{none}, {self.stored / MIB:.1f} MiB stored{over}; the PNGs show every "
            "drawn channel, --report-budget MiB raises the budget, --save-arrays keeps exact "
            "values of every channel"
        )

    def record(self, summary: RecordSummary) -> RecordSummary:
        """``summary`` as the manifest gives it after the budget: how many channels its data
        file keeps, and a note, when it was reduced."""
        kept = self.kept.get(summary.name)
        if kept is None or summary.data is None:
            return summary
        drawn = len(summary.channels_shown or ())
        note = (
            f"the report's data keeps the first {kept} of the {drawn} drawn channels (report "
            "budget); the picture shows all of them"
            if kept
            else "the report's data keeps none of this layer's channels (report budget); the "
            "page shows its picture"
        )
        return replace(
            summary,
            data=summary.data if kept else None,
            data_channels=kept,
            warnings=(*summary.warnings, note),
        )


def apply_budget(
    folder: OutputFolder, files: Sequence[LayerDataFile], limit: int | None, other: int
) -> BudgetOutcome:
    """Fit the data ``files`` written in ``folder`` into ``limit`` bytes (``None``: no limit), of
    which the statistics script takes ``other`` already: rewrite the files that keep fewer
    channels and remove those that keep none."""
    needed = other + sum(f.size for f in files)
    if limit is None:
        return BudgetOutcome(None, needed, needed, {})
    keep = plan(files, max(0, limit - other))
    kept: dict[str, int] = {}
    stored = other
    for file, channels in zip(files, keep, strict=True):
        if channels >= file.shape[0]:
            stored += file.size
            continue
        kept[file.record] = channels
        if channels == 0:
            folder.remove(file.path)
            continue
        shape = (channels, *file.shape[1:])
        values = layer_data_values(folder.read_bytes(file.path), shape)
        script = layer_data_script(
            file.stem, values, sum(file.overflow[:channels]), file.ranges[:channels]
        )
        folder.write_bytes(file.path, script)
        stored += len(script)
    return BudgetOutcome(limit, needed, stored, kept)
