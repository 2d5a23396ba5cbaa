"""The HTML report without a browser: files, data objects, numbers against recomputations, escaping.

What only a browser can show (drawing, hovering, switching scales, scripts that must not run) is
in test_report_browser.py.
"""

from __future__ import annotations

import base64
import html
import json
import re
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from torch import nn

import featuremaps as fm
from conftest import NamedChain
from featuremaps.cli import main
from featuremaps.inputs import Preprocessing, fed_picture
from featuremaps.io import update_run_folder
from featuremaps.render import GridOptions
from featuremaps.report import build_report, report_files
from featuremaps.report.render import CSP, script_json
from test_attention_capture import TinyViT

DATA_CALL = re.compile(r'^featuremaps\.layerData\(("[^"]*"),(\{.*\}),"([A-Za-z0-9+/=]*)"\);\n$')
STATS_CALL = re.compile(r"^featuremaps\.layerStats\((\"[^\"]*\"),(\{.*\})\);\n$")


def read_layer_data(path: Path) -> tuple[str, dict, np.ndarray]:
    """Decode a data script the way report.js does: base64 -> little-endian float16."""
    match = DATA_CALL.match(path.read_text(encoding="utf-8"))
    assert match, path
    meta = json.loads(match.group(2))
    raw = np.frombuffer(base64.b64decode(match.group(3)), dtype="<f2")
    return json.loads(match.group(1)), meta, raw.reshape(meta["shape"])


@pytest.fixture
def tiny_run(tiny: nn.Module, image_batch: torch.Tensor, tmp_path: Path) -> fm.Visualization:
    [result] = fm.visualize(tiny, image_batch, out=tmp_path / "tiny")
    return result


def test_run_writes_report_beside_pictures(tiny_run: fm.Visualization) -> None:
    out = tiny_run.out_dir
    assert out is not None and tiny_run.report == out / "index.html"
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    drawn = [r for r in tiny_run.records if r.image]
    assert {"index.html", "assets/report.js", "assets/report.css", "input-fed.png"} <= names
    assert "data/stats.js" in names  # every record's statistics, one file
    assert not [n for n in names if n.endswith(".stats.js")]
    for r in drawn:
        stem = Path(r.image or "").stem
        assert f"{stem}.png" in names
        if r.drawn_as == "bar strip":  # a vector: its PNG, no channel view
            assert r.data is None and f"data/{stem}.js" not in names
            continue
        assert f"data/{stem}.js" in names
        assert r.data == f"data/{stem}.js"
    assert [r.name for r in drawn if r.drawn_as == "bar strip"] == ["fc"]
    assert tiny_run.manifest["report"] == "index.html"
    # A tensor input has no picture "as given"; the fed one is made from the tensor.
    assert tiny_run.manifest["input"]["pictures"]["given"] is None


def test_channel_stats_in_manifest_match_numpy_for_every_channel(
    tiny: nn.Module, image_batch: torch.Tensor, tiny_run: fm.Visualization
) -> None:
    manifest = json.loads((Path(str(tiny_run.out_dir)) / "manifest.json").read_text())
    tensors = {r.name: r.tensor for r in fm.capture(tiny, image_batch)}
    checked = 0
    for rec in manifest["records"]:
        if rec["image"] is None:
            assert rec["channel_stats"] is None
            continue
        maps = tensors[rec["name"]][0].double().numpy().reshape(rec["shape"][1], -1)
        stats = rec["channel_stats"]
        assert len(stats["mean"]) == rec["shape"][1]  # all C channels, not only those shown
        np.testing.assert_allclose(stats["mean"], maps.mean(axis=1), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(stats["std"], maps.std(axis=1), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(stats["min"], maps.min(axis=1), rtol=0, atol=0)
        np.testing.assert_allclose(stats["max"], maps.max(axis=1), rtol=0, atol=0)
        np.testing.assert_allclose(stats["zeros"], (maps == 0).mean(axis=1), rtol=0, atol=0)
        checked += 1
    assert checked == 7  # conv1, bn1, act, conv2, act#2, pool (1x1 maps), fc (a vector)


def test_layer_data_are_the_shown_channels_in_float16(
    tiny: nn.Module, image_batch: torch.Tensor, tmp_path: Path
) -> None:
    grid = fm.GridOptions(channels=(5, 0, 7))
    [result] = fm.visualize(tiny, image_batch, out=tmp_path / "o", layers="conv2", grid=grid)
    [rec] = [r for r in result.records if r.image]
    assert rec.channels_shown == (5, 0, 7)
    key, meta, values = read_layer_data(Path(str(result.out_dir)) / str(rec.data))
    assert key == Path(str(rec.image)).stem and meta["dtype"] == "float16"
    expected = fm.capture(tiny, image_batch, layers="conv2")[0].tensor[0, [5, 0, 7]].numpy()
    np.testing.assert_array_equal(values, expected.astype(np.float16))
    # Exact ranges ride along, so per-channel scales do not depend on the float16 rounding.
    assert meta["ranges"] == [
        [float(expected[i].min()), float(expected[i].max())] for i in range(3)
    ]
    assert meta["overflow"] == 0


def test_float16_overflow_is_counted() -> None:
    from featuremaps.report.render import float16_copy, layer_data_script

    maps = np.array([[[1e5, 1.0]]], dtype=np.float32)
    half, overflow = float16_copy(maps)
    assert overflow == 1 and half.dtype == np.dtype("<f2") and not np.shares_memory(half, maps)
    text = layer_data_script("0000_x", half, overflow, [(1.0, 1e5)])
    assert '"overflow":1' in text.decode()


def test_base64_text_is_the_standard_base64_of_any_bytes() -> None:
    import base64

    from featuremaps.report.render import _BASE64_PIECE, base64_text

    rng = np.random.default_rng(0)
    # Around the pieces the words are taken in (3 bytes a word), and the last whole bytes.
    pieces = [3 * _BASE64_PIECE * k + d for k in (1, 2) for d in range(-4, 8)]
    lengths = [*range(13), *pieces, 3 << 16, (3 << 16) + 1, (3 << 16) + 2, 100_003]
    for n in lengths:
        data = rng.integers(0, 256, n, dtype=np.uint8)
        assert base64_text(data).tobytes() == base64.b64encode(data.tobytes()), n
    frozen = rng.integers(0, 256, 1000, dtype=np.uint8)
    frozen.setflags(write=False)  # a read-only buffer (bytes from a file) is read the same
    assert base64_text(frozen).tobytes() == base64.b64encode(frozen.tobytes())
    halves = np.arange(7 * 5 * 3, dtype="<f2").reshape(7, 5, 3)[:, ::2]  # not contiguous
    assert base64_text(halves.view(np.uint8)).tobytes() == base64.b64encode(halves.tobytes())
    every = np.arange(256, dtype=np.uint8).repeat(3)  # every byte value at every position
    for shift in range(3):
        data = np.roll(every, shift)
        assert base64_text(data).tobytes() == base64.b64encode(data.tobytes())


def test_legend_selection_names_heads_and_says_first_k_only_when_some_are_left_out(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model, x = TinyViT().eval(), torch.randn(1, 3, 16, 12)
    lines = {}
    for name, grid in {"all": GridOptions(), "four": GridOptions(max_channels=4)}.items():
        [run] = fm.visualize(model, x, layers="self_attention", out=tmp_path / name, grid=grid)
        assert run.report is not None
        page = run.report.read_text(encoding="utf-8")
        lines[name] = re.findall(r'<p class="legend-selection">([^<]*)</p>', page)
    # self_attention.0: the (1, 13, 8) output, 8 channels; .attention: 2 heads, all drawn.
    assert lines["all"] == ["all 8 channels shown", "all 2 heads shown"]
    assert lines["four"] == ["4 of 8 channels shown (first 4 by index)", "all 2 heads shown"]


def test_outline_keeps_every_call_of_a_reused_module(tiny_run: fm.Visualization) -> None:
    data = build_report(tiny_run.manifest)
    by_key = {e.key: e for e in data.layers}
    act = next(n for n in data.outline.children if n.segment == "act")
    assert [by_key[k].record.name for k in act.entries] == ["act", "act#2"]
    assert [by_key[k].label for k in act.entries] == ["act", "act#2"]
    segments = [n.segment for n in data.outline.children]
    assert segments == ["conv1", "bn1", "act", "conv2", "pool", "fc"]
    html = (Path(str(tiny_run.out_dir)) / "index.html").read_text()
    for e in data.layers:
        # Links name the record (the address survives a change of the layer selection).
        link = quote(e.record.name, safe="/")
        assert f'href="#layer={link}"' in html and f'id="{e.anchor}"' in html


def test_outline_is_a_tree_of_module_paths() -> None:
    seq = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU()), nn.Conv2d(2, 2, 1))
    [result] = fm.visualize(seq, torch.zeros(1, 1, 3, 3))
    data = build_report({**result.manifest, "records": result.manifest["records"]})
    [block, last] = data.outline.children
    assert (block.path, [c.path for c in block.children]) == ("0", ["0.0", "0.1"])
    assert last.path == "1" and last.entries and not last.children


class Bottleneck(nn.Module):
    """One ReLU module called three times, a sub-container called after two of them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 2, 1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(2, 2, 1)
        self.downsample = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.conv1(x))
        out = self.relu(self.conv2(out))
        return self.relu(out + self.downsample(x))


def _outline_order(node: Any, by_key: dict[int, Any]) -> list[str]:
    """The outline flattened as a reader sees it: records by name, containers as 'path/'."""
    names: list[str] = []
    for item in node.items:
        if isinstance(item, int):
            names.append(by_key[item].record.name)
        else:
            names.append(f"{item.path}/")
            names.extend(_outline_order(item, by_key))
    return names


def test_outline_lists_calls_in_execution_order_within_each_container() -> None:
    model = nn.Sequential(Bottleneck(), nn.Conv2d(2, 2, 1)).eval()
    [result] = fm.visualize(model, torch.randn(1, 2, 4, 4))
    data = build_report(result.manifest)
    by_key = {e.key: e for e in data.layers}
    # The manifest's records are in the order the calls returned (the oracle).
    ran = [r["name"] for r in result.manifest["records"]]
    assert ran == [
        "0.conv1", "0.relu", "0.conv2", "0.relu#2", "0.downsample.0", "0.downsample.1",
        "0.relu#3", "1",
    ]  # fmt: skip
    assert _outline_order(data.outline, by_key) == [
        "0/", "0.conv1", "0.relu", "0.conv2", "0.relu#2",
        "0.downsample/", "0.downsample.0", "0.downsample.1",
        "0.relu#3", "1",
    ]  # fmt: skip
    # The tree is still there: the reused relu is one module, its calls are its records.
    [block, last] = data.outline.children
    relu = next(c for c in block.children if c.segment == "relu")
    assert [by_key[k].record.name for k in relu.entries] == ["0.relu", "0.relu#2", "0.relu#3"]
    assert last.path == "1" and block.first == 0


HOSTILE_NAMES = (
    "<img src=x onerror=alert(1)>",
    "</script><script>alert(2)</script>",
    "\"'><svg onload=alert(3)>&amp;\u2028",
)


class _Tags(HTMLParser):
    """Every start tag with its attributes, as a browser's parser would see them."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


TEMPLATE_TAGS = {
    "html", "head", "meta", "title", "link", "script", "body", "header", "h1", "h2", "span", "p",
    "strong", "div", "dl", "dt", "dd", "figure", "img", "figcaption", "ul", "li", "label",
    "select", "option", "noscript", "nav", "button", "details", "summary", "a", "main",
    "section", "canvas", "dialog", "input", "br", "output", "kbd", "h3", "ol", "code",
}  # fmt: skip


def test_layer_names_are_escaped_everywhere(tmp_path: Path) -> None:
    [result] = fm.visualize(NamedChain(HOSTILE_NAMES), torch.ones(1, 1, 4, 4), out=tmp_path / "h")
    out = Path(str(result.out_dir))
    html = (out / "index.html").read_text()
    for name in HOSTILE_NAMES:
        assert name not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    # No element from data: every tag is one the template wrote, with no event handler attribute.
    tags = _Tags(html).tags
    assert {tag for tag, _ in tags} <= TEMPLATE_TAGS
    for tag, attrs in tags:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        if tag == "img":
            assert attrs["src"] in {"input-fed.png"} | {f"{p.stem}.png" for p in out.glob("*.png")}
    assert [a["title"] for t, a in tags if t == "a" and "title" in a] == list(HOSTILE_NAMES)
    scripts = re.findall(r"<script[^>]*>", html)
    assert scripts == [
        '<script type="application/json" id="fm-config">',
        '<script src="assets/report.js" defer>',
    ]
    config = html.split('id="fm-config">', 1)[1].split("</script>", 1)[0]
    assert "<" not in config and ">" not in config and "&" not in config and "\u2028" not in config
    assert [layer["name"] for layer in json.loads(config)["layers"]] == list(HOSTILE_NAMES)
    for path in (out / "data").iterdir():
        text = path.read_text()
        assert "<" not in text and "\u2028" not in text


def test_page_has_a_restrictive_csp_and_no_remote_resources(tiny_run: fm.Visualization) -> None:
    html = (Path(str(tiny_run.out_dir)) / "index.html").read_text()
    metas = [a for t, a in _Tags(html).tags if t == "meta" and "http-equiv" in a]
    assert metas == [{"http-equiv": "Content-Security-Policy", "content": CSP}]
    assert "default-src 'none'" in CSP and "script-src 'self'" in CSP and "unsafe" not in CSP
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    js = (Path(str(tiny_run.out_dir)) / "assets" / "report.js").read_text()
    for forbidden in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert forbidden not in js
    # fetch() and XHR of file:// URLs are blocked by browsers; data come as script files.
    assert not re.search(r"\bfetch\([^)]", js) and "XMLHttpRequest" not in js


def test_script_json_cannot_break_out_of_a_script_block() -> None:
    text = script_json({"a": "</script><!-- & \u2028 \u2029", "n": float("nan")})
    assert text == '{"a":"\\u003c/script\\u003e\\u003c!-- \\u0026 \\u2028 \\u2029","n":null}'
    assert json.loads(text) == {"a": "</script><!-- & \u2028 \u2029", "n": None}


def test_header_shows_random_weights_pictures_and_versions(tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), np.uint8)).save(photo)
    seq = nn.Sequential(nn.Conv2d(3, 2, 3))
    loaded = fm.LoadedModel(seq, "my-net", "python object", "none", "random (test)", True)
    pre = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), source="test")
    item = fm.load_input(photo, preprocessing=pre)
    [result] = fm.visualize(loaded, item, out=tmp_path / "o")
    out = Path(str(result.out_dir))
    html = (out / "index.html").read_text()
    assert 'class="banner"' in html and "RANDOM WEIGHTS" in html
    assert 'src="input.png"' in html and 'src="input-fed.png"' in html
    assert "de-normalised with the preprocessing mean and std" in html
    for key in ("torch", "numpy", "featuremaps"):
        assert f"{key} {result.manifest['versions'][key]}" in html
    assert result.manifest["created"] in html
    with Image.open(out / "input.png") as given, Image.open(out / "input-fed.png") as fed:
        # De-normalising the fed tensor gives the picture back.
        assert np.array_equal(np.asarray(given), np.asarray(fed))
        assert np.array_equal(np.asarray(given), item.display)


def test_fed_picture_stretches_without_normalisation() -> None:
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0] = torch.tensor([[-2.0, 0.0], [1.0, 2.0]])
    x[0, 1] = 5.0
    picture, note = fed_picture(x) or (None, "")
    assert picture is not None and "stretched" in note
    assert picture[..., 0].tolist() == [[0, 128], [191, 255]]
    assert picture[..., 1].tolist() == [[0, 0], [0, 0]]  # constant channel
    gray, note = fed_picture(torch.rand(1, 5, 3, 3)) or (None, "")
    assert gray is not None and note.startswith("channel 0 of 5")
    assert np.array_equal(gray[..., 0], gray[..., 2])
    assert fed_picture(torch.rand(1, 10)) is None
    plain, note = fed_picture(torch.full((1, 3, 2, 2), 0.5)) or (None, "")
    assert plain is not None and note == "values shown as they are (already in [0, 1])"
    assert (plain == 128).all()


def test_no_report_option_writes_pictures_and_stats_only(
    tiny: nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save(tiny.state_dict(), tmp_path / "w.pt")
    photo = tmp_path / "p.png"
    Image.new("RGB", (12, 10), (10, 200, 30)).save(photo)
    nets = tmp_path / "nets.py"
    nets.write_text("import torch.nn as nn\ndef build():\n    return nn.Conv2d(3, 4, 3)\n")
    out = tmp_path / "o"
    code = main([str(photo), "-m", f"{nets}:build", "-o", str(out), "--no-report"])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "report:" not in stdout
    assert not (out / "index.html").exists() and not (out / "data").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["report"] is None
    [rec] = manifest["records"]
    assert rec["data"] is None and len(rec["channel_stats"]["mean"]) == 4
    # The report can still be written afterwards; without layer data it shows the PNGs.
    index = fm.write_report(out)
    assert index == out / "index.html"
    html = index.read_text()
    assert '<img class="png" src="0000_output.png"' in html
    assert (out / "data" / "stats.js").exists()


def test_cli_prints_the_report_path_last(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = tmp_path / "p.png"
    Image.new("RGB", (12, 10), (10, 200, 30)).save(photo)
    nets = tmp_path / "nets.py"
    nets.write_text("import torch.nn as nn\ndef build():\n    return nn.Conv2d(3, 4, 3)\n")
    out = tmp_path / "o"
    assert main([str(photo), "-m", f"{nets}:build", "-o", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"report: {(out / 'index.html').resolve()}"
    assert (out / "index.html").is_file()


def test_write_report_refreshes_runs_and_refuses_other_folders(
    tiny: nn.Module, image_batch: torch.Tensor, tmp_path: Path
) -> None:
    results = fm.visualize(tiny, [image_batch, image_batch * 2], out=tmp_path / "many")
    top = tmp_path / "many"
    assert [r.report for r in results] == [
        top / "input" / "index.html",
        top / "input-2" / "index.html",
    ]
    page = (top / "index.html").read_text()
    assert 'href="input/index.html"' in page and 'href="input-2/index.html"' in page
    (top / "input" / "index.html").unlink()
    assert fm.write_report(top / "input") == top / "input" / "index.html"
    sub = (top / "input" / "index.html").read_text()
    assert 'src="data/0000_conv1.js"' not in sub  # data paths are relative to the sub-folder
    assert '"data":"data/0000_conv1.js"' in sub
    assert fm.write_report(top) == top / "index.html"
    other = tmp_path / "mine"
    other.mkdir()
    with pytest.raises(fm.InputError, match=r"no manifest\.json in '.*mine'; expected the --out"):
        fm.write_report(other)
    (other / "manifest.json").write_text('{"tool": "other"}')
    with pytest.raises(fm.InputError, match="manifest was not written by featuremaps"):
        fm.write_report(other)
    with pytest.raises(fm.OutputError, match=r"'.*mine' is not a featuremaps run folder"):
        update_run_folder(other, {"index.html": b""})
    with pytest.raises(fm.OutputError, match="refusing to write '../x': it would leave"):
        update_run_folder(top, {"../x": b""})


@pytest.mark.parametrize("extra", [[], ["--filters"]])
def test_the_statistics_script_written_by_a_run_is_that_of_its_manifest(
    tmp_path: Path, extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # A run makes each record's part of the statistics script as the record passes; --filters
    # then adds norms to the statistics, and those parts are made again. Either way the one
    # file is the one the report makes from the finished manifest, for every input's sub-folder,
    # and it holds every drawn record's statistics, in the manifest's order.
    photos = []
    for i, colour in enumerate([(10, 200, 30), (200, 10, 90)]):
        photos.append(tmp_path / f"p{i}.png")
        Image.new("RGB", (24, 20), colour).save(photos[-1])
    out = tmp_path / "o"
    code = main([*map(str, photos), "-m", "shapes_cnn", "-o", str(out), *extra])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("*/data/*stats*")) == [
        "p0/data/stats.js",
        "p1/data/stats.js",
    ]
    for sub in ("p0", "p1"):
        manifest = json.loads((out / sub / "manifest.json").read_text())
        written = (out / sub / "data" / "stats.js").read_bytes()
        assert report_files(manifest, f"{sub}/")["data/stats.js"] == written
        drawn = [r for r in manifest["records"] if r["image"]]
        assert all(("filter_l1" in r["channel_stats"]) == bool(extra) for r in drawn)
        calls = [STATS_CALL.match(line) for line in written.decode().splitlines(keepends=True)]
        assert all(calls) and len(calls) == len(drawn) > 0
        for call, record in zip(calls, drawn, strict=True):
            assert call is not None
            assert json.loads(call.group(1)) == Path(record["image"]).stem
            assert json.loads(call.group(2)) == record["channel_stats"]
        # The budget counts it: what it stored is at least its bytes.
        assert manifest["report_data"]["stored_bytes"] >= len(written)


def test_build_report_refuses_foreign_manifests() -> None:
    with pytest.raises(fm.InputError, match="was not written by featuremaps"):
        build_report({"tool": "x", "records": []})
    with pytest.raises(fm.InputError, match="lists runs, not records"):
        build_report({"tool": "featuremaps", "runs": []})


def test_report_files_are_package_data() -> None:
    root = resources.files("featuremaps.report")
    for name in ("templates/index.html", "templates/runs.html", "static/report.js"):
        assert (root / name).is_file(), name
    assert (root / "static" / "report.css").is_file()


def test_report_is_built_from_the_manifest_alone(tiny_run: fm.Visualization) -> None:
    manifest = json.loads((Path(str(tiny_run.out_dir)) / "manifest.json").read_text())
    files = report_files(manifest)
    written = (Path(str(tiny_run.out_dir)) / "index.html").read_bytes()
    assert files["index.html"] == written


def test_manifest_keeps_number_lists_on_one_line(tiny_run: fm.Visualization) -> None:
    text = (Path(str(tiny_run.out_dir)) / "manifest.json").read_text()
    assert re.search(r'"mean": \[-?[0-9.e+-]+, ', text)
    assert json.loads(text)["tool"] == "featuremaps"


def test_fixed_scale_and_colormap_of_the_run_are_offered(
    tiny: nn.Module, image_batch: torch.Tensor, tmp_path: Path
) -> None:
    grid = fm.GridOptions(scale="fixed", value_range=(-1.0, 1.0), cmap="plasma")
    [result] = fm.visualize(tiny, image_batch, out=tmp_path / "o", grid=grid)
    html = (Path(str(result.out_dir)) / "index.html").read_text()
    assert '<option value="fixed">fixed -1 … 1</option>' in html
    config = json.loads(html.split('id="fm-config">', 1)[1].split("</script>", 1)[0])
    assert config["scale"] == "fixed" and config["fixed"] == [-1.0, 1.0]
    assert config["cmap"]["sequential"] == "plasma" and "plasma" in config["luts"]
    assert config["cmap"]["diverging"] == "RdBu_r"
    lut = bytes.fromhex(config["luts"]["plasma"])
    assert lut == fm.render.colormap_lut("plasma").tobytes()


def test_layer_data_keep_the_value_returned_even_if_changed_in_place_later(
    tiny: nn.Module, image_batch: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Files are encoded on a second thread; make it as late as possible (after the whole forward
    # pass, when `z += y` and the in-place ReLU have changed the buffers) to catch any aliasing.
    import featuremaps.commands.run_files as run_files

    deferred: list[tuple[Any, str, Any]] = []
    monkeypatch.setattr(
        run_files.BackgroundWriter, "submit", lambda self, *job: deferred.append(job)
    )
    monkeypatch.setattr(
        run_files.BackgroundWriter, "wait", lambda self: [w(p, e()) for w, p, e, *_ in deferred]
    )
    [result] = fm.visualize(tiny, image_batch, out=tmp_path / "o")
    exact = {r.name: r.tensor for r in fm.capture(tiny, image_batch)}
    for rec in (r for r in result.records if r.data):
        _, _, values = read_layer_data(Path(str(result.out_dir)) / rec.data)
        expected = exact[rec.name][0, list(rec.channels_shown or ())].numpy()
        np.testing.assert_array_equal(values, expected.astype(np.float16), err_msg=rec.name)


@pytest.mark.parametrize("largest", [None, 1e9])
def test_float16_copy_rounds_as_numpy_does(largest: float | None) -> None:
    # The fast (torch) conversion must give numpy's IEEE round-to-nearest-even, bit for bit:
    # halfway cases, subnormals, the largest float16 and the first values that overflow.
    from featuremaps.report.render import FLOAT16_MAX, float16_copy

    rng = np.random.default_rng(0)
    edges = [0.0, -0.0, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 2.0**-24, 2.0**-25, 3 * 2.0**-26]
    edges += [6.1e-5, FLOAT16_MAX, 65519.0, 65520.0, -65520.0, 1e38, np.inf, -np.inf, np.nan]
    values = np.concatenate(
        [np.array(edges), rng.standard_normal(5000) * 10.0 ** rng.integers(-8, 6, 5000)]
    )
    maps = values.astype(np.float32).reshape(1, 1, -1)
    half, overflow = float16_copy(maps, largest)
    with np.errstate(over="ignore"):
        expected = maps.astype("<f2")
    assert half.dtype == np.dtype("<f2")
    np.testing.assert_array_equal(half.view(np.uint16), expected.view(np.uint16))
    true_overflow = int(np.count_nonzero(np.isfinite(maps) & ~np.isfinite(expected)))
    assert true_overflow > 0 and overflow == true_overflow


def test_float16_overflow_count_is_skipped_only_when_the_bound_fits() -> None:
    from featuremaps.report.render import FLOAT16_MAX, float16_copy

    maps = np.array([[[FLOAT16_MAX, -1.0]]], dtype=np.float32)
    assert float16_copy(maps, FLOAT16_MAX)[1] == 0
    assert float16_copy(np.array([[[1e5]]], dtype=np.float32), 1e5)[1] == 1


def _data_files_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in (folder / "data").iterdir() if p.is_file())


def test_report_data_over_its_budget_keeps_fewer_channels_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.numpy import load_file

    nets = tmp_path / "nets.py"
    nets.write_text(
        "import torch, torch.nn as nn\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),\n"
        "                         nn.Conv2d(16, 16, 3, stride=2))\n"
    )
    image = tmp_path / "x.npy"
    np.save(image, np.random.default_rng(0).random((3, 96, 96), dtype=np.float32))
    base = [str(image), "-m", f"{nets}:build", "--save-arrays"]
    # With the default budget nothing is reduced: the data files hold every drawn channel.
    assert main([*base, "-o", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    needed = _data_files_size(tmp_path / "whole")
    assert whole["report_data"]["needed_bytes"] == needed == whole["report_data"]["stored_bytes"]
    assert all(r["data_channels"] is None for r in whole["records"])
    assert needed > 2**19  # so half a MiB is too little
    out = tmp_path / "cut"
    capsys.readouterr()
    assert main([*base, "--report-budget", "0.5", "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    data = manifest["report_data"]
    assert data["budget_bytes"] == 2**19 and data["needed_bytes"] == needed
    assert data["stored_bytes"] == _data_files_size(out) <= 2**19
    # The largest layers lose channels, the smallest keeps all of them (one common cap).
    cut = {r["name"]: r["data_channels"] for r in manifest["records"] if r["image"]}
    assert 0 < cut["0"] < 16 and 0 < cut["1"] < 16 and cut["2"] is None
    assert abs(cut["1"] - cut["0"]) <= 1  # equal maps, headers of slightly different sizes
    assert data["reduced_records"] == 2
    # The kept channels are the first drawn ones, as float16 copies of the exact values.
    exact = load_file(str(out / "arrays.safetensors"))
    for r in manifest["records"]:
        if r["data_channels"]:
            _, meta, values = read_layer_data(out / r["data"])
            assert meta["shape"] == [r["data_channels"], *r["shape"][2:]]
            first = exact[r["name"]][0, r["channels_shown"][: r["data_channels"]]]
            np.testing.assert_array_equal(values, first.astype(np.float16))
            assert "report budget" in " ".join(r["warnings"])
            assert exact[r["name"]].shape == (1, 16, 96, 96)  # the arrays file keeps all
    # Said on the terminal, in the manifest's warnings and on the page.
    assert "over its budget of 0.5 MiB: 2 layers keep fewer" in stdout
    assert any("over its budget of 0.5 MiB" in w for w in manifest["warnings"])
    page = html.unescape((out / "index.html").read_text(encoding="utf-8"))  # the text as read
    assert "over its budget of 0.5 MiB" in page
    assert f"the first {cut['0']} of the 16 drawn, within the report's data budget" in page
    lines = stdout.strip().splitlines()
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert lines[-3] == f"size: {size / 1e6:.1f} MB in {out.resolve()}"
    assert lines[-1].startswith("report: ")


def test_a_budget_too_small_for_any_channel_leaves_the_pictures(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)).eval()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    [result] = fm.visualize(model, x, out=tmp_path / "o", report_budget=0.001)
    [record] = [r for r in result.records if r.image]
    assert record.data is None and record.data_channels == 0
    out = tmp_path / "o"
    assert not list((out / "data").glob("*[0-9].js")) and _data_files_size(out) <= 1048
    page = (out / "index.html").read_text(encoding="utf-8")
    assert f'<img class="png" src="{record.image}"' in page
    with pytest.raises(fm.OptionError, match=r"report budget -1 MiB is not valid"):
        fm.visualize(model, x, out=tmp_path / "p", report_budget=-1)


class Fixed(nn.Module):
    """Returns a fixed tensor (its values chosen by the test) at the input's size and batch.

    At the test's own input size the values come out exactly; the layout probes (two samples,
    another size) see the batch and spatial axes follow the input, as in a real map.
    """

    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("values", values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sized = torch.nn.functional.interpolate(self.values, size=x.shape[-2:], mode="nearest")
        return sized + 0 * x[:, :1]


class FlatAndEmpty(nn.Module):
    """A LayerNorm-like layer (token norms, sqrt(C) up to float32 rounding) and an all-NaN one."""

    def __init__(self) -> None:
        super().__init__()
        x = torch.randn(196, 768, generator=torch.Generator().manual_seed(0)) * 3 + 1
        centred = x - x.mean(dim=1, keepdim=True)
        tokens = centred / centred.pow(2).mean(dim=1, keepdim=True).sqrt()
        norms = tokens.double().pow(2).sum(dim=1).sqrt().float()
        assert norms.max() > norms.min()  # rounding noise, not an exactly constant map
        self.flat = Fixed(norms.reshape(1, 1, 14, 14))
        self.empty = Fixed(torch.full((1, 2, 14, 14), float("nan")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.empty(x)
        return self.flat(x)


def flat_and_empty_run(out: Path) -> fm.Visualization:
    with pytest.warns(fm.NonFiniteWarning):
        [result] = fm.visualize(FlatAndEmpty().eval(), torch.zeros(1, 1, 14, 14), out=out)
    return result


def test_report_says_n_a_and_constant_as_the_pictures_do(tmp_path: Path) -> None:
    result = flat_and_empty_run(tmp_path / "o")
    html = (Path(str(result.out_dir)) / "index.html").read_text()
    config = json.loads(html.split('id="fm-config">', 1)[1].split("</script>", 1)[0])
    layers = {layer["name"]: layer for layer in config["layers"]}
    assert layers["empty"]["low"] is None
    assert layers["empty"]["rangeNote"] == "no finite values: every cell is NaN/Inf"
    assert layers["flat"]["rangeNote"] == "constant (spread below float32 resolution)"
    assert layers["flat"]["constantChannels"] == [0]
    assert layers["empty"]["constantChannels"] == []


_RANGE_VALUES = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-5, 1.5e-5, 9.99e-5, 1e-7, 1.5e-7, 1e16, 5e-324]),
)


@pytest.mark.parametrize("with_orjson", [True, False])
@given(ranges=st.lists(st.tuples(_RANGE_VALUES, _RANGE_VALUES), max_size=40))
def test_layer_data_head_is_script_json_of_its_meta(
    with_orjson: bool, ranges: list[tuple[float | None, float | None]]
) -> None:
    # The head's numbers are spliced in from the number-list writer; the oracle is script_json
    # of the whole meta, which walks every pair.
    from unittest import mock

    import featuremaps.io as fio
    from featuremaps.report.render import PRECISION, layer_data_head

    stem = "0001_a<b>&c"
    meta = {
        "shape": [len(ranges), 3, 4],
        "dtype": PRECISION,
        "byteorder": "little",
        "overflow": 2,
        "ranges": [list(r) for r in ranges],
    }
    expected = f'featuremaps.layerData({script_json(stem)},{script_json(meta)},"'.encode()
    with mock.patch.object(fio, "orjson", fio.orjson if with_orjson else None):
        assert layer_data_head(stem, (len(ranges), 3, 4), 2, ranges) == expected
