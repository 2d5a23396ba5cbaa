"""Charts of data-set statistics as PNG bytes: a layer's activation histogram, its ranked channels.

Part of the pure ``render`` stage: numbers in, PNG bytes out, no files. Unlike the feature-map
pictures, which are pixels computed in numpy, these are charts with axes, ticks and text, so they
are drawn by matplotlib, through its object-oriented API only: each :class:`Charts` owns its
``Figure`` objects, each on its own ``FigureCanvasAgg``. ``pyplot`` is never imported, so there is
no global list of open figures to leak into, no GUI backend to pick, and no interference with a
user's own plots.

Building a figure with its axes, spines and ticks costs about as much as drawing it, so a
:class:`Charts` keeps one figure per kind of chart and redraws it for each layer (everything a
chart draws is removed before the next one, and every limit and tick is set anew). A stats run
makes one ``Charts`` for all its layers; :func:`plot_histogram` and :func:`plot_ranked` make a
fresh one for a single chart.

A model with random weights gets its stamp (``RANDOM WEIGHTS``) on every chart, white on a red
box in the top right corner, as on the feature-map legends.

Layer names are text from the model and may hold anything: they are drawn with mathtext off (a
``$`` is a dollar sign), with control characters and characters the font lacks shown escaped
(``\\u…``) instead of as missing-glyph boxes and warnings, and shortened when very long.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import StepPatch
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

from featuremaps.datastats import Histogram
from featuremaps.manifest import RANDOM_WEIGHTS
from featuremaps.render.palette import STAMP_FILL, STAMP_TEXT

__all__ = [
    "DPI",
    "SIZE",
    "Charts",
    "ablation_ranked_label",
    "ablation_ranking_caption",
    "plot_ablation",
    "plot_histogram",
    "plot_ranked",
]

SIZE = (6.4, 3.2)  # inches: 640 x 320 pixels at DPI
DPI = 100
BAR_COLOR = "#3b6ea5"
DEAD_COLOR = "#d62728"
MAX_BARS = 64  # more channels than this are drawn as one filled step outline, not as bars
_NAME_CHARS = 44  # the longest title then fits 640 pixels


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _stamp(figure: Figure, stamp: str) -> None:
    """``stamp`` white on the legends' red box, in the figure's top right corner."""
    box = {"boxstyle": "square,pad=0.35", "facecolor": _hex(STAMP_FILL), "edgecolor": "none"}
    figure.text(0.99, 0.985, stamp, ha="right", va="top", fontsize=8, fontweight="bold",
                color=_hex(STAMP_TEXT), bbox=box, parse_math=False)  # fmt: skip


@functools.lru_cache(maxsize=1)
def _font_chars() -> frozenset[int]:
    """Code points the default font can draw."""
    from matplotlib.font_manager import FontProperties, findfont
    from matplotlib.ft2font import FT2Font

    return frozenset(FT2Font(findfont(FontProperties())).get_charmap())


def _label(name: str) -> str:
    """``name`` as drawable text: unknown and control characters escaped, long names cut."""
    chars = _font_chars()
    text = "".join(
        c if c.isprintable() and ord(c) in chars else c.encode("unicode_escape").decode("ascii")
        for c in name
    )
    return text if len(text) <= _NAME_CHARS else text[: _NAME_CHARS - 1] + "…"


def _count_label(value: float, _pos: object = None) -> str:
    """Tick labels of the log count axis: 1, 2, 5, 10, …, 100, then 1e3, 1e4, … (no mathtext)."""
    return f"{value:.0f}" if value < 1000 else f"1e{round(math.log10(value))}"


def _count_ticks(top: float) -> list[float]:
    """Ticks of the log count axis up to ``top``: 1, 2, 5, 10, 20, 50 below 100, else at most
    7 powers of ten."""
    if top < 100:
        return [t for t in (1.0, 2.0, 5.0, 10.0, 20.0, 50.0) if t <= top]
    last = math.floor(math.log10(top))
    step = math.ceil((last + 1) / 7)
    return [10.0**e for e in range(0, last + 1, step)]


def _steps(ax: Axes, values: np.ndarray, edges: np.ndarray, baseline: float) -> StepPatch:
    """A filled step outline, like ``ax.stairs`` but added without updating the data limits:
    that walks the outline segment by segment in Python (60 ms for 2048 channels), and every
    chart here sets its limits itself."""
    patch = StepPatch(values, edges, baseline=baseline, fill=True, color=BAR_COLOR)
    ax.add_artist(patch)
    return patch


class _Chart:
    """One reusable figure: fixed axes, a title and a subtitle; drawn artists are tracked."""

    def __init__(self, size: tuple[float, float], dpi: int, stamp: str | None) -> None:
        self.figure = Figure(figsize=size, dpi=dpi)
        self.canvas = FigureCanvasAgg(self.figure)
        # Fixed margins: a layout engine costs time and warns when a figure is too small.
        self.figure.subplots_adjust(left=0.11, right=0.97, bottom=0.16, top=0.80)
        self.axes: Axes = self.figure.add_subplot()
        self.axes.tick_params(labelsize=7)
        self.axes.xaxis.label.set_fontsize(8)
        self.axes.yaxis.label.set_fontsize(8)
        self.title = self.figure.text(0.5, 0.95, "", ha="center", va="top", fontsize=10,
                                      parse_math=False)  # fmt: skip
        self.subtitle = self.figure.text(0.5, 0.87, "", ha="center", va="top", fontsize=8,
                                         color="#444444", parse_math=False)  # fmt: skip
        if stamp:
            _stamp(self.figure, stamp)
        self.drawn: list[Any] = []

    def start(self, title: str, subtitle: str, xlabel: str, ylabel: str) -> Axes:
        for artist in self.drawn:
            artist.remove()
        self.drawn.clear()
        self.title.set_text(title)
        self.subtitle.set_text(subtitle)
        self.axes.set_xlabel(xlabel, parse_math=False)
        self.axes.set_ylabel(ylabel, parse_math=False)
        return self.axes

    def keep(self, *artists: Any) -> None:
        self.drawn.extend(artists)

    def png(self) -> bytes:
        buf = io.BytesIO()
        # Fast compression, as for the feature-map pictures; no version stamp in the file.
        self.figure.savefig(buf, format="png", metadata={"Software": None},
                            pil_kwargs={"compress_level": 1})  # fmt: skip
        return buf.getvalue()


class Charts:
    """Draws the charts of a stats run as PNG bytes, reusing one figure per kind of chart.

    Args:
        size: figure size in inches (width, height).
        dpi: pixels per inch; the PNGs are ``round(size * dpi)`` pixels.
        stamp: drawn on every chart in a red box (``RANDOM WEIGHTS`` for a model with random
            weights), or None.
    """

    def __init__(
        self, size: tuple[float, float] = SIZE, dpi: int = DPI, stamp: str | None = None
    ) -> None:
        self.size, self.dpi, self.stamp = size, dpi, stamp
        self._histogram: _Chart | None = None
        self._ranked: _Chart | None = None

    def histogram(self, hist: Histogram, *, layer: str, images: int) -> bytes:
        """A PNG of ``hist`` (all values of ``layer``, channels pooled), counts on a log scale.

        The line under the title states the images and values counted and the non-finite
        values, which are not binned.
        """
        if self._histogram is None:
            self._histogram = _Chart(self.size, self.dpi, self.stamp)
            self._histogram.axes.set_yscale("log")
            self._histogram.axes.yaxis.set_minor_locator(NullLocator())
            self._histogram.axes.yaxis.set_major_formatter(FuncFormatter(_count_label))
        chart = self._histogram
        plural = "" if images == 1 else "s"
        ax = chart.start(
            f"{_label(layer)}: activation histogram",
            f"{images:,} image{plural}, {hist.total:,} values counted, "
            f"{hist.nonfinite:,} non-finite (NaN/Inf, not binned)",
            "activation value (all channels)",
            "count (log scale)",
        )
        if hist.total == 0:
            ax.set_xlim(0.0, 1.0)
            ax.set_ylim(0.5, 10.0)
            ax.xaxis.set_major_locator(NullLocator())
            ax.yaxis.set_major_locator(NullLocator())
            chart.keep(ax.text(0.5, 0.5, "no finite values", ha="center", va="center",
                               transform=ax.transAxes))  # fmt: skip
            return chart.png()
        counts = hist.counts.astype(np.float64)
        top = float(counts.max())
        # Empty bins sit on the baseline, below the smallest count (1): nothing is drawn there.
        chart.keep(_steps(ax, counts, hist.edges, baseline=0.5))
        ax.set_ylim(0.5, top * 2.0)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.yaxis.set_major_locator(FixedLocator(_count_ticks(top)))
        lo, hi = float(hist.edges[0]), float(hist.edges[-1])
        pad = (hi - lo) * 0.03 if math.isfinite(hi - lo) else 0.0
        ax.set_xlim(lo - pad, hi + pad)
        return chart.png()

    def ranked(
        self,
        values: np.ndarray,
        *,
        layer: str,
        statistic: str,
        dead: np.ndarray | None = None,
    ) -> bytes:
        """A PNG of the per-channel ``values`` of ``layer``, sorted largest first.

        ``dead`` (a boolean per channel) marks channels that were constant: their bars are red,
        with a pale red band behind and a red tick on the axis, so they show even at height
        zero. Channels whose statistic is NaN (no finite values) come last, drawn at zero. Up
        to :data:`MAX_BARS` channels are drawn as separate bars, more as one filled step outline
        (one drawing primitive for any number of channels).
        """
        if self._ranked is None:
            self._ranked = _Chart(self.size, self.dpi, self.stamp)
            self._ranked.axes.xaxis.set_major_locator(MaxNLocator(6, integer=True, min_n_ticks=1))
            self._ranked.axes.yaxis.set_major_locator(MaxNLocator(5))
        chart = self._ranked
        values = np.asarray(values, dtype=np.float64)
        channels = len(values)
        dead_mask = np.zeros(channels, bool) if dead is None else np.asarray(dead, dtype=bool)
        order = np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")
        heights = np.nan_to_num(values[order], nan=0.0, posinf=0.0, neginf=0.0)
        dead_sorted = dead_mask[order]
        ranks = np.arange(1, channels + 1)
        missing = int(np.isnan(values).sum())

        plural = "" if channels == 1 else "s"
        notes = [f"{channels:,} channel{plural}", f"{int(dead_mask.sum()):,} dead (red)"]
        if missing:
            notes.append(f"{missing:,} without finite values (drawn at 0)")
        ax = chart.start(
            f"{_label(layer)}: channels ranked by {statistic}",
            ", ".join(notes),
            "rank (1 = largest)",
            statistic,
        )
        if dead_sorted.any():
            # A pale band behind each dead channel and a solid tick on the axis: visible at
            # height zero and among thousands of channels.
            at, width = ranks[dead_sorted], max(0.5, 300.0 / channels)  # points: ~1 channel
            band = ax.get_xaxis_transform()
            chart.keep(
                ax.vlines(at, 0, 1, transform=band, colors=DEAD_COLOR, alpha=0.15, linewidth=width),
                ax.vlines(at, 0, 0.04, transform=band, colors=DEAD_COLOR, linewidth=width),
            )
        if channels <= MAX_BARS:
            # One collection of rectangles, not ax.bar's one patch per bar (each walked to
            # update the data limits, which are set below anyway).
            left, right = ranks - 0.4, ranks + 0.4
            zero = np.zeros(channels)
            corners = [(left, zero), (left, heights), (right, heights), (right, zero)]
            bars = PolyCollection(
                list(np.stack([np.stack(c, axis=-1) for c in corners], axis=1)),  # (4, 2) each
                facecolors=np.where(dead_sorted, DEAD_COLOR, BAR_COLOR).tolist(),
                edgecolors="none",
            )
            chart.keep(ax.add_collection(bars, autolim=False))
        else:
            chart.keep(_steps(ax, heights, np.arange(channels + 1) + 0.5, baseline=0.0))
        chart.keep(ax.axhline(0.0, color="#888888", linewidth=0.6))
        low = min(0.0, float(heights.min(initial=0.0)))
        high = max(0.0, float(heights.max(initial=0.0)))
        span = high - low if high > low else 1.0
        ax.set_ylim(low - 0.04 * span * (low < 0), high + 0.06 * span)
        ax.set_xlim(0.5, max(channels, 1) + 0.5)
        return chart.png()


def plot_histogram(
    hist: Histogram,
    *,
    layer: str,
    images: int,
    size: tuple[float, float] = SIZE,
    dpi: int = DPI,
    stamp: str | None = None,
) -> bytes:
    """One histogram chart (see :meth:`Charts.histogram`) as PNG bytes."""
    return Charts(size, dpi, stamp).histogram(hist, layer=layer, images=images)


def plot_ranked(
    values: np.ndarray,
    *,
    layer: str,
    statistic: str,
    dead: np.ndarray | None = None,
    size: tuple[float, float] = SIZE,
    dpi: int = DPI,
    stamp: str | None = None,
) -> bytes:
    """One ranked-channel chart (see :meth:`Charts.ranked`) as PNG bytes."""
    return Charts(size, dpi, stamp).ranked(values, layer=layer, statistic=statistic, dead=dead)


_ABLATION_PANELS = (
    ("agreement", "top-1 agreement with the unmasked model", "linear"),
    ("mean_abs_dlogit", "mean |Δlogit|", "linear"),
    ("kl", "KL(unmasked ‖ masked), nats", "symlog"),
)


def ablation_ranked_label(stat: str, ranking: str) -> str:
    """The legend entry of the ranked curve: the statistic, and "in-sample" when the ranking was
    computed on the inputs it is measured on (``ranking``: ``AblationResult.ranking``)."""
    return f"lowest {stat} first" + (", ranked in-sample" if "in-sample" in ranking else "")


def ablation_ranking_caption(stat: str, ranking: str) -> str:
    """The line under the ablation picture's title: where the ranking came from."""
    if "in-sample" in ranking:
        return f"ranking by {stat}: in-sample, computed on the same inputs it is measured on"
    file = ranking.removeprefix("statistics file ")
    return f"ranking by {stat} from {_label(PurePath(file).name if file != ranking else file)}"


def plot_ablation(
    curve: Sequence[dict[str, Any]],
    *,
    model: str,
    layers: Sequence[str],
    images: int,
    stat: str,
    trials: int,
    random_weights: bool = False,
    ranking: str = "",
) -> bytes:
    """The ablation curve (rows of ``AblationResult.curve()``): one panel per metric, K on x.

    The red line zeroes the K channels with the lowest ``stat`` in every layer; the grey band
    spans the ``trials`` random draws (min to max) with their mean dashed. ``ranking`` says
    where the ranking came from (``AblationResult.ranking``); an in-sample one is said in the
    red line's legend entry and under the title. With ``random_weights`` the chart gets the
    ``RANDOM WEIGHTS`` stamp, as every chart does.
    """
    fig = Figure(figsize=(11, 3.4), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ks = [row["k"] for row in curve]
    for ax, (metric, label, yscale) in zip(fig.subplots(1, 3), _ABLATION_PANELS, strict=True):
        if trials > 0:
            low = [row[f"random_{metric}_min"] for row in curve]
            high = [row[f"random_{metric}_max"] for row in curve]
            ax.fill_between(ks, low, high, color="0.8", label=f"random channels ({trials} draws)")
            ax.plot(ks, [row[f"random_{metric}_mean"] for row in curve], color="0.45",
                    linestyle="--", marker=".")  # fmt: skip
        ax.plot(ks, [row[f"ranked_{metric}"] for row in curve], color="C3", marker="o",
                label=ablation_ranked_label(stat, ranking))  # fmt: skip
        if yscale == "symlog":
            ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xlabel("K channels zeroed per layer")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        if metric == "agreement":
            ax.set_ylim(-0.02, 1.02)
            ax.legend(fontsize=8, loc="lower left")
    where = ", ".join(_label(n) for n in layers[:3])
    where += f" and {len(layers) - 3} more" if len(layers) > 3 else ""
    title = f"{_label(model)}: channels zeroed in {where}; {images} inputs"
    title += f"\n{ablation_ranking_caption(stat, ranking)}" if ranking else ""
    fig.suptitle(title, fontsize=11, parse_math=False)
    if random_weights:
        _stamp(fig, RANDOM_WEIGHTS)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def plot_pruning(
    rows: Sequence[dict[str, Any]],
    *,
    model: str,
    macs_before: int,
    metric: str,
    stat: str,
    images: int,
    random_weights: bool = False,
    ranking: str = "",
) -> bytes:
    """Agreement with the original against the pruned model's MACs (rows of
    ``PruneResult.rows()``): the red line removes the lowest-ranked channels, the grey dashed
    one as many random channels (the control); the unpruned model is the point at 100 % MACs
    and agreement 1. With ``random_weights`` the chart gets the ``RANDOM WEIGHTS`` stamp."""
    fig = Figure(figsize=(6.4, 4.2), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for selection, colour, style, label in (
        ("random", "0.45", "--", "random channels (control)"),
        ("ranked", "C3", "-", f"lowest {stat} removed"),
    ):
        chosen = sorted((r for r in rows if r["selection"] == selection), key=lambda r: -r["macs"])
        xs = [100.0] + [100.0 * r["macs"] / max(macs_before, 1) for r in chosen]
        ys = [1.0] + [r["agreement"] for r in chosen]
        ax.plot(xs, ys, color=colour, linestyle=style, marker="o", label=label)
        for r, x, y in zip(chosen, xs[1:], ys[1:], strict=True):
            if selection == "ranked":
                step = f"k={r['k']}" if r["ratio"] is None else f"{r['ratio']:g}"
                ax.annotate(step, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.invert_xaxis()  # smaller models to the right
    ax.set_xlabel("MACs of the pruned model (% of the original)")
    what = "top-1 agreement" if metric == "top1_agreement" else "mean cosine of outputs"
    ax.set_ylabel(f"{what} with the original")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    title = f"{_label(model)} pruned, {images} inputs"
    if ranking.startswith("statistics file "):  # the file's name is enough on a chart
        ranking = f"statistics file {PurePath(ranking[16:]).name}"
    elif "in-sample" in ranking:
        ranking = "in-sample (statistics of the inputs measured)"
    title += f"\nranking: {_label(ranking)}" if ranking else ""
    fig.suptitle(title, fontsize=10, parse_math=False)
    if random_weights:
        _stamp(fig, RANDOM_WEIGHTS)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def plot_cka(
    matrix: np.ndarray,
    rows: Sequence[str],
    columns: Sequence[str],
    *,
    title: str,
    random_weights: bool = False,
) -> bytes:
    """The layer × layer CKA heat map (rows: A's layers, columns: B's), on a fixed 0 … 1 scale
    (viridis; NaN grey), with its colour bar. With ``random_weights`` the ``RANDOM WEIGHTS``
    stamp."""
    side = min(12.0, 2.5 + 0.32 * max(len(rows), len(columns)))
    fig = Figure(figsize=(side + 1.2, side), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    shown = np.ma.masked_invalid(np.asarray(matrix, dtype=np.float64))
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad="0.7")
    image = ax.imshow(shown, vmin=0.0, vmax=1.0, cmap=cmap, interpolation="nearest")
    ax.set_xticks(range(len(columns)), [_label(c) for c in columns], rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), [_label(r) for r in rows], fontsize=7)
    ax.set_xlabel("layers of B")
    ax.set_ylabel("layers of A")
    fig.colorbar(image, ax=ax, label="linear CKA (minibatch unbiased HSIC)", shrink=0.8)
    fig.suptitle("\n".join(_label(line) for line in title.split("\n")), fontsize=10,
                 parse_math=False)  # fmt: skip
    if random_weights:
        _stamp(fig, RANDOM_WEIGHTS)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
