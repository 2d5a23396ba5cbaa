"""Outputs of `featuremaps stats` beyond stats.csv: stats.parquet equals the CSV (values and
types), the charts are real PNGs that reuse no state from the chart before, and a run over a tiny
model with hostile layer names writes every file under a safe name, with histograms that equal
np.histogram of the captured values."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import featuremaps as fm
from conftest import NamedChain
from featuremaps.datastats import Histogram, RunningHistogram
from featuremaps.io import OutputFolder, safe_filename
from featuremaps.render.plots import BAR_COLOR, DEAD_COLOR, Charts, plot_histogram, plot_ranked

# Names a module may have (no "." or ""): HTML, path separators, broken mathtext, a control
# character, a glyph the font lacks and a very long one.
HOSTILE = (
    "<img src=x onerror=alert(1)>",
    "a/b\\c",
    "$\\frac{1}{$",
    "line\nbreak\U0001f9ea",
    "x" * 150,
)


def _rgb(hex_color: str) -> tuple[int, int, int]:
    return tuple(int(hex_color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def _decode(png: bytes) -> np.ndarray:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def _colors(pixels: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(c) for c in np.unique(pixels.reshape(-1, 3), axis=0)}


def _histogram(values: np.ndarray) -> Histogram:
    hist = RunningHistogram()
    hist.update(values)
    return hist.result()


# --- Parquet -----------------------------------------------------------------------------------


def test_parquet_keeps_column_types_and_values(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"layer": "a", "channel": 0, "count": 3, "mean": 0.5, "mixed": 1, "dead": False},
        {"layer": "b/é", "channel": 1, "count": 0, "mean": math.nan, "mixed": 2.5, "dead": True},
        {"layer": "c", "channel": 2, "count": 7, "mean": None, "mixed": -3, "dead": False},
    ]
    with OutputFolder(tmp_path / "out") as folder:
        assert folder.write_parquet("t.parquet", rows) == "t.parquet"
        folder.write_json("summary.json", {"tool": "featuremaps"})
    table = pq.read_table(tmp_path / "out" / "t.parquet")
    assert table.schema.types == [
        pa.string(), pa.int64(), pa.int64(), pa.float64(), pa.float64(), pa.bool_()
    ]  # fmt: skip
    got = table.to_pylist()
    assert got[0] == {**rows[0], "mixed": 1.0} and got[2]["mean"] is None
    assert math.isnan(got[1]["mean"]) and got[1]["dead"] is True and got[1]["layer"] == "b/é"


def test_parquet_refuses_what_it_cannot_type(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "out")
    with pytest.raises(fm.OutputError, match="column 'v' holds list, str; expected bool, int"):
        folder.write_parquet("t.parquet", [{"v": [1]}, {"v": "x"}])
    with pytest.raises(fm.OutputError, match=r"a row has the columns \['b'\]; expected \['a'\]"):
        folder.write_parquet("t.parquet", [{"a": 1}, {"b": 2}])
    with pytest.raises(fm.OutputError, match="would leave the output folder"):
        folder.write_parquet("../t.parquet", [{"a": 1}])
    folder.discard()


# --- Charts -------------------------------------------------------------------------------------


def test_histogram_chart_is_a_png_of_the_expected_size_and_not_blank() -> None:
    values = np.maximum(np.random.default_rng(0).standard_normal(5000), 0)
    values[:3] = [np.nan, np.inf, -np.inf]
    pixels = _decode(plot_histogram(_histogram(values), layer="relu", images=2))
    assert pixels.shape == (320, 640, 3)
    colors = _colors(pixels)
    assert len(colors) > 20 and _rgb(BAR_COLOR) in colors and (255, 255, 255) in colors
    small = _decode(plot_histogram(_histogram(values), layer="relu", images=2, size=(4, 2), dpi=50))
    assert small.shape == (100, 200, 3)


def test_ranked_chart_marks_dead_channels() -> None:
    rng = np.random.default_rng(1)
    for channels in (6, 2048):
        values = np.abs(rng.standard_normal(channels))
        dead = np.zeros(channels, bool)
        dead[1::5] = True
        values[dead] = 0.0
        values[0] = np.nan  # a channel without finite values
        before = values.copy()
        marked = _colors(_decode(plot_ranked(values, layer="c", statistic="absmean", dead=dead)))
        plain = _colors(_decode(plot_ranked(values, layer="c", statistic="absmean")))
        assert _rgb(BAR_COLOR) in marked and _rgb(DEAD_COLOR) in marked
        assert _rgb(BAR_COLOR) in plain and _rgb(DEAD_COLOR) not in plain
        np.testing.assert_array_equal(values, before)  # input untouched


def test_hostile_names_draw_without_warnings_or_mathtext() -> None:
    # pytest turns warnings into errors: a missing glyph or a mathtext parse would fail here.
    hist = _histogram(np.arange(10.0))
    for name in HOSTILE:
        _decode(plot_histogram(hist, layer=name, images=1))
        _decode(plot_ranked(np.arange(3.0), layer=name, statistic="$mean"))


def test_reused_charts_equal_fresh_ones() -> None:
    """A Charts object redraws one figure per kind; nothing of one layer may leak into the next."""
    rng = np.random.default_rng(2)
    wide = _histogram(rng.standard_normal(1000) * 1e4)
    empty = _histogram(np.array([np.nan]))
    ranked_a = (rng.standard_normal(2048), rng.random(2048) < 0.1)
    ranked_b = (-np.abs(rng.standard_normal(5)), np.array([False, True, False, False, True]))
    charts = Charts()
    sequence = [
        charts.histogram(wide, layer="a", images=3),
        charts.histogram(empty, layer="b", images=1),
        charts.histogram(wide, layer="a", images=3),
        charts.ranked(ranked_a[0], layer="a", statistic="mean", dead=ranked_a[1]),
        charts.ranked(ranked_b[0], layer="b", statistic="mean", dead=ranked_b[1]),
        charts.ranked(ranked_a[0], layer="a", statistic="mean", dead=ranked_a[1]),
    ]
    assert sequence[0] == sequence[2] == plot_histogram(wide, layer="a", images=3)
    assert sequence[1] == plot_histogram(empty, layer="b", images=1)
    assert sequence[3] == sequence[5]
    assert sequence[4] == plot_ranked(ranked_b[0], layer="b", statistic="mean", dead=ranked_b[1])
    assert len({*sequence}) == 4


# --- End to end ---------------------------------------------------------------------------------


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        pixels = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    return folder


def _chain() -> NamedChain:
    torch.manual_seed(0)
    model = NamedChain(HOSTILE).eval()
    with torch.no_grad():
        last = getattr(model, HOSTILE[-1])
        last.weight.zero_()  # the last layer outputs its bias everywhere: a dead channel
        last.bias.fill_(0.25)
    return model


def _csv_values(rows: list[dict[str, str]], types: dict[str, pa.DataType]) -> list[dict[str, Any]]:
    parse = {
        pa.string(): str,
        pa.int64(): int,
        pa.float64(): float,
        pa.bool_(): lambda s: {"True": True, "False": False}[s],
    }
    return [{k: parse[types[k]](v) for k, v in row.items()} for row in rows]


def _same(a: Any, b: Any) -> bool:
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or (
        a == b and type(a) is type(b)
    )


def test_stats_run_writes_parquet_histograms_and_safe_plot_names(
    images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "stats"
    pre = fm.Preprocessing(resize=(6, 5), source="test")
    summary = fm.collect_stats(
        _chain(), [str(images)], out=out, preprocessing=pre, batch_size=1, workers=0
    )

    # stats.parquet: the rows of stats.csv, with ints, bools and floats typed as such.
    table = pq.read_table(out / "stats.parquet")
    types = dict(zip(table.schema.names, table.schema.types, strict=True))
    assert types["channel"] == types["count"] == types["rank_absmean"] == pa.int64()
    assert types["dead"] == pa.bool_() and types["layer"] == types["type"] == pa.string()
    assert types["mean"] == types["std"] == types["zeros"] == pa.float64()
    with open(out / "stats.csv", newline="", encoding="utf-8") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert list(csv_rows[0]) == table.schema.names
    parquet_rows = table.to_pylist()
    assert len(parquet_rows) == len(csv_rows) == len(HOSTILE)
    for want, got in zip(_csv_values(csv_rows, types), parquet_rows, strict=True):
        assert all(_same(want[k], got[k]) for k in want), (want, got)
    assert [r["layer"] for r in parquet_rows] == list(HOSTILE)
    assert [r["dead"] for r in parquet_rows] == [False] * 4 + [True]

    # Plots: two per layer, under safe names listed in the summary, and nothing else.
    expected = {"stats.csv", "stats.parquet", "summary.json"}
    for index, layer in enumerate(summary["layers"]):
        files = layer["plots"]
        assert files == {
            "histogram": f"plots/{safe_filename(index, layer['name'], '.hist.png')}",
            "ranked": f"plots/{safe_filename(index, layer['name'], '.ranked.png')}",
        }
        expected |= set(files.values())
        for path in files.values():
            assert _decode((out / path).read_bytes()).shape == (320, 640, 3)
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert written == expected
    assert all(p.parent == out / "plots" for p in (out / "plots").iterdir())

    # Histograms in summary.json equal np.histogram of the values captured image by image.
    saved = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert saved["layers"] == summary["layers"]
    model = _chain()
    captures = [
        fm.capture(model, fm.load_input(p, channels=1, preprocessing=pre).tensor)
        for p in sorted(images.glob("*.png"))
    ]
    for layer in saved["layers"]:
        values = np.concatenate(
            [c.get(layer["name"]).tensor.double().numpy().ravel() for c in captures]
        )
        hist = layer["histogram"]
        counts, _ = np.histogram(values, bins=np.array(hist["edges"]))
        assert counts.tolist() == hist["counts"] and hist["nonfinite"] == 0
        assert sum(hist["counts"]) == values.size == 3 * 6 * 5
    assert len(saved["layers"][-1]["histogram"]["counts"]) == 1  # the constant layer


def test_stats_run_without_plots(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "stats"
    summary = fm.collect_stats(_chain(), [str(images)], out=out, workers=0, plots=False)
    assert not (out / "plots").exists() and (out / "stats.parquet").is_file()
    assert all(layer["plots"] is None for layer in summary["layers"])
    assert all(sum(layer["histogram"]["counts"]) > 0 for layer in summary["layers"])


def test_unknown_ranking_statistic_is_refused_before_the_run(tmp_path: Path) -> None:
    with pytest.raises(fm.OptionError, match="rank_by='median' is not a per-channel statistic"):
        fm.collect_stats(_chain(), [str(tmp_path)], out=tmp_path / "o", rank_by="median")
    assert not (tmp_path / "o").exists()
