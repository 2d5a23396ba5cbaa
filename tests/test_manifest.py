"""The manifest schema: record entries survive a JSON round trip, malformed entries are read as
``None``/empty instead of raising, headers keep their key order, and ``drawn_as`` (not the shape)
is what a run writes for each record and what the report reads to decide what was drawn."""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

import featuremaps as fm
from featuremaps.layouts import CHANNEL_GRID
from featuremaps.manifest import RecordSummary, header, runs_manifest
from featuremaps.report.model import build_report

FULL = RecordSummary(
    name="layer1.0.relu#2",
    module="layer1.0.relu",
    call=2,
    type="ReLU",
    shape=(1, 64, 8, 8),
    dtype="float32",
    layout="NCHW",
    image="0007_layer1.0.relu#2.png",
    skipped=None,
    min=0.0,
    max=3.25,
    mean=0.5,
    nonfinite=3,
    channels_shown=(0, 1, 5),
    warnings=("3 NaN/Inf values",),
    channel_stats={"min": [0.0, -1.5], "max": [2.0, 3.25]},
    data="data/0007_layer1.0.relu#2.bin",
    geometry={"stride": [4.0, 4.0], "offset": [1.5, 1.5], "method": "analytic"},
    drawn_as=CHANNEL_GRID,
)
NEVER_RAN = RecordSummary(
    "attn.out_proj", "attn.out_proj", 0, "Linear", None, None, None, None,
    "never ran: its forward was never called", None, None, None, 0,
)  # fmt: skip
HEAD = RecordSummary(
    "fc", "fc", 1, "Linear", (1, 4), "float32", "NC", None,
    "output is a vector per sample (N, C); channel grids need (N, C, H, W)", -1.0, 2.0, 0.25, 0,
)  # fmt: skip


def _through_a_file(entry: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(entry))
    return loaded


# --- round trip --------------------------------------------------------------------------------


@pytest.mark.parametrize("record", [FULL, NEVER_RAN, HEAD], ids=["full", "never-ran", "head"])
def test_explicit_records_round_trip(record: RecordSummary) -> None:
    assert RecordSummary.from_json(record.to_json()) == record
    assert RecordSummary.from_json(_through_a_file(record.to_json())) == record


def test_entry_keys_are_in_the_documented_order() -> None:
    assert list(FULL.to_json()) == [
        "name", "module", "call", "type", "shape", "dtype", "layout", "layout_evidence",
        "drawn_as", "pca", "image", "data", "data_channels", "skipped", "min", "max", "mean",
        "nonfinite", "channels_shown", "channel_stats", "geometry", "warnings",
    ]  # fmt: skip
    assert FULL.to_json()["shape"] == [1, 64, 8, 8]
    assert FULL.to_json()["drawn_as"] == "channel grid"


_text = st.text(max_size=12)
_floats = st.floats(allow_nan=False, allow_infinity=False)
_optional_float = st.none() | _floats
_json_value = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | _floats | _text


@st.composite
def record_summaries(draw: st.DrawFn) -> RecordSummary:
    return RecordSummary(
        name=draw(_text),
        module=draw(_text),
        call=draw(st.integers(0, 1000)),
        type=draw(_text),
        shape=draw(st.none() | st.tuples(*[st.integers(0, 512)] * draw(st.integers(0, 6)))),
        dtype=draw(st.none() | _text),
        layout=draw(st.none() | st.sampled_from(["NCHW", "NHWC->NCHW", "NCL", "NLD", "NC", "6-D"])),
        image=draw(st.none() | _text),
        skipped=draw(st.none() | _text),
        min=draw(_optional_float),
        max=draw(_optional_float),
        mean=draw(_optional_float),
        nonfinite=draw(st.integers(0, 10**9)),
        # An empty selection is written as null (never produced: a grid shows >= 1 channel).
        channels_shown=draw(st.none() | st.lists(st.integers(0, 4096), min_size=1).map(tuple)),
        warnings=tuple(draw(st.lists(_text, max_size=3))),
        channel_stats=draw(
            st.none() | st.dictionaries(_text, st.lists(_floats, max_size=4), max_size=3)
        ),
        data=draw(st.none() | _text),
        data_channels=draw(st.none() | st.integers(0, 4096)),
        geometry=draw(st.none() | st.dictionaries(_text, _json_value, max_size=4)),
        drawn_as=draw(st.none() | st.just(CHANNEL_GRID)),
    )


@settings(max_examples=150, deadline=None)
@given(record_summaries())
@example(FULL)
@example(NEVER_RAN)
def test_any_record_round_trips_through_json(record: RecordSummary) -> None:
    assert RecordSummary.from_json(_through_a_file(record.to_json())) == record


# --- malformed entries -------------------------------------------------------------------------


def test_an_empty_entry_reads_as_empty_fields() -> None:
    assert RecordSummary.from_json({}) == RecordSummary(
        "", "", 0, "", None, None, None, None, None, None, None, None, 0
    )


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [("shape", "1x64x8x8", None), ("shape", {"0": 1}, None), ("shape", [1, "a"], None),
     ("shape", [1, None], None), ("min", math.nan, None), ("max", math.inf, None),
     ("mean", -math.inf, None), ("min", "0.5", None), ("max", True, None), ("mean", 2, 2.0),
     ("call", None, 0), ("call", "two", 0), ("call", [2], 0), ("call", "3", 3),
     ("nonfinite", None, 0), ("nonfinite", "many", 0), ("nonfinite", math.inf, 0),
     ("channels_shown", "0,1", None), ("channels_shown", [0, "x"], None),
     ("warnings", None, ()), ("warnings", "abc", ()), ("warnings", 5, ()),
     ("warnings", ["a", 1], ("a", "1")), ("channel_stats", [1, 2], None),
     ("geometry", "analytic", None), ("image", 5, None), ("layout", ["NCHW"], None),
     ("drawn_as", 1, None), ("drawn_as", None, None), ("dtype", {}, None)],
)  # fmt: skip
def test_a_malformed_field_is_read_as_none_or_empty(
    key: str, value: object, expected: object
) -> None:
    entry = FULL.to_json()
    entry[key] = value
    read = RecordSummary.from_json(entry)
    assert getattr(read, key) == expected
    # Every other field is still read.
    others = {f: getattr(FULL, f) for f in FULL.__dataclass_fields__ if f != key}
    assert {f: getattr(read, f) for f in others} == others


def test_a_missing_field_is_read_as_none_or_empty() -> None:
    defaults = RecordSummary.from_json({})
    for key in FULL.to_json():
        entry = FULL.to_json()
        del entry[key]
        assert getattr(RecordSummary.from_json(entry), key) == getattr(defaults, key), key


def test_the_report_reads_a_malformed_record_without_raising() -> None:
    manifest = {
        "tool": "featuremaps",
        "records": [{"name": "x", "call": "two", "shape": [1, "a"], "image": "x.png",
                     "layout": "NCHW", "drawn_as": CHANNEL_GRID, "min": math.nan}],
    }  # fmt: skip
    [entry] = build_report(manifest).layers
    r = entry.record
    assert (r.name, r.call, r.shape, r.min) == ("x", 0, None, None)
    assert not entry.drawn  # no shape: nothing to say what was drawn


# --- headers -----------------------------------------------------------------------------------


def test_header_keys_and_values() -> None:
    model = {"spec": "resnet18", "weights": "none"}
    head = header(model)
    assert list(head) == ["tool", "created", "versions", "model"]
    assert head["tool"] == "featuremaps"
    assert head["model"] == model and head["model"] is not model
    created = dt.datetime.fromisoformat(head["created"])
    assert created.utcoffset() == dt.timedelta(0)
    assert abs(dt.datetime.now(dt.timezone.utc) - created) < dt.timedelta(minutes=5)
    assert head["versions"]["featuremaps"] == fm.__version__
    assert head["versions"]["torch"] == torch.__version__
    assert list(header()) == ["tool", "created", "versions"]
    assert list(header(model, created=False)) == ["tool", "versions", "model"]


def test_runs_manifest_lists_the_runs_without_a_creation_time() -> None:
    runs = ["a/manifest.json", "b/manifest.json"]
    top = runs_manifest(runs)
    assert list(top) == ["tool", "versions", "runs"]
    assert top["tool"] == "featuremaps" and top["runs"] == runs and top["runs"] is not runs


# --- drawn_as in a real run and in the report --------------------------------------------------


def _png_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def test_a_run_writes_drawn_as_and_the_report_reads_it(
    tiny: nn.Module, image_batch: torch.Tensor, tmp_path: Path
) -> None:
    [result] = fm.visualize(tiny, image_batch, out=tmp_path / "o")
    assert result.out_dir is not None
    manifest = json.loads((result.out_dir / fm.MANIFEST_NAME).read_text())
    records = {r["name"]: r for r in manifest["records"]}
    assert list(records) == ["conv1", "bn1", "act", "conv2", "act#2", "pool", "fc"]

    drawn = {n for n, r in records.items() if r["drawn_as"] is not None}
    assert drawn == {"conv1", "bn1", "act", "conv2", "act#2", "pool", "fc"}
    for name in drawn - {"fc"}:
        r = records[name]
        assert (r["drawn_as"], r["layout"], r["skipped"]) == ("channel grid", "NCHW", None)
        assert _png_pixels((result.out_dir / r["image"]).read_bytes()).shape[2] == 3
    fc = records["fc"]  # a vector per sample: a bar strip, never fake 1x1 maps
    assert (fc["layout"], fc["shape"], fc["drawn_as"], fc["skipped"]) == (
        "NC",
        [1, 4],
        "bar strip",
        None,
    )
    assert _png_pixels((result.out_dir / fc["image"]).read_bytes()).shape[2] == 3

    report = build_report(manifest)
    assert {e.record.name for e in report.layers if e.drawn} == drawn
    assert {e.record.name: e.maps_shape for e in report.layers if e.drawn}["pool"] == (8, 1, 1)

    # The report reads the field, not the shape: a record with an image and a drawable shape
    # that says it was not drawn is not drawn.
    edited = copy.deepcopy(manifest)
    edited["records"][0]["drawn_as"] = None
    entries = build_report(edited).layers
    assert entries[0].record.image is not None and entries[0].record.shape == (1, 8, 16, 16)
    assert not entries[0].drawn and entries[0].maps_shape is None
    assert {e.record.name for e in entries if e.drawn} == drawn - {"conv1"}

    # A manifest written before records said how (no key at all) is read as before: an NCHW
    # record with an image was a channel grid (and nothing else was drawn then).
    legacy = copy.deepcopy(manifest)
    for r in legacy["records"]:
        del r["drawn_as"]
    assert {e.record.name for e in build_report(legacy).layers if e.drawn} == drawn - {"fc"}


def test_a_channels_last_record_is_drawn_with_its_own_channel_axis(tmp_path: Path) -> None:
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.lin = nn.Linear(4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(self.conv(x).permute(0, 2, 3, 1))

    x = torch.randn(1, 3, 6, 9, generator=torch.Generator().manual_seed(2))
    [result] = fm.visualize(Head().eval(), x, out=tmp_path / "o", report=False)
    assert result.out_dir is not None
    manifest = json.loads((result.out_dir / fm.MANIFEST_NAME).read_text())
    lin = manifest["records"][1]
    assert (lin["name"], lin["layout"], lin["shape"]) == ("lin", "NHWC->NCHW", [1, 6, 9, 10])
    assert lin["drawn_as"] == "channel grid" and lin["channels_shown"] == list(range(10))
    assert len(lin["channel_stats"]["max"]) == 10
    entry = build_report(manifest).layers[1]
    assert entry.drawn and entry.channels == 10 and entry.maps_shape == (10, 6, 9)


def test_versions_are_the_packages_own_whether_imported_or_not() -> None:
    import subprocess
    import sys

    import matplotlib
    import numpy
    import PIL
    import torch
    import torchvision

    from featuremaps.manifest import versions

    found = versions()
    assert found["torch"] == torch.__version__ and found["numpy"] == numpy.__version__
    assert found["torchvision"] == torchvision.__version__
    assert found["matplotlib"] == matplotlib.__version__ and found["pillow"] == PIL.__version__
    # In a fresh process that has not imported them, the versions come from the package metadata
    # (without a local build tag such as "+cu130"), and asking does not import them.
    code = (
        "import json, sys; from featuremaps.manifest import versions; v = versions(); "
        "print(json.dumps([v, 'torchvision' in sys.modules, 'matplotlib' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    fresh, tv_imported, mpl_imported = json.loads(out.stdout)
    assert not tv_imported and not mpl_imported
    assert {k: v.split("+")[0] for k, v in fresh.items()} == {
        k: v.split("+")[0] for k, v in found.items()
    }
