"""The report as plain data: built from a run's manifest, before any HTML exists.

First half of the ``report`` stage (… → render → **report** → io). :func:`build_report` reads
only the manifest dict that the run wrote (the same file users load), so a report can be rebuilt
from a finished run folder, and everything the page shows can be checked here without a browser.
Paths in the manifest of a per-image sub-folder start with that sub-folder; ``base`` strips it so
every path here is relative to the report itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from featuremaps import layouts
from featuremaps._errors import InputError
from featuremaps.manifest import TOOL, RecordSummary
from featuremaps.render.scaling import (
    NO_FINITE_TEXT,
    constant_mask,
    constant_text,
    is_constant_range,
)
from featuremaps.report.cams import CamLayer, cam_layers
from featuremaps.report.filter_view import filter_views

__all__ = [
    "DATA_DIR",
    "STATS_FILE",
    "Field",
    "LayerEntry",
    "OutlineNode",
    "Prediction",
    "PredictionItem",
    "ReportData",
    "ReportHeader",
    "build_report",
    "preprocessing_text",
]

DATA_DIR = "data"


#: The statistics of every drawn record of a run, one script for them all, which the page loads
#: when a statistics table or a channel's numbers are first asked for. One file, not one per
#: record: creating a file costs more than writing its bytes (densenet121's run made 366 of them
#: for 8 MB), in the run and wherever the folder is copied.
STATS_FILE = f"{DATA_DIR}/stats.js"


@dataclass(frozen=True)
class Field:
    """One labelled line of the header."""

    label: str
    value: str


@dataclass(frozen=True)
class LayerEntry:
    """One manifest record as the report shows it.

    ``record`` is the manifest's entry read back with :meth:`RecordSummary.from_json`, with its
    ``image`` and ``data`` paths made relative to the report (``base`` stripped) and, for a
    manifest written before records said how they were drawn, ``drawn_as`` filled in. The other
    fields are the report's own: ``key`` is the record's position in the manifest (the page anchor
    is ``L<key>``), ``stem`` the safe file stem shared by the record's picture and its data files
    (``0012_layer1.0.conv1``), and ``low``/``high`` the range of the drawn sample over all channels
    (from the channel statistics), which is what the per-layer scale uses.
    """

    key: int
    record: RecordSummary
    stem: str | None
    low: float | None
    high: float | None

    @property
    def anchor(self) -> str:
        return f"L{self.key}"

    @property
    def shape_text(self) -> str:
        shape = self.record.shape
        return "×".join(str(n) for n in shape) if shape else "never ran"

    @property
    def shown(self) -> tuple[int, ...]:
        """The channels drawn, in order (empty when none were)."""
        return self.record.channels_shown or ()

    @property
    def data_shown(self) -> tuple[int, ...]:
        """The drawn channels the report's data holds: all of them, or the first ones when its
        budget made the record's data file keep fewer (the manifest's ``data_channels``)."""
        kept = self.record.data_channels
        return self.shown if kept is None else self.shown[:kept]

    @property
    def channels(self) -> int | None:
        """The channel count, on the channel axis of the record's layout."""
        shape, layout = self.record.shape, self.record.layout
        if not shape or layout is None:
            return None
        axis = layouts.get(layout, len(shape)).channel_axis
        return shape[axis] if axis is not None else None

    def selection_line(self, order: str) -> str:
        """The legend's selection line: how many channels (heads, for attention) are drawn and,
        unless all are, how they were picked (``order``: the run's, see :class:`ReportData`);
        and, when the report's data budget kept fewer, how many of them the page holds."""
        unit = "head" if self.record.drawn_as == layouts.ATTENTION_MAP else "channel"
        k, total = len(self.shown), self.channels
        kept = self.record.data_channels
        if kept is None and order != "explicit" and k == total:
            return f"all {k} {unit}s shown" + ("" if order == "index" else f" (ordered by {order})")
        if order == "explicit":
            how = "explicit list"
        elif k == total:
            how = "all" if order == "index" else f"all, ordered by {order}"
        else:
            how = f"first {k} by index" if order == "index" else f"top {k} by {order}"
        if kept is not None:
            how += f"; the first {kept} of the {k} drawn, within the report's data budget"
        return f"{k if kept is None else kept} of {total} {unit}s shown ({how})"

    @property
    def maps_shape(self) -> tuple[int, ...] | None:
        """``(C, H, W)`` of the drawn sample (the layout may have moved the channel axis)."""
        shape, layout = self.record.shape, self.record.layout
        if not self.drawn or shape is None or layout is None:
            return None
        return layouts.maps_shape(layouts.get(layout, len(shape)), shape)

    @property
    def stats_file(self) -> str | None:
        """The script that holds this record's statistics (None without statistics)."""
        if self.record.channel_stats is None or self.stem is None:
            return None
        return STATS_FILE

    @property
    def label(self) -> str:
        """The name shown in the outline: the last path segment plus any call/key suffix."""
        name, module = self.record.name, self.record.module
        if not module:
            return name
        return module.rsplit(".", 1)[-1] + name[len(module) :]

    @property
    def range_note(self) -> str | None:
        """What the legends say of the drawn sample's range, by the pictures' rule: the no-finite
        text (its ends "n/a") when no channel has a finite value, the constant text when the
        range spreads no wider than rounding noise of the record's dtype, else None (and None
        without channel statistics)."""
        if not self.record.channel_stats:
            return None
        if self.low is None or self.high is None:
            return NO_FINITE_TEXT
        dtype = self.record.dtype or "float32"
        return constant_text(dtype) if is_constant_range(self.low, self.high, dtype) else None

    @property
    def constant_channels(self) -> tuple[int, ...]:
        """The channels whose own range is constant by the same rule (drawn in one colour on a
        per-channel scale)."""
        stats = self.record.channel_stats or {}
        dtype = self.record.dtype or "float32"
        lows, highs = stats.get("min", ()), stats.get("max", ())
        n = min(len(lows), len(highs))
        mask = constant_mask(_finite_array(lows[:n]), _finite_array(highs[:n]), dtype)
        return tuple(int(c) for c in np.flatnonzero(mask))

    @property
    def drawn(self) -> bool:
        """Whether the run drew this record (the manifest's ``drawn_as``)."""
        r = self.record
        return r.image is not None and r.shape is not None and r.drawn_as is not None


@dataclass(frozen=True)
class OutlineNode:
    """A module path segment, the records its module produced (keys), and its sub-modules."""

    segment: str
    path: str
    entries: tuple[int, ...]
    children: tuple[OutlineNode, ...]

    @property
    def first(self) -> int:
        """The key of the first record in this subtree (when its first call ran)."""
        keys = [*self.entries, *(c.first for c in self.children)]
        return min(keys) if keys else -1

    @property
    def items(self) -> tuple[int | OutlineNode, ...]:
        """What the outline lists under this node, in execution order.

        Records of this module and of its leaf sub-modules are listed one by one where each call
        ran (``conv1, bn1, relu, conv2, bn2, relu#2``), not grouped by module; a sub-module with
        sub-modules of its own stays one foldable node, placed where its first record ran.
        """
        placed: list[tuple[int, int | OutlineNode]] = [(k, k) for k in self.entries]
        for child in self.children:
            if child.children:
                placed.append((child.first, child))
            else:
                placed.extend((k, k) for k in child.entries)
        placed.sort(key=lambda pair: pair[0])
        return tuple(item for _, item in placed)


@dataclass(frozen=True)
class PredictionItem:
    """One of the model's top answers: class index, its name, its probability."""

    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    """The model's answer for the drawn sample (the manifest's ``prediction``)."""

    source: str
    random_weights: bool
    meaningless: bool
    top: tuple[PredictionItem, ...]


@dataclass(frozen=True)
class ReportHeader:
    title: str
    model: tuple[Field, ...]
    random_weights: bool
    weights_status: str
    input: tuple[Field, ...]
    picture_given: str | None
    picture_fed: str | None
    fed_note: str | None
    versions: tuple[Field, ...]
    created: str
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class ReportData:
    header: ReportHeader
    layers: tuple[LayerEntry, ...]
    outline: OutlineNode
    scale: str
    fixed_range: tuple[float, float] | None
    cmap: str | None
    columns: int
    sample: int
    global_range: tuple[float, float] | None
    selection: str
    prediction: Prediction | None = None
    arrays: str | None = None
    order: str = "index"  # how the run picked channels: index, a statistic, or "explicit"
    cams: tuple[CamLayer, ...] = ()  # the class-map panel, by layer (empty: no class maps)
    # record name -> link to its section of an atlas page (``featuremaps atlas --run``)
    atlas: tuple[tuple[str, str], ...] = ()

    def atlas_of(self, name: str) -> str | None:
        """The link to the atlas section of record ``name`` (None when no atlas names it)."""
        return next((href for n, href in self.atlas if n == name), None)

    def cams_of(self, key: int) -> CamLayer | None:
        """The class maps of the record at ``key`` (None when it has none)."""
        return next((c for c in self.cams if c.key == key), None)

    # A run made with --filters: module path -> its filter sheet (see report.filter_view).
    filters: Mapping[str, Mapping[str, Any]] | None = None


def _relative(path: object, base: str) -> str | None:
    if not isinstance(path, str) or not path:
        return None
    return path[len(base) :] if base and path.startswith(base) else path


def _finite(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _finite_array(values: Sequence[Any]) -> np.ndarray:
    """``values`` as float64, NaN where :func:`_finite` gives None (a statistics list holds
    numbers and nulls, so this is one conversion; anything else is taken value by value)."""
    if set(map(type, values)) <= {float, type(None)}:
        with np.errstate(invalid="ignore"):
            out = np.array(values, dtype=np.float64)  # None becomes NaN
        out[~np.isfinite(out)] = np.nan
        return out
    return np.array([np.nan if (f := _finite(v)) is None else f for v in values], np.float64)


def _sample_range(stats: Mapping[str, Sequence[Any]] | None) -> tuple[float | None, float | None]:
    if not stats:
        return None, None
    lows, highs = _finite_array(stats.get("min", ())), _finite_array(stats.get("max", ()))
    lows, highs = lows[~np.isnan(lows)], highs[~np.isnan(highs)]
    return (float(lows.min()) if lows.size else None), (float(highs.max()) if highs.size else None)


def _entry(key: int, rec: Mapping[str, Any], base: str) -> LayerEntry:
    summary = RecordSummary.from_json(rec)
    image = _relative(summary.image, base)
    low, high = _sample_range(summary.channel_stats)
    drawn_as = summary.drawn_as
    if "drawn_as" not in rec and image is not None and summary.layout == "NCHW":
        drawn_as = layouts.CHANNEL_GRID  # a manifest written before records said how
    record = replace(summary, image=image, data=_relative(summary.data, base), drawn_as=drawn_as)
    return LayerEntry(
        key=key,
        record=record,
        stem=PurePosixPath(image).stem if image else None,
        low=low,
        high=high,
    )


def _outline(layers: Sequence[LayerEntry]) -> OutlineNode:
    """The module hierarchy from the records' dotted module paths, in execution order."""
    # Mutable twins of OutlineNode while the tree grows: (entries, children by segment).
    tree: dict[str, Any] = {"entries": [], "children": {}}
    for entry in layers:
        node = tree
        module = entry.record.module
        for part in module.split(".") if module else ():
            node = node["children"].setdefault(part, {"entries": [], "children": {}})
        node["entries"].append(entry.key)

    def freeze(segment: str, path: str, node: dict[str, Any]) -> OutlineNode:
        children = tuple(
            freeze(seg, f"{path}.{seg}" if path else seg, child)
            for seg, child in node["children"].items()
        )
        return OutlineNode(segment, path, tuple(node["entries"]), children)

    return freeze("", "", tree)


def preprocessing_text(pre: object) -> str:
    """One line for the preprocessing steps of the manifest's ``input.preprocessing``."""
    if not isinstance(pre, Mapping):
        return "not recorded"
    steps = []
    if pre.get("resize") is not None:
        steps.append(f"resize {pre['resize']}")
    if pre.get("crop") is not None:
        steps.append(f"centre crop {pre['crop']}")
    if pre.get("mean") is not None:
        steps.append(f"normalise mean {pre['mean']} std {pre.get('std')}")
    if pre.get("transform"):
        steps.append(f"transform {pre['transform']}")
    text = " → ".join(steps) if steps else "none"
    return f"{text} ({pre['source']})" if pre.get("source") else text


def _header(manifest: Mapping[str, Any], base: str) -> ReportHeader:
    model = manifest.get("model") or {}
    inp = manifest.get("input") or {}
    pictures = inp.get("pictures") or {}
    spec = str(model.get("spec", "model"))
    model_fields = (
        Field("model", spec),
        Field("source", str(model.get("source", ""))),
        Field("weights", str(model.get("weights", ""))),
        Field("weights status", str(model.get("weights_status", ""))),
    )
    input_fields = [Field("kind", str(inp.get("kind", "")))]
    if inp.get("path"):
        input_fields.insert(0, Field("input", str(inp["path"])))
    if inp.get("original"):
        input_fields.append(Field("as given", str(inp["original"])))
    conversions = inp.get("conversions") or []
    if conversions:
        input_fields.append(Field("conversions", "; ".join(str(c) for c in conversions)))
    if "preprocessing" in inp:
        input_fields.append(Field("preprocessing", preprocessing_text(inp["preprocessing"])))
    if inp.get("fed_shape"):
        input_fields.append(Field("fed shape", "×".join(str(n) for n in inp["fed_shape"])))
    versions = manifest.get("versions") or {}
    name = PurePosixPath(str(inp["path"])).name if inp.get("path") else "tensor input"
    return ReportHeader(
        title=f"{spec} · {name}",
        model=model_fields,
        random_weights=bool(model.get("random_weights")),
        weights_status=str(model.get("weights_status", "")),
        input=tuple(input_fields),
        picture_given=_relative(pictures.get("given"), base),
        picture_fed=_relative(pictures.get("fed"), base),
        fed_note=pictures.get("fed_note"),
        versions=tuple(Field(str(k), str(v)) for k, v in versions.items()),
        created=str(manifest.get("created", "")),
        # The banner already says it, with the same words.
        warnings=tuple(
            str(w)
            for w in manifest.get("warnings") or ()
            if not (model.get("random_weights") and str(w).startswith("RANDOM WEIGHTS"))
        ),
    )


def _prediction(value: object) -> Prediction | None:
    """The manifest's ``prediction`` (absent or null for models without known categories)."""
    if not isinstance(value, Mapping) or not isinstance(value.get("top"), Sequence):
        return None
    top = []
    for item in value["top"]:
        if not isinstance(item, Mapping):
            return None
        probability = _finite(item.get("probability"))
        index = item.get("index")
        if probability is None or not isinstance(index, int) or isinstance(index, bool):
            return None
        top.append(PredictionItem(index, str(item.get("label", "")), probability))
    return Prediction(
        source=str(value.get("source", "")),
        random_weights=bool(value.get("random_weights")),
        meaningless=bool(value.get("meaningless")),
        top=tuple(top),
    )


def _selection_text(render: Mapping[str, Any]) -> str:
    if render.get("channels"):
        return "explicit list"
    order = render.get("order", "index")
    k = render.get("max_channels")
    return f"first {k} by index" if order == "index" else f"top {k} by {order}"


def build_report(manifest: Mapping[str, Any], base: str = "") -> ReportData:
    """The report's data objects from a run's manifest (see the module docstring for ``base``)."""
    if not isinstance(manifest, Mapping) or manifest.get("tool") != TOOL:
        raise InputError(
            'the manifest was not written by featuremaps (no "tool": "featuremaps"); expected '
            "the manifest.json of a featuremaps run"
        )
    if "records" not in manifest:
        raise InputError(
            "the manifest lists runs, not records; build the report of each run in its sub-folder"
        )
    layers = tuple(_entry(i, rec, base) for i, rec in enumerate(manifest["records"]))
    render = manifest.get("render") or {}
    fixed = render.get("value_range") if render.get("scale") == "fixed" else None
    lows = [e.low for e in layers if e.drawn and e.low is not None]
    highs = [e.high for e in layers if e.drawn and e.high is not None]
    cmap = render.get("cmap")
    return ReportData(
        header=_header(manifest, base),
        layers=layers,
        outline=_outline(layers),
        scale=str(render.get("scale", "layer")),
        fixed_range=(float(fixed[0]), float(fixed[1])) if fixed else None,
        # The manifest says "auto (...)" when no colormap was asked for.
        cmap=cmap if isinstance(cmap, str) and not cmap.startswith("auto") else None,
        columns=int(render.get("columns") or 8),
        sample=int(render.get("sample") or 0),
        global_range=(min(lows), max(highs)) if lows and highs else None,
        selection=_selection_text(render),
        order="explicit" if render.get("channels") else str(render.get("order", "index")),
        prediction=_prediction(manifest.get("prediction")),
        arrays=_relative(manifest.get("arrays"), base),
        cams=cam_layers(manifest.get("cams"), {e.record.name: e.key for e in layers}, base),
        filters=filter_views(manifest.get("filters"), base) or None,
        atlas=_atlas_links(manifest.get("atlas")),
    )


def _atlas_links(atlas: Any) -> tuple[tuple[str, str], ...]:
    """``(record name, href)`` of the manifest's ``atlas`` entry: ``{"page": path of the atlas
    page relative to the run folder, "layers": {record name: anchor}}``."""
    if not isinstance(atlas, Mapping) or not isinstance(atlas.get("layers"), Mapping):
        return ()
    page = str(atlas.get("page"))
    return tuple((str(name), f"{page}#{anchor}") for name, anchor in atlas["layers"].items())
